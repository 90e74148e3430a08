// The queue between the gRPC layer and an AttentionBackend. Reactors Submit() and return at once;
// worker threads run the backend and call the item's completion. A dynamic batcher implements the
// same interface later (it may merge several items into one backend call).
#pragma once

#include <atomic>
#include <chrono>
#include <functional>
#include <memory>
#include <optional>

#include "absl/functional/any_invocable.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "server/backend/engine_io.h"
#include "kernels/reference/recipe.h"
#include "server/util/status_details.h"

namespace sage::server {

using Clock = std::chrono::steady_clock;

// Where a request's time went, measured by the scheduler.
struct WorkTimings {
  Clock::duration queued{};   // Submit -> picked by a worker.
  Clock::duration compute{};  // Backend::Attend.
};

// One attention problem. The input views point into memory the submitter keeps alive until
// `done` has been called (the gRPC request message).
struct WorkItem {
  EngineInput input;
  RecipeConfig config;
  std::optional<Clock::time_point> deadline;
  // Polled before the work starts; cancelled work is dropped (done gets CANCELLED).
  std::function<bool()> is_cancelled;
  // Called exactly once, on a worker thread, for every accepted item (a rejected Submit returns
  // the error instead and never calls it).
  absl::AnyInvocable<void(absl::StatusOr<EngineOutput>, const WorkTimings&)> done;
};

enum class DrainMode {
  kFinishQueued,  // Run everything already accepted, then stop.
  kDropQueued,    // Fail queued items with UNAVAILABLE; only running ones finish.
};

class Scheduler {
 public:
  virtual ~Scheduler() = default;
  // Takes ownership of the item. RESOURCE_EXHAUSTED when the queue is full, UNAVAILABLE after
  // StopAccepting(); in both cases `item.done` is not called.
  virtual absl::Status Submit(WorkItem item) = 0;
  // New Submits fail with UNAVAILABLE from now on; accepted work continues.
  virtual void StopAccepting() = 0;
  // Stops accepting, handles queued items per `mode`, waits for the workers to finish.
  virtual void Shutdown(DrainMode mode) = 0;
  virtual int queue_depth() const = 0;

  // Accepted items whose `done` has not run yet (queued or running). A drain waits for this to
  // reach zero before the gRPC server stops taking calls, so calls arriving meanwhile get the
  // scheduler's UNAVAILABLE instead of gRPC core's CANCELLED.
  int outstanding() const { return outstanding_.load(std::memory_order_acquire); }

 protected:
  // The refusal of a Submit that finds `capacity` items waiting: RESOURCE_EXHAUSTED with a retry hint
  // (google.rpc.RetryInfo, gRPC retry pushback), since the queue drains in milliseconds.
  static absl::Status QueueFullError(int capacity) {
    return WithRetryDelay(
        absl::ResourceExhaustedError(absl::StrCat("request queue is full (", capacity, " waiting)")),
        kQueueFullRetryDelay);
  }

  // Implementations call this on each item they accept, before it can run: `done` is wrapped so
  // the outstanding count drops once it has run.
  void Track(WorkItem& item) {
    outstanding_.fetch_add(1, std::memory_order_acq_rel);
    item.done = [this, done = std::move(item.done)](absl::StatusOr<EngineOutput> result,
                                                     const WorkTimings& timings) mutable {
      done(std::move(result), timings);
      outstanding_.fetch_sub(1, std::memory_order_acq_rel);
    };
  }

 private:
  std::atomic<int> outstanding_{0};
};

}  // namespace sage::server
