#include "server/backend/cuda/device_kv_memory.h"

#include <cuda_runtime.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstring>
#include <mutex>
#include <span>
#include <vector>

#include "absl/strings/str_cat.h"
#include "kernels/include/sageattn.h"
#include "server/backend/cuda/cuda_status.h"

namespace sage::server {
namespace {

constexpr size_t kStagingBytes = size_t{4} << 20;  // per lane: a 256-token page run of 8-bit K/V at 32 heads fits
constexpr int kLanes = 8;  // synchronous transfers in flight at once (session worker threads append in parallel)
// The asynchronous path: a write of at most kSlotDataBytes in all (64 decode steps of 8-bit K/V at
// 8 heads x 128 take ~140 KiB) goes through one of kSlots pinned slots, the bytes first and the
// copy table (sage_copy_segments reads both from pinned memory) at the slot's end.
constexpr size_t kSlotBytes = size_t{512} << 10;
constexpr size_t kSlotTableBytes = size_t{16} << 10;
constexpr size_t kSlotDataBytes = kSlotBytes - kSlotTableBytes;
constexpr size_t kSlotMaxSegments = kSlotTableBytes / sizeof(sage_copy_segment_t);
constexpr int kSlots = 32;

// One synchronous transfer path: a stream, pinned staging and the batch being gathered. Used by
// one call at a time.
struct Lane {
  cudaStream_t stream = nullptr;
  std::byte* staging = nullptr;
};

// A batch of host-to-pool copies being gathered into pinned memory.
struct CopyBatch {
  std::vector<void*> dsts;
  std::vector<const void*> srcs;
  std::vector<size_t> sizes;
  void Add(void* dst, const void* src, size_t bytes) {
    dsts.push_back(dst);
    srcs.push_back(src);
    sizes.push_back(bytes);
  }
  void Clear() {
    dsts.clear();
    srcs.clear();
    sizes.clear();
  }
  // The copies on `stream`: one driver call where the driver has batched copies.
  cudaError_t Issue(cudaStream_t stream) {
    if (dsts.empty()) return cudaSuccess;
    cudaMemcpyAttributes attr{};
    attr.srcAccessOrder = cudaMemcpySrcAccessOrderStream;
    size_t attr_index = 0;
    cudaError_t err = cudaMemcpyBatchAsync(dsts.data(), srcs.data(), sizes.data(), dsts.size(), &attr, &attr_index, 1, stream);
    if (err == cudaErrorNotSupported) {  // a driver without batched copies: one call each
      (void)cudaGetLastError();
      err = cudaSuccess;
      for (size_t i = 0; i < dsts.size() && err == cudaSuccess; ++i) {
        err = cudaMemcpyAsync(dsts[i], srcs[i], sizes[i], cudaMemcpyHostToDevice, stream);
      }
    }
    Clear();
    return err;
  }
};

size_t TotalBytes(std::span<const KvWrite> writes) {
  size_t n = 0;
  for (const KvWrite& w : writes) n += (w.bytes + 15) / 16 * 16;
  return n;
}

class DeviceKvMemory final : public KvMemory {
 public:
  DeviceKvMemory(int device, std::byte* base, size_t bytes) : device_(device), base_(base), bytes_(bytes) {}
  ~DeviceKvMemory() override {
    if (cudaSetDevice(device_) != cudaSuccess) return;
    if (write_stream_ != nullptr) {
      (void)cudaStreamSynchronize(write_stream_);
      (void)cudaStreamDestroy(write_stream_);
    }
    for (cudaEvent_t e : slot_done_) {
      if (e != nullptr) (void)cudaEventDestroy(e);
    }
    if (slots_ != nullptr) (void)cudaFreeHost(slots_);
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
    SAGE_CUDA_RETURN_IF_ERROR(FromCuda(cudaStreamCreateWithFlags(&write_stream_, cudaStreamNonBlocking), "cudaStreamCreate"));
    void* slots = nullptr;
    SAGE_CUDA_RETURN_IF_ERROR(FromCuda(cudaHostAlloc(&slots, kSlotBytes * kSlots, cudaHostAllocPortable), "cudaHostAlloc(kv slots)"));
    slots_ = static_cast<std::byte*>(slots);
    slot_done_.assign(kSlots, nullptr);
    for (cudaEvent_t& e : slot_done_) {
      SAGE_CUDA_RETURN_IF_ERROR(FromCuda(cudaEventCreateWithFlags(&e, cudaEventDisableTiming), "cudaEventCreate"));
    }
    return absl::OkStatus();
  }

