#include "server/scheduler/dynamic_batcher.h"

#include <pthread.h>

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"
#include "server/backend/output_placement.h"

namespace sage::server {
namespace {

// Names the calling thread as top -H, perf and gdb show it (at most 15 characters).
void NameThisThread(const char* name) {
#if defined(__linux__)
  (void)pthread_setname_np(pthread_self(), name);
#else
  (void)name;
#endif
}

// Cancellation is polled, not pushed: while items wait, the dispatcher looks at least this often.
constexpr auto kCancelPollInterval = std::chrono::milliseconds(20);
// An idle dispatcher still wakes this often; it also keeps wait_until away from time_point::max().
constexpr auto kIdleWake = std::chrono::seconds(1);

// Why `item` must be answered without a launch at `now` (cancelled, or its deadline passed); OK
// when it may run.
absl::Status WhyNotLaunch(const WorkItem& item, Clock::time_point now) {
  if (item.is_cancelled && item.is_cancelled()) return absl::CancelledError("request cancelled while queued");
  if (item.deadline.has_value() && now >= *item.deadline) {
    return absl::DeadlineExceededError("deadline passed while the request was queued");
  }
  return absl::OkStatus();
}

bool OutputFits(const EngineOutput& out, const EngineInput& in) {
  if (!PlacementAllowed(in.output, out.placement)) return false;
  // Written into the members' own buffers: nothing to slice.
  if (out.placement == OutputPlacement::kCallerBuffers) return true;
  const size_t rows = static_cast<size_t>(in.q.tokens);
  const size_t heads = static_cast<size_t>(in.q.heads);
  if (out.o_elements() != rows * heads * static_cast<size_t>(in.q.head_dim)) return false;
  return in.lse == LseMode::kNone || out.lse.size() == rows * heads;
}

}  // namespace

absl::StatusOr<std::unique_ptr<DynamicBatcher>> DynamicBatcher::Create(const BatcherOptions& options,
                                                                      AttentionBackend* backend,
                                                                      ServerMetrics* metrics) {
  if (backend == nullptr) return absl::InvalidArgumentError("batcher: backend is null");
  if (options.worker_threads < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("batcher: worker_threads must be >= 1, got ", options.worker_threads));
  }
  if (options.queue_capacity < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("batcher: queue_capacity must be >= 1, got ", options.queue_capacity));
  }
  if (options.max_batch_tokens < 1 || options.max_batch_work < 1 || options.max_batch_elements < 1 ||
      options.max_batch_sequences < 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        "batcher: max_batch_tokens, max_batch_work, max_batch_elements and max_batch_sequences must "
        "be >= 1 (use MergePolicy::kNever to disable merging), got ", options.max_batch_tokens, ", ",
        options.max_batch_work, ", ", options.max_batch_elements, ", ", options.max_batch_sequences));
  }
  if (options.worker_spin_us < 0 || options.worker_spin_us > 100000) {
    return absl::InvalidArgumentError(
        absl::StrCat("batcher: worker_spin_us must be in [0, 100000], got ", options.worker_spin_us));
  }
  if (options.max_queue_delay_us < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("batcher: max_queue_delay_us must be >= 0, got ", options.max_queue_delay_us));
  }
  return std::unique_ptr<DynamicBatcher>(new DynamicBatcher(options, backend, metrics));
}

DynamicBatcher::DynamicBatcher(const BatcherOptions& options, AttentionBackend* backend,
                               ServerMetrics* metrics)
    : options_(options), backend_(backend), metrics_(metrics) {
  idle_workers_ = options_.worker_threads;
  workers_.reserve(options_.worker_threads);
  for (int i = 0; i < options_.worker_threads; ++i) workers_.emplace_back([this] { WorkerLoop(); });
  dispatcher_ = std::thread([this] { DispatchLoop(); });
}

DynamicBatcher::~DynamicBatcher() { Shutdown(DrainMode::kDropQueued); }

