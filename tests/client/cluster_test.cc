// sageserve::ClusterClient over three in-process CPU servers: Attend spreads at equal load and
// keeps off a replica holding requests (its reported load), sessions are created on one replica
// and found again by id, a stopped replica's stateless share moves to the others while its
// sessions report the owner gone (IsSessionOwnerGone); a dns:/// target resolves.
#include "sageserve/client/cluster.h"

#include <chrono>
#include <future>
#include <memory>
#include <string>
#include <thread>

#include "gtest/gtest.h"
#include "sageserve/client/session.h"
#include "tests/server/test_support.h"

namespace sage::testing {
namespace {
namespace v1 = ::sageserve::v1;
using namespace std::chrono_literals;

sageserve::ClusterOptions Options(const std::vector<RunningServer*>& servers) {
  sageserve::ClusterOptions o;
  for (RunningServer* s : servers) o.targets.push_back(s->target);
  o.client.deadline = 20s;
  return o;
}

sageserve::SessionOptions SessionShape() {
  sageserve::SessionOptions so;
  so.layers = 1;
  so.heads_q = 4;
  so.heads_kv = 2;
  so.head_dim = 64;
  so.max_tokens = 256;
  return so;
}

TEST(ClusterClient, SpreadsAvoidsTheBusyReplicaAndRoutesSessions) {
  // Replica 0 runs a gate engine that holds every request until released.
  auto gate = std::make_unique<GateBackend>();
  GateBackend* g = gate.get();
  RunningServer held, a, b;
  StartServer(TestServerOptions(), std::move(gate), &held);
  StartServer(TestServerOptions(), nullptr, &a);
  StartServer(TestServerOptions(), nullptr, &b);
  absl::StatusOr<std::unique_ptr<sageserve::ClusterClient>> cluster = sageserve::ClusterClient::Create(Options({&a, &b}));
  ASSERT_TRUE(cluster.ok()) << cluster.status();
  const v1::AttendRequest request = MakeRequest(ProblemShape{}, "spread");
  for (int i = 0; i < 20; ++i) ASSERT_TRUE((*cluster)->Attend(request).ok());
  for (const auto& r : (*cluster)->Replicas()) EXPECT_EQ(r.calls, 10) << r.target;  // equal load: in turn

  // With the held replica in the cluster: once it has reported load 2 it gets nothing.
  cluster = sageserve::ClusterClient::Create(Options({&held, &a, &b}));
  ASSERT_TRUE(cluster.ok()) << cluster.status();
  auto stub = v1::AttentionService::NewStub(held.client->channel());
  std::vector<std::future<absl::StatusOr<v1::AttendResponse>>> pending;
  for (int i = 0; i < 2; ++i) {
    pending.push_back(std::async(std::launch::async, [&held, &request] { return held.client->Attend(request); }));
  }
  g->WaitForCalls(1);
  std::this_thread::sleep_for(50ms);
  absl::StatusOr<const sageserve::Client*> any = (*cluster)->ForSession("nobody.cpu.1");  // asks every replica
  EXPECT_TRUE(sageserve::IsSessionOwnerGone(any.status())) << any.status();
  int held_load = -1;
  for (const auto& r : (*cluster)->Replicas()) {
    if (r.target == held.target) held_load = r.reported_load;
  }
  EXPECT_GE(held_load, 1);  // its GetServerInfo answer carried the load
  for (int i = 0; i < 6; ++i) ASSERT_TRUE((*cluster)->Attend(request).ok());
  for (const auto& r : (*cluster)->Replicas()) {
    if (r.target == held.target) {
      EXPECT_EQ(r.calls, 0) << "a call went to the busy replica";
    }
  }
  g->Release();
  for (auto& p : pending) EXPECT_TRUE(p.get().ok());

  // Sessions: created on a replica, found by id, stepped there.
  std::vector<std::pair<std::string, const sageserve::Client*>> sessions;
  for (int i = 0; i < 4; ++i) {
    absl::StatusOr<const sageserve::Client*> on = (*cluster)->ForNewSession();
    ASSERT_TRUE(on.ok()) << on.status();
    sageserve::SessionClient sc(**on);
    absl::StatusOr<sageserve::Session> s = sc.Create(SessionShape());
    ASSERT_TRUE(s.ok()) << s.status();
    (*cluster)->Created(*on, s->id());
    sessions.emplace_back(s->id(), *on);
  }
  for (const auto& [id, on] : sessions) {
    absl::StatusOr<const sageserve::Client*> owner = (*cluster)->ForSession(id);
    ASSERT_TRUE(owner.ok()) << owner.status();
    EXPECT_EQ(*owner, on);
    absl::StatusOr<v1::SessionInfo> info = sageserve::SessionClient(**owner).Get(id);
    EXPECT_TRUE(info.ok()) << info.status();
  }

  // Replica a stops: stateless calls go on, its sessions report their owner gone.
  const std::string stopped = a.target;
  a.server.reset();
  for (int i = 0; i < 8; ++i) ASSERT_TRUE((*cluster)->Attend(request).ok());
  for (const auto& [id, on] : sessions) {
    absl::StatusOr<v1::SessionInfo> info = sageserve::SessionClient(*on).Get(id);
    if (on->options().target == stopped) {
      EXPECT_TRUE(sageserve::IsSessionOwnerGone(info.status())) << info.status();
      EXPECT_NE(info.status().message().find(id), std::string::npos) << info.status();
    } else {
      EXPECT_TRUE(info.ok()) << info.status();
    }
  }
}

TEST(ClusterClient, DnsTargetsResolveAndBadOnesAreRefused) {
  RunningServer s;
  StartServer(TestServerOptions(), nullptr, &s);
  const std::string port = s.target.substr(s.target.rfind(':') + 1);
  sageserve::ClusterOptions o;
  // A numeric name: getaddrinfo answers it without /etc/hosts or a resolver, which a minimal root
  // (the fresh-machine check) lacks; the dns:/// path (resolve, list, re-resolve) is the same.
  o.targets = {"dns:///127.0.0.1:" + port};
  absl::StatusOr<std::unique_ptr<sageserve::ClusterClient>> cluster = sageserve::ClusterClient::Create(o);
  ASSERT_TRUE(cluster.ok()) << cluster.status();
  bool v4 = false;
  for (const auto& r : (*cluster)->Replicas()) v4 = v4 || r.target == "127.0.0.1:" + port;
  EXPECT_TRUE(v4);
  EXPECT_TRUE((*cluster)->Attend(MakeRequest(ProblemShape{}, "dns")).ok());
  o.targets = {"dns:///no-port"};
  EXPECT_EQ(sageserve::ClusterClient::Create(o).status().code(), absl::StatusCode::kInvalidArgument);
  o.targets = {};
  EXPECT_EQ(sageserve::ClusterClient::Create(o).status().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace sage::testing
