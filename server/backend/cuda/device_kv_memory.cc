#include "server/backend/cuda/device_kv_memory.h"

#include <cuda_runtime.h>

#include <algorithm>
#include <cstring>
#include <mutex>
#include <vector>

#include "absl/strings/str_cat.h"
#include "server/backend/cuda/cuda_status.h"

namespace sage::server {
namespace {

constexpr size_t kStagingBytes = size_t{8} << 20;  // a whole 256-token prefill chunk of pages fits

class DeviceKvMemory final : public KvMemory {
 public:
  DeviceKvMemory(int device, std::byte* base, size_t bytes, cudaStream_t stream, std::byte* staging)
      : device_(device), base_(base), bytes_(bytes), stream_(stream), staging_(staging) {}
  ~DeviceKvMemory() override {
    if (cudaSetDevice(device_) != cudaSuccess) return;
    (void)cudaStreamSynchronize(stream_);
    (void)cudaStreamDestroy(stream_);
    (void)cudaFreeHost(staging_);
    (void)cudaFree(base_);
  }
  std::byte* base() const override { return base_; }
  size_t bytes() const override { return bytes_; }
  MemoryKind memory() const override { return MemoryKind::kDevice; }
  int device() const override { return device_; }

  absl::Status Write(std::span<const KvWrite> writes) override {
    std::lock_guard<std::mutex> lock(mu_);
    SAGE_CUDA_RETURN_IF_ERROR(FromCuda(cudaSetDevice(device_), "cudaSetDevice"));
    // Packed into the staging and issued as one batch per staging-full (a decode step's append is
    // four small ranges: one driver call instead of four).
    size_t used = 0;
    dsts_.clear();
    srcs_.clear();
    sizes_.clear();
    for (const KvWrite& w : writes) {
      if (w.offset + w.bytes > bytes_) return absl::InternalError("kv pool: write past the pool");
      if (w.bytes > kStagingBytes) {  // larger than the staging: the driver stages it
        SAGE_CUDA_RETURN_IF_ERROR(IssueBatch());
        used = 0;
        SAGE_CUDA_RETURN_IF_ERROR(FromCuda(cudaMemcpyAsync(base_ + w.offset, w.src, w.bytes, cudaMemcpyHostToDevice, stream_),
                                           "kv pool write"));
        SAGE_CUDA_RETURN_IF_ERROR(Flush());
        continue;
      }
      if (used + w.bytes > kStagingBytes) {
        SAGE_CUDA_RETURN_IF_ERROR(IssueBatch());
        used = 0;
      }
      std::memcpy(staging_ + used, w.src, w.bytes);
      dsts_.push_back(base_ + w.offset);
      srcs_.push_back(staging_ + used);
      sizes_.push_back(w.bytes);
      used += (w.bytes + 15) / 16 * 16;
    }
    return IssueBatch();
  }

  absl::Status Read(size_t offset, void* dst, size_t bytes) const override {
    std::lock_guard<std::mutex> lock(mu_);
    SAGE_CUDA_RETURN_IF_ERROR(FromCuda(cudaSetDevice(device_), "cudaSetDevice"));
    for (size_t done = 0; done < bytes;) {
      const size_t n = std::min(kStagingBytes, bytes - done);
      SAGE_CUDA_RETURN_IF_ERROR(FromCuda(
          cudaMemcpyAsync(staging_, base_ + offset + done, n, cudaMemcpyDeviceToHost, stream_), "kv pool read"));
      SAGE_CUDA_RETURN_IF_ERROR(Flush());
      std::memcpy(static_cast<std::byte*>(dst) + done, staging_, n);
      done += n;
    }
    return absl::OkStatus();
  }

  absl::Status Copy(size_t dst_offset, size_t src_offset, size_t bytes) override {
    std::lock_guard<std::mutex> lock(mu_);
    SAGE_CUDA_RETURN_IF_ERROR(FromCuda(cudaSetDevice(device_), "cudaSetDevice"));
    SAGE_CUDA_RETURN_IF_ERROR(FromCuda(
        cudaMemcpyAsync(base_ + dst_offset, base_ + src_offset, bytes, cudaMemcpyDeviceToDevice, stream_), "kv page copy"));
    return Flush();
  }

 private:
  absl::Status Flush() const { return FromCuda(cudaStreamSynchronize(stream_), "kv pool copy"); }

  // The gathered copies (staging -> pool), then a sync: the staging may be refilled after it.
  absl::Status IssueBatch() {
    if (dsts_.empty()) return absl::OkStatus();
    cudaMemcpyAttributes attr{};
    attr.srcAccessOrder = cudaMemcpySrcAccessOrderStream;
    size_t attr_index = 0;
    cudaError_t err = cudaMemcpyBatchAsync(dsts_.data(), srcs_.data(), sizes_.data(), dsts_.size(), &attr, &attr_index, 1,
                                           stream_);
    if (err == cudaErrorNotSupported) {  // a driver without batched copies: one call each
      (void)cudaGetLastError();
      err = cudaSuccess;
      for (size_t i = 0; i < dsts_.size() && err == cudaSuccess; ++i) {
        err = cudaMemcpyAsync(dsts_[i], srcs_[i], sizes_[i], cudaMemcpyHostToDevice, stream_);
      }
    }
    dsts_.clear();
    srcs_.clear();
    sizes_.clear();
    SAGE_CUDA_RETURN_IF_ERROR(FromCuda(err, "kv pool write"));
    return Flush();
  }

  const int device_;
  std::byte* const base_;
  const size_t bytes_;
  const cudaStream_t stream_;
  std::byte* const staging_;  // pinned, kStagingBytes
  mutable std::mutex mu_;     // one transfer at a time through the staging
  std::vector<void*> dsts_;   // a write batch being gathered; guarded by mu_
  std::vector<const void*> srcs_;
  std::vector<size_t> sizes_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<KvMemory>> CreateDeviceKvMemory(int device, size_t bytes) {
  SAGE_CUDA_RETURN_IF_ERROR(FromCuda(cudaSetDevice(device), "cudaSetDevice"));
  void* base = nullptr;
  if (cudaMalloc(&base, bytes) != cudaSuccess) {
    (void)cudaGetLastError();
    size_t free_b = 0, total_b = 0;
    (void)cudaMemGetInfo(&free_b, &total_b);
    return absl::ResourceExhaustedError(absl::StrCat("kv pool: cannot allocate ", bytes >> 20, " MiB on cuda", device,
                                                     " (", free_b >> 20, " MiB free; lower --kv_pool_bytes or --kv_pool_fraction)"));
  }
  cudaStream_t stream = nullptr;
  void* staging = nullptr;
  absl::Status s = FromCuda(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking), "cudaStreamCreate");
  if (s.ok()) s = FromCuda(cudaHostAlloc(&staging, kStagingBytes, cudaHostAllocPortable), "cudaHostAlloc(kv staging)");
  if (!s.ok()) {
    if (stream != nullptr) (void)cudaStreamDestroy(stream);
    (void)cudaFree(base);
    return s;
  }
  return std::unique_ptr<KvMemory>(new DeviceKvMemory(device, static_cast<std::byte*>(base), bytes, stream,
                                                      static_cast<std::byte*>(staging)));
}

}  // namespace sage::server
