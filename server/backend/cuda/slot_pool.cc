#include "server/backend/cuda/slot_pool.h"

#include <algorithm>
#include <utility>

namespace sage::server {

SlotPool::SlotPool(std::vector<SlotSize> sizes) : sizes_(std::move(sizes)) {
  absl::MutexLock lock(&mu_);
  // Popped from the back: slot 0 (and the lowest light index) goes first.
  for (int i = size() - 1; i >= 0; --i) {
    (sizes_[static_cast<size_t>(i)] == SlotSize::kFull ? free_full_ : free_light_).push_back(i);
  }
}

int SlotPool::Acquire(SlotFit fit) {
  absl::MutexLock lock(&mu_);
  // A free light slot while others wait means every waiter needs a full-size one (Release hands
  // slots to eligible waiters first), so a small launch may take it. A free full-size slot means
  // nobody waits at all.
  if (fit == SlotFit::kLightOrFull && !free_light_.empty()) {
    const int s = free_light_.back();
    free_light_.pop_back();
    return s;
  }
  if (!free_full_.empty() && waiters_.empty()) {
    const int s = free_full_.back();
    free_full_.pop_back();
    return s;
  }
  Waiter me{fit};
  waiters_.push_back(&me);
  while (me.slot < 0) me.ready.Wait(&mu_);
  return me.slot;
}

void SlotPool::Release(int index) {
  absl::MutexLock lock(&mu_);
  const bool light = sizes_[static_cast<size_t>(index)] == SlotSize::kLight;
  auto it = waiters_.begin();
  if (light) {
    it = std::find_if(waiters_.begin(), waiters_.end(),
                      [](const Waiter* w) { return w->fit == SlotFit::kLightOrFull; });
  }
  if (it == waiters_.end()) {
    (light ? free_light_ : free_full_).push_back(index);
    return;
  }
  Waiter* next = *it;
  waiters_.erase(it);
  next->slot = index;
  next->ready.Signal();
}

int SlotPool::waiting() const {
  absl::MutexLock lock(&mu_);
  return static_cast<int>(waiters_.size());
}

}  // namespace sage::server
