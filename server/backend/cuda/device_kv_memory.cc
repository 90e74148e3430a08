#include "server/backend/cuda/device_kv_memory.h"

#include <cuda_runtime.h>

#include <algorithm>
#include <condition_variable>
#include <cstring>
#include <mutex>
#include <vector>

#include "absl/strings/str_cat.h"
#include "server/backend/cuda/cuda_status.h"

namespace sage::server {
namespace {

constexpr size_t kStagingBytes = size_t{4} << 20;  // per lane: a 256-token page run of 8-bit K/V at 32 heads fits
constexpr int kLanes = 8;  // transfers in flight at once (session worker threads append in parallel)

// One transfer path: a stream, pinned staging and the batch being gathered. Used by one call at a time.
struct Lane {
  cudaStream_t stream = nullptr;
  std::byte* staging = nullptr;
  std::vector<void*> dsts;
  std::vector<const void*> srcs;
  std::vector<size_t> sizes;
};

class DeviceKvMemory final : public KvMemory {
 public:
  DeviceKvMemory(int device, std::byte* base, size_t bytes) : device_(device), base_(base), bytes_(bytes) {}
  ~DeviceKvMemory() override {
    if (cudaSetDevice(device_) != cudaSuccess) return;
    for (Lane& l : lanes_) {
      if (l.stream != nullptr) {
        (void)cudaStreamSynchronize(l.stream);
        (void)cudaStreamDestroy(l.stream);
      }
      if (l.staging != nullptr) (void)cudaFreeHost(l.staging);
    }
    (void)cudaFree(base_);
  }

  absl::Status Init() {
    lanes_.resize(kLanes);
    for (Lane& l : lanes_) {
      SAGE_CUDA_RETURN_IF_ERROR(FromCuda(cudaStreamCreateWithFlags(&l.stream, cudaStreamNonBlocking), "cudaStreamCreate"));
      void* staging = nullptr;
      SAGE_CUDA_RETURN_IF_ERROR(FromCuda(cudaHostAlloc(&staging, kStagingBytes, cudaHostAllocPortable), "cudaHostAlloc(kv staging)"));
      l.staging = static_cast<std::byte*>(staging);
      free_.push_back(&l);
    }
    return absl::OkStatus();
  }

  std::byte* base() const override { return base_; }
  size_t bytes() const override { return bytes_; }
  MemoryKind memory() const override { return MemoryKind::kDevice; }
  int device() const override { return device_; }

  absl::Status Write(std::span<const KvWrite> writes) override {
    LaneHold hold(*this);
    Lane& l = hold.lane;
    SAGE_CUDA_RETURN_IF_ERROR(FromCuda(cudaSetDevice(device_), "cudaSetDevice"));
    // Packed into the lane's staging and issued as one batch per staging-full (a decode step's
    // append is four small ranges: one driver call instead of four).
    size_t used = 0;
    for (const KvWrite& w : writes) {
      if (w.offset + w.bytes > bytes_) return absl::InternalError("kv pool: write past the pool");
      if (w.bytes > kStagingBytes) {  // larger than the staging: the driver stages it
        SAGE_CUDA_RETURN_IF_ERROR(IssueBatch(l));
        used = 0;
        SAGE_CUDA_RETURN_IF_ERROR(
            FromCuda(cudaMemcpyAsync(base_ + w.offset, w.src, w.bytes, cudaMemcpyHostToDevice, l.stream), "kv pool write"));
        SAGE_CUDA_RETURN_IF_ERROR(Sync(l));
        continue;
      }
      if (used + w.bytes > kStagingBytes) {
        SAGE_CUDA_RETURN_IF_ERROR(IssueBatch(l));
        used = 0;
      }
      std::memcpy(l.staging + used, w.src, w.bytes);
      l.dsts.push_back(base_ + w.offset);
      l.srcs.push_back(l.staging + used);
      l.sizes.push_back(w.bytes);
      used += (w.bytes + 15) / 16 * 16;
    }
    return IssueBatch(l);
  }

