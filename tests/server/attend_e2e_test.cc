// End to end on a real in-process server over loopback: results equal the local engine's bit for
// bit, streams keep many requests in flight, large messages pass, info/selftest/health answer.
#include <cstring>
#include <functional>
#include <future>
#include <mutex>
#include <map>
#include <set>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "kernels/reference/recipe.h"
#include "sageserve/client/tensor.h"
#include "tests/server/test_support.h"

namespace sage::testing {
namespace {
namespace v1 = ::sageserve::v1;

class AttendE2E : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    server_ = new RunningServer();
    StartServer(TestServerOptions(), nullptr, server_);
  }
  static void TearDownTestSuite() {
    delete server_;
    server_ = nullptr;
  }
  static RunningServer* server_;
};
RunningServer* AttendE2E::server_ = nullptr;

void ExpectBitEqual(const v1::AttendResponse& r, const LocalResult& local) {
  ASSERT_EQ(r.o().dtype(), v1::DTYPE_FP32);
  ASSERT_EQ(r.o().data().size(), local.o.size() * sizeof(float));
  EXPECT_EQ(0, std::memcmp(r.o().data().data(), local.o.data(), r.o().data().size())) << r.request_id();
  if (!local.lse.empty()) {
    ASSERT_EQ(r.lse().data().size(), local.lse.size() * sizeof(float));
    EXPECT_EQ(0, std::memcmp(r.lse().data().data(), local.lse.data(), r.lse().data().size()));
  }
}

TEST_F(AttendE2E, UnaryEqualsLocalEngineBitForBit) {
  for (v1::Recipe recipe : {v1::RECIPE_INT8_QK_FP8_PV, v1::RECIPE_INT4_QK_FP8_PV, v1::RECIPE_UNQUANTIZED}) {
    ProblemShape shape;
    shape.cu_q = {0, 37, 100};
    shape.cu_k = {0, 80, 230};
    shape.causal = true;
    shape.lse = true;
    shape.recipe = recipe;
    const v1::AttendRequest request = MakeRequest(shape, absl::StrCat("unary-", static_cast<int>(recipe)));
    absl::StatusOr<v1::AttendResponse> r = server_->client->Attend(request);
    ASSERT_TRUE(r.ok()) << r.status();
    EXPECT_EQ(r->request_id(), request.request_id());
    EXPECT_EQ(r->recipe(), recipe);
    EXPECT_GT(r->timings().total_us(), 0);
    EXPECT_GE(r->timings().total_us(), r->timings().compute_us());
    ExpectBitEqual(*r, RunLocally(request, *server::FromWireRecipe(recipe)));
  }
}

TEST_F(AttendE2E, DefaultRecipeAndFp16OutputMatchEngine) {
  ProblemShape shape;
  shape.output_dtype = v1::DTYPE_UNSPECIFIED;  // -> q's dtype (fp16)
  shape.dtype = v1::DTYPE_BF16;
  const v1::AttendRequest request = MakeRequest(shape, "bf16-default");
  absl::StatusOr<v1::AttendResponse> r = server_->client->Attend(request);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->recipe(), v1::RECIPE_INT8_QK_FP8_PV);
  ASSERT_EQ(r->o().dtype(), v1::DTYPE_BF16);
  const LocalResult local = RunLocally(request, Recipe::kInt8QkFp8Pv);
  auto bits = sageserve::Tensor16Bits(r->o());
  ASSERT_TRUE(bits.ok());
  ASSERT_EQ(bits->size(), local.o.size());
  for (size_t i = 0; i < local.o.size(); ++i) ASSERT_EQ((*bits)[i], sageserve::FloatToBf16(local.o[i])) << i;
}

