// AttendStream backpressure (server/frontend/grpc/attend_stream_reactor.*): a client that sends and
// does not read must not have every answer buffered on the server. The stream stops reading at its
// limits and resumes as its answers are written; past the server-wide bound on unwritten answers,
// new stream requests are refused with RESOURCE_EXHAUSTED.
#include <atomic>
#include <chrono>
#include <memory>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "grpcpp/grpcpp.h"
#include "kernels/reference/recipe.h"
#include "gtest/gtest.h"
#include "sageserve/v1/attention_service.grpc.pb.h"
#include "server/backend/host_buffer_pool.h"
#include "server/core/attend_pipeline.h"
#include "server/frontend/grpc/attention_service.h"
#include "server/metrics/server_metrics.h"
#include "server/scheduler/fifo_scheduler.h"
#include "tests/metrics/prometheus_parse.h"
#include "tests/server/test_support.h"

namespace sage::testing {
namespace {
namespace v1 = ::sageserve::v1;
using namespace std::chrono_literals;

// Answers at once with zeros, counting calls: how many requests the server has read and run.
class CountingBackend final : public server::AttentionBackend {
 public:
  CountingBackend() {
    info_.kind = server::BackendKind::kCpu;
    info_.devices.push_back({"counting (test)", "none", 0});
    info_.head_dims = {64, 128};
    info_.recipes.assign(std::begin(kAllRecipes), std::end(kAllRecipes));
  }
  const server::BackendInfo& info() const override { return info_; }
  absl::StatusOr<EngineOutput> Attend(const EngineInput& in, const RecipeConfig& /*config*/) override {
    calls_.fetch_add(1);
    EngineOutput out;
    out.o.assign(static_cast<size_t>(in.q.numel()), 0.0f);
    return out;
  }
  int calls() const { return calls_.load(); }

 private:
  server::BackendInfo info_;
  std::atomic<int> calls_{0};
};

// The attention service alone on a loopback port, with the stream limits under test.
class StreamServer {
 public:
  explicit StreamServer(const server::StreamLimits& stream) {
    auto metrics = server::ServerMetrics::Create();
    EXPECT_TRUE(metrics.ok());
    metrics_ = *std::move(metrics);
    server::FifoSchedulerOptions fifo;
    fifo.worker_threads = 2;
    fifo.queue_capacity = 4096;  // Never the limit here: every request sent is accepted.
    auto scheduler = server::FifoScheduler::Create(fifo, &backend_);
    EXPECT_TRUE(scheduler.ok());
    scheduler_ = *std::move(scheduler);
    pool_ = server::MakeHeapBufferPool();
    pipeline_ = std::make_unique<server::AttendPipeline>(scheduler_.get(), &backend_.info(), server::RequestLimits{},
                                                         metrics_.get());
    server::ServiceLimits limits;
    limits.stream = stream;
    service_ = std::make_unique<server::AttentionService>(server::AttendBackends{pipeline_.get(), nullptr},
                                                          /*selftest=*/nullptr, &backend_.info(), pool_.get(), limits,
                                                          &authorizer_, metrics_.get());
    grpc::ServerBuilder builder;
    builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port_);
    builder.RegisterService(service_.get());
    server_ = builder.BuildAndStart();
    EXPECT_NE(server_, nullptr);
  }
  ~StreamServer() {
    server_->Shutdown(std::chrono::system_clock::now() + 5s);
    scheduler_->Shutdown(server::DrainMode::kDropQueued);
  }

  std::unique_ptr<v1::AttentionService::Stub> NewStub() const {
    grpc::ChannelArguments args;
    args.SetMaxReceiveMessageSize(64 << 20);
    // A fresh connection per stub, so streams do not share one connection's flow control.
    args.SetInt("sageserve.test.channel", next_channel_.fetch_add(1));
    // A client that does not read must hold the server's writes back soon and for good: no BDP
    // probing (which grows the receive window to megabytes) and a 64 KiB window, under one answer.
    args.SetInt(GRPC_ARG_HTTP2_BDP_PROBE, 0);
    args.SetInt(GRPC_ARG_HTTP2_STREAM_LOOKAHEAD_BYTES, 64 << 10);
    return v1::AttentionService::NewStub(
        grpc::CreateCustomChannel(absl::StrCat("127.0.0.1:", port_), grpc::InsecureChannelCredentials(), args));
  }
  double Gauge(const std::string& name) const {
    auto parsed = metrics::testing::ParseExposition(metrics_->RenderText());
    EXPECT_TRUE(parsed.ok()) << parsed.status();
    if (!parsed.ok()) return -1;
    auto v = parsed->Value(name);
    EXPECT_TRUE(v.ok()) << v.status();
    return v.ok() ? *v : -1;
  }
  int calls() const { return backend_.calls(); }

