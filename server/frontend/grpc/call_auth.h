// Access control on the gRPC side: the check each handler makes first (the scope each RPC needs is
// in rpc_methods.h), before any work: the call's bearer token
// (metadata `authorization: Bearer <token>`) or, on a mutual-TLS listener, its client
// certificate's CN, looked up in core/access_control.h. Health and reflection are other services
// and stay open.
#pragma once


#include "absl/status/statusor.h"
#include "grpcpp/server_context.h"
#include "grpcpp/support/server_callback.h"
#include "server/core/access_control.h"
#include "server/frontend/grpc/rpc_methods.h"
#include "server/shared_memory/shared_memory_registry.h"

namespace sage::server {

// The caller's view of shared memory: its own regions, or every one with the admin scope.
RegionCaller RegionCallerOf(const Principal& caller);

class CallAuthorizer {
 public:
  // `access` must outlive the authorizer.
  explicit CallAuthorizer(AccessControl* access) : access_(access) {}

  // The caller of `method`, or UNAUTHENTICATED / PERMISSION_DENIED.
  absl::StatusOr<Principal> Check(grpc::CallbackServerContext* context, RpcMethod method) const;

  bool tokens_required() const { return access_->tokens_required(); }
  std::string warning() const { return access_->warning(); }

 private:
  AccessControl* const access_;
};

// An authorizer without a token file (every caller the anonymous administrator), for services
// built outside SageServer (tests of one service). Lives for the whole process.
const CallAuthorizer* OpenAuthorizer();

// A bidi-streaming reactor that finishes at once with `status` (a stream refused at its start).
template <typename Req, typename Resp>
class RefusedBidiReactor final : public grpc::ServerBidiReactor<Req, Resp> {
 public:
  explicit RefusedBidiReactor(const grpc::Status& status) { this->Finish(status); }
  void OnDone() override { delete this; }
};

// A client-streaming reactor that finishes at once with `status`.
template <typename Req>
class RefusedReadReactor final : public grpc::ServerReadReactor<Req> {
 public:
  explicit RefusedReadReactor(const grpc::Status& status) { this->Finish(status); }
  void OnDone() override { delete this; }
};

}  // namespace sage::server
