#include "server/frontend/grpc/attend_stream_reactor.h"

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"
#include "server/frontend/grpc/deadline.h"
#include "server/frontend/grpc/status_mapping.h"

namespace sage::server {

absl::Status StreamQueueTotals::Admit() const {
  const int64_t held = bytes();
  if (max_bytes_ <= 0 || held < max_bytes_) return absl::OkStatus();
  return absl::ResourceExhaustedError(absl::StrCat(
      "AttendStream answers waiting for their clients hold ", held, " bytes, at the limit of this server "
      "(stream_max_server_queued_bytes = ", max_bytes_, "); read the answers already sent, or retry later"));
}

AttendStreamReactor::AttendStreamReactor(grpc::CallbackServerContext* context, AttendBackends backends,
                                         RegionCaller caller, HostBufferPool* payload_pool,
                                         const StreamLimits& limits, StreamQueueTotals* totals)
    : context_(context),
      backends_(backends),
      caller_(std::move(caller)),
      payload_pool_(payload_pool),
      limits_(limits),
      totals_(totals) {
  // AttendStream is counted here, not by the RPC-metrics interceptor (rpc_metrics_interceptor.h).
  if (totals_->metrics() != nullptr) totals_->metrics()->AddOpenStreams(StreamMethodLabel(), 1);
  StartRead(&incoming_);
}

AttendStreamReactor::~AttendStreamReactor() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    ClearQueueLocked();  // Normally empty by now; the totals must not keep what this stream held.
  }
  if (totals_->metrics() != nullptr) totals_->metrics()->AddOpenStreams(StreamMethodLabel(), -1);
}

bool AttendStreamReactor::AtLimitLocked() const {
  const int64_t owed = outstanding_ + static_cast<int64_t>(write_queue_.size());
  if (owed >= std::max<int64_t>(1, limits_.max_pending_responses)) return true;
  return limits_.max_queued_bytes > 0 && queued_bytes_ >= limits_.max_queued_bytes;
}

void AttendStreamReactor::PopFrontLocked() {
  const int64_t bytes = write_queue_.front()->out_bytes;
  write_queue_.pop_front();
  queued_bytes_ -= bytes;
  totals_->Add(-1, -bytes);
}

void AttendStreamReactor::ClearQueueLocked() {
  if (write_queue_.empty()) return;
  totals_->Add(-static_cast<int64_t>(write_queue_.size()), -queued_bytes_);
  write_queue_.clear();
  queued_bytes_ = 0;
}

void AttendStreamReactor::OnReadDone(bool ok) {
  if (!ok) {  // Client half-closed, or the call is gone.
    bool finish;
    {
      std::lock_guard<std::mutex> lock(mu_);
      reads_done_ = true;
      finish = ShouldFinishLocked();
    }
    FinishIf(finish);
    return;
  }
  auto slot = std::make_shared<Slot>();
  absl::StatusOr<WireAttendRequest> parsed = ParseAttendRequest(incoming_, *payload_pool_);
  incoming_.Clear();
  bool read_next;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (finished_ || cancelled_) return;  // The call is ending; take no new work.
    ++outstanding_;
    // Backpressure: at the stream's limits, the next read waits for a write to complete.
    read_next = !AtLimitLocked();
    read_paused_ = !read_next;
  }
  if (read_next) StartRead(&incoming_);
  if (!parsed.ok()) {
    // Answered on the stream like any failed request (there is no request_id to echo).
    backends_.pipeline->Reject(AttendMethod::kStream, "", parsed.status(), Clock::now(), 0);
    Complete(slot, parsed.status());
    return;
  }
  slot->wire = *std::move(parsed);
  // Over the server's bound on unwritten stream answers: refuse (answered, logged and counted).
  if (absl::Status admitted = totals_->Admit(); !admitted.ok()) {
    backends_.pipeline->Reject(AttendMethod::kStream, slot->wire.header.request_id(), admitted, Clock::now(),
                               slot->wire.wire_bytes);
    Complete(slot, admitted);
    return;
  }

  // `this` outlives the work: Finish waits for outstanding_ to reach 0.
  // Latency counts from here, after the parse and the next read's start, as it always has.
  absl::Status started = slot->Start(
      backends_, caller_, AttendMethod::kStream, Clock::now(), SteadyDeadline(*context_),
      [this] { return cancelled_.load(std::memory_order_relaxed); },
      [this, slot](const absl::Status& status) { Complete(slot, status); });
  if (!started.ok()) Complete(slot, started);
}

