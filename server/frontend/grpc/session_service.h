// sageserve.v1.SessionService on the callback API: decodes sessions' calls into the core's
// protobuf-free types (core/session_attend.h, session/session_store.h) and encodes the answers.
// Create/Get/List/Fork/Truncate/Close answer on the reactor thread (bookkeeping and page
// references only). AttendSession's appends and gathers (up to a whole layer's cache per step) run
// on a small set of session workers, never in a reactor: a call goes to the worker of its first
// step's session, so one session's calls keep their order; the answer comes from the worker that
// ran the launch.
#pragma once

#include <memory>
#include <vector>

#include "sageserve/v1/session.grpc.pb.h"
#include "server/core/serial_worker.h"
#include "server/core/session_attend.h"
#include "server/frontend/grpc/caller_start_gate.h"
#include "server/frontend/grpc/call_auth.h"
#include "server/metrics/server_metrics.h"
#include "server/shared_memory/shared_memory_registry.h"

namespace sage::server {

class SessionService final : public sageserve::v1::SessionService::CallbackService {
 public:
  // `sessions` and `auth` must outlive the service. `workers`: threads for AttendSession's appends
  // and gathers (at least 1), each with up to `max_queued` calls waiting (RESOURCE_EXHAUSTED past it).
  // `metrics` may be null; AttendSessionStream counts itself in it (session_stream_reactor.h).
  // `shared_memory`: the regions steps' q and o_output / lse_output may name (null: such calls are
  // refused); it must outlive the service too.
  SessionService(SessionAttend* sessions, const CallAuthorizer* auth, ServerMetrics* metrics,
                 const SharedMemoryRegistry* shared_memory, int workers = 4, int max_queued = 256);
  ~SessionService() override;
  // Refuses new AttendSession work (UNAVAILABLE) and finishes what is queued. Idempotent.
  void Shutdown();

  grpc::ServerUnaryReactor* CreateSession(grpc::CallbackServerContext* context,
                                          const sageserve::v1::CreateSessionRequest* request,
                                          sageserve::v1::CreateSessionResponse* response) override;
  grpc::ServerUnaryReactor* AttendSession(grpc::CallbackServerContext* context,
                                          const sageserve::v1::AttendSessionRequest* request,
                                          sageserve::v1::AttendSessionResponse* response) override;
  grpc::ServerUnaryReactor* ForkSession(grpc::CallbackServerContext* context,
                                        const sageserve::v1::ForkSessionRequest* request,
                                        sageserve::v1::ForkSessionResponse* response) override;
  grpc::ServerUnaryReactor* TruncateSession(grpc::CallbackServerContext* context,
                                            const sageserve::v1::TruncateSessionRequest* request,
                                            sageserve::v1::TruncateSessionResponse* response) override;
  grpc::ServerUnaryReactor* CloseSession(grpc::CallbackServerContext* context,
                                         const sageserve::v1::CloseSessionRequest* request,
                                         sageserve::v1::CloseSessionResponse* response) override;
  grpc::ServerUnaryReactor* GetSession(grpc::CallbackServerContext* context,
                                       const sageserve::v1::GetSessionRequest* request,
                                       sageserve::v1::GetSessionResponse* response) override;
  grpc::ServerUnaryReactor* ListSessions(grpc::CallbackServerContext* context,
                                         const sageserve::v1::ListSessionsRequest* request,
                                         sageserve::v1::ListSessionsResponse* response) override;
  grpc::ServerBidiReactor<sageserve::v1::AttendSessionRequest, sageserve::v1::AttendSessionResponse>*
  AttendSessionStream(grpc::CallbackServerContext* context) override;

 private:
  SessionAttend* const sessions_;
  const CallAuthorizer* const auth_;
  ServerMetrics* const metrics_;
  const SharedMemoryRegistry* const shared_memory_;
  // Runs `job` on the session worker for `key`, counted for caller_starts_ while it waits or runs.
  absl::Status RunOnWorker(size_t key, absl::AnyInvocable<void()> job);

  std::vector<std::unique_ptr<SerialWorker>> workers_;
  // One call at a time starts on a gRPC thread (see caller_start_gate.h).
  CallerStartGate caller_starts_{1};
};

}  // namespace sage::server
