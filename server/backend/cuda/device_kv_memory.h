// One GPU's KV page pool memory (KvMemory over a cudaMalloc allocation made at start). A transfer
// takes one of a few lanes (stream + pinned staging), so appends from several session threads run
// at once; writes are packed into the lane's staging, copied in one batch, and the lane's stream is
// synchronized before the call returns, so a launch issued afterwards on any stream reads them.
#pragma once

#include <cstddef>
#include <memory>

#include "absl/status/statusor.h"
#include "server/backend/kv_memory.h"

namespace sage::server {

// RESOURCE_EXHAUSTED naming the bytes when the device cannot hold them.
absl::StatusOr<std::unique_ptr<KvMemory>> CreateDeviceKvMemory(int device, size_t bytes);

}  // namespace sage::server
