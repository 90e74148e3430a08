// A client's shared memory made usable by the CUDA backend: host ranges page-locked for direct DMA,
// and device allocations opened from CUDA IPC handles. Each result undoes its work when destroyed.
#pragma once

#include <cstddef>
#include <memory>
#include <span>

#include "absl/status/statusor.h"
#include "server/backend/backend.h"

namespace sage::server {

// cudaHostRegister (portable: every GPU's context DMAs from it). INVALID_ARGUMENT when the range
// is already registered, RESOURCE_EXHAUSTED when the driver cannot lock more memory.
absl::StatusOr<std::unique_ptr<EngineMemory>> PinHostRange(std::byte* data, size_t bytes);

// cudaIpcOpenMemHandle on `device`. INVALID_ARGUMENT for a handle of the wrong length, one the
// driver does not accept, or an allocation smaller than `bytes` (checked with the driver's
// cuMemGetAddressRange, so a client cannot make launches read past its allocation).
absl::StatusOr<DeviceMapping> OpenIpcAllocation(std::span<const std::byte> handle, int device, size_t bytes);

}  // namespace sage::server
