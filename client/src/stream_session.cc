#include "sageserve/client/stream_session.h"

#include <condition_variable>
#include <deque>
#include <mutex>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "status_conversion.h"
#include "sageserve/client/client.h"

namespace sageserve {

// The gRPC side of a session. Writes go out one at a time from a queue; one read is always
// pending; results are dispatched by request_id. Lives until OnDone, which the owner waits for.
class StreamSession::Reactor final : public grpc::ClientBidiReactor<v1::AttendRequest, v1::AttendResponse> {
 public:
  Reactor(v1::AttentionService::Stub* stub, const StreamOptions& options) {
    if (options.deadline.count() > 0) {
      context_.set_deadline(std::chrono::system_clock::now() + options.deadline);
    }
    stub->async()->AttendStream(&context_, this);
    // Writes start from user threads (Send/Close), outside reactions; the hold keeps the call
    // from completing under them. It is released right after StartWritesDone.
    AddHold();
    StartRead(&incoming_);
    StartCall();
  }

  absl::Status Send(v1::AttendRequest request, Callback on_result) {
    if (request.request_id().empty()) {
      return absl::InvalidArgumentError("request_id must be set on a stream (results are matched by it)");
    }
    std::lock_guard<std::mutex> lock(mu_);
    if (done_) return absl::FailedPreconditionError("stream has ended: " + final_status_.ToString());
    if (closing_) return absl::FailedPreconditionError("stream is closing");
    auto [it, inserted] = pending_.emplace(request.request_id(), std::move(on_result));
    if (!inserted) {
      return absl::AlreadyExistsError("request_id '" + request.request_id() + "' is already in flight");
    }
    writes_.push_back(std::move(request));
    MaybeWriteLocked();
    return absl::OkStatus();
  }

  absl::Status Close() {
    std::unique_lock<std::mutex> lock(mu_);
    if (!closing_) {
      closing_ = true;
      MaybeWriteLocked();
    }
    done_cv_.wait(lock, [this] { return done_; });
    return final_status_;
  }

  void Cancel() { context_.TryCancel(); }

  // Cancels if still running, releases the hold and waits for OnDone.
  void Abandon() {
    if (!done()) Cancel();
    {
      std::lock_guard<std::mutex> lock(mu_);
      closing_ = true;
      MaybeWriteLocked();
    }
    WaitDone();
  }

  void WaitDone() {
    std::unique_lock<std::mutex> lock(mu_);
    done_cv_.wait(lock, [this] { return done_; });
  }

  bool done() {
    std::lock_guard<std::mutex> lock(mu_);
    return done_;
  }

  int in_flight() {
    std::lock_guard<std::mutex> lock(mu_);
    return static_cast<int>(pending_.size());
  }

  void OnWriteDone(bool ok) override {
    std::lock_guard<std::mutex> lock(mu_);
    writing_ = false;
    writes_.pop_front();
    // A failed write means the stream is broken (OnDone reports why): drop what is queued. If the
    // failed read (or Close) already asked for the half-close, it waited for this write; send it
    // now, which releases the hold, or OnDone never runs and every waiter hangs.
    if (!ok) writes_.clear();
    MaybeWriteLocked();
  }

  void OnWritesDoneDone(bool /*ok*/) override {}

  void OnReadDone(bool ok) override {
    if (!ok) {
      // The server finished the stream or it broke: stop writing and release the hold so that
      // OnDone runs and fails whatever is still pending with the stream's status.
      std::lock_guard<std::mutex> lock(mu_);
      closing_ = true;
      MaybeWriteLocked();
      return;
    }
    Callback callback;
    {
      std::lock_guard<std::mutex> lock(mu_);
      auto it = pending_.find(incoming_.request_id());
      if (it != pending_.end()) {
        callback = std::move(it->second);
        pending_.erase(it);
      }
    }
    if (callback) {
      if (incoming_.has_status() && incoming_.status().code() != 0) {
        callback(FromRequestStatus(incoming_.status()));
      } else {
        callback(std::move(incoming_));
      }
    }
    incoming_.Clear();
    StartRead(&incoming_);
  }

  void OnDone(const grpc::Status& status) override {
    std::unordered_map<std::string, Callback> orphaned;
    absl::Status final_status = FromGrpcStatus(status);
    {
      std::lock_guard<std::mutex> lock(mu_);
      orphaned.swap(pending_);
    }
    // Requests the server never answered fail with the stream's status (or UNKNOWN if it was OK).
    const absl::Status orphan_status =
        final_status.ok() ? absl::UnknownError("stream ended without a response") : final_status;
    for (auto& [id, callback] : orphaned) {
      if (callback) callback(orphan_status);
    }
    std::lock_guard<std::mutex> lock(mu_);
    final_status_ = final_status;
    done_ = true;
    done_cv_.notify_all();
  }

 private:
  void MaybeWriteLocked() {
    if (writing_ || writes_done_sent_) return;
    if (!writes_.empty()) {
      writing_ = true;
      // Requests queued behind this one: gRPC may hold it for them (fewer socket writes); the last
      // one queued is written without the hint and flushes them.
      grpc::WriteOptions options;
      if (writes_.size() > 1) options.set_buffer_hint();
      StartWrite(&writes_.front(), options);
      return;
    }
    if (closing_) {
      writes_done_sent_ = true;
      StartWritesDone();
      RemoveHold();  // No more operations from outside reactions.
    }
  }

  grpc::ClientContext context_;
  v1::AttendResponse incoming_;
  std::mutex mu_;
  std::condition_variable done_cv_;
  std::deque<v1::AttendRequest> writes_;  // Front is in flight when writing_.
  std::unordered_map<std::string, Callback> pending_;
  bool writing_ = false;
  bool closing_ = false;
  bool writes_done_sent_ = false;
  bool done_ = false;
  absl::Status final_status_;
};

StreamSession::StreamSession(v1::AttentionService::Stub* stub, const StreamOptions& options)
    : reactor_(std::make_unique<Reactor>(stub, options)) {}

StreamSession::~StreamSession() { reactor_->Abandon(); }

absl::Status StreamSession::Send(v1::AttendRequest request, Callback on_result) {
  return reactor_->Send(std::move(request), std::move(on_result));
}

std::future<absl::StatusOr<v1::AttendResponse>> StreamSession::Send(v1::AttendRequest request) {
  auto promise = std::make_shared<std::promise<absl::StatusOr<v1::AttendResponse>>>();
  std::future<absl::StatusOr<v1::AttendResponse>> future = promise->get_future();
  absl::Status sent = reactor_->Send(std::move(request), [promise](absl::StatusOr<v1::AttendResponse> r) {
    promise->set_value(std::move(r));
  });
  if (!sent.ok()) promise->set_value(sent);
  return future;
}

absl::Status StreamSession::Close() { return reactor_->Close(); }

void StreamSession::Cancel() { reactor_->Cancel(); }

int StreamSession::in_flight() const { return reactor_->in_flight(); }

}  // namespace sageserve