  std::byte* base() const override { return base_; }
  size_t bytes() const override { return bytes_; }
  MemoryKind memory() const override { return MemoryKind::kDevice; }
  int device() const override { return device_; }

  absl::Status Write(std::span<const KvWrite> writes) override {
    for (const KvWrite& w : writes) {
      if (w.offset > bytes_ || w.bytes > bytes_ - w.offset) return absl::InternalError("kv pool: write past the pool");
    }
    if (TotalBytes(writes) <= kSlotDataBytes && writes.size() <= kSlotMaxSegments) return WriteSmall(writes);
    LaneHold hold(*this);
    Lane& l = hold.lane;
    SAGE_CUDA_RETURN_IF_ERROR(FromCuda(cudaSetDevice(device_), "cudaSetDevice"));
    SAGE_CUDA_RETURN_IF_ERROR(OrderAfterWrites(l.stream));  // a rewrite after a truncate lands after an older append
    // Packed into the lane's staging and issued as one batch per staging-full.
    CopyBatch batch;
    size_t used = 0;
    for (const KvWrite& w : writes) {
      if (w.bytes > kStagingBytes) {  // larger than the staging: the driver stages it
        SAGE_CUDA_RETURN_IF_ERROR(IssueAndSync(batch, l));
        used = 0;
        SAGE_CUDA_RETURN_IF_ERROR(
            FromCuda(cudaMemcpyAsync(base_ + w.offset, w.src, w.bytes, cudaMemcpyHostToDevice, l.stream), "kv pool write"));
        SAGE_CUDA_RETURN_IF_ERROR(Sync(l));
        continue;
      }
      if (used + w.bytes > kStagingBytes) {
        SAGE_CUDA_RETURN_IF_ERROR(IssueAndSync(batch, l));
        used = 0;
      }
      std::memcpy(l.staging + used, w.src, w.bytes);
      batch.Add(base_ + w.offset, l.staging + used, w.bytes);
      used += (w.bytes + 15) / 16 * 16;
    }
    return IssueAndSync(batch, l);
  }

  // In runs that fit a slot: the centred K, V and the two tables packed into it, one
  // sage_kv_quantize launch reading them from pinned memory (see OnFreeStream).
  absl::Status WriteQuantized(const KvPageLayout& layout, std::span<const KvQuantizeToken> tokens) override {
    const size_t row = static_cast<size_t>(layout.heads) * layout.head_dim;
    for (const KvQuantizeToken& t : tokens) {
      if (t.page_offset > bytes_ || layout.page_bytes() > bytes_ - t.page_offset || t.slot < 0 || t.slot >= layout.page_tokens) {
        return absl::InternalError("kv pool: quantized write past its page");
      }
    }
    const size_t per_token = row * (sizeof(float) + 2) + sizeof(uint64_t) + sizeof(int32_t);
    const size_t per_run = std::max<size_t>(1, (kSlotBytes - 64) / per_token);
    for (size_t first = 0; first < tokens.size(); first += per_run) {
      const std::span<const KvQuantizeToken> run = tokens.subspan(first, std::min(per_run, tokens.size() - first));
      SAGE_CUDA_RETURN_IF_ERROR(OnFreeStream([&](std::byte* staging, cudaStream_t stream) {
        return IssueQuantize(layout, run, staging, stream);
      }));
    }
    return absl::OkStatus();
  }

