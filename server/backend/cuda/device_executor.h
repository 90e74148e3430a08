// One GPU's executor: a fixed pool of stream slots, each with pinned host staging, device buffers
// and timing events allocated once at Create(): full-size slots for any launch the pool options
// allow, and light ones for small launches (slot_pool.h). Run() takes a free slot that fits
// (blocking while none is: callers are worker threads, never gRPC reactors), stages the inputs
// into pinned memory, then on the slot's stream: one H2D copy, quantize + attend, one D2H copy, and
// synchronizes that stream only. Concurrent Run() calls on different slots overlap their copies and
// kernels. Thread-safe.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "absl/status/statusor.h"
#include "kernels/include/sageattn.h"
#include "server/backend/engine_io.h"
#include "server/backend/backend.h"
#include "server/backend/cuda/cuda_backend.h"
#include "server/backend/cuda/slot_pool.h"

namespace sage::server {

struct TransferPlan;  // transfer_plan.h

struct ExecutorOptions {
  int device = 0;         // CUDA ordinal
  int streams = 4;        // full-size stream slots
  int light_streams = 0;  // light slots (CudaBackendOptions::light_streams_per_device)
  CudaPoolOptions pool;
  CudaSync sync = CudaSync::kAuto;
};

// How a paged launch (EngineInput::paged) reads the pages.
//   kDecode:          sage_paged_decode reads them in place (unquantized, <= 16 rows per sequence).
//   kGatherThenDense: sage_paged_gather decodes them into the slot's K/V buffers, then
//                     sage_attn_forward runs the request's recipe as for any request.
enum class PagedKernel { kDecode, kGatherThenDense };

// One paged launch as the backend plans it: the kernel and its params, all but the device
// pointers (q, o, lse, tables, k/v buffers, workspace), which the executor fills from the slot.
struct PagedLaunch {
  PagedKernel kernel = PagedKernel::kDecode;
  sage_paged_decode_params_t decode{};  // kDecode
  sage_paged_gather_params_t gather{};  // kGatherThenDense
  sage_attn_params_t dense{};           // kGatherThenDense
};

// What one launch needs from a slot; computed on the host before a slot is taken.
struct LaunchShape {
  int64_t q_elements = 0;
  int64_t kv_elements = 0;
  int sequences = 0;
  int64_t lse_elements = 0;  // 0 without LSE
  size_t workspace_bytes = 0;
};

class DeviceExecutor {
 public:
  static absl::StatusOr<std::unique_ptr<DeviceExecutor>> Create(const ExecutorOptions& options);
  ~DeviceExecutor();
  DeviceExecutor(const DeviceExecutor&) = delete;
  DeviceExecutor& operator=(const DeviceExecutor&) = delete;

  // RESOURCE_EXHAUSTED (naming the sizes and the CudaPoolOptions field to raise) when `shape` does
  // not fit a slot's buffers. CPU only.
  absl::Status CheckFits(const LaunchShape& shape) const;

  // Runs one validated launch. `in` describes it (shapes, cu_seqlens, LSE, output form); its q/k/v
  // bytes are those of `parts`, concatenated in order, gathered straight into pinned staging ({&in}
  // for a single problem; the members of a merged batch, whose `in` then has null data). `params` has
  // everything but the device pointers (q/k/v/o/lse, cu_seqlens) and workspace, which Run fills from
  // the slot (lse when in.lse asks for it); `dtype` is the 16-bit type the kernels read (inputs of
  // another type are converted while staging). O comes back as float, or as the kernel's 16-bit codes
  // in out.o_native when in.output.form allows. Fills out.device_timings.
  // `shape` is the launch's, as given to CheckFits: it decides whether a light slot may run it.
  absl::StatusOr<EngineOutput> Run(const LaunchShape& shape, const EngineInput& in,
                                 std::span<const EngineInput* const> parts, sage_attn_params_t params, DType dtype);

  // Runs one validated paged launch (in.paged in this device's memory; paged_launch.cc): Q, the
  // page tables and the lengths staged into pinned memory and copied up in one copy, the launch's
  // kernels (PagedLaunch), O (and LSE) copied back. `shape` carries the workspace size (and the
  // K/V elements a gather writes).
  absl::StatusOr<EngineOutput> RunPaged(const LaunchShape& shape, const EngineInput& in, PagedLaunch launch, DType dtype);

  // The device is unusable after a sticky CUDA error (illegal address, launch failure...).
  bool healthy() const { return healthy_.load(std::memory_order_relaxed); }
  int device() const { return device_; }
  int sm() const { return sm_; }
  const DeviceDescription& description() const { return description_; }
  // Counters; in_flight/queued_work are the dispatcher's and left 0 here.
  DeviceStats Stats() const;

 private:
  struct Slot;
  DeviceExecutor(int device, int sm, DeviceDescription description, const CudaPoolOptions& pool);
  // Buffer sizes of one slot: what it holds and what it was given.
  struct Capacity {
    int64_t max_elements = 0;
    int max_sequences = 0;
    size_t in_bytes = 0;  // input staging (host and device alike)
    size_t out_bytes = 0;  // output staging
    size_t ws_bytes = 0;   // kernel workspace
  };
  static absl::StatusOr<Capacity> CapacityFor(int64_t max_elements, int max_sequences, int64_t workspace_bytes);
  absl::Status AllocateSlots(int streams, int light_streams);
  bool FitsLight(const LaunchShape& shape) const;
  absl::StatusOr<EngineOutput> RunOnSlot(Slot& slot, const EngineInput& in, std::span<const EngineInput* const> parts,
                                       sage_attn_params_t& params, DType dtype);
  // RunOnSlot's device half: the planned copies, copy kernels and attention on the slot's stream,
  // then its sync; and the result read back once the stream is done.
  absl::Status Issue(Slot& slot, const TransferPlan& plan, const sage_attn_params_t& params);
  absl::StatusOr<EngineOutput> Collect(const Slot& slot, const TransferPlan& plan, const EngineInput& in, DType dtype);
  absl::StatusOr<EngineOutput> RunPagedOnSlot(Slot& slot, const LaunchShape& shape, const EngineInput& in,
                                              PagedLaunch& launch, DType dtype);
  // Run's bookkeeping around a slot: taken (light when `shape` fits one), released, the device
  // marked unhealthy after a sticky error, the counters.
  template <typename Fn>
  absl::StatusOr<EngineOutput> OnSlot(const LaunchShape& shape, int64_t tokens, Fn&& run);

  const int device_;
  const int sm_;
  const DeviceDescription description_;
  const CudaPoolOptions pool_;
  Capacity full_;   // of the full-size slots
  Capacity light_;  // of the light ones
  std::vector<std::unique_ptr<Slot>> slots_;  // full-size first, then light
  std::unique_ptr<SlotPool> pool_of_slots_;

  std::atomic<bool> healthy_{true};
  std::atomic<int64_t> batches_{0};
  std::atomic<int64_t> failed_batches_{0};
  std::atomic<int64_t> tokens_{0};
  int64_t pool_bytes_ = 0;
  int64_t pinned_bytes_ = 0;
};

}  // namespace sage::server
