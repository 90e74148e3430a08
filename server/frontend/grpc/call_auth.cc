#include "server/frontend/grpc/call_auth.h"

#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "grpcpp/security/auth_context.h"
#include "server/util/log_field.h"
#include "spdlog/spdlog.h"

namespace sage::server {

const CallAuthorizer* OpenAuthorizer() {
  static AccessControl* const open = AccessControl::Create({})->release();
  static const CallAuthorizer* const authorizer = new CallAuthorizer(open);
  return authorizer;
}

RegionCaller RegionCallerOf(const Principal& caller) { return RegionCaller{caller.identity, caller.admin()}; }

absl::StatusOr<Principal> CallAuthorizer::Check(grpc::CallbackServerContext* context, RpcMethod method) const {
  const RpcMethodInfo& info = InfoOf(method);
  CallCredentials credentials;
  std::string common_name;
  if (access_->tokens_required()) {
    const auto& metadata = context->client_metadata();
    for (auto [it, end] = metadata.equal_range("authorization"); it != end; ++it) {
      credentials.authorization.push_back(absl::string_view(it->second.data(), it->second.size()));
    }
    // Only set when gRPC verified the peer's certificate against --tls_client_ca (the listener
    // requires one then); AccessControl uses it only when told the listener verifies them.
    std::shared_ptr<const grpc::AuthContext> auth = context->auth_context();
    if (auth != nullptr && auth->IsPeerAuthenticated()) {
      std::vector<grpc::string_ref> cn = auth->FindPropertyValues("x509_common_name");
      if (cn.size() == 1) common_name.assign(cn.front().data(), cn.front().size());
    }
    credentials.cert_common_name = absl::string_view(common_name);
  }
  const absl::string_view name(info.name.data(), info.name.size());
  absl::StatusOr<Principal> caller = access_->Check(credentials, info.scope, name);
  if (!caller.ok()) {
    spdlog::warn("access control: {} from {} refused: {}", info.name, LogField(context->peer()),
                 LogField(caller.status().ToString(), kLogStatusMaxBytes));
  }
  return caller;
}

}  // namespace sage::server
