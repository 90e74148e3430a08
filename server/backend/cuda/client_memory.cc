#include "server/backend/cuda/client_memory.h"

#include <cuda_runtime.h>

#include <cstring>
#include <utility>

#include "absl/strings/str_cat.h"
#include "server/backend/cuda/cuda_status.h"

namespace sage::server {
namespace {

class PinnedRange final : public EngineMemory {
 public:
  explicit PinnedRange(std::byte* data) : data_(data) {}
  ~PinnedRange() override { (void)cudaHostUnregister(data_); }

 private:
  std::byte* data_;
};

class IpcAllocation final : public EngineMemory {
 public:
  IpcAllocation(void* ptr, int device) : ptr_(ptr), device_(device) {}
  ~IpcAllocation() override {
    if (cudaSetDevice(device_) == cudaSuccess) (void)cudaIpcCloseMemHandle(ptr_);
  }

  // On the calling thread's per-thread stream, which waits for no other stream: a legacy-stream
  // cudaMemcpy would wait for every launch on the GPU. The thread's current device is put back.
  absl::Status CopyToHost(std::span<std::byte> dst, const std::byte* src) const override {
    int previous = -1;
    SAGE_CUDA_RETURN_IF_ERROR(FromCuda(cudaGetDevice(&previous), "cudaGetDevice"));
    SAGE_CUDA_RETURN_IF_ERROR(FromCuda(cudaSetDevice(device_), "cudaSetDevice"));
    cudaError_t err = cudaMemcpyAsync(dst.data(), src, dst.size(), cudaMemcpyDeviceToHost, cudaStreamPerThread);
    if (err == cudaSuccess) err = cudaStreamSynchronize(cudaStreamPerThread);
    if (err != cudaSuccess) (void)cudaGetLastError();  // not sticky: the context goes on serving
    (void)cudaSetDevice(previous);
    return FromCuda(err, "read of a client's CUDA shared memory");
  }

 private:
  void* ptr_;
  int device_;
};

// The driver's cuMemGetAddressRange through the runtime's entry-point lookup: the server does not
// link libcuda (CI runs it on machines without a driver).
using GetAddressRangeFn = int (*)(unsigned long long* base, size_t* size, unsigned long long ptr);

absl::StatusOr<size_t> AllocationSize(void* ptr) {
  void* fn = nullptr;
  cudaDriverEntryPointQueryResult found = cudaDriverEntryPointSymbolNotFound;
  const cudaError_t err =
      cudaGetDriverEntryPointByVersion("cuMemGetAddressRange", &fn, 12000, cudaEnableDefault, &found);
  if (err != cudaSuccess || found != cudaDriverEntryPointSuccess || fn == nullptr) {
    (void)cudaGetLastError();
    return absl::InternalError("cuda backend: the driver has no cuMemGetAddressRange; cannot check the allocation size");
  }
  unsigned long long base = 0;
  size_t size = 0;
  const int rc = reinterpret_cast<GetAddressRangeFn>(fn)(&base, &size, reinterpret_cast<unsigned long long>(ptr));
  if (rc != 0) return absl::InternalError(absl::StrCat("cuda backend: cuMemGetAddressRange failed (CUresult ", rc, ")"));
  // The opened pointer is the allocation's start; bytes before it would not be reachable anyway.
  return size - static_cast<size_t>(reinterpret_cast<unsigned long long>(ptr) - base);
}

}  // namespace

absl::StatusOr<std::unique_ptr<EngineMemory>> PinHostRange(std::byte* data, size_t bytes) {
  const cudaError_t err = cudaHostRegister(data, bytes, cudaHostRegisterPortable);
  if (err == cudaSuccess) return std::unique_ptr<EngineMemory>(std::make_unique<PinnedRange>(data));
  (void)cudaGetLastError();
  if (err == cudaErrorHostMemoryAlreadyRegistered) {
    return absl::InvalidArgumentError("cuda backend: this memory is already page-locked by the server");
  }
  if (err == cudaErrorMemoryAllocation) {
    return absl::ResourceExhaustedError(absl::StrCat("cuda backend: cannot page-lock ", bytes,
                                                     " bytes (locked-memory limit, ulimit -l?): ",
                                                     cudaGetErrorString(err)));
  }
  return FromCuda(err, "cudaHostRegister(shared memory)");
}

absl::StatusOr<DeviceMapping> OpenIpcAllocation(std::span<const std::byte> handle, int device, size_t bytes) {
  cudaIpcMemHandle_t h;
  if (handle.size() != sizeof(h)) {
    return absl::InvalidArgumentError(
        absl::StrCat("raw_handle: ", handle.size(), " bytes, a cudaIpcMemHandle_t has ", sizeof(h)));
  }
  std::memcpy(&h, handle.data(), sizeof(h));
  SAGE_CUDA_RETURN_IF_ERROR(FromCuda(cudaSetDevice(device), "cudaSetDevice"));
  void* ptr = nullptr;
  const cudaError_t err = cudaIpcOpenMemHandle(&ptr, h, cudaIpcMemLazyEnablePeerAccess);
  if (err != cudaSuccess) {
    (void)cudaGetLastError();
    return absl::InvalidArgumentError(absl::StrCat("raw_handle: the driver refused it on device ", device, " (",
                                                   cudaGetErrorName(err), ": ", cudaGetErrorString(err),
                                                   "); the allocation must be alive and on this host"));
  }
  auto owner = std::make_unique<IpcAllocation>(ptr, device);
  absl::StatusOr<size_t> size = AllocationSize(ptr);
  if (!size.ok()) return size.status();
  if (*size < bytes) {
    return absl::InvalidArgumentError(
        absl::StrCat("byte_size: ", bytes, " bytes, but the allocation behind raw_handle holds ", *size));
  }
  DeviceMapping m;
  m.handle = std::move(owner);
  m.data = static_cast<std::byte*>(ptr);
  return m;
}

}  // namespace sage::server