TEST_F(AttendE2E, StreamKeeps64InFlightAndMatchesById) {
  constexpr int kRequests = 64;
  std::unique_ptr<sageserve::StreamSession> stream = server_->client->OpenStream();
  std::map<std::string, v1::AttendRequest> sent;
  for (int i = 0; i < kRequests; ++i) {
    ProblemShape shape;
    shape.seed = 100 + i;
    shape.cu_q = {0, 16 + i};  // Different sizes finish in a different order.
    shape.cu_k = {0, 32 + 3 * i};
    shape.head_dim = (i % 2) ? 64 : 128;
    const std::string id = absl::StrCat("s", i);
    sent[id] = MakeRequest(shape, id);
  }
  // Requests are built first so the sends go out back to back: Send must not wait for earlier
  // results, so right after the last one most of the 64 are still outstanding.
  std::vector<std::future<absl::StatusOr<v1::AttendResponse>>> futures;
  for (const auto& [id, request] : sent) futures.push_back(stream->Send(request));
  EXPECT_GT(stream->in_flight(), 0);
  std::set<std::string> seen;
  for (auto& f : futures) {
    absl::StatusOr<v1::AttendResponse> r = f.get();
    ASSERT_TRUE(r.ok()) << r.status();
    ASSERT_TRUE(sent.count(r->request_id())) << r->request_id();
    EXPECT_TRUE(seen.insert(r->request_id()).second);
    ExpectBitEqual(*r, RunLocally(sent[r->request_id()], Recipe::kInt8QkFp8Pv));
  }
  EXPECT_EQ(seen.size(), static_cast<size_t>(kRequests));
  EXPECT_TRUE(stream->Close().ok());
}

