// The session drain (ServerOptions::session_drain, --session_drain) for rolling updates: on
// Shutdown with sessions open, calls on them keep being served while new sessions and stateless
// calls are refused with UNAVAILABLE (so a client of several replicas moves them) and health says
// NOT_SERVING; the drain ends as soon as the last session closes, not at its deadline.
#include <chrono>
#include <future>
#include <string>
#include <thread>

#include "gtest/gtest.h"
#include "grpcpp/grpcpp.h"
#include "sageserve/client/tensor.h"
#include "sageserve/v1/session.grpc.pb.h"
#include "tests/server/test_support.h"

namespace sage::testing {
namespace {
namespace v1 = ::sageserve::v1;
using namespace std::chrono_literals;

void SetTensor(const std::vector<uint16_t>& x, int heads, int d, v1::Tensor* t) {
  ASSERT_TRUE(sageserve::SetTensorFp16(x, sageserve::Shape3{static_cast<int64_t>(x.size() / heads / d), heads, d}, t).ok());
}

TEST(SessionDrain, OpenSessionsAreServedUntilTheyCloseAndNothingElse) {
  server::ServerOptions options = TestServerOptions();
  options.session_drain = 20s;
  options.grace_period = 2s;
  RunningServer s;
  StartServer(options, nullptr, &s);
  auto stub = v1::SessionService::NewStub(s.client->channel());
  TestSessionShape shape;
  const std::string id = CreateTestSession(*stub, shape);
  ASSERT_FALSE(id.empty());

  int64_t position = 0;
  const auto step = [&](uint64_t step_id) {
    grpc::ClientContext ctx;
    v1::AttendSessionRequest req;
    v1::SessionStep* st = req.add_steps();
    st->set_session_id(id);
    st->set_position(position);
    st->set_step_id(step_id);
    SetTensor(ChannelBiasedFp16(4, shape.heads_kv, shape.head_dim, 1 + static_cast<uint32_t>(step_id), 0.0f, 1),
              shape.heads_kv, shape.head_dim, st->mutable_k());
    SetTensor(ChannelBiasedFp16(4, shape.heads_kv, shape.head_dim, 2 + static_cast<uint32_t>(step_id), 0.0f, 1),
              shape.heads_kv, shape.head_dim, st->mutable_v());
    SetTensor(ChannelBiasedFp16(1, shape.heads_q, shape.head_dim, 3, 0.0f, 1), shape.heads_q, shape.head_dim, st->mutable_q());
    v1::AttendSessionResponse resp;
    const grpc::Status status = stub->AttendSession(&ctx, req, &resp);
    if (status.ok()) position += 4;
    return status;
  };
  ASSERT_TRUE(step(1).ok());

  const auto started = std::chrono::steady_clock::now();
  std::future<void> shutdown = std::async(std::launch::async, [&s] { s.server->Shutdown(); });
  ASSERT_TRUE([&] {
    for (int i = 0; i < 500; ++i) {
      absl::StatusOr<sageserve::HealthStatus> h = s.client->CheckHealth();
      if (h.ok() && *h == sageserve::HealthStatus::kNotServing) return true;
      std::this_thread::sleep_for(10ms);
    }
    return false;
  }()) << "health never said NOT_SERVING";

  // Stateless calls and new sessions go elsewhere ...
  absl::StatusOr<v1::AttendResponse> stateless = s.client->Attend(MakeRequest(ProblemShape{}, "during-drain"));
  EXPECT_EQ(stateless.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_NE(stateless.status().message().find("draining"), std::string::npos) << stateless.status();
  grpc::ClientContext create_ctx;
  v1::CreateSessionResponse created;
  const grpc::Status refused = stub->CreateSession(&create_ctx, TestSessionRequest(shape), &created);
  EXPECT_EQ(refused.error_code(), grpc::StatusCode::UNAVAILABLE);
  EXPECT_NE(refused.error_message().find("another replica"), std::string::npos) << refused.error_message();

  // ... while the open session is served, then closes, and the drain ends at once.
  for (uint64_t i = 2; i < 5; ++i) {
    const grpc::Status st = step(i);
    EXPECT_TRUE(st.ok()) << st.error_message();
  }
  EXPECT_EQ(shutdown.wait_for(0ms), std::future_status::timeout);  // still serving the session
  grpc::ClientContext close_ctx;
  v1::CloseSessionRequest close;
  close.set_session_id(id);
  v1::CloseSessionResponse closed;
  ASSERT_TRUE(stub->CloseSession(&close_ctx, close, &closed).ok());
  const auto closed_at = std::chrono::steady_clock::now();
  ASSERT_EQ(shutdown.wait_for(10s), std::future_status::ready);
  // Ended by the close (plus the short drain after it), far before the 20 s session deadline.
  EXPECT_LT(std::chrono::steady_clock::now() - closed_at, 5s);
  EXPECT_LT(std::chrono::steady_clock::now() - started, 15s);
}

}  // namespace
}  // namespace sage::testing
