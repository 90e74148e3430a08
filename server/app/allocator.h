// Which malloc this process runs on. The server binaries link tcmalloc_minimal where the build
// found it (CMake option SAGESERVE_MALLOC): every request allocates and frees small objects on
// gRPC's threads and the batcher's, and glibc's arenas cost 5-16% of merged throughput on the H100
// host (docs/BENCHMARKS.md). Checked at run time, since a linker that drops the unreferenced library
// would silently fall back to glibc.
#pragma once

#include <string_view>

namespace sage::server {

// "tcmalloc" when tcmalloc's entry points are loaded in this process, else "glibc".
std::string_view ActiveAllocator();

}  // namespace sage::server
