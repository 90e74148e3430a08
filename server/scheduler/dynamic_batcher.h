// The dynamic batcher: a Scheduler that merges compatible queued requests into one varlen launch,
// in the manner of Triton's dynamic batcher but sized by attention work rather than by count.
//
//   Submit ──► queue ──► dispatcher thread ──► ready batches ──► worker threads ──► backend
//
// - Submit validates the item, and queues it or refuses it at once (full queue: RESOURCE_EXHAUSTED,
//   stopped: UNAVAILABLE, malformed: INVALID_ARGUMENT). It never blocks on the backend.
// - The dispatcher forms a batch only when a worker is idle, so batches grow under load by
//   themselves. It groups queued items by BatchKey in arrival order and takes members of a group
//   while Σ tokens <= max_batch_tokens and Σ q_len·k_len <= max_batch_work (and within the element
//   and sequence caps of a device's buffers); a single item larger than the caps runs alone. A group launches when it is full (the next compatible item does not
//   fit) or when its oldest member has waited max_queue_delay_us.
// - Items whose deadline passes or whose call is cancelled while queued are answered
//   (DEADLINE_EXCEEDED, CANCELLED) and never reach the backend.
// - A failed merged launch is retried one member at a time, so each member gets its own status.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <limits>
#include <list>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
#include "server/backend/backend.h"
#include "server/metrics/server_metrics.h"
#include "server/scheduler/batch_assembler.h"
#include "server/scheduler/scheduler.h"

namespace sage::server {

enum class MergePolicy {
  kMergeCompatible,  // The dynamic batcher proper.
  kNever,            // One request per launch (same queue, deadlines and metrics): the baseline.
};

// Where the per-stage times of a launch come from. Either way, an output that carries
// DeviceTimings (the CUDA backend's) is recorded under its own device, with its H2D, kernel and
// D2H times.
enum class LaunchTiming {
  kLaunchIsKernel,        // CPU engine: the whole backend call is kernel time.
  kBackendReportsStages,  // A device backend: only its DeviceTimings count.
};

struct BatcherOptions {
  int64_t max_batch_tokens = 8192;           // Σ max(q_tokens, k_tokens) per launch.
  int64_t max_batch_work = int64_t{1} << 24;  // Σ q_len·k_len per launch (16M: one 4k×4k prefill).
  // What one launch's buffers hold (a device backend's preallocated pool): elements of Q, and of
  // each of K and V (tokens × heads × head_dim), and varlen sequences. Unlimited by default.
  int64_t max_batch_elements = std::numeric_limits<int64_t>::max();
  int64_t max_batch_sequences = std::numeric_limits<int64_t>::max();
  // How long a partial batch may wait for company while a worker is idle. 0 (as in Triton): launch
  // at once; batches then form from what piles up while every worker is busy, and a lone request
  // pays no delay.
  int64_t max_queue_delay_us = 0;
  int queue_capacity = 1024;                 // Accepted, not yet launched.
  int worker_threads = 2;                    // Concurrent launches.
  // An idle worker polls for the next launch this long before it sleeps. A sleeping worker takes
  // ~15-30 us to wake on a loaded host, a polling one ~1 us, at the price of a busy core while it
  // polls. 0: sleep at once.
  int64_t worker_spin_us = 0;
  MergePolicy merge = MergePolicy::kMergeCompatible;
  // `device` label of the batch metrics, unless the output names its device (DeviceTimings).
  std::string device_label = "cpu";
  LaunchTiming launch_timing = LaunchTiming::kLaunchIsKernel;
};

class DynamicBatcher final : public Scheduler {
 public:
  // `backend` must outlive the batcher; `metrics` may be null, else must outlive it too.
  static absl::StatusOr<std::unique_ptr<DynamicBatcher>> Create(const BatcherOptions& options,
                                                                AttentionBackend* backend,
                                                                ServerMetrics* metrics = nullptr);
  ~DynamicBatcher() override;  // Shutdown(kDropQueued) if not done yet.

