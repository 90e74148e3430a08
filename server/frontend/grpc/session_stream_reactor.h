// SessionService/AttendSessionStream: AttendSession calls on one bidirectional stream. Each request
// runs as a unary call would (decode here; a decode step appended and launched here too, others on a
// session worker, requests starting in the order read); answers are
// written in completion order, a failed request answered with its status and the stream going on.
// Bounded: with `max_pending` requests read and not yet written, the stream is not read until a
// write completes, so a client that does not read its answers is held back by flow control.
#pragma once

#include <atomic>
#include <chrono>
#include <cstddef>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>

#include "absl/functional/any_invocable.h"
#include "absl/status/status.h"
#include "grpcpp/support/server_callback.h"
#include "sageserve/v1/session.grpc.pb.h"
#include "server/core/session_attend.h"
#include "server/frontend/grpc/caller_start_gate.h"
#include "server/frontend/grpc/rpc_methods.h"
#include "server/frontend/grpc/shared_memory_refs.h"
#include "server/metrics/server_metrics.h"

namespace sage::server {

// Runs a job for the session keyed `key` (the service's session workers); its error if it cannot.
using SessionJobRunner = std::function<absl::Status(size_t key, absl::AnyInvocable<void()> job)>;

// AttendSessionStream's label in the RPC metrics (gRPC's full method name, from rpc_methods.h).
inline absl::string_view SessionStreamMethodLabel() {
  const std::string_view name = InfoOf(RpcMethod::kAttendSessionStream).name;
  return absl::string_view(name.data(), name.size());
}

class SessionStreamReactor final
    : public grpc::ServerBidiReactor<sageserve::v1::AttendSessionRequest, sageserve::v1::AttendSessionResponse> {
 public:
  // `sessions`, `metrics` (may be null) and whatever `run` uses must outlive the reactor. The stream
  // counts itself in the RPC metrics (open streams, the call's code and duration) rather than
  // through the interceptor, which would put every message of the stream through its hooks.
  SessionStreamReactor(grpc::CallbackServerContext* context, SessionAttend* sessions, SessionCaller caller,
                       SharedMemoryAccess shared_memory, SessionJobRunner run, int max_pending,
                       CallerStartGate* caller_starts, ServerMetrics* metrics);
  ~SessionStreamReactor() override;

  void OnReadDone(bool ok) override;
  void OnWriteDone(bool ok) override;
  void OnCancel() override;
  void OnDone() override { delete this; }

 private:
  struct Call {
    sageserve::v1::AttendSessionRequest request;  // the decoded steps view its bytes
    sageserve::v1::AttendSessionResponse response;
    std::chrono::steady_clock::time_point accepted = std::chrono::steady_clock::now();  // read off the stream
  };

  // Decodes `call` and starts it here (a decode step) or on a session worker.
  void Dispatch(const std::shared_ptr<Call>& call);
  void Complete(const std::shared_ptr<Call>& call, absl::StatusOr<SessionAttendResult> result);
  bool ShouldFinishLocked();  // true: the caller must call DoFinish() after dropping the lock
  void DoFinish();
  bool UnderLimitLocked() const;

  grpc::CallbackServerContext* const context_;
  SessionAttend* const sessions_;
  const SessionCaller caller_;
  const SharedMemoryAccess shared_memory_;  // the regions the stream's requests may name
  const SessionJobRunner run_;
  const int max_pending_;
  CallerStartGate* const caller_starts_;
  ServerMetrics* const metrics_;
  const MetricsClock::time_point started_ = MetricsClock::now();
  sageserve::v1::AttendSessionRequest incoming_;

  std::atomic<int> waiting_for_worker_{0};  // requests queued for or running on a session worker, not yet appended

  std::mutex mu_;
  std::deque<std::shared_ptr<Call>> write_queue_;  // front is being written while writing_
  int outstanding_ = 0;  // read and not yet answered (decoding, queued or running)
  bool reads_done_ = false;
  bool read_paused_ = false;
  bool resuming_read_ = false;  // a StartRead is being issued outside the lock: no Finish meanwhile
  bool dispatching_ = false;    // OnReadDone is starting a request: only it may issue the next read
  bool writing_ = false;
  bool write_failed_ = false;
  bool cancelled_ = false;
  bool finished_ = false;
};

}  // namespace sage::server
