// sageserve.v1.SessionService on the callback API: decodes sessions' calls into the core's
// protobuf-free types (core/session_attend.h, session/session_store.h) and encodes the answers.
// Create/Get/List/Fork/Truncate/Close answer on the reactor thread (bookkeeping and page
// references only); AttendSession appends and gathers there and answers from the worker that ran
// the launch.
#pragma once

#include "sageserve/v1/session.grpc.pb.h"
#include "server/core/session_attend.h"
#include "server/frontend/grpc/call_auth.h"

namespace sage::server {

class SessionService final : public sageserve::v1::SessionService::CallbackService {
 public:
  // `sessions` and `auth` must outlive the service.
  SessionService(SessionAttend* sessions, const CallAuthorizer* auth) : sessions_(sessions), auth_(auth) {}

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

 private:
  SessionAttend* const sessions_;
  const CallAuthorizer* const auth_;
};

}  // namespace sage::server