absl::Status DynamicBatcher::Submit(WorkItem item) {
  if (!item.done) return absl::InvalidArgumentError("batcher: work item has no completion callback");
  // Validated here, one item at a time, so a malformed request can never join a batch.
  if (absl::Status valid = ValidateInput(item.input); !valid.ok()) return valid;
  if (item.input.paged.has_value()) {
    if (absl::Status valid = ValidatePagedKv(item.input, *item.input.paged); !valid.ok()) return valid;
  }
  Pending p;
  p.key = MakeBatchKey(item.input, item.config);
  p.size = MeasureProblem(item.input);
  p.item = std::move(item);
  // What needs no shared state is done before taking the lock that every reactor thread and worker
  // contends for: the list node's allocation and the clock.
  p.enqueued = Clock::now();
  // The dispatcher acts on a queued item when a worker is idle (launch), when its deadline comes,
  // when its wait for company ends, and every kCancelPollInterval (cancellation). With every worker
  // busy, the worker that finishes first forms the next batch itself.
  Clock::time_point due = p.enqueued + kCancelPollInterval;
  if (p.item.deadline.has_value()) due = std::min(due, *p.item.deadline);
  if (options_.max_queue_delay_us > 0) {
    due = std::min(due, p.enqueued + std::chrono::microseconds(options_.max_queue_delay_us));
  }
  PendingList node;
  node.push_back(std::move(p));
  bool direct = false;
  bool wake_dispatcher = false;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (!accepting_) return absl::UnavailableError("server is shutting down");
    if (static_cast<int>(queue_.size()) >= options_.queue_capacity) {
      return QueueFullError(options_.queue_capacity);
    }
    Track(node.front().item);
    // Nothing queued, a worker idle and no wait for company: the dispatcher would launch this
    // request alone right away, so hand it to the worker directly (one thread wake-up instead of
    // two, ~15-30 us on a busy host). A request already expired or cancelled takes the queue, where
    // the dispatcher answers it.
    direct = options_.max_queue_delay_us == 0 && queue_.empty() && ready_.empty() && idle_workers_ > 0 &&
             !stopping_ && WhyNotLaunch(node.front().item, node.front().enqueued).ok();
    if (direct) {
      ready_.push_back(std::move(node));
      ready_count_.store(static_cast<int>(ready_.size()), std::memory_order_release);
      --idle_workers_;
    } else {
      wake_dispatcher = idle_workers_ > 0 || stopping_ || DispatcherNeededByLocked(due);
      queue_.splice(queue_.end(), node);
      UpdateDepthLocked();
    }
  }
  if (direct) {
    worker_cv_.notify_one();
  } else if (wake_dispatcher) {
    dispatcher_cv_.notify_one();
  }
  return absl::OkStatus();
}

void DynamicBatcher::StopAccepting() {
  std::lock_guard<std::mutex> lock(mu_);
  accepting_ = false;
}

void DynamicBatcher::Shutdown(DrainMode mode) {
  std::lock_guard<std::mutex> serial(shutdown_mu_);
  {
    std::lock_guard<std::mutex> lock(mu_);
    accepting_ = false;
    // A later, stricter call (the destructor after a graceful drain) may only tighten the mode.
    if (!stopping_ || mode == DrainMode::kDropQueued) drain_mode_ = mode;
    stopping_ = true;
  }
  dispatcher_cv_.notify_all();
  if (dispatcher_.joinable()) dispatcher_.join();
  for (std::thread& t : workers_) {
    if (t.joinable()) t.join();
  }
}

int DynamicBatcher::queue_depth() const {
  std::lock_guard<std::mutex> lock(mu_);
  return static_cast<int>(queue_.size());
}

bool DynamicBatcher::WithinCaps(const ProblemSize& s) const {
  return s.tokens <= options_.max_batch_tokens && s.work <= options_.max_batch_work &&
         s.q_elements <= options_.max_batch_elements && s.kv_elements <= options_.max_batch_elements &&
         s.sequences <= options_.max_batch_sequences;
}

