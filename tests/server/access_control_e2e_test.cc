// Access control end to end (docs/SECURITY.md, "Access control"): a server with --token_file
// answers UNAUTHENTICATED without a (known) token and PERMISSION_DENIED for a scope the token lacks;
// health stays open; shared-memory regions are their owner's; the file is reloaded (mtime check,
// SIGHUP) and a bad one stops the server at start naming the line; without a file GetServerInfo
// says anyone is an administrator; every sageserve method has a scope; mTLS CNs map to identities.
#include <signal.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>

#include "gtest/gtest.h"
#include "google/protobuf/descriptor.h"
#include "grpcpp/grpcpp.h"
#include "sageserve/client/shared_memory.h"
#include "sageserve/v1/registry.grpc.pb.h"
#include "sageserve/v1/session.grpc.pb.h"
#include "sageserve/v1/shared_memory.grpc.pb.h"
#include "server/frontend/grpc/call_auth.h"
#include "tests/server/child_server.h"
#include "tests/server/test_support.h"

namespace sage::testing {
namespace {
namespace v1 = ::sageserve::v1;
namespace fs = std::filesystem;

constexpr char kAdmin[] = "admin-token-0123456789abcdef";
constexpr char kAlice[] = "alice-token-0123456789abcdef";
constexpr char kBob[] = "bob-token-0123456789abcdef";

std::string TokenFileText() {
  return std::string("# identities of this test\n") + kAdmin + " ops admin\n" + kAlice + " alice attend\n" + kBob +
         " bob attend\n";
}

std::string WriteTokenFile(const std::string& text, const std::string& tag) {
  const std::string path = ::testing::TempDir() + "/sage_e2e_tokens_" + tag + "_" + std::to_string(::getpid());
  std::ofstream(path, std::ios::trunc) << text;
  fs::permissions(path, fs::perms::owner_read | fs::perms::owner_write);
  return path;
}

std::unique_ptr<sageserve::Client> ClientWith(const std::string& target, const std::string& token) {
  sageserve::ClientOptions o;
  o.target = target;
  o.token = token;
  o.deadline = std::chrono::milliseconds(20000);
  absl::StatusOr<std::unique_ptr<sageserve::Client>> c = sageserve::Client::Create(o);
  EXPECT_TRUE(c.ok()) << c.status();
  return c.ok() ? *std::move(c) : nullptr;
}

grpc::Status RegisterModel(const sageserve::Client& client, const std::string& name) {
  auto stub = v1::RegistryService::NewStub(client.channel());
  grpc::ClientContext ctx;
  v1::RegisterModelRequest req;
  req.mutable_spec()->set_name(name);
  req.mutable_spec()->set_num_layers(2);
  req.mutable_spec()->set_q_heads(4);
  req.mutable_spec()->set_kv_heads(2);
  req.mutable_spec()->set_head_dim(64);
  v1::RegisterModelResponse resp;
  return stub->RegisterModel(&ctx, req, &resp);
}

grpc::Status ListModels(const sageserve::Client& client) {
  auto stub = v1::RegistryService::NewStub(client.channel());
  grpc::ClientContext ctx;
  v1::ListModelsResponse resp;
  return stub->ListModels(&ctx, v1::ListModelsRequest(), &resp);
}

grpc::Status Calibrate(const sageserve::Client& client) {
  auto stub = v1::RegistryService::NewStub(client.channel());
  grpc::ClientContext ctx;
  v1::CalibrateResponse resp;
  auto writer = stub->Calibrate(&ctx, &resp);
  v1::CalibrateRequest req;
  req.set_model("m");
  writer->Write(req);
  writer->WritesDone();
  return writer->Finish();
}

class AccessControlE2E : public ::testing::Test {
 protected:
  void SetUp() override {
    path_ = WriteTokenFile(TokenFileText(), "main");
    server::ServerOptions o = TestServerOptions();
    o.access.token_file = path_;
    o.access.check_interval = std::chrono::milliseconds(50);
    o.shared_memory.policy = server::SharedMemoryPolicy::kAllow;
    StartServer(o, nullptr, &s_);  // s_.client has no token
  }
  void TearDown() override { fs::remove(path_); }
  std::string path_;
  RunningServer s_;
};

TEST_F(AccessControlE2E, NoTokenIsUnauthenticated) {
  ProblemShape shape;
  absl::StatusOr<v1::AttendResponse> r = s_.client->Attend(MakeRequest(shape, "anon"));
  EXPECT_EQ(r.status().code(), absl::StatusCode::kUnauthenticated) << r.status();
  EXPECT_EQ(RegisterModel(*s_.client, "m").error_code(), grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_EQ(s_.client->GetServerInfo().status().code(), absl::StatusCode::kUnauthenticated);
  EXPECT_EQ(s_.client->GetSharedMemoryStatus().status().code(), absl::StatusCode::kUnauthenticated);
  // A stream is refused at its start.
  auto stream = s_.client->OpenStream();
  EXPECT_FALSE(stream->Send(MakeRequest(shape, "s")).get().ok());
  EXPECT_EQ(stream->Close().code(), absl::StatusCode::kUnauthenticated);

  // An unknown token: same code, and the message does not echo it.
  auto wrong = ClientWith(s_.target, "wrong-token-0123456789abcdef");
  absl::StatusOr<v1::AttendResponse> w = wrong->Attend(MakeRequest(shape, "wrong"));
  EXPECT_EQ(w.status().code(), absl::StatusCode::kUnauthenticated);
  EXPECT_EQ(w.status().message().find("wrong-token"), std::string::npos) << w.status();
}

TEST_F(AccessControlE2E, HealthStaysOpen) {
  absl::StatusOr<sageserve::HealthStatus> h = s_.client->CheckHealth();
  ASSERT_TRUE(h.ok()) << h.status();
  EXPECT_EQ(*h, sageserve::HealthStatus::kServing);
  h = s_.client->CheckHealth("sageserve.v1.AttentionService");
  ASSERT_TRUE(h.ok()) << h.status();
  EXPECT_EQ(*h, sageserve::HealthStatus::kServing);
}

TEST_F(AccessControlE2E, AttendScopeCannotWrite) {
  auto alice = ClientWith(s_.target, kAlice);
  ProblemShape shape;
  absl::StatusOr<v1::AttendResponse> r = alice->Attend(MakeRequest(shape, "alice"));
  EXPECT_TRUE(r.ok()) << r.status();
  auto stream = alice->OpenStream();
  absl::StatusOr<v1::AttendResponse> sr = stream->Send(MakeRequest(shape, "alice-stream")).get();
  EXPECT_TRUE(sr.ok()) << sr.status();
  EXPECT_TRUE(stream->Close().ok());
  EXPECT_TRUE(alice->GetServerInfo().ok());
  EXPECT_TRUE(ListModels(*alice).ok());

  grpc::Status denied = RegisterModel(*alice, "m");
  EXPECT_EQ(denied.error_code(), grpc::StatusCode::PERMISSION_DENIED);
  EXPECT_NE(denied.error_message().find("RegisterModel"), std::string::npos) << denied.error_message();
  EXPECT_NE(denied.error_message().find("'admin'"), std::string::npos) << denied.error_message();
  EXPECT_EQ(denied.error_message().find(kAlice), std::string::npos);
  EXPECT_EQ(Calibrate(*alice).error_code(), grpc::StatusCode::PERMISSION_DENIED);
}

TEST_F(AccessControlE2E, AdminTokenWorks) {
  auto admin = ClientWith(s_.target, kAdmin);
  grpc::Status registered = RegisterModel(*admin, "m");
  EXPECT_TRUE(registered.ok()) << registered.error_message();
  absl::StatusOr<v1::GetServerInfoResponse> info = admin->GetServerInfo();
  ASSERT_TRUE(info.ok()) << info.status();
  EXPECT_TRUE(info->access_control().tokens_required());
  EXPECT_TRUE(info->access_control().warning().empty());
  ProblemShape shape;
  EXPECT_TRUE(admin->Attend(MakeRequest(shape, "admin")).ok());
}

TEST_F(AccessControlE2E, RegionsBelongToTheirOwner) {
  auto alice = ClientWith(s_.target, kAlice);
  auto bob = ClientWith(s_.target, kBob);
  auto admin = ClientWith(s_.target, kAdmin);
  auto shm = sageserve::SystemSharedMemory::Create(sageserve::SystemSharedMemory::UniqueKey("acl"), 1 << 20);
  ASSERT_TRUE(shm.ok()) << shm.status();
  ASSERT_TRUE(alice->RegisterSystemSharedMemory("r", (*shm)->key(), 0, (*shm)->size()).ok());

  // Bob: as if it did not exist.
  ProblemShape shape;
  v1::AttendRequest req = MakeRequest(shape, "bob");
  const std::string q = req.q().data();
  std::memcpy((*shm)->data(), q.data(), q.size());
  req.mutable_q()->clear_data();
  *req.mutable_q()->mutable_shared_memory() = sageserve::SharedMemoryRange("r", 0, q.size());
  EXPECT_EQ(bob->Attend(req).status().code(), absl::StatusCode::kNotFound);
  EXPECT_TRUE(alice->Attend(req).ok()) << "the owner's request naming it works";
  EXPECT_EQ(bob->UnregisterSharedMemory("r").status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(bob->GetSharedMemoryStatus("r").status().code(), absl::StatusCode::kNotFound);
  absl::StatusOr<v1::GetSharedMemoryStatusResponse> bobs = bob->GetSharedMemoryStatus();
  ASSERT_TRUE(bobs.ok());
  EXPECT_EQ(bobs->regions_size(), 0);
  absl::StatusOr<std::vector<std::string>> bob_all = bob->UnregisterSharedMemory();  // his own: none
  ASSERT_TRUE(bob_all.ok());
  EXPECT_TRUE(bob_all->empty());
  // Nor may bob map alice's object under a name of his own.
  const absl::Status theft = bob->RegisterSystemSharedMemory("mine", (*shm)->key(), 0, 4096);
  EXPECT_EQ(theft.code(), absl::StatusCode::kPermissionDenied) << theft;
  // Names are per owner: bob may use "r" too, for an object of his own.
  auto bobs_shm = sageserve::SystemSharedMemory::Create(sageserve::SystemSharedMemory::UniqueKey("acl"), 4096);
  ASSERT_TRUE(bobs_shm.ok()) << bobs_shm.status();
  ASSERT_TRUE(bob->RegisterSystemSharedMemory("r", (*bobs_shm)->key(), 0, 4096).ok());

  // The admin sees both.
  absl::StatusOr<v1::GetSharedMemoryStatusResponse> all = admin->GetSharedMemoryStatus();
  ASSERT_TRUE(all.ok());
  EXPECT_EQ(all->regions_size(), 2);
  absl::StatusOr<v1::GetSharedMemoryStatusResponse> alices = alice->GetSharedMemoryStatus();
  ASSERT_TRUE(alices.ok());
  ASSERT_EQ(alices->regions_size(), 1);
  EXPECT_EQ(alices->regions(0).byte_size(), (*shm)->size());
  // Alice removing all of hers leaves bob's.
  ASSERT_TRUE(alice->UnregisterSharedMemory().ok());
  all = admin->GetSharedMemoryStatus();
  ASSERT_TRUE(all.ok());
  ASSERT_EQ(all->regions_size(), 1);
  EXPECT_EQ(all->regions(0).byte_size(), 4096u);
  absl::StatusOr<std::vector<std::string>> gone = admin->UnregisterSharedMemory("r");
  ASSERT_TRUE(gone.ok()) << gone.status();
  EXPECT_EQ(gone->size(), 1u);
}

TEST_F(AccessControlE2E, RewritingTheFileRevokesAToken) {
  auto bob = ClientWith(s_.target, kBob);
  ASSERT_TRUE(bob->GetServerInfo().ok());
  // A bad file: the old tokens stay.
  std::ofstream(path_, std::ios::trunc) << kBob << " bob attend,everything\n";
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  EXPECT_TRUE(bob->GetServerInfo().ok());
  EXPECT_TRUE(bob->GetServerInfo().ok());
  // Bob removed.
  std::ofstream(path_, std::ios::trunc) << kAdmin << " ops admin\n" << kAlice << " alice attend\n";
  absl::Status last;
  for (int i = 0; i < 100; ++i) {
    last = bob->GetServerInfo().status();
    if (last.code() == absl::StatusCode::kUnauthenticated) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  EXPECT_EQ(last.code(), absl::StatusCode::kUnauthenticated) << last;
  EXPECT_TRUE(ClientWith(s_.target, kAlice)->GetServerInfo().ok());
}

TEST(AccessControlOpen, ServerInfoSaysTokensAreNotRequired) {
  RunningServer s;
  StartServer(TestServerOptions(), nullptr, &s);
  absl::StatusOr<v1::GetServerInfoResponse> info = s.client->GetServerInfo();
  ASSERT_TRUE(info.ok()) << info.status();
  EXPECT_FALSE(info->access_control().tokens_required());
  EXPECT_NE(info->access_control().warning().find("administrator"), std::string::npos);
  EXPECT_TRUE(RegisterModel(*s.client, "m").ok()) << "today's behaviour without a token file";
}

// Every method of every sageserve service has a scope, and the table names no other method.
TEST(AccessControlTable, CoversEveryMethod) {
  const google::protobuf::DescriptorPool* pool = google::protobuf::DescriptorPool::generated_pool();
  size_t methods = 0;
  for (const char* service : {v1::AttentionService::service_full_name(), v1::RegistryService::service_full_name(),
                              v1::SharedMemoryService::service_full_name(), v1::SessionService::service_full_name()}) {
    const google::protobuf::ServiceDescriptor* d = pool->FindServiceByName(service);
    ASSERT_NE(d, nullptr) << service;
    for (int i = 0; i < d->method_count(); ++i) {
      const std::string full = "/" + d->full_name() + "/" + d->method(i)->name();
      EXPECT_TRUE(server::RpcMethodNamed(full).has_value()) << full << " is missing from kRpcMethods";
      ++methods;
    }
  }
  // Every proto file of the package: a new sageserve service must be listed above too.
  const google::protobuf::FileDescriptor* file = pool->FindFileByName("sageserve/v1/attention_service.proto");
  ASSERT_NE(file, nullptr);
  EXPECT_EQ(methods, server::kRpcMethods.size()) << "kRpcMethods lists a method no service has";
  EXPECT_EQ(server::InfoOf(server::RpcMethod::kDeleteModel).scope, server::Scope::kAdmin);
  EXPECT_EQ(server::InfoOf(server::RpcMethod::kAttend).name, "/sageserve.v1.AttentionService/Attend");
  EXPECT_EQ(server::InfoOf(server::RpcMethod::kAttend).scope, server::Scope::kAttend);
}

// The real binary: a bad file stops it at start naming the line; SIGHUP reloads.
TEST(AccessControlProcess, BadTokenFileFailsNamingTheLine) {
  const std::string path = WriteTokenFile(std::string("# ok\n") + kAdmin + " ops admin\nshort x attend\n", "bad");
  ChildServer child(SAGESERVE_BINARY, {"--backend=cpu", "--token_file=" + path});
  EXPECT_EQ(child.port(), 0);
  EXPECT_EQ(child.Wait(30), 1);
  EXPECT_NE(child.output().find(path + " line 3: token is 5 characters"), std::string::npos) << child.output();
  EXPECT_EQ(child.output().find(kAdmin), std::string::npos) << "the log quotes a token";
  fs::remove(path);
}

TEST(AccessControlProcess, SighupReloads) {
  const std::string path = WriteTokenFile(TokenFileText(), "hup");
  ChildServer child(SAGESERVE_BINARY, {"--backend=cpu", "--token_file=" + path});
  ASSERT_GT(child.port(), 0) << child.output();
  auto bob = ClientWith(child.target(), kBob);
  ASSERT_TRUE(bob->GetServerInfo().ok());
  std::ofstream(path, std::ios::trunc) << kAdmin << " ops admin\n";
  child.Signal(SIGHUP);
  ASSERT_TRUE(child.WaitForOutput("reloaded", 10)) << child.output();
  // The change watcher may reload first, from the file half written (the "reloaded" seen above);
  // the SIGHUP's reload of the whole file follows within moments.
  absl::StatusCode code = absl::StatusCode::kOk;
  for (int i = 0; i < 200; ++i) {
    code = bob->GetServerInfo().status().code();
    if (code == absl::StatusCode::kUnauthenticated) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  EXPECT_EQ(code, absl::StatusCode::kUnauthenticated) << child.output();
  EXPECT_TRUE(ClientWith(child.target(), kAdmin)->GetServerInfo().ok());
  child.Signal(SIGTERM);
  EXPECT_EQ(child.Wait(30), 0);
  fs::remove(path);
}

TEST(AccessControlProcess, NoTokenFileWarnsAtStart) {
  ChildServer child(SAGESERVE_BINARY, {"--backend=cpu"});
  ASSERT_GT(child.port(), 0);
  EXPECT_TRUE(child.WaitForOutput("every caller that reaches the port is an administrator", 10)) << child.output();
  child.Signal(SIGTERM);
  EXPECT_EQ(child.Wait(30), 0);
}

// mTLS: a verified client certificate's CN maps to an identity and its scopes.
TEST(AccessControlTls, ClientCertificateMapsToScopes) {
  const fs::path dir = MakeTestCertificates("acl_tls", "worker-7");
  ASSERT_FALSE(dir.empty()) << "openssl CLI not found (run scripts/bootstrap.sh)";
  const std::string path = WriteTokenFile(std::string(kAdmin) + " ops admin\ncert:worker-7 batch attend\n", "tls");
  server::ServerOptions o = TestServerOptions();
  o.tls.cert_chain_file = (dir / "server.pem").string();
  o.tls.private_key_file = (dir / "server.key").string();
  o.tls.client_ca_file = (dir / "ca.pem").string();
  o.access.token_file = path;
  absl::StatusOr<std::unique_ptr<server::SageServer>> srv = server::SageServer::Start(o);
  ASSERT_TRUE(srv.ok()) << srv.status();
  sageserve::ClientOptions co;
  co.target = "127.0.0.1:" + std::to_string((*srv)->port());  // the certificate names the IP too; no DNS
  co.security = sageserve::TransportSecurity::kTls;
  co.tls.root_certs_pem = ReadWholeFile(dir / "ca.pem");
  co.tls.client_cert_pem = ReadWholeFile(dir / "client.pem");
  co.tls.client_key_pem = ReadWholeFile(dir / "client.key");
  auto client = sageserve::Client::Create(co);
  ASSERT_TRUE(client.ok()) << client.status();
  ProblemShape shape;
  absl::StatusOr<v1::AttendResponse> r = (*client)->Attend(MakeRequest(shape, "tls"));
  EXPECT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(RegisterModel(**client, "m").error_code(), grpc::StatusCode::PERMISSION_DENIED);
  co.token = kAdmin;  // a token decides over the certificate
  auto admin = sageserve::Client::Create(co);
  ASSERT_TRUE(admin.ok());
  EXPECT_TRUE(RegisterModel(**admin, "m").ok());
  (*srv)->Shutdown();
  fs::remove_all(dir);
  fs::remove(path);
}

}  // namespace
}  // namespace sage::testing