  // Without the write lock (every launch calls it): the tail slot's event may be re-recorded
  // meanwhile, but only for a later write on the same stream, which is as good to wait for.
  absl::Status OrderAfterWrites(void* stream) const override {
    const int last = last_slot_.load(std::memory_order_acquire);
    if (last < 0) return absl::OkStatus();
    return FromCuda(cudaStreamWaitEvent(static_cast<cudaStream_t>(stream), slot_done_[static_cast<size_t>(last)], 0),
                    "order after kv pool writes");
  }

  absl::Status Read(size_t offset, void* dst, size_t bytes) const override {
    LaneHold hold(*this);
    Lane& l = hold.lane;
    SAGE_CUDA_RETURN_IF_ERROR(FromCuda(cudaSetDevice(device_), "cudaSetDevice"));
    SAGE_CUDA_RETURN_IF_ERROR(OrderAfterWrites(l.stream));
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
    SAGE_CUDA_RETURN_IF_ERROR(OrderAfterWrites(hold.lane.stream));
    SAGE_CUDA_RETURN_IF_ERROR(FromCuda(
        cudaMemcpyAsync(base_ + dst_offset, base_ + src_offset, bytes, cudaMemcpyDeviceToDevice, hold.lane.stream),
        "kv page copy"));
    return Sync(hold.lane);
  }

 private:
  // A small write: its pieces packed with their copy table, one sage_copy_segments launch (a decode
  // step's pieces are a few KiB each, 2-4 per session: one kernel instead of a DMA per piece).
  absl::Status WriteSmall(std::span<const KvWrite> writes) {
    if (writes.empty()) return absl::OkStatus();
    return OnFreeStream([&](std::byte* staging, cudaStream_t stream) { return IssueSegments(writes, staging, stream); });
  }

  // Runs `issue(staging, stream)`, which packs its inputs into `staging` (at least kSlotBytes of
  // pinned memory) and queues GPU work reading them, where it costs the caller least: on the write
  // stream when no one else is writing (the next slot; nobody waits for the work, the launches
  // that read the pages order themselves after it), else on a lane, synchronized before returning,
  // so concurrent writers (256 clients' session workers) do not queue on one lock and one stream.
  template <typename Issue>
  absl::Status OnFreeStream(const Issue& issue) {
    std::unique_lock<std::mutex> lock(write_mu_, std::try_to_lock);
    if (lock.owns_lock()) {
      absl::StatusOr<std::byte*> slot = NextSlotLocked();
      if (!slot.ok()) return slot.status();
      SAGE_CUDA_RETURN_IF_ERROR(issue(*slot, write_stream_));
      return SlotIssuedLocked();
    }
    LaneHold hold(*this);
    SAGE_CUDA_RETURN_IF_ERROR(FromCuda(cudaSetDevice(device_), "cudaSetDevice"));
    SAGE_CUDA_RETURN_IF_ERROR(OrderAfterWrites(hold.lane.stream));  // a rewrite after a truncate lands last
    SAGE_CUDA_RETURN_IF_ERROR(issue(hold.lane.staging, hold.lane.stream));
    return Sync(hold.lane);
  }

  absl::Status IssueSegments(std::span<const KvWrite> writes, std::byte* staging, cudaStream_t stream) const {
    auto* const table = reinterpret_cast<sage_copy_segment_t*>(staging + kSlotDataBytes);
    size_t used = 0;
    uint64_t largest = 0;
    for (size_t i = 0; i < writes.size(); ++i) {
      const KvWrite& w = writes[i];
      std::memcpy(staging + used, w.src, w.bytes);
      table[i] = sage_copy_segment_t{staging + used, base_ + w.offset, w.bytes};
      largest = std::max<uint64_t>(largest, w.bytes);
      used += (w.bytes + 15) / 16 * 16;
    }
    return FromSage(
        sage_copy_segments(table, static_cast<int>(writes.size()), largest, reinterpret_cast<sage_stream_t>(stream)),
        "kv pool write");
  }

