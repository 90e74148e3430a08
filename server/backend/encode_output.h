// An engine's O in the dtype a caller asked for, for the encoders above the engines (the gRPC
// response, a client's shared memory, a session step's result).
#pragma once

#include <cstddef>

#include "kernels/reference/dtype.h"
#include "server/backend/engine_io.h"

namespace sage::server {

// `values` elements of `out`'s O, from element `first` on, into `dst` as `dtype`: the kernel's
// 16-bit codes as they are or converted (the same bits as decoding to float and encoding again),
// or the float O encoded.
void EncodeO(const EngineOutput& out, DType dtype, size_t first, size_t values, std::byte* dst);

}  // namespace sage::server