  absl::Status Read(size_t offset, void* dst, size_t bytes) const override {
    LaneHold hold(*this);
    Lane& l = hold.lane;
    SAGE_CUDA_RETURN_IF_ERROR(FromCuda(cudaSetDevice(device_), "cudaSetDevice"));
    for (size_t done = 0; done < bytes;) {
      const size_t n = std::min(kStagingBytes, bytes - done);
      SAGE_CUDA_RETURN_IF_ERROR(FromCuda(
          cudaMemcpyAsync(l.staging, base_ + offset + done, n, cudaMemcpyDeviceToHost, l.stream), "kv pool read"));
      SAGE_CUDA_RETURN_IF_ERROR(Sync(l));
      std::memcpy(static_cast<std::byte*>(dst) + done, l.staging, n);
      done += n;
    }
    return absl::OkStatus();
  }

  absl::Status Copy(size_t dst_offset, size_t src_offset, size_t bytes) override {
    LaneHold hold(*this);
    SAGE_CUDA_RETURN_IF_ERROR(FromCuda(cudaSetDevice(device_), "cudaSetDevice"));
    SAGE_CUDA_RETURN_IF_ERROR(FromCuda(
        cudaMemcpyAsync(base_ + dst_offset, base_ + src_offset, bytes, cudaMemcpyDeviceToDevice, hold.lane.stream),
        "kv page copy"));
    return Sync(hold.lane);
  }

 private:
  // A lane taken for one call, given back on scope exit (waiting while all are busy: callers are
  // session worker threads, never gRPC reactors).
  struct LaneHold {
    explicit LaneHold(const DeviceKvMemory& m) : memory(m), lane(m.Take()) {}
    ~LaneHold() { memory.Give(lane); }
    const DeviceKvMemory& memory;
    Lane& lane;
  };
  Lane& Take() const {
    std::unique_lock<std::mutex> lock(mu_);
    freed_.wait(lock, [this] { return !free_.empty(); });
    Lane* l = free_.back();
    free_.pop_back();
    return *l;
  }
  void Give(Lane& l) const {
    l.dsts.clear();
    l.srcs.clear();
    l.sizes.clear();
    {
      std::lock_guard<std::mutex> lock(mu_);
      free_.push_back(&l);
    }
    freed_.notify_one();
  }
  static absl::Status Sync(const Lane& l) { return FromCuda(cudaStreamSynchronize(l.stream), "kv pool copy"); }

  // The gathered copies (staging -> pool), then a sync: the staging may be refilled after it.
  absl::Status IssueBatch(Lane& l) const {
    if (l.dsts.empty()) return absl::OkStatus();
    cudaMemcpyAttributes attr{};
    attr.srcAccessOrder = cudaMemcpySrcAccessOrderStream;
    size_t attr_index = 0;
    cudaError_t err =
        cudaMemcpyBatchAsync(l.dsts.data(), l.srcs.data(), l.sizes.data(), l.dsts.size(), &attr, &attr_index, 1, l.stream);
    if (err == cudaErrorNotSupported) {  // a driver without batched copies: one call each
      (void)cudaGetLastError();
      err = cudaSuccess;
      for (size_t i = 0; i < l.dsts.size() && err == cudaSuccess; ++i) {
        err = cudaMemcpyAsync(l.dsts[i], l.srcs[i], l.sizes[i], cudaMemcpyHostToDevice, l.stream);
      }
    }
    l.dsts.clear();
    l.srcs.clear();
    l.sizes.clear();
    SAGE_CUDA_RETURN_IF_ERROR(FromCuda(err, "kv pool write"));
    return Sync(l);
  }

  const int device_;
  std::byte* const base_;
  const size_t bytes_;
  std::vector<Lane> lanes_;  // fixed after Init
  mutable std::mutex mu_;
  mutable std::condition_variable freed_;
  mutable std::vector<Lane*> free_;  // guarded by mu_
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
  auto memory = std::make_unique<DeviceKvMemory>(device, static_cast<std::byte*>(base), bytes);
  if (absl::Status s = memory->Init(); !s.ok()) return s;  // the destructor frees what Init made
  return std::unique_ptr<KvMemory>(std::move(memory));
}

}  // namespace sage::server
