// The gRPC listener's transport security, from ServerTlsOptions (plaintext when no certificate is
// configured).
#pragma once

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "grpcpp/security/server_credentials.h"

namespace sage::server {

// Transport security of the gRPC listener (PEM files). No certificate: plaintext, for loopback and
// trusted networks. The metrics endpoint is plain HTTP on its own address either way.
struct ServerTlsOptions {
  std::string cert_chain_file;   // server certificate chain; with private_key_file turns TLS on
  std::string private_key_file;
  std::string client_ca_file;    // set: mutual TLS, clients must present a certificate these CAs signed
};

// Reads the PEM files. INVALID_ARGUMENT when only one of certificate and key is given, a file is
// empty or not PEM, or the private key is not the certificate's; NOT_FOUND naming the option and
// path when a file cannot be read.
absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> ListenerCredentials(const ServerTlsOptions& tls);

}  // namespace sage::server
