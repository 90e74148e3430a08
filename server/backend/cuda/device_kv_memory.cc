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
#include "server/backend/cuda/sage_enums.h"

namespace sage::server {
namespace {

constexpr size_t kStagingBytes = size_t{4} << 20;  // per lane: a 256-token page run of 8-bit K/V at 32 heads fits
constexpr int kLanes = 8;  // synchronous transfers in flight at once (session worker threads append in parallel)
// The asynchronous path: a write of at most kSlotDataBytes from the host in all (64 decode steps of
// 8-bit K/V at 8 heads x 128 take ~140 KiB) goes through one of kSlots pinned slots, the bytes
// first and the copy table (sage_copy_segments reads both from pinned memory) at the slot's end.
// A quantized write of 64 decode steps at 8 x 128 (their K and V rows, K means and tables) takes
// ~520 KiB of a slot.
constexpr size_t kSlotBytes = size_t{1} << 20;
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

// Pieces packed into pinned memory start 16-byte aligned (the copy and quantize kernels' vectors).
constexpr size_t Align16(size_t bytes) { return (bytes + 15) / 16 * 16; }

// Bytes the host packs for `writes` (those from device memory are copied by the GPU in place).
size_t HostBytes(std::span<const KvWrite> writes) {
  size_t n = 0;
  for (const KvWrite& w : writes) n += w.src_memory == MemoryKind::kDevice ? 0 : Align16(w.bytes);
  return n;
}

// 16-byte aligned pieces of a pinned slot, in order.
struct SlotCursor {
  std::byte* at;
  template <typename T>
  T* Take(size_t count) {
    T* p = reinterpret_cast<T*>(at);
    at += Align16(count * sizeof(T));
    return p;
  }
};

// A quantized write's share of a slot for token i of a run starting at `first`: its tables, its K
// and V rows when they are on the host, and its K mean unless the token before has the same one.
constexpr size_t kRunSlack = 256;  // the tables' alignment
size_t TokenWriteBytes(std::span<const KvTokenWrite> tokens, size_t i, size_t first, size_t row) {
  size_t n = sizeof(uint64_t) + sizeof(int32_t) + 3 * sizeof(void*);
  if (tokens[i].kv_memory != MemoryKind::kDevice) n += 2 * Align16(row * 2);
  if (tokens[i].k_mean != nullptr && (i == first || tokens[i].k_mean != tokens[i - 1].k_mean)) n += Align16(row * sizeof(float));
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
    if (HostBytes(writes) <= kSlotDataBytes && writes.size() <= kSlotMaxSegments) return WriteSmall(writes);
    LaneHold hold(*this);
    Lane& l = hold.lane;
    SAGE_CUDA_RETURN_IF_ERROR(hold.Ready());
    // Packed into the lane's staging and issued as one batch per staging-full.
    CopyBatch batch;
    size_t used = 0;
    for (const KvWrite& w : writes) {
      if (w.src_memory == MemoryKind::kDevice) {  // on the GPU already: copied in place
        SAGE_CUDA_RETURN_IF_ERROR(FromCuda(
            cudaMemcpyAsync(base_ + w.offset, w.src, w.bytes, cudaMemcpyDeviceToDevice, l.stream), "kv pool write"));
        continue;
      }
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
      used += Align16(w.bytes);
    }
    return IssueAndSync(batch, l);
  }

  // In runs that fit a slot: the tables, the K and V rows that are on the host and the K means
  // packed into it, one sage_kv_quantize launch (rows form) reading them from pinned memory and
  // the rows on the GPU in place (see OnFreeStream).
  absl::Status WriteTokens(const KvPageLayout& layout, std::span<const KvTokenWrite> tokens) override {
    const size_t row = static_cast<size_t>(layout.heads) * layout.head_dim;
    for (const KvTokenWrite& t : tokens) {
      if (t.page_offset > bytes_ || layout.page_bytes() > bytes_ - t.page_offset || t.slot < 0 || t.slot >= layout.page_tokens) {
        return absl::InternalError("kv pool: quantized write past its page");
      }
    }
    for (size_t first = 0; first < tokens.size();) {
      // The run [first, end): every token that fits the slot after the first, which always goes.
      size_t end = first + 1, used = kRunSlack + TokenWriteBytes(tokens, first, first, row);
      for (; end < tokens.size(); ++end) {
        const size_t need = TokenWriteBytes(tokens, end, first, row);
        if (used + need > kSlotBytes) break;
        used += need;
      }
      const std::span<const KvTokenWrite> run = tokens.subspan(first, end - first);
      SAGE_CUDA_RETURN_IF_ERROR(OnFreeStream([&](std::byte* staging, cudaStream_t stream) {
        return IssueEncode(layout, run, staging, stream);
      }));
      first = end;
    }
    return absl::OkStatus();
  }

