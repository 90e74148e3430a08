// The gRPC listener's transport limits: compressed requests are refused before they are inflated
// (unless allowed), connections that never speak HTTP/2 are closed after the handshake timeout,
// idle connections after max_connection_idle, and a second server cannot take a port in use.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <string>

#include "grpc/compression.h"
#include "grpcpp/client_context.h"
#include "grpcpp/create_channel.h"
#include "grpcpp/security/credentials.h"
#include "gtest/gtest.h"
#include "sageserve/v1/attention_service.grpc.pb.h"
#include "tests/server/test_support.h"

namespace sage::testing {
namespace {
namespace v1 = ::sageserve::v1;
using namespace std::chrono_literals;

// An Attend request whose q is `bytes` of zeros: gzip shrinks it ~1000-fold (64 MiB -> ~64 KiB on
// the wire), and a server that accepted gzip would inflate it whole before looking at it.
v1::AttendRequest ZerosRequest(int64_t bytes) {
  v1::AttendRequest r;
  r.set_request_id("zeros");
  for (v1::Tensor* t : {r.mutable_q(), r.mutable_k(), r.mutable_v()}) {
    t->set_dtype(v1::DTYPE_FP16);
    for (int64_t d : {int64_t{1}, int64_t{1}, int64_t{64}}) t->add_shape(d);
    t->mutable_data()->assign(128, '\0');
  }
  r.mutable_q()->clear_shape();
  for (int64_t d : {bytes / 256, int64_t{1}, int64_t{128}}) r.mutable_q()->add_shape(d);
  r.mutable_q()->mutable_data()->assign(static_cast<size_t>(bytes), '\0');
  return r;
}

grpc::Status AttendGzip(const std::string& target, const v1::AttendRequest& request) {
  auto stub = v1::AttentionService::NewStub(grpc::CreateChannel(target, grpc::InsecureChannelCredentials()));
  grpc::ClientContext ctx;
  ctx.set_compression_algorithm(GRPC_COMPRESS_GZIP);
  ctx.set_deadline(std::chrono::system_clock::now() + 60s);
  v1::AttendResponse response;
  return stub->Attend(&ctx, request, &response);
}

TEST(TransportLimits, CompressedRequestsAreRefusedBeforeInflating) {
  RunningServer s;
  StartServer(TestServerOptions(), nullptr, &s);
  const grpc::Status refused = AttendGzip(s.target, ZerosRequest(int64_t{64} << 20));
  EXPECT_EQ(refused.error_code(), grpc::StatusCode::UNIMPLEMENTED) << refused.error_message();
  EXPECT_NE(refused.error_message().find("'gzip' is disabled"), std::string::npos) << refused.error_message();
  // The refusal costs the server nothing lasting: it keeps answering ordinary requests.
  absl::StatusOr<v1::AttendResponse> after = s.client->Attend(MakeRequest(ProblemShape{}, "after-gzip"));
  ASSERT_TRUE(after.ok()) << after.status();
  EXPECT_EQ(after->request_id(), "after-gzip");
}

TEST(TransportLimits, CompressedRequestsAreServedWhenAllowed) {
  server::ServerOptions o = TestServerOptions();
  o.allow_request_compression = true;
  RunningServer s;
  StartServer(o, nullptr, &s);
  // Any answer from the service (here: the shapes are wrong) shows the message was inflated and read.
  const grpc::Status read = AttendGzip(s.target, ZerosRequest(int64_t{1} << 20));
  EXPECT_EQ(read.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << read.error_message();
}

// Blocks until the server closes `fd` (read returns 0 or an error) or `limit` passes; returns
// whether it closed.
bool WaitForClose(int fd, std::chrono::milliseconds limit) {
  const auto deadline = std::chrono::steady_clock::now() + limit;
  char buf[256];
  while (true) {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
    if (left <= 0ms) return false;
    pollfd p{fd, POLLIN, 0};
    if (poll(&p, 1, static_cast<int>(left.count())) <= 0) continue;
    const ssize_t n = read(fd, buf, sizeof(buf));
    if (n <= 0) return true;  // The server's SETTINGS frame may come first; keep reading.
  }
}

TEST(TransportLimits, ConnectionsWithoutAPrefaceAreClosedAfterTheHandshakeTimeout) {
  server::ServerOptions o = TestServerOptions();
  o.handshake_timeout = 300ms;
  RunningServer s;
  StartServer(o, nullptr, &s);
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  ASSERT_GE(fd, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(s.server->port()));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(connect(fd, reinterpret_cast<const sockaddr*>(&addr), sizeof(addr)), 0);
  const auto start = std::chrono::steady_clock::now();
  const bool closed = WaitForClose(fd, 5s);
  close(fd);
  EXPECT_TRUE(closed) << "a connection that sent nothing was still open after 5 s";
  EXPECT_LT(std::chrono::steady_clock::now() - start, 3s);
}

TEST(TransportLimits, IdleConnectionsAreClosed) {
  server::ServerOptions o = TestServerOptions();
  o.max_connection_idle = 300ms;
  RunningServer s;
  StartServer(o, nullptr, &s);
  auto channel = grpc::CreateChannel(s.target, grpc::InsecureChannelCredentials());
  ASSERT_TRUE(channel->WaitForConnected(std::chrono::system_clock::now() + 5s));
  // The server's GOAWAY takes the channel out of READY (to IDLE: it reconnects on the next call).
  const bool changed =
      channel->WaitForStateChange(GRPC_CHANNEL_READY, std::chrono::system_clock::now() + 5s);
  EXPECT_TRUE(changed) << "an idle connection was still open after 5 s";
  EXPECT_NE(channel->GetState(false), GRPC_CHANNEL_READY);
}

TEST(TransportLimits, ASecondServerCannotTakeAPortInUse) {
  RunningServer first;
  StartServer(TestServerOptions(), nullptr, &first);
  server::ServerOptions o = TestServerOptions();
  o.listen_address = first.target;
  absl::StatusOr<std::unique_ptr<server::SageServer>> second = server::SageServer::Start(o);
  ASSERT_FALSE(second.ok()) << "two servers bound " << first.target << " (SO_REUSEPORT)";
  EXPECT_EQ(second.status().code(), absl::StatusCode::kUnavailable) << second.status();
  EXPECT_NE(second.status().message().find("could not listen on " + first.target), std::string::npos)
      << second.status();
  // The first one still serves.
  absl::StatusOr<v1::AttendResponse> r = first.client->Attend(MakeRequest(ProblemShape{}, "first"));
  EXPECT_TRUE(r.ok()) << r.status();
}

}  // namespace
}  // namespace sage::testing