bool DynamicBatcher::AtCaps(const ProblemSize& s) const {
  return s.tokens >= options_.max_batch_tokens || s.work >= options_.max_batch_work ||
         s.q_elements >= options_.max_batch_elements || s.kv_elements >= options_.max_batch_elements ||
         s.sequences >= options_.max_batch_sequences;
}

void DynamicBatcher::UpdateDepthLocked() {
  if (metrics_ != nullptr) metrics_->SetQueueDepth(static_cast<int>(queue_.size()));
}

void DynamicBatcher::CollectDroppedLocked(Clock::time_point now, Dropped& dropped) {
  const bool drop_all = stopping_ && drain_mode_ == DrainMode::kDropQueued;
  for (auto it = queue_.begin(); it != queue_.end();) {
    absl::Status why = drop_all ? absl::UnavailableError("server is shutting down") : WhyNotLaunch(it->item, now);
    if (why.ok()) {
      ++it;
      continue;
    }
    auto next = std::next(it);
    dropped.items.splice(dropped.items.end(), queue_, it);
    dropped.statuses.push_back(std::move(why));
    it = next;
  }
  if (!dropped.items.empty()) UpdateDepthLocked();
}

Clock::time_point DynamicBatcher::DispatchReadyLocked(Clock::time_point now, Caller caller, Dropped* dropped) {
  bool self_served = caller == Caller::kDispatcher;  // a calling worker takes the first batch
  Clock::time_point wake = Clock::time_point::max();
  if (caller == Caller::kDispatcher) {
    // Only the dispatcher sleeps on this. A worker needs no wake time: every queued item's timers
    // were armed when it was queued (Submit) or when the dispatcher last went to sleep.
    wake = now + (queue_.empty() ? kIdleWake : kCancelPollInterval);
    for (const Pending& p : queue_) {
      if (p.item.deadline.has_value()) wake = std::min(wake, *p.item.deadline);
    }
  }
  const auto delay = std::chrono::microseconds(options_.max_queue_delay_us);
  const bool flush = stopping_;  // Draining: nothing waits for company any more.
  std::vector<BatchKey> waiting;  // Groups found not ready during this pass.
  // With `dropped`, an item found cancelled or expired on the way is taken out for answering
  // instead of being launched (what the dispatcher's sweep of the whole queue would do).
  const auto drop_if_done = [&](PendingList::iterator& it) {
    if (dropped == nullptr) return false;
    absl::Status why = WhyNotLaunch(it->item, now);
    if (why.ok()) return false;
    auto next = std::next(it);
    dropped->items.splice(dropped->items.end(), queue_, it);
    dropped->statuses.push_back(std::move(why));
    it = next;
    return true;
  };

  for (auto head = queue_.begin(); head != queue_.end() && idle_workers_ > 0;) {
    if (drop_if_done(head)) continue;
    if (std::find(waiting.begin(), waiting.end(), head->key) != waiting.end()) {
      ++head;
      continue;
    }
    // Members of head's group in arrival order, up to the caps.
    std::vector<PendingList::iterator> members = {head};
    ProblemSize total = head->size;
    bool full = options_.merge == MergePolicy::kNever || AtCaps(total) || !MergesWithOthers(head->item.input);
    for (auto it = std::next(head); it != queue_.end() && !full;) {
      if (!(it->key == head->key) || !MergesWithOthers(it->item.input)) {
        ++it;
        continue;
      }
      if (drop_if_done(it)) continue;
      ProblemSize grown = total;
      grown += it->size;
      if (!WithinCaps(grown)) {
        full = true;  // In order: a later, smaller item does not jump the queue.
        break;
      }
      members.push_back(it);
      total = grown;
      full = AtCaps(total);
      ++it;
    }
    const Clock::time_point due = head->enqueued + delay;
    if (!full && !flush && now < due) {
      waiting.push_back(head->key);
      wake = std::min(wake, due);
      ++head;
      continue;
    }
    // Launch it. `head` is among the members; restart the scan from the new front.
    PendingList batch;
    for (PendingList::iterator m : members) batch.splice(batch.end(), queue_, m);
    ready_.push_back(std::move(batch));
    ready_count_.store(static_cast<int>(ready_.size()), std::memory_order_release);
    --idle_workers_;
    if (self_served) {
      worker_cv_.notify_one();
    } else {
      self_served = true;
    }
    head = queue_.begin();
  }
  UpdateDepthLocked();
  return wake;
}

