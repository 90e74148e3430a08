// Which GPU executor a batch goes to: the least-loaded healthy one. CPU-only (no CUDA headers), so
// the policy is unit-tested without a GPU (tests/server/device_selector_test.cc) for any number of
// devices.
//
// Load = the work (Σ q_len·k_len) of the batches a device holds or waits for a stream slot on; ties
// go to the device with fewer batches in flight, and remaining ties rotate (round robin from the
// device after the last pick), so equal devices share equal traffic. A device marked failed is
// skipped until it is marked healthy again.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"

namespace sage::server {

enum class DeviceHealth { kHealthy, kFailed };

struct DeviceLoad {
  int64_t work = 0;       // Σ q_len·k_len of batches queued or running on the device
  int64_t in_flight = 0;  // batches queued or running on the device
  DeviceHealth health = DeviceHealth::kHealthy;
};

// The policy alone: index of the least-loaded healthy entry (work, then in_flight), ties broken by
// the first index at or after `rotation` (mod size). -1 when no entry is healthy.
int PickLeastLoaded(std::span<const DeviceLoad> loads, int rotation);

// The policy with its bookkeeping, thread-safe: Acquire picks a device and charges the work to it
// in one step (so concurrent callers see each other's picks); Release gives it back when the batch
// is done.
class DeviceSelector {
 public:
  explicit DeviceSelector(int num_devices);

  int size() const { return static_cast<int>(size_); }

  // The chosen device index (0..size-1), its load already raised by `work`. UNAVAILABLE when every
  // device is marked failed.
  absl::StatusOr<int> Acquire(int64_t work);
  // The same for a batch that must run on `device` (its tensors are in that GPU's memory).
  // UNAVAILABLE when that device is marked failed.
  absl::StatusOr<int> AcquireOn(int device, int64_t work);
  void Release(int device, int64_t work);

  void SetHealth(int device, DeviceHealth health);
  std::vector<DeviceLoad> Snapshot() const;

 private:
  const size_t size_;
  mutable absl::Mutex mu_;
  std::vector<DeviceLoad> loads_ ABSL_GUARDED_BY(mu_);
  int rotation_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace sage::server
