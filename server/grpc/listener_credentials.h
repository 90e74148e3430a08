// The gRPC listener's transport security, from ServerTlsOptions (plaintext when no certificate is
// configured).
#pragma once

#include <memory>

#include "absl/status/statusor.h"
#include "grpcpp/security/server_credentials.h"
#include "server/server_options.h"

namespace sage::server {

// Reads the PEM files. INVALID_ARGUMENT when only one of certificate and key is given, or a file is
// empty or not PEM; NOT_FOUND naming the option and path when a file cannot be read.
absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> ListenerCredentials(const ServerTlsOptions& tls);

}  // namespace sage::server