 private:
  CountingBackend backend_;
  std::unique_ptr<server::ServerMetrics> metrics_;
  std::unique_ptr<server::Scheduler> scheduler_;
  std::unique_ptr<server::HostBufferPool> pool_;
  std::unique_ptr<server::AttendPipeline> pipeline_;
  // No token file: every caller is the anonymous administrator.
  std::unique_ptr<server::AccessControl> access_ = *server::AccessControl::Create({});
  server::CallAuthorizer authorizer_{access_.get()};
  std::unique_ptr<server::AttentionService> service_;
  std::unique_ptr<grpc::Server> server_;
  int port_ = 0;
  mutable std::atomic<int> next_channel_{0};
};

// 64 query tokens x 4 heads x 128: a 128 KiB request and a 128 KiB FP32 answer.
ProblemShape Shape() {
  ProblemShape shape;
  shape.cu_q = {0, 64};
  shape.cu_k = {0, 64};
  shape.heads_q = 4;
  shape.heads_kv = 2;
  shape.head_dim = 128;
  shape.recipe = v1::RECIPE_UNQUANTIZED;
  return shape;
}
constexpr size_t kAnswerBytes = 64 * 4 * 128 * sizeof(float);

TEST(StreamBackpressure, AStreamNotReadStopsBeingReadAndLosesNothing) {
  constexpr int kRequests = 400;
  constexpr int kCap = 16;
  server::StreamLimits limits;
  limits.max_pending_responses = kCap;
  StreamServer server(limits);
  std::unique_ptr<v1::AttentionService::Stub> stub = server.NewStub();
  grpc::ClientContext context;
  std::unique_ptr<grpc::ClientReaderWriter<v1::AttendRequest, v1::AttendResponse>> stream = stub->AttendStream(&context);
  ASSERT_NE(stream, nullptr);
  const v1::AttendRequest base = MakeRequest(Shape(), "base");

  std::atomic<int> written{0};
  std::thread writer([&] {
    for (int i = 0; i < kRequests; ++i) {
      v1::AttendRequest r = base;
      r.set_request_id(absl::StrCat("r", i));
      if (!stream->Write(r)) return;
      written.fetch_add(1);
    }
    stream->WritesDone();
  });

  // The client reads nothing for a while: the server must stop reading, not buffer 400 answers.
  double peak_queued = 0;
  int calls_at_1s = 0;
  for (auto start = std::chrono::steady_clock::now(); std::chrono::steady_clock::now() - start < 1500ms;) {
    peak_queued = std::max(peak_queued, server.Gauge("sageserve_stream_queued_responses"));
    if (calls_at_1s == 0 && std::chrono::steady_clock::now() - start >= 1000ms) calls_at_1s = server.calls();
    std::this_thread::sleep_for(5ms);
  }
  const int calls_stalled = server.calls();
  std::printf("stalled: %d requests run, %d written by the client, peak %g answers queued, %g bytes\n", calls_stalled,
              written.load(), peak_queued, server.Gauge("sageserve_stream_queued_bytes"));
  EXPECT_LT(calls_stalled, kRequests / 2) << "the server went on reading a stream whose client reads nothing";
  EXPECT_EQ(calls_stalled, calls_at_1s) << "still reading after 1 s";
  EXPECT_LE(peak_queued, kCap);
  EXPECT_LT(written.load(), kRequests) << "the client's writes never stalled";

  // Now the client reads: every answer arrives, whole.
  std::set<std::string> ids;
  v1::AttendResponse response;
  while (stream->Read(&response)) {
    EXPECT_EQ(response.status().code(), 0) << response.status().message();
    EXPECT_EQ(response.o().data().size(), kAnswerBytes) << response.request_id();
    EXPECT_TRUE(ids.insert(response.request_id()).second) << "duplicate " << response.request_id();
  }
  writer.join();
  grpc::Status finished = stream->Finish();
  EXPECT_TRUE(finished.ok()) << finished.error_message();
  EXPECT_EQ(written.load(), kRequests);
  EXPECT_EQ(ids.size(), static_cast<size_t>(kRequests));
  EXPECT_EQ(server.calls(), kRequests);
  EXPECT_EQ(server.Gauge("sageserve_stream_queued_responses"), 0);
  EXPECT_EQ(server.Gauge("sageserve_stream_queued_bytes"), 0);
}

TEST(StreamBackpressure, PastTheServerBoundNewStreamRequestsAreRefused) {
  server::StreamLimits limits;
  limits.max_pending_responses = 8;
  limits.max_server_queued_bytes = 1;  // Any unwritten answer fills the server's bound.
  StreamServer server(limits);
  const v1::AttendRequest base = MakeRequest(Shape(), "base");

  // Stream A sends and does not read, until answers wait on the server.
  std::unique_ptr<v1::AttentionService::Stub> stub_a = server.NewStub();
  grpc::ClientContext context_a;
  auto a = stub_a->AttendStream(&context_a);
  std::atomic<int> a_written{0};
  std::thread writer([&] {
    for (int i = 0; i < 200; ++i) {
      v1::AttendRequest r = base;
      r.set_request_id(absl::StrCat("a", i));
      if (!a->Write(r)) return;
      a_written.fetch_add(1);
    }
    a->WritesDone();
  });
  // Until A's answers are held on the server for good: the transport first absorbs writes up to its
  // flow-control window, so a nonzero gauge can drop back to 0 while that window fills. Stalled
  // means nonzero for 300 ms in a row.
  const auto until = std::chrono::steady_clock::now() + 10s;
  auto held_since = std::chrono::steady_clock::now();
  bool held = false;
  while (std::chrono::steady_clock::now() < until) {
    const auto now = std::chrono::steady_clock::now();
    if (server.Gauge("sageserve_stream_queued_bytes") <= 0) {
      held = false;
    } else if (!held) {
      held = true;
      held_since = now;
    } else if (now - held_since >= 300ms) {
      break;
    }
    std::this_thread::sleep_for(5ms);
  }
  ASSERT_GT(server.Gauge("sageserve_stream_queued_bytes"), 0);

  // Stream B's request is refused, on the stream, naming the limit.
  std::unique_ptr<v1::AttentionService::Stub> stub_b = server.NewStub();
  grpc::ClientContext context_b;
  auto b = stub_b->AttendStream(&context_b);
  v1::AttendRequest rb = base;
  rb.set_request_id("b0");
  ASSERT_TRUE(b->Write(rb));
  b->WritesDone();
  v1::AttendResponse response;
  ASSERT_TRUE(b->Read(&response));
  EXPECT_EQ(response.request_id(), "b0");
  EXPECT_EQ(response.status().code(), static_cast<int>(grpc::StatusCode::RESOURCE_EXHAUSTED));
  EXPECT_NE(response.status().message().find("stream_max_server_queued_bytes"), std::string::npos)
      << response.status().message();
  EXPECT_FALSE(b->Read(&response));
  EXPECT_TRUE(b->Finish().ok());

  // A drains: every request is answered, run or refused.
  int a_answers = 0;
  while (a->Read(&response)) {
    ++a_answers;
    const int code = response.status().code();
    EXPECT_TRUE(code == 0 || code == static_cast<int>(grpc::StatusCode::RESOURCE_EXHAUSTED)) << code;
  }
  writer.join();
  EXPECT_TRUE(a->Finish().ok());
  EXPECT_EQ(a_answers, 200);
  EXPECT_EQ(server.Gauge("sageserve_stream_queued_bytes"), 0);
}

}  // namespace
}  // namespace sage::testing