void DynamicBatcher::DispatchLoop() {
  NameThisThread("sage-dispatch");
  std::unique_lock<std::mutex> lock(mu_);
  for (;;) {
    const Clock::time_point now = Clock::now();
    Dropped dropped;
    dispatcher_wake_ = Clock::time_point::min();  // awake: nobody needs to wake it
    CollectDroppedLocked(now, dropped);
    if (!dropped.items.empty()) {
      // Answer outside the lock; then look again, since the world moved meanwhile.
      lock.unlock();
      AnswerDropped(dropped, now);
      lock.lock();
      continue;
    }
    const Clock::time_point wake = DispatchReadyLocked(now, Caller::kDispatcher, nullptr);
    if (stopping_ && queue_.empty()) break;
    dispatcher_wake_ = wake;
    dispatcher_cv_.wait_until(lock, wake);
  }
  dispatcher_exited_ = true;
  worker_cv_.notify_all();
}

void DynamicBatcher::AnswerDropped(Dropped& dropped, Clock::time_point now) {
  size_t i = 0;
  for (Pending& p : dropped.items) {
    WorkTimings timings;
    timings.queued = now - p.enqueued;
    if (metrics_ != nullptr) metrics_->RecordDropped(dropped.statuses[i].code());
    p.item.done(std::move(dropped.statuses[i]), timings);
    ++i;
  }
}

void DynamicBatcher::WorkerLoop() {
  NameThisThread("sage-worker");
  for (;;) {
    PendingList batch;
    if (options_.worker_spin_us > 0 && ready_count_.load(std::memory_order_acquire) == 0) {
      const Clock::time_point until = Clock::now() + std::chrono::microseconds(options_.worker_spin_us);
      while (ready_count_.load(std::memory_order_acquire) == 0 && Clock::now() < until) {
#if defined(__x86_64__)
        __builtin_ia32_pause();
#endif
      }
    }
    {
      std::unique_lock<std::mutex> lock(mu_);
      worker_cv_.wait(lock, [this] { return !ready_.empty() || dispatcher_exited_; });
      if (ready_.empty()) return;  // The dispatcher is gone and nothing is left to run.
      batch = std::move(ready_.front());
      ready_.pop_front();
      ready_count_.store(static_cast<int>(ready_.size()), std::memory_order_release);
    }
    RunBatch(batch);
    // Form the next launch from what queued up meanwhile right here, as the dispatcher would,
    // rather than waking it to wake a worker back (two thread wake-ups per launch under load).
    // Members found expired or cancelled on the way are answered, never launched.
    Dropped dropped;
    const Clock::time_point now = Clock::now();
    bool wake_dispatcher = false;
    {
      std::lock_guard<std::mutex> lock(mu_);
      ++idle_workers_;
      if (stopping_) {
        // The dispatcher drains and exits; a worker turning idle may be what it waits for.
        CollectDroppedLocked(now, dropped);
        wake_dispatcher = true;
      } else {
        // Only what this launches is checked for cancellation and deadline here (not the whole
        // queue: this runs under the lock every reactor thread needs). The dispatcher still owns
        // delays, deadlines and cancellation polls, and its timers are already armed.
        DispatchReadyLocked(now, Caller::kWorker, &dropped);
      }
    }
    AnswerDropped(dropped, now);
    if (wake_dispatcher) dispatcher_cv_.notify_one();
  }
}

