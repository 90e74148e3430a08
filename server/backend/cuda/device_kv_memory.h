// One GPU's KV page pool memory (KvMemory over a cudaMalloc allocation made at start).
// - Small writes (a decode step's appends: byte ranges, or 8-bit tokens the GPU encodes with
//   sage_kv_quantize) are packed into pinned memory and issued as one kernel. When no one else is
//   writing they go on the pool's write stream from a ring of slots, asynchronously: nobody waits
//   for them, and every reader (a launch via OrderAfterWrites, a Read, a Copy) is ordered after the
//   stream's tail. When another writer holds the stream they take a lane instead and synchronize
//   it, so many session threads append in parallel.
// - Large writes (prefill chunks, bulk imports), reads and page copies take one of a few lanes
//   (stream + pinned staging); each waits for the write stream's tail first and synchronizes its
//   lane before returning.
#pragma once

#include <cstddef>
#include <memory>

#include "absl/status/statusor.h"
#include "server/backend/kv_memory.h"

namespace sage::server {

// RESOURCE_EXHAUSTED naming the bytes when the device cannot hold them.
absl::StatusOr<std::unique_ptr<KvMemory>> CreateDeviceKvMemory(int device, size_t bytes);

}  // namespace sage::server
