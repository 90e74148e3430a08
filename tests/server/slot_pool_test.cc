// The stream-slot hand-off policy of the CUDA executor (server/backend/cuda/slot_pool.h), without a
// GPU: small launches take light slots first, large ones never get a light slot, and a released slot
// goes to the oldest waiter that can use it.
#include "server/backend/cuda/slot_pool.h"

#include <atomic>
#include <chrono>
#include <mutex>
#include <thread>
#include <vector>

#include "gtest/gtest.h"

namespace sage::server {
namespace {

using std::chrono::milliseconds;

// Waits (bounded) until `pool` has `n` blocked callers.
bool WaitForWaiters(const SlotPool& pool, int n) {
  for (int i = 0; i < 2000; ++i) {
    if (pool.waiting() == n) return true;
    std::this_thread::sleep_for(milliseconds(1));
  }
  return false;
}

TEST(SlotPool, SmallLaunchesTakeLightSlotsBeforeFullSizeOnes) {
  SlotPool pool({SlotSize::kFull, SlotSize::kLight, SlotSize::kLight});
  EXPECT_EQ(pool.Acquire(SlotFit::kLightOrFull), 1);
  EXPECT_EQ(pool.Acquire(SlotFit::kLightOrFull), 2);
  EXPECT_EQ(pool.Acquire(SlotFit::kLightOrFull), 0);  // the light ones are taken: the full-size one
  pool.Release(2);
  EXPECT_EQ(pool.Acquire(SlotFit::kLightOrFull), 2);
}

TEST(SlotPool, LargeLaunchesNeverGetALightSlot) {
  SlotPool pool({SlotSize::kFull, SlotSize::kLight});
  ASSERT_EQ(pool.Acquire(SlotFit::kFullOnly), 0);
  std::atomic<int> got{-1};
  std::thread large([&] { got = pool.Acquire(SlotFit::kFullOnly); });
  ASSERT_TRUE(WaitForWaiters(pool, 1));
  // The light slot is free and a large launch waits: a small one may still take the light slot.
  EXPECT_EQ(pool.Acquire(SlotFit::kLightOrFull), 1);
  EXPECT_EQ(got.load(), -1);
  pool.Release(1);  // a light slot does not wake the large launch
  std::this_thread::sleep_for(milliseconds(20));
  EXPECT_EQ(got.load(), -1);
  EXPECT_EQ(pool.waiting(), 1);
  pool.Release(0);
  large.join();
  EXPECT_EQ(got.load(), 0);
}

TEST(SlotPool, AReleasedLightSlotGoesToTheOldestWaiterThatFits) {
  SlotPool pool({SlotSize::kFull, SlotSize::kLight});
  ASSERT_EQ(pool.Acquire(SlotFit::kFullOnly), 0);
  ASSERT_EQ(pool.Acquire(SlotFit::kLightOrFull), 1);
  std::atomic<int> large_got{-1}, small_got{-1};
  std::thread large([&] { large_got = pool.Acquire(SlotFit::kFullOnly); });
  ASSERT_TRUE(WaitForWaiters(pool, 1));
  std::thread small([&] { small_got = pool.Acquire(SlotFit::kLightOrFull); });
  ASSERT_TRUE(WaitForWaiters(pool, 2));
  pool.Release(1);  // skips the older large launch
  small.join();
  EXPECT_EQ(small_got.load(), 1);
  EXPECT_EQ(large_got.load(), -1);
  pool.Release(0);
  large.join();
  EXPECT_EQ(large_got.load(), 0);
}

TEST(SlotPool, AFullSizeSlotGoesToTheOldestWaiterWhateverItsSize) {
  SlotPool pool({SlotSize::kFull});
  ASSERT_EQ(pool.Acquire(SlotFit::kFullOnly), 0);
  std::mutex mu;
  std::vector<int> order;
  std::vector<std::thread> waiters;
  for (int i = 0; i < 4; ++i) {
    waiters.emplace_back([&, i] {
      const int s = pool.Acquire(i % 2 == 0 ? SlotFit::kLightOrFull : SlotFit::kFullOnly);
      {
        std::lock_guard<std::mutex> lock(mu);
        order.push_back(i);
      }
      pool.Release(s);
    });
    ASSERT_TRUE(WaitForWaiters(pool, i + 1));
  }
  pool.Release(0);
  for (std::thread& t : waiters) t.join();
  EXPECT_EQ(order, (std::vector<int>{0, 1, 2, 3}));
  EXPECT_EQ(pool.waiting(), 0);
  EXPECT_EQ(pool.Acquire(SlotFit::kFullOnly), 0);  // back in the free list
}

TEST(SlotPool, ManyThreadsNeverShareASlot) {
  SlotPool pool({SlotSize::kFull, SlotSize::kFull, SlotSize::kLight, SlotSize::kLight, SlotSize::kLight});
  std::vector<std::atomic<int>> holders(static_cast<size_t>(pool.size()));
  std::atomic<int> collisions{0}, large_on_light{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 12; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < 300; ++i) {
        const SlotFit fit = (t + i) % 3 == 0 ? SlotFit::kFullOnly : SlotFit::kLightOrFull;
        const int s = pool.Acquire(fit);
        if (fit == SlotFit::kFullOnly && pool.size_of(s) == SlotSize::kLight) ++large_on_light;
        if (holders[static_cast<size_t>(s)].fetch_add(1) != 0) ++collisions;
        std::this_thread::yield();
        holders[static_cast<size_t>(s)].fetch_sub(1);
        pool.Release(s);
      }
    });
  }
  for (std::thread& t : threads) t.join();
  EXPECT_EQ(collisions.load(), 0);
  EXPECT_EQ(large_on_light.load(), 0);
  EXPECT_EQ(pool.waiting(), 0);
}

}  // namespace
}  // namespace sage::server