  absl::Status Submit(WorkItem item) override;
  void StopAccepting() override;
  void Shutdown(DrainMode mode) override;
  int queue_depth() const override;

  const BatcherOptions& options() const { return options_; }

 private:
  struct Pending {
    WorkItem item;
    BatchKey key;
    ProblemSize size;
    Clock::time_point enqueued;
  };
  using PendingList = std::list<Pending>;
  struct Dropped {
    PendingList items;
    std::vector<absl::Status> statuses;  // One per item, in order.
  };

  DynamicBatcher(const BatcherOptions& options, AttentionBackend* backend, ServerMetrics* metrics);
  void DispatchLoop();
  // Under mu_: moves expired, cancelled (and, when dropping, all) items into `dropped`.
  void CollectDroppedLocked(Clock::time_point now, Dropped& dropped);
  // Answers what CollectDroppedLocked took out of the queue (call without the lock).
  void AnswerDropped(Dropped& dropped, Clock::time_point now);
  // Under mu_: forms and hands over ready batches while workers are idle. For the dispatcher,
  // returns when it should look again if nothing else happens (max() for a worker). A worker
  // calling it (`caller` kWorker) counts itself among the idle and takes the first batch itself: no
  // other worker is woken for it. With `dropped`, queued items met on the way that are cancelled or
  // expired go there instead of into a launch.
  enum class Caller { kDispatcher, kWorker };
  Clock::time_point DispatchReadyLocked(Clock::time_point now, Caller caller, Dropped* dropped);
  // Under mu_: whether the dispatcher must be woken for something due at `due` (it sleeps until
  // dispatcher_wake_, or is awake and will look again anyway).
  bool DispatcherNeededByLocked(Clock::time_point due) const { return due < dispatcher_wake_; }
  void WorkerLoop();
  void RunBatch(PendingList& batch);
  void RunAlone(Pending& p, Clock::time_point launched);
  void Answer(Pending& p, absl::StatusOr<EngineOutput> out, Clock::time_point launched);
  // `out` is the launch's result: a device backend's DeviceTimings name the device and stages.
  // Records one launch; returns the device label it used ("cuda:N" for a launch the CUDA backend
  // timed, else options_.device_label), or "" without metrics.
  std::string RecordLaunch(int requests, const ProblemSize& size, Clock::duration compute,
                           const absl::StatusOr<EngineOutput>& out);
  void UpdateDepthLocked();
  bool WithinCaps(const ProblemSize& s) const;  // The launch may hold `s`.
  bool AtCaps(const ProblemSize& s) const;      // Nothing more can be added to `s`.

  const BatcherOptions options_;
  AttentionBackend* const backend_;
  ServerMetrics* const metrics_;

  mutable std::mutex mu_;
  std::condition_variable dispatcher_cv_;  // Work it can launch, an earlier timer, stop.
  // When the sleeping dispatcher wakes by itself; min() while it is awake (it looks again before it
  // sleeps). Submit and the workers wake it only for something due earlier: under load a request
  // costs no dispatcher wake-up and no scan of the queue.
  Clock::time_point dispatcher_wake_ = Clock::time_point::min();
  std::condition_variable worker_cv_;      // Ready batch, dispatcher gone.
  PendingList queue_;
  std::deque<PendingList> ready_;
  std::atomic<int> ready_count_{0};  // ready_.size(), readable without mu_ by polling workers
  int idle_workers_ = 0;
  bool accepting_ = true;
  bool stopping_ = false;
  DrainMode drain_mode_ = DrainMode::kFinishQueued;
  bool dispatcher_exited_ = false;

  std::mutex shutdown_mu_;  // Serializes Shutdown() callers around the joins.
  std::thread dispatcher_;
  std::vector<std::thread> workers_;
};

}  // namespace sage::server
