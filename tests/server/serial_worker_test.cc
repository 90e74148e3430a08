#include "server/core/serial_worker.h"

#include <atomic>
#include <future>
#include <vector>

#include "gtest/gtest.h"

namespace sage::server {
namespace {

TEST(SerialWorkerTest, RunsInOrderRefusesWhenFullAndAfterShutdown) {
  SerialWorker worker(SerialWorkerOptions{"test", 2});
  std::promise<void> release;
  std::shared_future<void> gate = release.get_future().share();
  std::vector<int> order;
  std::promise<void> running;
  ASSERT_TRUE(worker.Submit([gate, &running] {
    running.set_value();
    gate.wait();  // Holds the thread so the queue fills.
  }).ok());
  running.get_future().wait();
  ASSERT_TRUE(worker.Submit([&order] { order.push_back(1); }).ok());
  ASSERT_TRUE(worker.Submit([&order] { order.push_back(2); }).ok());
  absl::Status full = worker.Submit([] {});
  EXPECT_EQ(full.code(), absl::StatusCode::kResourceExhausted);
  release.set_value();
  worker.Shutdown();
  EXPECT_EQ(order, (std::vector<int>{1, 2}));  // Queued work finishes on shutdown, in order.
  EXPECT_EQ(worker.Submit([] {}).code(), absl::StatusCode::kUnavailable);
  worker.Shutdown();  // Idempotent.
}

}  // namespace
}  // namespace sage::server
