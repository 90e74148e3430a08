// TLS on the gRPC listener. The certificates are made at test time with the openssl CLI: a CA, a
// server certificate for 127.0.0.1 / localhost, and a client certificate. The server answers TLS
// clients that trust its CA and refuses plaintext ones. With a client CA set (mutual TLS), it
// refuses clients without a certificate. Bad settings fail at start, naming the option.
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>

#include "gtest/gtest.h"
#include "sageserve/client/client.h"
#include "server/app/server_options.h"
#include "tests/server/child_server.h"
#include "tests/server/test_support.h"

namespace sage::testing {
namespace {
namespace fs = std::filesystem;

class Tls : public ::testing::Test {
 protected:
  static void SetUpTestSuite() { dir_ = new fs::path(MakeTestCertificates("tls", "test-client")); }
  static void TearDownTestSuite() {
    if (!dir_->empty()) fs::remove_all(*dir_);
    delete dir_;
  }
  void SetUp() override {
    ASSERT_FALSE(dir_->empty()) << "openssl CLI not found (run scripts/bootstrap.sh)";
  }
  server::ServerOptions TlsServer(bool mutual) const {
    server::ServerOptions o = TestServerOptions();
    o.tls.cert_chain_file = (*dir_ / "server.pem").string();
    o.tls.private_key_file = (*dir_ / "server.key").string();
    if (mutual) o.tls.client_ca_file = (*dir_ / "ca.pem").string();
    return o;
  }
  // A client of `target`: plaintext, or TLS trusting the test CA, optionally with the client cert.
  std::unique_ptr<sageserve::Client> Client(const std::string& target, bool tls, bool client_cert) const {
    sageserve::ClientOptions o;
    o.target = target;
    o.deadline = std::chrono::milliseconds(5000);
    if (tls) {
      o.security = sageserve::TransportSecurity::kTls;
      o.tls.root_certs_pem = ReadWholeFile(*dir_ / "ca.pem");
      if (client_cert) {
        o.tls.client_cert_pem = ReadWholeFile(*dir_ / "client.pem");
        o.tls.client_key_pem = ReadWholeFile(*dir_ / "client.key");
      }
    }
    auto c = sageserve::Client::Create(o);
    EXPECT_TRUE(c.ok()) << c.status();
    return c.ok() ? *std::move(c) : nullptr;
  }
  // Starts a server with `o` on a free port and names its target.
  std::unique_ptr<server::SageServer> Start(const server::ServerOptions& o, std::string* target) {
    auto s = server::SageServer::Start(o);
    EXPECT_TRUE(s.ok()) << s.status();
    if (!s.ok()) return nullptr;
    *target = "127.0.0.1:" + std::to_string((*s)->port());
    return *std::move(s);
  }
  static fs::path* dir_;
};
fs::path* Tls::dir_ = nullptr;

TEST_F(Tls, ServesTlsClientsAndRefusesPlaintext) {
  std::string target;
  auto server = Start(TlsServer(/*mutual=*/false), &target);
  ASSERT_NE(server, nullptr);
  ProblemShape shape;
  const auto request = MakeRequest(shape, "over-tls");
  auto tls = Client(target, /*tls=*/true, /*client_cert=*/false);
  absl::StatusOr<sageserve::v1::AttendResponse> r = tls->Attend(request);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->request_id(), "over-tls");
  auto plain = Client(target, /*tls=*/false, false);
  EXPECT_EQ(plain->CheckHealth().status().code(), absl::StatusCode::kUnavailable);
  // A TLS client that does not trust the test CA (system roots) is refused too.
  sageserve::ClientOptions untrusting;
  untrusting.target = target;
  untrusting.security = sageserve::TransportSecurity::kTls;
  untrusting.deadline = std::chrono::milliseconds(5000);
  auto stranger = sageserve::Client::Create(untrusting);
  ASSERT_TRUE(stranger.ok());
  EXPECT_EQ((*stranger)->CheckHealth().status().code(), absl::StatusCode::kUnavailable);
}

TEST_F(Tls, MutualTlsRequiresAClientCertificate) {
  std::string target;
  auto server = Start(TlsServer(/*mutual=*/true), &target);
  ASSERT_NE(server, nullptr);
  auto with_cert = Client(target, /*tls=*/true, /*client_cert=*/true);
  absl::StatusOr<sageserve::HealthStatus> ok = with_cert->CheckHealth();
  ASSERT_TRUE(ok.ok()) << ok.status();
  EXPECT_EQ(*ok, sageserve::HealthStatus::kServing);
  auto without = Client(target, /*tls=*/true, /*client_cert=*/false);
  EXPECT_EQ(without->CheckHealth().status().code(), absl::StatusCode::kUnavailable);
}

TEST_F(Tls, BadSettingsFailAtStartNamingTheOption) {
  server::ServerOptions only_cert = TestServerOptions();
  only_cert.tls.cert_chain_file = (*dir_ / "server.pem").string();
  absl::Status s = server::SageServer::Start(only_cert).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  EXPECT_NE(s.message().find("tls_key"), std::string::npos) << s;

  server::ServerOptions missing = TlsServer(false);
  missing.tls.private_key_file = (*dir_ / "no-such.key").string();
  s = server::SageServer::Start(missing).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kNotFound) << s;
  EXPECT_NE(s.message().find("no-such.key"), std::string::npos) << s;

  server::ServerOptions not_pem = TlsServer(false);
  not_pem.tls.cert_chain_file = (*dir_ / "server.ext").string();
  s = server::SageServer::Start(not_pem).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  EXPECT_NE(s.message().find("not a PEM file"), std::string::npos) << s;

  // A key that is not the certificate's: named as such, not reported as a listening failure.
  server::ServerOptions wrong_key = TlsServer(false);
  wrong_key.tls.private_key_file = (*dir_ / "other.key").string();
  s = server::SageServer::Start(wrong_key).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  EXPECT_NE(s.message().find("tls_key: the private key does not match the certificate in tls_cert"), std::string::npos)
      << s;
  EXPECT_NE(s.message().find("other.key"), std::string::npos) << s;

  // A key file holding no private key.
  server::ServerOptions cert_as_key = TlsServer(false);
  cert_as_key.tls.private_key_file = (*dir_ / "server.pem").string();
  s = server::SageServer::Start(cert_as_key).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  EXPECT_NE(s.message().find("tls_key"), std::string::npos) << s;

  server::ServerOptions ca_only = TestServerOptions();
  ca_only.tls.client_ca_file = (*dir_ / "ca.pem").string();
  s = server::SageServer::Start(ca_only).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  EXPECT_NE(s.message().find("tls_client_ca"), std::string::npos) << s;
}

}  // namespace
}  // namespace sage::testing
