#include "server/frontend/grpc/listener_credentials.h"

#include <fstream>
#include <memory>
#include <sstream>
#include <string>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "openssl/bio.h"
#include "openssl/err.h"
#include "openssl/evp.h"
#include "openssl/pem.h"
#include "openssl/x509.h"

namespace sage::server {
namespace {

// The whole file, which must hold at least one PEM block.
absl::StatusOr<std::string> ReadPem(const std::string& option, const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat(option, ": cannot read ", path));
  std::stringstream ss;
  ss << in.rdbuf();
  std::string pem = ss.str();
  if (!absl::StrContains(pem, "-----BEGIN ")) {
    return absl::InvalidArgumentError(absl::StrCat(option, ": ", path, " is not a PEM file"));
  }
  return pem;
}

// OpenSSL's reason for the last failure on this thread, and an empty queue after it (gRPC shares
// the library and its per-thread error queue).
std::string TakeOpenSslError() {
  const unsigned long e = ERR_peek_last_error();
  const char* reason = e == 0 ? nullptr : ERR_reason_error_string(e);
  ERR_clear_error();
  return reason == nullptr ? "unknown error" : reason;
}

// gRPC only finds a key that is not the certificate's when it builds the listener, and then reports
// a failure to listen; check here so that the error names the problem.
absl::Status CheckKeyMatchesCertificate(const ServerTlsOptions& tls, const std::string& cert_pem,
                                        const std::string& key_pem) {
  using Bio = std::unique_ptr<BIO, decltype(&BIO_free)>;
  Bio cert_bio(BIO_new_mem_buf(cert_pem.data(), static_cast<int>(cert_pem.size())), BIO_free);
  Bio key_bio(BIO_new_mem_buf(key_pem.data(), static_cast<int>(key_pem.size())), BIO_free);
  if (!cert_bio || !key_bio) return absl::ResourceExhaustedError("tls: out of memory reading the PEM files");
  // The first certificate of the chain is the server's own.
  std::unique_ptr<X509, decltype(&X509_free)> cert(PEM_read_bio_X509(cert_bio.get(), nullptr, nullptr, nullptr),
                                                   X509_free);
  if (!cert) {
    return absl::InvalidArgumentError(
        absl::StrCat("tls_cert: ", tls.cert_chain_file, " holds no PEM certificate (", TakeOpenSslError(), ")"));
  }
  // No passphrase callback: an encrypted key fails here rather than prompting on the terminal.
  pem_password_cb* no_passphrase = [](char*, int, int, void*) { return 0; };
  std::unique_ptr<EVP_PKEY, decltype(&EVP_PKEY_free)> key(
      PEM_read_bio_PrivateKey(key_bio.get(), nullptr, no_passphrase, nullptr), EVP_PKEY_free);
  if (!key) {
    return absl::InvalidArgumentError(absl::StrCat("tls_key: ", tls.private_key_file,
                                                   " holds no unencrypted PEM private key (", TakeOpenSslError(), ")"));
  }
  if (X509_check_private_key(cert.get(), key.get()) != 1) {
    ERR_clear_error();
    return absl::InvalidArgumentError(
        absl::StrCat("tls_key: the private key does not match the certificate in tls_cert (key ", tls.private_key_file,
                     ", certificate ", tls.cert_chain_file, ")"));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> ListenerCredentials(const ServerTlsOptions& tls) {
  const bool has_cert = !tls.cert_chain_file.empty(), has_key = !tls.private_key_file.empty();
  if (!has_cert && !has_key) {
    if (!tls.client_ca_file.empty()) {
      return absl::InvalidArgumentError("tls_client_ca: client certificates need TLS (set tls_cert and tls_key)");
    }
    return grpc::InsecureServerCredentials();
  }
  if (has_cert != has_key) {
    return absl::InvalidArgumentError(
        absl::StrCat(has_cert ? "tls_key" : "tls_cert", ": TLS needs both a certificate chain and its private key"));
  }
  absl::StatusOr<std::string> cert = ReadPem("tls_cert", tls.cert_chain_file);
  if (!cert.ok()) return cert.status();
  absl::StatusOr<std::string> key = ReadPem("tls_key", tls.private_key_file);
  if (!key.ok()) return key.status();
  if (absl::Status match = CheckKeyMatchesCertificate(tls, *cert, *key); !match.ok()) return match;
  grpc::SslServerCredentialsOptions ssl(GRPC_SSL_DONT_REQUEST_CLIENT_CERTIFICATE);
  ssl.pem_key_cert_pairs.push_back({*key, *cert});
  if (!tls.client_ca_file.empty()) {
    // Mutual TLS: a client without a certificate signed by these CAs does not get a connection.
    absl::StatusOr<std::string> ca = ReadPem("tls_client_ca", tls.client_ca_file);
    if (!ca.ok()) return ca.status();
    ssl.pem_root_certs = *ca;
    ssl.client_certificate_request = GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY;
  }
  return grpc::SslServerCredentials(ssl);
}

}  // namespace sage::server
