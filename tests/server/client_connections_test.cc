// ClientOptions::connections: a client spreads its calls over N TCP connections of its own, counted
// here from the kernel's socket table, and every call still gets its answer.
#include <chrono>
#include <fstream>
#include <set>
#include <sstream>
#include <string>
#include <thread>

#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "gtest/gtest.h"
#include "tests/server/test_support.h"

namespace sage::testing {
namespace {
namespace v1 = ::sageserve::v1;

// Local addresses of this machine's established TCP sockets whose remote end is port `port` on the
// loopback interface (the client sides of connections to the test server), IPv4 and IPv6 alike.
std::set<std::string> ClientSocketsTo(int port) {
  std::set<std::string> found;
  for (const char* table : {"/proc/net/tcp", "/proc/net/tcp6"}) {
    std::ifstream in(table);
    std::string line;
    std::getline(in, line);  // header
    while (std::getline(in, line)) {
      std::istringstream fields(line);
      std::string slot, local, remote, state;
      fields >> slot >> local >> remote >> state;
      const std::vector<std::string> parts = absl::StrSplit(remote, ':');
      if (parts.size() != 2 || state != "01") continue;  // 01 = ESTABLISHED
      int remote_port = 0;
      const bool loopback = parts[0] == "0100007F" || parts[0] == "00000000000000000000000001000000" ||
                            parts[0] == "0000000000000000FFFF00000100007F";
      if (loopback && absl::SimpleHexAtoi(parts[1], &remote_port) && remote_port == port) found.insert(local);
    }
  }
  return found;
}

int PortOf(const std::string& target) {
  int port = 0;
  EXPECT_TRUE(absl::SimpleAtoi(target.substr(target.rfind(':') + 1), &port)) << target;
  return port;
}

TEST(ClientConnections, CallsSpreadOverSeveralConnections) {
  RunningServer server;
  StartServer(TestServerOptions(), nullptr, &server);
  const int port = PortOf(server.target);
  ASSERT_TRUE(server.client->CheckHealth().ok());
  const std::set<std::string> before = ClientSocketsTo(port);
  ASSERT_GE(before.size(), 1u) << "the server's own test client should show up in the socket table";

  sageserve::ClientOptions options;
  options.target = server.target;
  options.connections = 3;
  auto client = sageserve::Client::Create(options);
  ASSERT_TRUE(client.ok()) << client.status();
  ProblemShape shape;
  for (int i = 0; i < 6; ++i) {
    const v1::AttendRequest request = MakeRequest(shape, "conn-" + std::to_string(i));
    absl::StatusOr<v1::AttendResponse> r = (*client)->Attend(request);
    ASSERT_TRUE(r.ok()) << r.status();
    EXPECT_EQ(r->request_id(), request.request_id());
  }
  // The client's own connections: opened since `before`, and closed when the client goes (so a
  // reconnect of the server's test client under load is not counted).
  std::set<std::string> opened;
  for (const std::string& s : ClientSocketsTo(port)) {
    if (!before.count(s)) opened.insert(s);
  }
  client->reset();
  std::set<std::string> owned;
  for (int i = 0; i < 200; ++i) {
    const std::set<std::string> now = ClientSocketsTo(port);
    owned.clear();
    for (const std::string& s : opened) {
      if (!now.count(s)) owned.insert(s);
    }
    if (owned.size() >= 3) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  EXPECT_EQ(owned.size(), 3u) << opened.size() << " sockets opened while the client lived";
}

TEST(ClientConnections, OutOfRangeCountIsRefused) {
  sageserve::ClientOptions options;
  options.connections = 0;
  EXPECT_EQ(sageserve::Client::Create(options).status().code(), absl::StatusCode::kInvalidArgument);
  options.connections = 257;
  EXPECT_EQ(sageserve::Client::Create(options).status().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace sage::testing