  absl::Status WaitForWrites() const override {
    const int last = last_slot_.load(std::memory_order_acquire);
    if (last < 0) return absl::OkStatus();
    SAGE_CUDA_RETURN_IF_ERROR(FromCuda(cudaSetDevice(device_), "cudaSetDevice"));
    return FromCuda(cudaEventSynchronize(slot_done_[static_cast<size_t>(last)]), "kv pool writes");
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
    SAGE_CUDA_RETURN_IF_ERROR(hold.Ready());
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
    SAGE_CUDA_RETURN_IF_ERROR(hold.Ready());
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
    SAGE_CUDA_RETURN_IF_ERROR(hold.Ready());
    SAGE_CUDA_RETURN_IF_ERROR(issue(hold.lane.staging, hold.lane.stream));
    return Sync(hold.lane);
  }

  absl::Status IssueSegments(std::span<const KvWrite> writes, std::byte* staging, cudaStream_t stream) const {
    auto* const table = reinterpret_cast<sage_copy_segment_t*>(staging + kSlotDataBytes);
    size_t used = 0;
    uint64_t largest = 0;
    for (size_t i = 0; i < writes.size(); ++i) {
      const KvWrite& w = writes[i];
      const void* src = w.src;  // device memory is read in place
      if (w.src_memory != MemoryKind::kDevice) {
        std::memcpy(staging + used, w.src, w.bytes);
        src = staging + used;
        used += Align16(w.bytes);
      }
      table[i] = sage_copy_segment_t{src, base_ + w.offset, w.bytes};
      largest = std::max<uint64_t>(largest, w.bytes);
    }
    return FromSage(
        sage_copy_segments(table, static_cast<int>(writes.size()), largest, reinterpret_cast<sage_stream_t>(stream)),
        "kv pool write");
  }

  absl::Status IssueEncode(const KvPageLayout& layout, std::span<const KvTokenWrite> run, std::byte* staging,
                             cudaStream_t stream) const {
    const size_t row = static_cast<size_t>(layout.heads) * layout.head_dim;
    SlotCursor slot{staging};
    auto* const offsets = slot.Take<uint64_t>(run.size());
    auto* const slots = slot.Take<int32_t>(run.size());
    auto* const k_rows = slot.Take<const void*>(run.size());
    auto* const v_rows = slot.Take<const void*>(run.size());
    auto* const k_means = slot.Take<const float*>(run.size());
    const float* mean_src = nullptr;
    const float* mean_copy = nullptr;
    for (size_t i = 0; i < run.size(); ++i) {
      const KvTokenWrite& t = run[i];
      offsets[i] = t.page_offset;
      slots[i] = t.slot;
      k_rows[i] = t.k;
      v_rows[i] = t.v;
      if (t.kv_memory != MemoryKind::kDevice) {  // host rows: into the slot
        for (auto [from, to] : {std::pair{t.k, &k_rows[i]}, {t.v, &v_rows[i]}}) {
          uint16_t* copy = slot.Take<uint16_t>(row);
          std::memcpy(copy, from, row * 2);
          *to = copy;
        }
      }
      if (t.k_mean != mean_src && t.k_mean != nullptr) {  // one copy per run of tokens sharing a session's mean
        float* copy = slot.Take<float>(row);
        std::memcpy(copy, t.k_mean, row * sizeof(float));
        mean_src = t.k_mean;
        mean_copy = copy;
      }
      k_means[i] = mean_copy;
    }
    sage_kv_quantize_params_t p{};
    p.storage = SageKvStorage(layout.storage);
    p.dtype = SageDtype(layout.dtype);
    p.pages = base_;
    p.page_tokens = layout.page_tokens;
    p.num_kv_heads = layout.heads;
    p.head_dim = layout.head_dim;
    p.count = static_cast<int32_t>(run.size());
    p.page_offsets = offsets;
    p.slots = slots;
    p.k_rows = k_rows;
    p.v_rows = v_rows;
    p.k_means = k_means;
    p.layout = SageKvLayout(layout.rows);
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
    // The pool's device current, and the lane's next work after every write issued so far (a
    // rewrite after a truncate lands after an older append).
    absl::Status Ready() const {
      SAGE_CUDA_RETURN_IF_ERROR(FromCuda(cudaSetDevice(memory.device_), "cudaSetDevice"));
      return memory.OrderAfterWrites(lane.stream);
    }
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