TEST_F(AttendE2E, StreamCallbacksAndBadRequestFailsOnlyItself) {
  std::unique_ptr<sageserve::StreamSession> stream = server_->client->OpenStream();
  std::promise<absl::StatusOr<v1::AttendResponse>> good_p, bad_p;
  ProblemShape shape;
  v1::AttendRequest good = MakeRequest(shape, "good");
  v1::AttendRequest bad = MakeRequest(shape, "bad");
  bad.mutable_k()->set_data("short");
  ASSERT_TRUE(stream->Send(bad, [&](absl::StatusOr<v1::AttendResponse> r) { bad_p.set_value(std::move(r)); }).ok());
  ASSERT_TRUE(stream->Send(good, [&](absl::StatusOr<v1::AttendResponse> r) { good_p.set_value(std::move(r)); }).ok());
  v1::AttendRequest no_id = good;
  no_id.clear_request_id();
  EXPECT_EQ(stream->Send(no_id, [](auto) {}).code(), absl::StatusCode::kInvalidArgument);
  absl::StatusOr<v1::AttendResponse> b = bad_p.get_future().get();
  EXPECT_EQ(b.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(std::string(b.status().message()).find("k.data"), std::string::npos) << b.status();
  absl::StatusOr<v1::AttendResponse> g = good_p.get_future().get();
  ASSERT_TRUE(g.ok()) << g.status();
  ExpectBitEqual(*g, RunLocally(good, Recipe::kInt8QkFp8Pv));
  EXPECT_TRUE(stream->Close().ok());
}

// The documented way to keep a stream full without a thread per answer: each result's callback
// sends the next request. Nothing deadlocks, every answer arrives once and is right, Close() ends it.
TEST_F(AttendE2E, StreamCallbackMaySendTheNextRequest) {
  constexpr int kChains = 4;
  constexpr int kPerChain = 8;
  std::unique_ptr<sageserve::StreamSession> stream = server_->client->OpenStream();
  std::map<std::string, v1::AttendRequest> requests;
  for (int c = 0; c < kChains; ++c) {
    for (int i = 0; i < kPerChain; ++i) {
      ProblemShape shape;
      shape.seed = 500 + c * kPerChain + i;
      shape.cu_q = {0, 8 + i};
      shape.cu_k = {0, 24 + 5 * c};
      const std::string id = absl::StrCat("chain", c, "-", i);
      requests[id] = MakeRequest(shape, id);
    }
  }
  std::mutex mu;
  std::map<std::string, absl::StatusOr<v1::AttendResponse>> answers;
  std::promise<void> all_done;
  std::function<void(int, int)> send = [&](int chain, int i) {
    const std::string id = absl::StrCat("chain", chain, "-", i);
    absl::Status sent = stream->Send(requests.at(id), [&, chain, i, id](absl::StatusOr<v1::AttendResponse> r) {
      bool last = false;
      {
        std::lock_guard<std::mutex> lock(mu);
        answers.emplace(id, std::move(r));
        last = answers.size() == static_cast<size_t>(kChains * kPerChain);
      }
      if (i + 1 < kPerChain) send(chain, i + 1);  // from the callback, on a gRPC thread
      if (last) all_done.set_value();
    });
    ASSERT_TRUE(sent.ok()) << sent;
  };
  for (int c = 0; c < kChains; ++c) send(c, 0);
  ASSERT_EQ(all_done.get_future().wait_for(std::chrono::seconds(60)), std::future_status::ready);
  ASSERT_EQ(answers.size(), requests.size());
  for (const auto& [id, r] : answers) {
    ASSERT_TRUE(r.ok()) << id << ": " << r.status();
    EXPECT_EQ(r->request_id(), id);
    ExpectBitEqual(*r, RunLocally(requests[id], Recipe::kInt8QkFp8Pv));
  }
  EXPECT_TRUE(stream->Close().ok());
}

TEST_F(AttendE2E, MessagesOver4MiBPassBothWays) {
  ProblemShape shape;
  shape.cu_q = {0, 8192};  // q: 8192 x 2 x 128 fp16 = 4 MiB (+ k, v), O fp32 = 8 MiB.
  shape.cu_k = {0, 64};
  shape.heads_q = 2;
  shape.heads_kv = 2;
  shape.head_dim = 128;
  const v1::AttendRequest request = MakeRequest(shape, "big");
  ASSERT_GT(request.ByteSizeLong(), size_t{4} << 20);
  absl::StatusOr<v1::AttendResponse> r = server_->client->Attend(request);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_GT(r->ByteSizeLong(), size_t{4} << 20);
  ExpectBitEqual(*r, RunLocally(request, Recipe::kInt8QkFp8Pv));
}

TEST_F(AttendE2E, ServerInfo) {
  absl::StatusOr<v1::GetServerInfoResponse> info = server_->client->GetServerInfo();
  ASSERT_TRUE(info.ok()) << info.status();
  EXPECT_EQ(info->backend(), "cpu");
  EXPECT_FALSE(info->version().empty());
  EXPECT_EQ(info->recipes_size(), 4);
  EXPECT_EQ(info->default_recipe(), v1::RECIPE_INT8_QK_FP8_PV);
  EXPECT_GE(info->limits().max_message_bytes(), int64_t{512} << 20);
  EXPECT_FALSE(info->devices().empty());
}

TEST_F(AttendE2E, SelfTestPasses) {
  absl::StatusOr<v1::SelfTestResponse> r = server_->client->SelfTest();
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_TRUE(r->passed());
  ASSERT_EQ(r->results_size(), 4);
  for (const auto& acc : r->results()) {
    EXPECT_TRUE(acc.passed()) << v1::Recipe_Name(acc.recipe()) << " cos " << acc.cosine_similarity();
    EXPECT_GT(acc.cosine_similarity(), 0.98);
  }
  v1::SelfTestRequest one;
  one.add_recipes(v1::RECIPE_UNQUANTIZED);
  r = server_->client->SelfTest(one);
  ASSERT_TRUE(r.ok()) << r.status();
  ASSERT_EQ(r->results_size(), 1);
  EXPECT_GT(r->results(0).cosine_similarity(), 0.99999);
}

TEST_F(AttendE2E, HealthCheck) {
  EXPECT_EQ(*server_->client->CheckHealth(), sageserve::HealthStatus::kServing);
  EXPECT_EQ(*server_->client->CheckHealth("sageserve.v1.AttentionService"), sageserve::HealthStatus::kServing);
  EXPECT_EQ(server_->client->CheckHealth("no.such.Service").status().code(), absl::StatusCode::kNotFound);
}

}  // namespace
}  // namespace sage::testing