std::string DynamicBatcher::RecordLaunch(int requests, const ProblemSize& size, Clock::duration compute,
                                         const absl::StatusOr<EngineOutput>& out) {
  if (metrics_ == nullptr) return std::string();
  const DeviceTimings* device = out.ok() && out->device_timings ? &*out->device_timings : nullptr;
  std::string label = device != nullptr ? absl::StrCat("cuda:", device->device) : options_.device_label;
  BatchRecord record;
  record.device = label;
  record.requests = requests;
  record.tokens = size.tokens;
  record.work = size.work;
  record.compute = compute;
  metrics_->RecordBatch(record);
  StageRecord stages;
  stages.device = label;
  if (device != nullptr) {
    const auto us = [](double v) {
      return std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double, std::micro>(v));
    };
    stages.h2d = us(device->h2d_us);
    stages.kernel = us(device->kernel_us);
    stages.d2h = us(device->d2h_us);
  } else if (options_.launch_timing == LaunchTiming::kLaunchIsKernel) {
    stages.kernel = compute;
  } else {
    return label;
  }
  metrics_->RecordStages(stages);
  return label;
}

void DynamicBatcher::Answer(Pending& p, absl::StatusOr<EngineOutput> out, Clock::time_point launched) {
  WorkTimings timings;
  timings.queued = launched - p.enqueued;
  timings.compute = Clock::now() - launched;
  p.item.done(std::move(out), timings);
}

void DynamicBatcher::RunAlone(Pending& p, Clock::time_point launched) {
  const Clock::time_point start = Clock::now();
  absl::StatusOr<EngineOutput> out = backend_->Attend(p.item.input, p.item.config);
  const Clock::time_point finished = Clock::now();
  const std::string label = RecordLaunch(1, p.size, finished - start, out);
  Answer(p, std::move(out), launched);
  if (metrics_ != nullptr) metrics_->RecordRespond(label, Clock::now() - finished);
}

void DynamicBatcher::RunBatch(PendingList& batch) {
  const Clock::time_point launched = Clock::now();
  if (metrics_ != nullptr) {
    for (const Pending& p : batch) metrics_->RecordQueued(launched - p.enqueued);
  }
  if (batch.size() == 1) {
    RunAlone(batch.front(), launched);  // No copy: the backend reads the request's own bytes.
    return;
  }
  std::vector<const EngineInput*> inputs;
  inputs.reserve(batch.size());
  ProblemSize total;
  for (const Pending& p : batch) {
    inputs.push_back(&p.item.input);
    total += p.size;
  }
  // A backend that gathers the members itself gets only the merged metadata: no copy here.
  // Paged members are copied (their Q only; K/V stay in the pages).
  const bool gather = backend_->info().input_gather == InputGather::kSegments && !batch.front().item.input.paged.has_value();
  absl::StatusOr<AssembledBatch> assembled =
      AssembleBatch(inputs, gather ? AssembleMode::kMetadataOnly : AssembleMode::kCopyTensors);
  if (assembled.ok()) {
    const Clock::time_point start = Clock::now();
    const RecipeConfig& config = batch.front().item.config;
    absl::StatusOr<EngineOutput> out = gather ? backend_->AttendGathered(assembled->input(), inputs, config)
                                            : backend_->Attend(assembled->input(), config);
    const Clock::time_point finished = Clock::now();
    const std::string label = RecordLaunch(static_cast<int>(batch.size()), total, finished - start, out);
    if (out.ok() && OutputFits(*out, assembled->input())) {
      size_t i = 0;
      for (Pending& p : batch) Answer(p, SliceOutput(*out, *assembled, i++), launched);
      if (metrics_ != nullptr) metrics_->RecordRespond(label, Clock::now() - finished);
      return;
    }
  }
  // The merged launch failed: find out whose fault it was by running each member alone.
  if (metrics_ != nullptr) metrics_->RecordBatchSplit(options_.device_label);
  for (Pending& p : batch) {
    if (p.item.is_cancelled && p.item.is_cancelled()) {
      Answer(p, absl::CancelledError("request cancelled before it ran"), launched);
      continue;
    }
    RunAlone(p, launched);
  }
}

}  // namespace sage::server
