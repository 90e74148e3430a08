// One thread running queued jobs in order: where the registry service does what must not run in a
// gRPC reactor (calibration compute, fsync'd registry writes). Bounded, so a flood of Calibrate
// calls is refused with RESOURCE_EXHAUSTED instead of queuing minutes of work.
#pragma once

#include <condition_variable>
#include <deque>
#include <mutex>
#include <string>
#include <thread>

#include "absl/functional/any_invocable.h"
#include "absl/status/status.h"

namespace sage::server {

struct SerialWorkerOptions {
  std::string name = "worker";  // In error messages.
  int max_queued = 16;          // Jobs waiting (not counting the running one).
};

class SerialWorker {
 public:
  explicit SerialWorker(const SerialWorkerOptions& options);
  ~SerialWorker();  // Shutdown().

  // RESOURCE_EXHAUSTED when the queue is full, UNAVAILABLE after Shutdown(); the job then never
  // runs and the caller reports the error.
  absl::Status Submit(absl::AnyInvocable<void()> job);
  // Refuses new jobs, runs the queued ones, joins the thread. Idempotent.
  void Shutdown();

 private:
  void Loop();

  const SerialWorkerOptions options_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<absl::AnyInvocable<void()>> queue_;
  bool stopping_ = false;
  std::mutex join_mu_;  // Serializes Shutdown() callers around join().
  std::thread thread_;
};

}  // namespace sage::server
