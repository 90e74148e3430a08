// A DeviceExecutor's stream slot (its definition, shared by the executor's translation units:
// device_executor.cc for dense launches, paged_launch.cc for paged ones), and the stage timings
// read from a slot's events.
#pragma once

#include <cuda_runtime.h>

#include "absl/status/statusor.h"
#include "server/backend/cuda/device_executor.h"
#include "server/backend/cuda/slot_pool.h"
#include "server/backend/cuda/transfer_plan.h"

namespace sage::server {

// One stream with its staging and events. Owned by the executor, used by one Run() at a time.
struct DeviceExecutor::Slot {
  int index = 0;
  int device = 0;
  Capacity cap;
  cudaStream_t stream = nullptr;
  // start, after H2D, after kernels, after D2H; the H2D and D2H ones only when that stage has work
  cudaEvent_t ev[4] = {nullptr, nullptr, nullptr, nullptr};
  unsigned char* host_in = nullptr;   // pinned
  unsigned char* host_out = nullptr;  // pinned
  unsigned char* dev_in = nullptr;
  unsigned char* dev_out = nullptr;
  void* dev_ws = nullptr;
  TransferPlan plan;  // the last launch's, handed back to PlanTransfers: its vectors keep their capacity

  ~Slot() {
    if (cudaSetDevice(device) != cudaSuccess) return;
    if (stream) (void)cudaStreamSynchronize(stream);
    for (cudaEvent_t e : ev) {
      if (e) (void)cudaEventDestroy(e);
    }
    if (stream) (void)cudaStreamDestroy(stream);
    if (host_in) (void)cudaFreeHost(host_in);
    if (host_out) (void)cudaFreeHost(host_out);
    if (dev_in) (void)cudaFree(dev_in);
    if (dev_out) (void)cudaFree(dev_out);
    if (dev_ws) (void)cudaFree(dev_ws);
  }
};


// Errors after which the CUDA context is unusable: the device is taken out of rotation.
bool IsStickyCudaError(cudaError_t err);

template <typename Fn>
absl::StatusOr<EngineOutput> DeviceExecutor::OnSlot(const LaunchShape& shape, int64_t tokens, Fn&& run) {
  // Without light slots a small launch simply gets a full-size one.
  const int index = pool_of_slots_->Acquire(FitsLight(shape) ? SlotFit::kLightOrFull : SlotFit::kFullOnly);
  Slot* slot = slots_[static_cast<size_t>(index)].get();
  absl::StatusOr<EngineOutput> out = run(*slot);
  if (!out.ok()) {
    // Whatever was enqueued must finish before the slot's buffers are reused.
    const cudaError_t drained = cudaStreamSynchronize(slot->stream);
    if (IsStickyCudaError(drained) || IsStickyCudaError(cudaGetLastError())) {
      healthy_.store(false, std::memory_order_relaxed);
    }
    failed_batches_.fetch_add(1, std::memory_order_relaxed);
  } else {
    tokens_.fetch_add(tokens, std::memory_order_relaxed);
  }
  batches_.fetch_add(1, std::memory_order_relaxed);
  pool_of_slots_->Release(index);
  return out;
}

// O (the kernel's 16-bit codes at `o`, `elements` of them) into `out` as `form` allows: the codes as
// they are, or decoded to float; then `lse_elements` floats of LSE from `lse` (0: none).
void ReadBackOutput(const unsigned char* o, size_t elements, DType dtype, OutputForm form, const unsigned char* lse,
                    size_t lse_elements, EngineOutput& out);

// Stage times from a slot's events; stages that did not happen are 0.
absl::StatusOr<DeviceTimings> StageTimings(const cudaEvent_t (&ev)[4], bool has_h2d, bool has_d2h);

}  // namespace sage::server
