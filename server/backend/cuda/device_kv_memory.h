// One GPU's KV page pool memory (KvMemory over a cudaMalloc allocation made at start).
// - Small writes (a decode step's appends) are asynchronous: packed into one of a ring of pinned
//   staging slots and copied by one copy kernel on the pool's write stream, whose tail event orders
//   every later reader; the caller never waits for the copy (a slot is reused once its copy ran).
// - 8-bit tokens (WriteQuantized) take the same slots and stream: the centred K, V and the page
//   tables packed into a slot and encoded in place by sage_kv_quantize reading them from pinned
//   memory, in runs of a slot each (the lock is let go between runs).
// - Large writes (prefill chunks, bulk imports), reads and page copies take one of a few lanes
//   (stream + pinned staging), so several session threads transfer at once; each waits for the
//   write stream's tail first and synchronizes its lane before returning.
#pragma once

#include <cstddef>
#include <memory>

#include "absl/status/statusor.h"
#include "server/backend/kv_memory.h"

namespace sage::server {

// RESOURCE_EXHAUSTED naming the bytes when the device cannot hold them.
absl::StatusOr<std::unique_ptr<KvMemory>> CreateDeviceKvMemory(int device, size_t bytes);

}  // namespace sage::server
