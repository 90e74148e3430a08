// The memory behind a shared-memory region that sagectl registers with the server: POSIX shared
// memory on the host, or CUDA device memory exported by IPC handle. Callers only copy bytes in and
// out and register the whole buffer, so `attend` and `bench` do not care which one it is.
#pragma once

#include <cstddef>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "sageserve/client/client.h"

namespace sagectl {

class RegionBuffer {
 public:
  virtual ~RegionBuffer() = default;

  virtual size_t size() const = 0;
  // Copies between host memory and [offset, offset + bytes) of the buffer (OUT_OF_RANGE beyond it).
  virtual absl::Status Write(size_t offset, const void* src, size_t bytes) = 0;
  virtual absl::Status Read(size_t offset, void* dst, size_t bytes) const = 0;
  // Registers the whole buffer as region `name`.
  virtual absl::Status Register(const sageserve::Client& client, const std::string& name) const = 0;
  // For output: "system shared memory /sage-bench-12-0", "CUDA device 0 memory".
  virtual std::string Describe() const = 0;
};

// A new POSIX shared-memory object `key` (SystemSharedMemory::Create), unlinked with the buffer.
absl::StatusOr<std::unique_ptr<RegionBuffer>> MakeSystemBuffer(std::string key, size_t bytes);
// cudaMalloc on `device`, exported with cudaIpcGetMemHandle and registered under the same
// ordinal. FAILED_PRECONDITION in a sagectl built without CUDA.
absl::StatusOr<std::unique_ptr<RegionBuffer>> MakeCudaBuffer(int device, size_t bytes);

// OUT_OF_RANGE unless [offset, offset + bytes) lies inside a buffer of `size` bytes.
absl::Status CheckRange(size_t size, size_t offset, size_t bytes);

}  // namespace sagectl
