// End to end: a real in-process server on the CPU backend, the dynamic batcher in front of it and
// the /metrics endpoint on its own port. Requests go over gRPC; /metrics is scraped over HTTP and
// parsed; the counters must move by exactly what was sent, per status code.
#include <chrono>
#include <future>
#include <map>
#include <thread>
#include <memory>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "kernels/reference/recipe.h"
#include "server/backend/backend.h"
#include "tests/metrics/http_client.h"
#include "tests/metrics/prometheus_parse.h"
#include "tests/server/test_support.h"

namespace sage::testing {
namespace {
using server::EngineInput;
using server::EngineOutput;

namespace v1 = ::sageserve::v1;
using metrics::testing::ParsedExposition;

ParsedExposition Scrape(int port) {
  absl::StatusOr<metrics::testing::HttpResponse> r = metrics::testing::HttpGet(port, "/metrics");
  EXPECT_TRUE(r.ok()) << r.status();
  if (!r.ok()) return {};
  EXPECT_EQ(r->status, 200);
  absl::StatusOr<ParsedExposition> parsed = metrics::testing::ParseExposition(r->body);
  EXPECT_TRUE(parsed.ok()) << parsed.status();
  return parsed.ok() ? *parsed : ParsedExposition{};
}

class ServerMetricsE2E : public ::testing::Test {
 protected:
  void SetUp() override {
    server::ServerOptions options = TestServerOptions();
    options.metrics_listen_address = "127.0.0.1:0";
    options.limits.max_tokens = 4096;
    StartServer(options, nullptr, &server_);
    metrics_port_ = server_.server->metrics_port();
    ASSERT_GT(metrics_port_, 0);
  }
  RunningServer server_;
  int metrics_port_ = 0;
};

TEST_F(ServerMetricsE2E, CountersMoveWithRequestsByCode) {
  const ParsedExposition before = Scrape(metrics_port_);
  EXPECT_EQ(before.Sum("sageserve_requests_total"), 0);

  ProblemShape shape;
  shape.recipe = v1::RECIPE_INT8_QK_FP8_PV;
  constexpr int kOk = 6;
  // Concurrent unary calls, so that some of them may share a launch.
  std::vector<std::future<absl::Status>> calls;
  for (int i = 0; i < kOk; ++i) {
    calls.push_back(std::async(std::launch::async, [&, i] {
      return server_.client->Attend(MakeRequest(shape, absl::StrCat("ok-", i))).status();
    }));
  }
  for (auto& c : calls) EXPECT_TRUE(c.get().ok());

  ProblemShape bad_head_dim = shape;
  bad_head_dim.head_dim = 48;
  EXPECT_EQ(server_.client->Attend(MakeRequest(bad_head_dim, "bad")).status().code(),
            absl::StatusCode::kInvalidArgument);
  v1::AttendRequest too_long = MakeRequest(shape, "too-long");
  too_long.mutable_k()->set_shape(0, 5000);  // Over max_tokens; rejected before the byte check.
  EXPECT_EQ(server_.client->Attend(too_long).status().code(), absl::StatusCode::kResourceExhausted);

  // A worker records a launch's respond time and leaves the in-flight gauge just after it hands the
  // answers to gRPC, so the client may read them first: wait for the books to close.
  ParsedExposition after = Scrape(metrics_port_);
  const auto settled = [](const ParsedExposition& e) {
    return *e.Value("sageserve_in_flight_requests") == 0 &&
           e.Sum("sageserve_batch_respond_duration_seconds_count", {{"device", "cpu"}}) ==
               e.Sum("sageserve_batches_total", {{"device", "cpu"}});
  };
  for (int i = 0; i < 200 && !settled(after); ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
    after = Scrape(metrics_port_);
  }
  const std::map<std::string, std::string> unary = {{"method", "Attend"}};
  EXPECT_EQ(after.Sum("sageserve_requests_total", {{"method", "Attend"}, {"code", "OK"}, {"recipe", "int8_qk_fp8_pv"}}),
            kOk);
  EXPECT_EQ(after.Sum("sageserve_request_errors_total", {{"code", "INVALID_ARGUMENT"}}), 1);
  EXPECT_EQ(after.Sum("sageserve_request_errors_total", {{"code", "RESOURCE_EXHAUSTED"}}), 1);
  EXPECT_EQ(after.Sum("sageserve_request_errors_total", {{"code", "OK"}}), 0);
  EXPECT_EQ(after.Sum("sageserve_requests_total"), kOk + 2);
  // Both refusals came before any recipe ran.
  EXPECT_EQ(after.Sum("sageserve_requests_total", {{"recipe", "none"}}), 2);
  EXPECT_EQ(after.Sum("sageserve_requests_total", {{"recipe", "none"}, {"code", "OK"}}), 0);
  // The interceptor saw the same calls, under gRPC's method name.
  const std::map<std::string, std::string> attend_rpc = {{"method", "/sageserve.v1.AttentionService/Attend"}};
  EXPECT_EQ(after.Sum("sageserve_rpcs_total", attend_rpc), kOk + 2);
  EXPECT_EQ(after.Sum("sageserve_rpcs_total", {{"method", "/sageserve.v1.AttentionService/Attend"}, {"code", "OK"}}),
            kOk);
  EXPECT_EQ(after.Sum("sageserve_rpc_duration_seconds_count", attend_rpc), kOk + 2);
  EXPECT_EQ(after.Sum("sageserve_request_duration_seconds_count", unary), kOk + 2);
  EXPECT_GT(*after.Value("sageserve_request_bytes_total"), 0);
  EXPECT_GT(*after.Value("sageserve_response_bytes_total"), 0);
  // Every accepted request went through the queue and some launch on the CPU device.
  EXPECT_EQ(*after.Value("sageserve_queue_duration_seconds_count"), kOk);
  const double launches = after.Sum("sageserve_batches_total", {{"device", "cpu"}});
  EXPECT_GE(launches, 1);
  EXPECT_LE(launches, kOk);
  EXPECT_EQ(after.Sum("sageserve_batch_size_requests_sum", {{"device", "cpu"}}), kOk);
  EXPECT_EQ(after.Sum("sageserve_kernel_duration_seconds_count", {{"device", "cpu"}}), launches);
  // Every launch's answering was timed too, and it took some time.
  EXPECT_EQ(after.Sum("sageserve_batch_respond_duration_seconds_count", {{"device", "cpu"}}), launches);
  EXPECT_GT(after.Sum("sageserve_batch_respond_duration_seconds_sum", {{"device", "cpu"}}), 0);
  EXPECT_EQ(*after.Value("sageserve_queue_depth_requests"), 0);
  // Every answered request has left the in-flight gauge; the server says what runs.
  EXPECT_EQ(*after.Value("sageserve_in_flight_requests"), 0);
  EXPECT_EQ(after.Sum("sageserve_build_info", {{"backend", "cpu"}}), 1);
  EXPECT_GT(*after.Value("process_resident_memory_bytes"), 0);
  EXPECT_GT(*after.Value("process_open_fds"), 0);
}

TEST_F(ServerMetricsE2E, StreamRequestsAreCountedUnderTheirMethod) {
  ProblemShape shape;
  std::unique_ptr<sageserve::StreamSession> session = server_.client->OpenStream();
  constexpr int kRequests = 8;
  std::vector<std::future<absl::StatusOr<v1::AttendResponse>>> done;
  for (int i = 0; i < kRequests; ++i) done.push_back(session->Send(MakeRequest(shape, absl::StrCat("s-", i))));
  for (auto& d : done) EXPECT_TRUE(d.get().ok());
  ASSERT_TRUE(session->Close().ok());
  const ParsedExposition after = Scrape(metrics_port_);
  EXPECT_EQ(after.Sum("sageserve_requests_total", {{"method", "AttendStream"}, {"code", "OK"}}), kRequests);
  EXPECT_EQ(after.Sum("sageserve_batch_size_requests_sum", {{"device", "cpu"}}), kRequests);
}

// Every method is counted, not only Attend, and open streams are a gauge that returns to zero.
TEST_F(ServerMetricsE2E, EveryRpcMethodIsCountedAndOpenStreamsAreGauged) {
  ASSERT_TRUE(server_.client->GetServerInfo().ok());
  ASSERT_TRUE(server_.client->GetServerInfo().ok());
  ASSERT_TRUE(server_.client->CheckHealth().ok());
  EXPECT_EQ(server_.client->CheckHealth("no.such.Service").status().code(), absl::StatusCode::kNotFound);
  std::unique_ptr<sageserve::StreamSession> session = server_.client->OpenStream();
  ASSERT_TRUE(session->Send(MakeRequest(ProblemShape{}, "s")).get().ok());
  const ParsedExposition during = Scrape(metrics_port_);
  EXPECT_EQ(during.Sum("sageserve_open_streams", {{"method", "/sageserve.v1.AttentionService/AttendStream"}}), 1);
  ASSERT_TRUE(session->Close().ok());
  session.reset();

  // The stream's status is sent before its interceptor goes; wait for the gauge to settle.
  ParsedExposition after = Scrape(metrics_port_);
  for (int i = 0; i < 100 && after.Sum("sageserve_open_streams") != 0; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
    after = Scrape(metrics_port_);
  }
  EXPECT_EQ(after.Sum("sageserve_open_streams"), 0);
  EXPECT_EQ(after.Sum("sageserve_rpcs_total",
                      {{"method", "/sageserve.v1.AttentionService/GetServerInfo"}, {"code", "OK"}}),
            2);
  EXPECT_EQ(after.Sum("sageserve_rpcs_total", {{"method", "/grpc.health.v1.Health/Check"}, {"code", "OK"}}), 1);
  EXPECT_EQ(after.Sum("sageserve_rpcs_total", {{"method", "/grpc.health.v1.Health/Check"}, {"code", "NOT_FOUND"}}),
            1);
  EXPECT_EQ(after.Sum("sageserve_rpcs_total",
                      {{"method", "/sageserve.v1.AttentionService/AttendStream"}, {"code", "OK"}}),
            1);
}

TEST_F(ServerMetricsE2E, EndpointAnswers404ElsewhereAndStopsWithTheServer) {
  absl::StatusOr<metrics::testing::HttpResponse> r = metrics::testing::HttpGet(metrics_port_, "/");
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->status, 404);
  server_.server->Shutdown();
  EXPECT_FALSE(metrics::testing::HttpGet(metrics_port_, "/metrics").ok());
}

// A backend with two devices that reports their memory, as the CUDA backend does.
class TwoDeviceBackend final : public server::AttentionBackend {
 public:
  TwoDeviceBackend() {
    info_.head_dims = {64, 128};
    info_.recipes = {Recipe::kInt8QkFp8Pv};
  }
  const server::BackendInfo& info() const override { return info_; }
  absl::StatusOr<server::EngineOutput> Attend(const server::EngineInput&, const RecipeConfig&) override {
    return absl::UnavailableError("not used");
  }
  std::vector<server::DeviceStats> DeviceStatsSnapshot() const override {
    std::vector<server::DeviceStats> stats(2);
    for (int i = 0; i < 2; ++i) {
      stats[i].device = i;
      stats[i].memory_used_bytes = (i + 1) * (int64_t{1} << 30);
      stats[i].memory_total_bytes = int64_t{80} << 30;
    }
    return stats;
  }

 private:
  server::BackendInfo info_;
};

TEST(ServerMetricsDevices, GpuMemoryGaugesComeFromTheBackendAtScrapeTime) {
  server::ServerOptions options = TestServerOptions();
  options.metrics_listen_address = "127.0.0.1:0";
  RunningServer running;
  StartServer(options, std::make_unique<TwoDeviceBackend>(), &running);
  const ParsedExposition scraped = Scrape(running.server->metrics_port());
  EXPECT_EQ(*scraped.Value("sageserve_gpu_memory_used_bytes", {{"device", "cuda:1"}}), 2.0 * (1 << 30));
  EXPECT_EQ(*scraped.Value("sageserve_gpu_memory_total_bytes", {{"device", "cuda:0"}}), 80.0 * (1 << 30));
}

}  // namespace
}  // namespace sage::testing
