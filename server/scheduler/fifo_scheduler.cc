#include "server/scheduler/fifo_scheduler.h"

#include <utility>

#include "absl/strings/str_cat.h"

namespace sage::server {

absl::StatusOr<std::unique_ptr<FifoScheduler>> FifoScheduler::Create(
    const FifoSchedulerOptions& options, AttentionBackend* backend) {
  if (backend == nullptr) return absl::InvalidArgumentError("scheduler: backend is null");
  if (options.worker_threads < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("scheduler: worker_threads must be >= 1, got ", options.worker_threads));
  }
  if (options.queue_capacity < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("scheduler: queue_capacity must be >= 1, got ", options.queue_capacity));
  }
  return std::unique_ptr<FifoScheduler>(new FifoScheduler(options, backend));
}

FifoScheduler::FifoScheduler(const FifoSchedulerOptions& options, AttentionBackend* backend)
    : options_(options), backend_(backend) {
  workers_.reserve(options_.worker_threads);
  for (int i = 0; i < options_.worker_threads; ++i) workers_.emplace_back([this] { WorkerLoop(); });
}

FifoScheduler::~FifoScheduler() { Shutdown(DrainMode::kDropQueued); }

absl::Status FifoScheduler::Submit(WorkItem item) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (!accepting_) return absl::UnavailableError("server is shutting down");
    if (static_cast<int>(queue_.size()) >= options_.queue_capacity) {
      return QueueFullError(options_.queue_capacity);
    }
    Track(item);
    queue_.push_back(Queued{std::move(item), Clock::now()});
  }
  cv_.notify_one();
  return absl::OkStatus();
}

void FifoScheduler::StopAccepting() {
  std::lock_guard<std::mutex> lock(mu_);
  accepting_ = false;
}

void FifoScheduler::Shutdown(DrainMode mode) {
  std::deque<Queued> dropped;
  {
    std::lock_guard<std::mutex> lock(mu_);
    accepting_ = false;
    stopping_ = true;
    if (mode == DrainMode::kDropQueued) dropped.swap(queue_);
  }
  cv_.notify_all();
  for (Queued& q : dropped) {
    q.item.done(absl::UnavailableError("server is shutting down"), WorkTimings{});
  }
  for (std::thread& t : workers_) {
    if (t.joinable()) t.join();
  }
}

int FifoScheduler::queue_depth() const {
  std::lock_guard<std::mutex> lock(mu_);
  return static_cast<int>(queue_.size());
}

void FifoScheduler::WorkerLoop() {
  for (;;) {
    Queued next;
    {
      std::unique_lock<std::mutex> lock(mu_);
      cv_.wait(lock, [this] { return stopping_ || !queue_.empty(); });
      if (queue_.empty()) return;  // stopping_ and drained.
      next = std::move(queue_.front());
      queue_.pop_front();
    }
    Run(next.item, next.enqueued);
  }
}

void FifoScheduler::Run(WorkItem& item, Clock::time_point enqueued) {
  const Clock::time_point start = Clock::now();
  WorkTimings timings;
  timings.queued = start - enqueued;
  // Dropping here is the point of checking late: the client no longer wants the answer.
  if (item.is_cancelled && item.is_cancelled()) {
    item.done(absl::CancelledError("request cancelled before it ran"), timings);
    return;
  }
  if (item.deadline.has_value() && start >= *item.deadline) {
    item.done(absl::DeadlineExceededError("deadline passed while the request was queued"), timings);
    return;
  }
  absl::StatusOr<EngineOutput> out = backend_->Attend(item.input, item.config);
  timings.compute = Clock::now() - start;
  item.done(std::move(out), timings);
}

}  // namespace sage::server
