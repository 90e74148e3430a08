// The simple scheduler: a bounded FIFO queue and a fixed pool of workers, one request per backend
// call. Stands in until the dynamic batcher exists.
#pragma once

#include <condition_variable>
#include <deque>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
#include "server/backend/backend.h"
#include "server/scheduler/scheduler.h"

namespace sage::server {

struct FifoSchedulerOptions {
  int worker_threads = 2;
  int queue_capacity = 256;  // Accepted but not yet running; beyond this Submit is refused.
};

class FifoScheduler final : public Scheduler {
 public:
  // `backend` must outlive the scheduler.
  static absl::StatusOr<std::unique_ptr<FifoScheduler>> Create(const FifoSchedulerOptions& options,
                                                               AttentionBackend* backend);
  ~FifoScheduler() override;

  absl::Status Submit(WorkItem item) override;
  void StopAccepting() override;
  void Shutdown(DrainMode mode) override;
  int queue_depth() const override;

 private:
  FifoScheduler(const FifoSchedulerOptions& options, AttentionBackend* backend);
  void WorkerLoop();
  void Run(WorkItem& item, Clock::time_point enqueued);

  struct Queued {
    WorkItem item;
    Clock::time_point enqueued;
  };

  const FifoSchedulerOptions options_;
  AttentionBackend* const backend_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Queued> queue_;
  bool accepting_ = true;
  bool stopping_ = false;  // Workers exit once the queue is empty.
  std::vector<std::thread> workers_;
};

}  // namespace sage::server
