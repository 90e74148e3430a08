// Access control on the gRPC side: the scope every sageserve RPC needs (kMethodScopes, the one
// table), and the check each handler makes first, before any work: the call's bearer token
// (metadata `authorization: Bearer <token>`) or, on a mutual-TLS listener, its client
// certificate's CN, looked up in core/access_control.h. Health and reflection are other services
// and stay open.
#pragma once

#include <array>
#include <optional>
#include <string_view>

#include "absl/status/statusor.h"
#include "grpcpp/server_context.h"
#include "grpcpp/support/server_callback.h"
#include "server/core/access_control.h"
#include "server/shared_memory/shared_memory_registry.h"

namespace sage::server {

struct MethodScope {
  std::string_view method;  // gRPC's full method name, "/package.Service/Method"
  Scope scope;
};

// Every method of every sageserve.v1 service (a test checks it against the proto descriptors).
inline constexpr std::array<MethodScope, 15> kMethodScopes = {{
    {"/sageserve.v1.AttentionService/Attend", Scope::kAttend},
    {"/sageserve.v1.AttentionService/AttendStream", Scope::kAttend},
    {"/sageserve.v1.AttentionService/GetServerInfo", Scope::kAttend},
    {"/sageserve.v1.AttentionService/SelfTest", Scope::kAttend},
    {"/sageserve.v1.RegistryService/RegisterModel", Scope::kAdmin},
    {"/sageserve.v1.RegistryService/ListModels", Scope::kAttend},
    {"/sageserve.v1.RegistryService/GetModel", Scope::kAttend},
    {"/sageserve.v1.RegistryService/DeleteModel", Scope::kAdmin},
    {"/sageserve.v1.RegistryService/GetPlan", Scope::kAttend},
    {"/sageserve.v1.RegistryService/SetPlan", Scope::kAdmin},
    {"/sageserve.v1.RegistryService/Calibrate", Scope::kAdmin},
    // Attend scope: one's own regions; admin sees every identity's (shared_memory_registry.h).
    {"/sageserve.v1.SharedMemoryService/RegisterSystemSharedMemory", Scope::kAttend},
    {"/sageserve.v1.SharedMemoryService/RegisterCudaSharedMemory", Scope::kAttend},
    {"/sageserve.v1.SharedMemoryService/UnregisterSharedMemory", Scope::kAttend},
    {"/sageserve.v1.SharedMemoryService/GetSharedMemoryStatus", Scope::kAttend},
}};

// The scope `method` needs; nullopt for a method not in the table.
constexpr std::optional<Scope> MethodScopeOf(std::string_view method) {
  for (const MethodScope& m : kMethodScopes) {
    if (m.method == method) return m.scope;
  }
  return std::nullopt;
}

// The caller's view of shared memory: its own regions, or every one with the admin scope.
RegionCaller RegionCallerOf(const Principal& caller);

class CallAuthorizer {
 public:
  // `access` must outlive the authorizer.
  explicit CallAuthorizer(AccessControl* access) : access_(access) {}

  // The caller of `method`, or UNAUTHENTICATED / PERMISSION_DENIED (a method missing from
  // kMethodScopes is refused, PERMISSION_DENIED: a new RPC stays closed until it is listed).
  absl::StatusOr<Principal> Check(grpc::CallbackServerContext* context, std::string_view method) const;

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
