// How many session calls may start on gRPC's own threads at once (SessionAttend::StartsOnCaller).
// Starting a decode step on the thread that read it saves the hop to a session worker, which is
// most of the server's overhead for one client; under load that work (appends, Q staging: ~60 us
// a call with 256 clients on the H100) would take gRPC's threads from reading and writing
// messages (46k instead of 71k layer-steps/s there), so calls beyond the limit go to the workers,
// and so does every call while the workers have any (a busy server: a call started here would only
// take a gRPC thread, and may block it on a synchronized append when the write stream is taken).
#pragma once

#include <atomic>

namespace sage::server {

class CallerStartGate {
 public:
  explicit CallerStartGate(int limit) : limit_(limit) {}

  // True: the caller may start the call on its thread, and calls Leave() once Start has returned.
  bool TryEnter() {
    if (worker_jobs_.load(std::memory_order_relaxed) > 0) return false;
    int n = active_.load(std::memory_order_relaxed);
    while (n < limit_) {
      if (active_.compare_exchange_weak(n, n + 1, std::memory_order_acquire, std::memory_order_relaxed)) return true;
    }
    return false;
  }
  void Leave() { active_.fetch_sub(1, std::memory_order_release); }
  // A call handed to a session worker, and that call's job having ended.
  void WorkerJobQueued() { worker_jobs_.fetch_add(1, std::memory_order_relaxed); }
  void WorkerJobDone() { worker_jobs_.fetch_sub(1, std::memory_order_relaxed); }

 private:
  const int limit_;
  std::atomic<int> active_{0};
  std::atomic<int> worker_jobs_{0};
};

}  // namespace sage::server
