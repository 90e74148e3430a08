// One AttendStream with many requests in flight. Send() queues a request and returns at once;
// the result arrives through a callback or a future, matched by request_id, in completion order.
// A failed request fails only itself. Thread-safe.
#pragma once

#include <functional>
#include <future>
#include <memory>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "sageserve/client/options.h"
#include "sageserve/v1/attention_service.grpc.pb.h"

namespace sageserve {

class StreamSession {
 public:
  // Runs on a gRPC thread, one at a time per session: keep it short and do not call back into this
  // session's Close(). It may Send() the next request (that is the cheapest way to keep a stream
  // full: no thread of the caller's is woken per answer).
  using Callback = std::function<void(absl::StatusOr<v1::AttendResponse>)>;

  StreamSession(v1::AttentionService::Stub* stub, const StreamOptions& options);
  ~StreamSession();  // Cancels the stream if Close() was not called, and waits for it to end.
  StreamSession(const StreamSession&) = delete;
  StreamSession& operator=(const StreamSession&) = delete;

  // request_id must be non-empty and unique among requests in flight (INVALID_ARGUMENT /
  // ALREADY_EXISTS otherwise); FAILED_PRECONDITION after Close() or once the stream ended.
  absl::Status Send(v1::AttendRequest request, Callback on_result);
  std::future<absl::StatusOr<v1::AttendResponse>> Send(v1::AttendRequest request);

  // Half-closes, waits for every outstanding result, returns the stream's final status.
  absl::Status Close();
  // Ends the stream now; outstanding requests fail with CANCELLED.
  void Cancel();
  int in_flight() const;

  class Reactor;

 private:
  std::unique_ptr<Reactor> reactor_;
};

}  // namespace sageserve