void AttendStreamReactor::Complete(std::shared_ptr<Slot> slot, const absl::Status& status) {
  if (!status.ok()) {
    // A failed request is answered on the stream; the stream itself goes on.
    slot->response.Clear();
    slot->response.set_request_id(slot->wire.header.request_id());
    slot->response.mutable_status()->set_code(static_cast<int>(status.code()));
    slot->response.mutable_status()->set_message(std::string(status.message()));
    AppendErrorDetails(status, slot->response.mutable_status()->mutable_details());
    slot->result = WireResult{};
  }
  slot->out = slot->SerializeResponse();
  slot->out_bytes = static_cast<int64_t>(slot->out.Length());
  // Free what the write does not need now: the parsed fields, and the block unless O leaves from it.
  slot->wire.header.Clear();
  slot->decoded.reset();  // shared-memory regions are held no longer than the request
  slot->response.Clear();
  slot->wire.payloads = RequestPayloads{};
  bool finish;
  NextWrite next;
  {
    std::lock_guard<std::mutex> lock(mu_);
    --outstanding_;
    if (!cancelled_ && !write_failed_) {
      queued_bytes_ += slot->out_bytes;
      totals_->Add(1, slot->out_bytes);
      write_queue_.push_back(std::move(slot));
      next = ClaimNextWriteLocked();
    }
    finish = ShouldFinishLocked();
  }
  // Complete runs on the engine's threads too, where gRPC holds no reference to the call (it does
  // during OnReadDone and OnWriteDone). Once the lock is dropped, only the claimed write (writing_
  // holds Finish off) or the finish keeps this alive: without either, another thread may finish the
  // call and OnDone delete this, so not even a member call may follow; after either, nothing.
  if (next.message != nullptr) {
    StartClaimedWrite(next);
  } else if (finish) {
    FinishIf(finish);
  }
}

AttendStreamReactor::NextWrite AttendStreamReactor::ClaimNextWriteLocked() {
  NextWrite next;
  if (writing_ || write_queue_.empty() || finished_) return next;
  writing_ = true;
  // The front stays put until OnWriteDone pops it, which cannot run before the write starts.
  next.message = &write_queue_.front()->out;
  // With more answers queued behind this one, let gRPC hold it for them: a merged launch's answers
  // then leave in a few socket writes instead of one each. The last one queued flushes them all.
  if (write_queue_.size() > 1) next.options.set_buffer_hint();
  return next;
}

void AttendStreamReactor::StartClaimedWrite(const NextWrite& next) {
  // No Finish can come between the claim and this: it waits for writing_ to clear.
  if (next.message != nullptr) StartWrite(next.message, next.options);
}

void AttendStreamReactor::OnWriteDone(bool ok) {
  bool finish;
  bool resume = false;
  NextWrite next;
  {
    std::lock_guard<std::mutex> lock(mu_);
    writing_ = false;
    PopFrontLocked();
    if (!ok) {
      write_failed_ = true;  // Client is gone; nothing more can be delivered.
      ClearQueueLocked();
    } else {
      next = ClaimNextWriteLocked();
      if (read_paused_ && !finished_ && !cancelled_ && !AtLimitLocked()) {
        read_paused_ = false;
        resume = resuming_read_ = true;  // Holds off Finish until the read is issued.
      }
    }
    finish = ShouldFinishLocked();
  }
  if (resume) {
    StartRead(&incoming_);
    std::lock_guard<std::mutex> lock(mu_);
    resuming_read_ = false;
    finish = ShouldFinishLocked() || finish;
  }
  StartClaimedWrite(next);
  FinishIf(finish);
}

void AttendStreamReactor::OnCancel() {
  cancelled_.store(true);
  bool finish;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (!writing_) ClearQueueLocked();
    finish = ShouldFinishLocked();
  }
  FinishIf(finish);
}

bool AttendStreamReactor::ShouldFinishLocked() {
  if (finished_ || writing_ || resuming_read_ || outstanding_ > 0) return false;
  const bool aborted = cancelled_ || write_failed_;
  if (!aborted && !(reads_done_ && write_queue_.empty())) return false;
  // On cancellation a read may still be pending; gRPC fails it when the call ends.
  finished_ = true;
  return true;
}

void AttendStreamReactor::FinishIf(bool finish) {
  if (!finish) return;
  const bool cancelled = cancelled_;
  if (ServerMetrics* m = totals_->metrics(); m != nullptr) {
    m->RecordRpc(RpcRecord{StreamMethodLabel(), cancelled ? absl::StatusCode::kCancelled : absl::StatusCode::kOk,
                           MetricsClock::now() - started_});
  }
  // Nothing touches members after Finish: OnDone may run (and delete this) right away.
  if (cancelled) {
    Finish(grpc::Status(grpc::StatusCode::CANCELLED, "stream cancelled"));
  } else {
    Finish(grpc::Status::OK);
  }
}

void AttendStreamReactor::OnDone() { delete this; }

}  // namespace sage::server
