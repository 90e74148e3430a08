// The CUDA RegionBuffer. Compiled into every sagectl; only a build that found the CUDA runtime
// (client/CMakeLists.txt defines SAGECTL_WITH_CUDA) can allocate device memory.
#include "client/sagectl/region_buffer.h"

#include "absl/strings/str_cat.h"

#if SAGECTL_WITH_CUDA
#include <cuda_runtime_api.h>

#include <string_view>
#endif

namespace sagectl {

#if SAGECTL_WITH_CUDA
namespace {

absl::Status CudaStatus(cudaError_t err, absl::string_view what) {
  if (err == cudaSuccess) return absl::OkStatus();
  return absl::InternalError(absl::StrCat(what, ": ", cudaGetErrorName(err), " (", cudaGetErrorString(err), ")"));
}

class CudaBuffer final : public RegionBuffer {
 public:
  CudaBuffer(int device, std::byte* data, size_t size, cudaIpcMemHandle_t handle)
      : device_(device), data_(data), size_(size), handle_(handle) {}
  ~CudaBuffer() override {
    (void)cudaSetDevice(device_);
    (void)cudaFree(data_);
  }

  size_t size() const override { return size_; }
  // Any thread may copy (bench verifies on gRPC threads): each copy selects the device itself.
  absl::Status Write(size_t offset, const void* src, size_t bytes) override {
    if (absl::Status st = CheckRange(size_, offset, bytes); !st.ok()) return st;
    if (absl::Status st = CudaStatus(cudaSetDevice(device_), "cudaSetDevice"); !st.ok()) return st;
    return CudaStatus(cudaMemcpy(data_ + offset, src, bytes, cudaMemcpyHostToDevice), "cudaMemcpy to device");
  }
  absl::Status Read(size_t offset, void* dst, size_t bytes) const override {
    if (absl::Status st = CheckRange(size_, offset, bytes); !st.ok()) return st;
    if (absl::Status st = CudaStatus(cudaSetDevice(device_), "cudaSetDevice"); !st.ok()) return st;
    return CudaStatus(cudaMemcpy(dst, data_ + offset, bytes, cudaMemcpyDeviceToHost), "cudaMemcpy to host");
  }
  absl::Status Register(const sageserve::Client& client, const std::string& name) const override {
    return client.RegisterCudaSharedMemory(
        name, std::string_view(reinterpret_cast<const char*>(&handle_), sizeof(handle_)), device_, size_);
  }
  std::string Describe() const override { return absl::StrCat("CUDA device ", device_, " memory (IPC handle)"); }

 private:
  int device_;
  std::byte* data_;
  size_t size_;
  cudaIpcMemHandle_t handle_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<RegionBuffer>> MakeCudaBuffer(int device, size_t bytes) {
  if (absl::Status st = CudaStatus(cudaSetDevice(device), absl::StrCat("cudaSetDevice(", device, ")")); !st.ok()) {
    return st;
  }
  void* p = nullptr;
  // cudaMalloc, not the async or managed allocators: only its memory can be exported by IPC handle.
  if (absl::Status st = CudaStatus(cudaMalloc(&p, bytes), absl::StrCat("cudaMalloc ", bytes, " bytes")); !st.ok()) {
    return st;
  }
  auto fail = [&](absl::Status st) {
    (void)cudaFree(p);
    return st;
  };
  // Zeroed like a fresh shm object, so an output the server never wrote cannot pass for stale data.
  if (absl::Status st = CudaStatus(cudaMemset(p, 0, bytes), "cudaMemset"); !st.ok()) return fail(st);
  cudaIpcMemHandle_t handle;
  if (absl::Status st = CudaStatus(cudaIpcGetMemHandle(&handle, p), "cudaIpcGetMemHandle"); !st.ok()) {
    return fail(st);
  }
  return std::unique_ptr<RegionBuffer>(new CudaBuffer(device, static_cast<std::byte*>(p), bytes, handle));
}

#else

absl::StatusOr<std::unique_ptr<RegionBuffer>> MakeCudaBuffer(int device, size_t bytes) {
  (void)device;
  (void)bytes;
  return absl::FailedPreconditionError(
      "--shared_memory=cuda: this sagectl was built without CUDA "
      "(configure with the CUDA toolkit present and SAGESERVE_ENABLE_CUDA=ON)");
}

#endif

}  // namespace sagectl
