#include "server/core/serial_worker.h"

#include <pthread.h>

#include <algorithm>
#include <string>
#include <utility>

#include "absl/strings/str_cat.h"

namespace sage::server {

SerialWorker::SerialWorker(const SerialWorkerOptions& options)
    : options_(options), thread_([this] { Loop(); }) {}

SerialWorker::~SerialWorker() { Shutdown(); }

absl::Status SerialWorker::Submit(absl::AnyInvocable<void()> job) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (stopping_) return absl::UnavailableError(absl::StrCat(options_.name, ": shutting down"));
    if (static_cast<int>(queue_.size()) >= options_.max_queued) {
      return absl::ResourceExhaustedError(
          absl::StrCat(options_.name, ": ", queue_.size(), " jobs already queued; retry later"));
    }
    queue_.push_back(std::move(job));
  }
  cv_.notify_one();
  return absl::OkStatus();
}

void SerialWorker::Shutdown() {
  std::lock_guard<std::mutex> join_lock(join_mu_);
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopping_ = true;
  }
  cv_.notify_one();
  if (thread_.joinable()) thread_.join();
}

void SerialWorker::Loop() {
#if defined(__linux__)
  // As top -H, perf and gdb show it (at most 15 characters): the name up to its first space.
  const std::string name = options_.name.substr(0, std::min<size_t>(15, options_.name.find(' ')));
  (void)pthread_setname_np(pthread_self(), name.c_str());
#endif
  while (true) {
    absl::AnyInvocable<void()> job;
    {
      std::unique_lock<std::mutex> lock(mu_);
      cv_.wait(lock, [this] { return stopping_ || !queue_.empty(); });
      if (queue_.empty()) return;  // Stopping and drained.
      job = std::move(queue_.front());
      queue_.pop_front();
    }
    job();
  }
}

}  // namespace sage::server
