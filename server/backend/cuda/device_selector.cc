#include "server/backend/cuda/device_selector.h"

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace sage::server {

int PickLeastLoaded(std::span<const DeviceLoad> loads, int rotation) {
  const int n = static_cast<int>(loads.size());
  if (n == 0) return -1;
  const int start = ((rotation % n) + n) % n;
  int best = -1;
  for (int step = 0; step < n; ++step) {
    const int i = (start + step) % n;
    const DeviceLoad& l = loads[static_cast<size_t>(i)];
    if (l.health != DeviceHealth::kHealthy) continue;
    if (best < 0) {
      best = i;
      continue;
    }
    const DeviceLoad& b = loads[static_cast<size_t>(best)];
    // Strictly better only: an equal load keeps the earlier index in rotation order.
    if (l.work < b.work || (l.work == b.work && l.in_flight < b.in_flight)) best = i;
  }
  return best;
}

DeviceSelector::DeviceSelector(int num_devices)
    : size_(num_devices > 0 ? static_cast<size_t>(num_devices) : 0), loads_(size_) {}

absl::StatusOr<int> DeviceSelector::Acquire(int64_t work) {
  absl::MutexLock lock(&mu_);
  const int pick = PickLeastLoaded(loads_, rotation_);
  if (pick < 0) {
    return absl::UnavailableError(
        absl::StrCat("cuda backend: no healthy GPU executor (", size_, " configured, all failed)"));
  }
  DeviceLoad& l = loads_[static_cast<size_t>(pick)];
  l.work += work;
  l.in_flight += 1;
  rotation_ = (pick + 1) % static_cast<int>(size_);
  return pick;
}

absl::StatusOr<int> DeviceSelector::AcquireOn(int device, int64_t work) {
  if (device < 0 || static_cast<size_t>(device) >= size_) {
    return absl::InvalidArgumentError(absl::StrCat("cuda backend: executor index ", device, " out of range (", size_,
                                                   " configured)"));
  }
  absl::MutexLock lock(&mu_);
  DeviceLoad& l = loads_[static_cast<size_t>(device)];
  if (l.health != DeviceHealth::kHealthy) {
    return absl::UnavailableError(
        absl::StrCat("cuda backend: the batch's tensors are on GPU executor ", device, ", which has failed"));
  }
  l.work += work;
  l.in_flight += 1;
  return device;
}

void DeviceSelector::Release(int device, int64_t work) {
  if (device < 0 || static_cast<size_t>(device) >= size_) return;
  absl::MutexLock lock(&mu_);
  DeviceLoad& l = loads_[static_cast<size_t>(device)];
  l.work -= work;
  l.in_flight -= 1;
}

void DeviceSelector::SetHealth(int device, DeviceHealth health) {
  if (device < 0 || static_cast<size_t>(device) >= size_) return;
  absl::MutexLock lock(&mu_);
  loads_[static_cast<size_t>(device)].health = health;
}

std::vector<DeviceLoad> DeviceSelector::Snapshot() const {
  absl::MutexLock lock(&mu_);
  return loads_;
}

}  // namespace sage::server
