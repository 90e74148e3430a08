// The CUDA backend's dispatch policy (server/backend/cuda/device_selector.h) without a GPU: fake
// executors with different speeds and counts, for any number of devices.
#include "server/backend/cuda/device_selector.h"

#include <gtest/gtest.h>

#include <atomic>
#include <map>
#include <thread>
#include <vector>

namespace sage::server {
namespace {

TEST(PickLeastLoaded, LeastWorkWins) {
  std::vector<DeviceLoad> l = {{100, 1}, {10, 5}, {50, 1}};
  EXPECT_EQ(PickLeastLoaded(l, 0), 1);
  EXPECT_EQ(PickLeastLoaded(l, 2), 1);
}

TEST(PickLeastLoaded, EqualWorkGoesToFewestInFlight) {
  std::vector<DeviceLoad> l = {{10, 3}, {10, 1}, {10, 2}};
  EXPECT_EQ(PickLeastLoaded(l, 0), 1);
  EXPECT_EQ(PickLeastLoaded(l, 2), 1);
}

TEST(PickLeastLoaded, FullTiesFollowRotation) {
  std::vector<DeviceLoad> l(4);
  for (int r = 0; r < 8; ++r) EXPECT_EQ(PickLeastLoaded(l, r), r % 4);
  EXPECT_EQ(PickLeastLoaded(l, -1), 3);
}

TEST(PickLeastLoaded, FailedDevicesAreSkipped) {
  std::vector<DeviceLoad> l = {{0, 0, DeviceHealth::kFailed}, {500, 9}, {0, 0, DeviceHealth::kFailed}};
  EXPECT_EQ(PickLeastLoaded(l, 0), 1);
  l[1].health = DeviceHealth::kFailed;
  EXPECT_EQ(PickLeastLoaded(l, 0), -1);
  EXPECT_EQ(PickLeastLoaded({}, 0), -1);
}

TEST(DeviceSelector, TiesRotateAcrossAllDevices) {
  for (int n : {1, 2, 3, 8}) {
    DeviceSelector s(n);
    std::vector<int> hits(static_cast<size_t>(n), 0);
    for (int i = 0; i < 4 * n; ++i) {
      auto d = s.Acquire(100);
      ASSERT_TRUE(d.ok());
      hits[static_cast<size_t>(*d)]++;
      s.Release(*d, 100);  // idle again: every pick is a full tie
    }
    for (int h : hits) EXPECT_EQ(h, 4) << "n=" << n;
  }
}

TEST(DeviceSelector, ChargesWorkSoConcurrentPicksSpread) {
  DeviceSelector s(4);
  std::vector<int> picks;
  for (int i = 0; i < 4; ++i) picks.push_back(*s.Acquire(1000));
  std::sort(picks.begin(), picks.end());
  EXPECT_EQ(picks, (std::vector<int>{0, 1, 2, 3}));
  const auto snap = s.Snapshot();
  for (const DeviceLoad& l : snap) {
    EXPECT_EQ(l.work, 1000);
    EXPECT_EQ(l.in_flight, 1);
  }
  for (int d = 0; d < 4; ++d) s.Release(d, 1000);
  for (const DeviceLoad& l : s.Snapshot()) {
    EXPECT_EQ(l.work, 0);
    EXPECT_EQ(l.in_flight, 0);
  }
}

TEST(DeviceSelector, SkewedLoadSpreadsToIdleDevices) {
  DeviceSelector s(3);
  // One huge batch lands on some device; the next small ones avoid it until they add up.
  const int big = *s.Acquire(1'000'000);
  std::map<int, int> small;
  for (int i = 0; i < 20; ++i) small[*s.Acquire(1000)]++;
  EXPECT_EQ(small.count(big), 0u);
  EXPECT_EQ(small.size(), 2u);
  for (const auto& [d, n] : small) EXPECT_EQ(n, 10);
}

TEST(DeviceSelector, FailedDeviceSkippedAndCanReturn) {
  DeviceSelector s(3);
  s.SetHealth(1, DeviceHealth::kFailed);
  for (int i = 0; i < 9; ++i) {
    auto d = s.Acquire(1);
    ASSERT_TRUE(d.ok());
    EXPECT_NE(*d, 1);
    s.Release(*d, 1);
  }
  s.SetHealth(0, DeviceHealth::kFailed);
  s.SetHealth(2, DeviceHealth::kFailed);
  EXPECT_EQ(s.Acquire(1).status().code(), absl::StatusCode::kUnavailable);
  s.SetHealth(1, DeviceHealth::kHealthy);
  EXPECT_EQ(*s.Acquire(1), 1);
}

// A batch whose tensors sit in one GPU's memory goes there even when another device is idle, and
// its work counts against that device for the picks that follow.
TEST(DeviceSelector, AcquireOnChargesThatDevice) {
  DeviceSelector s(3);
  ASSERT_EQ(*s.AcquireOn(2, 100), 2);
  EXPECT_EQ(s.Snapshot()[2].work, 100);
  EXPECT_EQ(s.Snapshot()[2].in_flight, 1);
  auto next = s.Acquire(1);
  ASSERT_TRUE(next.ok());
  EXPECT_NE(*next, 2);
  s.Release(*next, 1);
  s.Release(2, 100);
  EXPECT_EQ(s.Snapshot()[2].work, 0);
  s.SetHealth(1, DeviceHealth::kFailed);
  EXPECT_EQ(s.AcquireOn(1, 5).status().code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(s.AcquireOn(3, 5).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(s.AcquireOn(-1, 5).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(DeviceSelector, OutOfRangeReleaseIsIgnored) {
  DeviceSelector s(2);
  s.Release(-1, 5);
  s.Release(7, 5);
  s.SetHealth(9, DeviceHealth::kFailed);
  for (const DeviceLoad& l : s.Snapshot()) EXPECT_EQ(l.work, 0);
}

// Fake executors: device d finishes a batch in (d + 1) ms-equivalents of spinning. Many threads
// dispatch through one selector; the fast device gets the most batches, every device gets some,
// and the books balance at the end.
TEST(DeviceSelector, FakeExecutorsOfDifferentSpeedsUnderConcurrency) {
  constexpr int kDevices = 4, kThreads = 12, kBatches = 400;
  DeviceSelector s(kDevices);
  std::vector<std::atomic<int>> done(kDevices);
  std::atomic<int> next{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&] {
      while (next++ < kBatches) {
        const int64_t work = 128 * 128;
        const int d = *s.Acquire(work);
        std::this_thread::sleep_for(std::chrono::microseconds(200 * (d + 1) * (d + 1)));
        done[static_cast<size_t>(d)]++;
        s.Release(d, work);
      }
    });
  }
  for (auto& th : threads) th.join();
  int total = 0;
  for (int d = 0; d < kDevices; ++d) {
    EXPECT_GT(done[static_cast<size_t>(d)].load(), 0) << d;
    total += done[static_cast<size_t>(d)].load();
  }
  EXPECT_EQ(total, kBatches);
  EXPECT_GT(done[0].load(), done[kDevices - 1].load());
  for (const DeviceLoad& l : s.Snapshot()) {
    EXPECT_EQ(l.work, 0);
    EXPECT_EQ(l.in_flight, 0);
  }
}

}  // namespace
}  // namespace sage::server