  absl::Status IssueQuantize(const KvPageLayout& layout, std::span<const KvQuantizeToken> run, std::byte* staging,
                             cudaStream_t stream) const {
    const size_t row = static_cast<size_t>(layout.heads) * layout.head_dim;
    std::byte* at = staging;
    const auto take = [&at](size_t bytes) {
      std::byte* p = at;
      at += (bytes + 15) / 16 * 16;
      return p;
    };
    auto* k = reinterpret_cast<float*>(take(run.size() * row * sizeof(float)));
    auto* v = reinterpret_cast<uint16_t*>(take(run.size() * row * 2));
    auto* offsets = reinterpret_cast<uint64_t*>(take(run.size() * sizeof(uint64_t)));
    auto* slots = reinterpret_cast<int32_t*>(take(run.size() * sizeof(int32_t)));
    for (size_t i = 0; i < run.size(); ++i) {
      std::memcpy(k + i * row, run[i].k_centered, row * sizeof(float));
      std::memcpy(v + i * row, run[i].v, row * 2);
      offsets[i] = run[i].page_offset;
      slots[i] = run[i].slot;
    }
    sage_kv_quantize_params_t p{};
    p.dtype = layout.dtype == DType::kBF16 ? SAGE_DTYPE_BF16 : SAGE_DTYPE_F16;
    p.pages = base_;
    p.page_tokens = layout.page_tokens;
    p.num_kv_heads = layout.heads;
    p.head_dim = layout.head_dim;
    p.count = static_cast<int32_t>(run.size());
    p.page_offsets = offsets;
    p.slots = slots;
    p.k_centered = k;
    p.v = v;
    return FromSage(sage_kv_quantize(&p, reinterpret_cast<sage_stream_t>(stream)), "kv quantize");
  }

  // Under write_mu_: the next slot's staging, once the copy that last read it has run (32 writes
  // ago); SlotIssuedLocked after its work is on the write stream makes that work the tail.
  absl::StatusOr<std::byte*> NextSlotLocked() {
    SAGE_CUDA_RETURN_IF_ERROR(FromCuda(cudaSetDevice(device_), "cudaSetDevice"));
    SAGE_CUDA_RETURN_IF_ERROR(FromCuda(cudaEventSynchronize(slot_done_[next_slot_]), "kv pool write slot"));
    return slots_ + static_cast<size_t>(next_slot_) * kSlotBytes;
  }
  absl::Status SlotIssuedLocked() {
    SAGE_CUDA_RETURN_IF_ERROR(FromCuda(cudaEventRecord(slot_done_[next_slot_], write_stream_), "cudaEventRecord"));
    last_slot_.store(next_slot_, std::memory_order_release);
    next_slot_ = (next_slot_ + 1) % kSlots;
    return absl::OkStatus();
  }

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
    {
      std::lock_guard<std::mutex> lock(mu_);
      free_.push_back(&l);
    }
    freed_.notify_one();
  }
  static absl::Status Sync(const Lane& l) { return FromCuda(cudaStreamSynchronize(l.stream), "kv pool copy"); }
  // The gathered copies (staging -> pool), then a sync: the staging may be refilled after it.
  static absl::Status IssueAndSync(CopyBatch& batch, const Lane& l) {
    if (batch.dsts.empty()) return absl::OkStatus();
    SAGE_CUDA_RETURN_IF_ERROR(FromCuda(batch.Issue(l.stream), "kv pool write"));
    return Sync(l);
  }

  const int device_;
  std::byte* const base_;
  const size_t bytes_;
  std::vector<Lane> lanes_;  // fixed after Init
  mutable std::mutex mu_;
  mutable std::condition_variable freed_;
  mutable std::vector<Lane*> free_;  // guarded by mu_

  cudaStream_t write_stream_ = nullptr;
  std::byte* slots_ = nullptr;            // kSlots x kSlotBytes pinned
  std::vector<cudaEvent_t> slot_done_;    // per slot: its last copy ran
  std::mutex write_mu_;                   // guards what follows
  int next_slot_ = 0;
  std::atomic<int> last_slot_{-1};  // the tail: the slot of the last write issued (-1: none yet)
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
