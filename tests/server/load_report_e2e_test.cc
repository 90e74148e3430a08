// What a replica tells clients that balance over several (docs/DEPLOY.md, "Routing"): the requests
// it has in flight, in GetServerInfo.load and as trailing metadata `sageserve-load` on every
// Attend, AttendSession and GetServerInfo answer (not counting the call answered), and its
// instance, which starts every session id it creates.
#include <chrono>
#include <functional>
#include <future>
#include <memory>
#include <string>
#include <thread>

#include "gtest/gtest.h"
#include "grpcpp/grpcpp.h"
#include "sageserve/v1/attention_service.grpc.pb.h"
#include "sageserve/v1/session.grpc.pb.h"
#include "tests/server/test_support.h"

namespace sage::testing {
namespace {
namespace v1 = ::sageserve::v1;
using namespace std::chrono_literals;

std::string LoadTrailer(const grpc::ClientContext& ctx) {
  const auto& trailers = ctx.GetServerTrailingMetadata();
  auto it = trailers.find("sageserve-load");
  return it == trailers.end() ? "absent" : std::string(it->second.data(), it->second.size());
}

bool WaitUntil(const std::function<bool()>& done, std::chrono::milliseconds limit) {
  const auto end = std::chrono::steady_clock::now() + limit;
  while (std::chrono::steady_clock::now() < end) {
    if (done()) return true;
    std::this_thread::sleep_for(5ms);
  }
  return done();
}

struct AsyncAttend {
  grpc::ClientContext context;
  v1::AttendRequest request;
  v1::AttendResponse response;
  std::promise<grpc::Status> done;
};

TEST(LoadReport, InFlightRequestsAreReportedOnEveryAnswer) {
  auto gate = std::make_unique<GateBackend>();
  GateBackend* g = gate.get();
  server::ServerOptions options = TestServerOptions();
  options.scheduler.worker_threads = 2;
  RunningServer s;
  StartServer(options, std::move(gate), &s);
  auto stub = v1::AttentionService::NewStub(s.client->channel());

  // Waits for the connection (a loaded CI machine may be slow to make it) but not forever.
  const auto info = [&stub](std::string* trailer) {
    grpc::ClientContext ctx;
    ctx.set_wait_for_ready(true);
    ctx.set_deadline(std::chrono::system_clock::now() + 30s);
    v1::GetServerInfoResponse r;
    const grpc::Status st = stub->GetServerInfo(&ctx, v1::GetServerInfoRequest(), &r);
    EXPECT_TRUE(st.ok()) << st.error_code() << " " << st.error_message();
    *trailer = LoadTrailer(ctx);
    return r;
  };
  std::string trailer;
  v1::GetServerInfoResponse idle = info(&trailer);
  ASSERT_FALSE(HasFailure());
  EXPECT_EQ(idle.load(), 0);
  EXPECT_EQ(trailer, "0");
  EXPECT_EQ(idle.instance().size(), 16u) << idle.instance();  // 64 random bits, hex

  // Three requests held in the engine (two computing, one queued): load 3 everywhere.
  AsyncAttend calls[3];
  for (int i = 0; i < 3; ++i) {
    calls[i].request = MakeRequest(ProblemShape{}, "held-" + std::to_string(i));
    calls[i].context.set_deadline(std::chrono::system_clock::now() + 30s);
    calls[i].context.set_wait_for_ready(true);
    stub->async()->Attend(&calls[i].context, &calls[i].request, &calls[i].response,
                          [&c = calls[i]](grpc::Status st) { c.done.set_value(st); });
  }
  struct Opens {  // an early return must not leave the held requests (and the server's shutdown) waiting
    GateBackend* gate;
    AsyncAttend* calls;
    ~Opens() {
      gate->Release();
      for (int i = 0; i < 3; ++i) {
        try {
          calls[i].done.get_future().wait();  // before `calls` goes away
        } catch (const std::future_error&) {  // already waited for by the test
        }
      }
    }
  } opens{g, calls};
  ASSERT_TRUE(g->WaitForCalls(2, 30s)) << "the held requests did not reach the engine";
  v1::GetServerInfoResponse busy;
  ASSERT_TRUE(WaitUntil([&] { return (busy = info(&trailer)).load() == 3; }, 10s)) << busy.load();
  EXPECT_EQ(trailer, "3");

  // A refused request still reports the load (not counting itself).
  grpc::ClientContext bad_ctx;
  v1::AttendRequest bad;
  v1::AttendResponse bad_resp;
  EXPECT_EQ(stub->Attend(&bad_ctx, bad, &bad_resp).error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(LoadTrailer(bad_ctx), "3");

  g->Release();
  for (AsyncAttend& c : calls) {
    ASSERT_TRUE(c.done.get_future().get().ok());
    EXPECT_NE(LoadTrailer(c.context), "absent");
    EXPECT_LE(std::stoi(LoadTrailer(c.context)), 2);  // the others, never itself
  }
  EXPECT_TRUE(WaitUntil([&] { return info(&trailer).load() == 0; }, 10s));

  // The instance starts the ids of the sessions this server creates; AttendSession reports too.
  auto sessions = v1::SessionService::NewStub(s.client->channel());
  TestSessionShape shape;
  const std::string id = CreateTestSession(*sessions, shape);
  ASSERT_EQ(id.rfind(idle.instance() + ".", 0), 0u) << id;
  grpc::ClientContext sctx;
  v1::AttendSessionRequest req;
  req.add_steps()->set_session_id("not-a-session");
  v1::AttendSessionResponse resp;
  EXPECT_FALSE(sessions->AttendSession(&sctx, req, &resp).ok());
  EXPECT_EQ(LoadTrailer(sctx), "0");
}

}  // namespace
}  // namespace sage::testing
