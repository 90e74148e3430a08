// Where bytes an engine reads or writes live. Shared by the payload pools, the shared-memory
// registry and every engine.
#pragma once

#include <cstdint>

namespace sage::server {

//   kPageable: ordinary host memory.
//   kPinned:   host memory page-locked and registered with the CUDA driver, so a GPU engine copies
//              straight from and to it, with no staging copy.
//   kDevice:   memory of the GPU the engine runs on (a client's CUDA shared memory), read and written
//              by device copies only. Engines without a GPU never receive it (the server refuses
//              CUDA shared memory there).
enum class MemoryKind : uint8_t { kPageable, kPinned, kDevice };

}  // namespace sage::server
