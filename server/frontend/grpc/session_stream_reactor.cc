#include "server/frontend/grpc/session_stream_reactor.h"

#include <algorithm>
#include <string>
#include <utility>

#include "server/frontend/grpc/deadline.h"
#include "server/frontend/grpc/session_codec.h"
#include "server/frontend/grpc/status_mapping.h"

namespace sage::server {

SessionStreamReactor::SessionStreamReactor(grpc::CallbackServerContext* context, SessionAttend* sessions,
                                           SessionCaller caller, SharedMemoryAccess shared_memory,
                                           SessionJobRunner run, int max_pending, CallerStartGate* caller_starts,
                                           ServerMetrics* metrics)
    : context_(context), sessions_(sessions), caller_(std::move(caller)), shared_memory_(std::move(shared_memory)),
      run_(std::move(run)),
      max_pending_(std::max(1, max_pending)), caller_starts_(caller_starts), metrics_(metrics) {
  if (metrics_ != nullptr) metrics_->AddOpenStreams(SessionStreamMethodLabel(), 1);
  StartRead(&incoming_);
}

SessionStreamReactor::~SessionStreamReactor() {
  if (metrics_ != nullptr) metrics_->AddOpenStreams(SessionStreamMethodLabel(), -1);
}

bool SessionStreamReactor::UnderLimitLocked() const {
  return outstanding_ + static_cast<int>(write_queue_.size()) < max_pending_;
}

bool SessionStreamReactor::ShouldFinishLocked() {
  if (finished_ || writing_ || resuming_read_ || outstanding_ > 0) return false;
  if (!(cancelled_ || write_failed_) && !(reads_done_ && write_queue_.empty())) return false;
  finished_ = true;
  return true;
}

void SessionStreamReactor::DoFinish() {
  bool cancelled;
  {
    std::lock_guard<std::mutex> lock(mu_);
    cancelled = cancelled_;
  }
  if (metrics_ != nullptr) {
    metrics_->RecordRpc(RpcRecord{SessionStreamMethodLabel(), cancelled ? absl::StatusCode::kCancelled : absl::StatusCode::kOk,
                                  MetricsClock::now() - started_});
  }
  // Nothing touches members after Finish: OnDone may run (and delete this) right away.
  Finish(cancelled ? grpc::Status(grpc::StatusCode::CANCELLED, "stream cancelled") : grpc::Status::OK);
}

void SessionStreamReactor::OnReadDone(bool ok) {
  if (!ok) {  // the client half-closed, or the call ended
    bool finish;
    {
      std::lock_guard<std::mutex> lock(mu_);
      reads_done_ = true;
      finish = ShouldFinishLocked();
    }
    if (finish) DoFinish();
    return;
  }
  auto call = std::make_shared<Call>();
  call->request.Swap(&incoming_);
  bool read_next;
  {
    std::lock_guard<std::mutex> lock(mu_);
    // A read that completes as the call ends (cancelled, or already finished: gRPC may deliver it
    // after Finish) takes no new work: a job started now could outlive the reactor.
    if (finished_ || cancelled_) return;
    ++outstanding_;
    read_next = UnderLimitLocked();
    read_paused_ = !read_next;
    resuming_read_ = read_next;  // no Finish before the next read is issued below
    dispatching_ = true;         // and no read resumed by a write meanwhile
  }
  Dispatch(call);
  // The next read only after this request has started or is queued, so requests start in the order
  // sent. A paused read whose answers were written during the dispatch resumes here.
  {
    std::lock_guard<std::mutex> lock(mu_);
    dispatching_ = false;
    if (!read_next && read_paused_ && !cancelled_ && !write_failed_ && !reads_done_ && UnderLimitLocked()) {
      read_paused_ = false;
      read_next = resuming_read_ = true;
    }
  }
  if (read_next) {
    StartRead(&incoming_);
    bool finish;
    {
      std::lock_guard<std::mutex> lock(mu_);
      resuming_read_ = false;
      finish = ShouldFinishLocked();
    }
    if (finish) DoFinish();
  }
}

void SessionStreamReactor::Dispatch(const std::shared_ptr<Call>& call) {
  absl::StatusOr<SessionAttendRequest> decoded = DecodeAttendSession(call->request, &shared_memory_);
  if (!decoded.ok()) return Complete(call, decoded.status());
  decoded->accepted = call->accepted;
  const auto start = [this, call](SessionAttendRequest request) {
    absl::Status started = sessions_->Start(
        caller_, std::move(request), SteadyDeadline(*context_), [this] { return context_->IsCancelled(); },
        [this, call](absl::StatusOr<SessionAttendResult> result) { Complete(call, std::move(result)); });
    if (!started.ok()) Complete(call, started);
  };
  // A decode step starts here unless an earlier request of this stream is queued for or running on
  // a worker (its appends must come first).
  if (sessions_->StartsOnCaller(caller_, *decoded) && waiting_for_worker_.load() == 0 && caller_starts_->TryEnter()) {
    start(*std::move(decoded));
    caller_starts_->Leave();
    return;
  }
  const size_t key = decoded->steps.empty() ? 0 : std::hash<std::string>()(decoded->steps.front().session_id);
  waiting_for_worker_.fetch_add(1);
  // `this` outlives the job: no Finish while outstanding_ > 0.
  absl::Status queued = run_(key, [this, start, request = *std::move(decoded)]() mutable {
    start(std::move(request));
    waiting_for_worker_.fetch_sub(1);  // its appends are done: a later decode step may start on the reactor
  });
  if (!queued.ok()) {
    waiting_for_worker_.fetch_sub(1);
    Complete(call, queued);
  }
}

void SessionStreamReactor::Complete(const std::shared_ptr<Call>& call, absl::StatusOr<SessionAttendResult> result) {
  sageserve::v1::AttendSessionResponse& r = call->response;
  r.set_request_id(call->request.request_id());
  if (result.ok()) {
    ResultToWire(*result, call->request, &r);
    r.mutable_timings()->set_total_us(
        std::chrono::duration_cast<std::chrono::microseconds>(std::chrono::steady_clock::now() - call->accepted).count());
  } else {
    r.mutable_status()->set_code(static_cast<int>(result.status().code()));
    r.mutable_status()->set_message(std::string(result.status().message()));
    AppendErrorDetails(result.status(), r.mutable_status()->mutable_details());
  }
  call->request.Clear();  // its bytes are not needed for the answer
  const sageserve::v1::AttendSessionResponse* write = nullptr;
  bool finish;
  {
    std::lock_guard<std::mutex> lock(mu_);
    --outstanding_;
    if (!cancelled_ && !write_failed_) {
      write_queue_.push_back(call);
      if (!writing_) {
        writing_ = true;
        write = &write_queue_.front()->response;
      }
    }
    finish = ShouldFinishLocked();
  }
  // One of the two at most, then return: once either is issued this reactor may go at any time.
  if (write != nullptr) {
    StartWrite(write);
  } else if (finish) {
    DoFinish();
  }
}

void SessionStreamReactor::OnWriteDone(bool ok) {
  const sageserve::v1::AttendSessionResponse* next = nullptr;
  bool resume = false;
  bool finish;
  {
    std::lock_guard<std::mutex> lock(mu_);
    writing_ = false;
    if (!write_queue_.empty()) write_queue_.pop_front();
    if (!ok) {
      write_failed_ = true;  // the client is gone: nothing more can be delivered
      write_queue_.clear();
    } else if (!write_queue_.empty() && !cancelled_) {
      writing_ = true;
      next = &write_queue_.front()->response;
    }
    if (read_paused_ && !dispatching_ && !cancelled_ && !write_failed_ && !reads_done_ && UnderLimitLocked()) {
      read_paused_ = false;
      resume = resuming_read_ = true;
    }
    finish = ShouldFinishLocked();
  }
  if (resume) {
    StartRead(&incoming_);
    std::lock_guard<std::mutex> lock(mu_);
    resuming_read_ = false;
    finish = ShouldFinishLocked() || finish;
  }
  if (next != nullptr) {
    StartWrite(next);
  } else if (finish) {
    DoFinish();
  }
}

void SessionStreamReactor::OnCancel() {
  bool finish;
  {
    std::lock_guard<std::mutex> lock(mu_);
    cancelled_ = true;
    if (!writing_) write_queue_.clear();
    finish = ShouldFinishLocked();
  }
  if (finish) DoFinish();
}

}  // namespace sage::server
