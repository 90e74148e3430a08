// Which stream slot of a GPU executor a launch runs on. CPU-only (no CUDA headers), so the hand-off
// policy is unit-tested without a GPU (tests/server/slot_pool_test.cc).
//
// Slots are full-size (buffers for the largest launch the server accepts) or light (buffers for
// small launches only, cheap enough to have many). A launch that fits a light slot takes a free
// light one first, then a free full-size one; a larger launch takes full-size slots only. Callers
// that find nothing free queue, and a released slot goes straight to the oldest waiter that can use
// it (one wake-up per slot, no overtaking: a shared condition variable woke every waiter on each
// release and let late callers jump the queue, which showed as p99 spikes).
#pragma once

#include <deque>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"

namespace sage::server {

enum class SlotSize { kFull, kLight };

// What a launch can run on.
enum class SlotFit { kFullOnly, kLightOrFull };

class SlotPool {
 public:
  // Slots are numbered 0..size()-1 in the order of `sizes`.
  explicit SlotPool(std::vector<SlotSize> sizes);

  // Blocks until a slot that fits is free; returns its index. Thread-safe.
  int Acquire(SlotFit fit);
  // Returns slot `index` (from Acquire), to the oldest waiter that can use it or to the free list.
  void Release(int index);

  int size() const { return static_cast<int>(sizes_.size()); }
  SlotSize size_of(int index) const { return sizes_[static_cast<size_t>(index)]; }
  int waiting() const;  // callers blocked in Acquire, for tests

 private:
  struct Waiter {
    SlotFit fit;
    absl::CondVar ready;
    int slot = -1;  // set (under mu_) by the releasing thread
  };

  const std::vector<SlotSize> sizes_;
  mutable absl::Mutex mu_;
  std::vector<int> free_full_ ABSL_GUARDED_BY(mu_);
  std::vector<int> free_light_ ABSL_GUARDED_BY(mu_);
  std::deque<Waiter*> waiters_ ABSL_GUARDED_BY(mu_);  // oldest first
};

}  // namespace sage::server
