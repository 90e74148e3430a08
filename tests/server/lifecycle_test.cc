// Queue limits, deadlines, cancellation and in-process graceful shutdown, made deterministic with a
// backend that blocks until the test releases it.
#include <future>
#include <thread>

#include "grpc/health/v1/health.grpc.pb.h"
#include "grpcpp/client_context.h"
#include "grpcpp/create_channel.h"
#include "gtest/gtest.h"
#include "tests/metrics/prometheus_parse.h"
#include "tests/server/test_support.h"

namespace sage::testing {
namespace {
namespace v1 = ::sageserve::v1;
using namespace std::chrono_literals;

// One asynchronous unary Attend with its own context (so the test can cancel it).
struct AsyncAttend {
  grpc::ClientContext context;
  v1::AttendRequest request;
  v1::AttendResponse response;
  std::promise<grpc::Status> done;

  void Start(v1::AttentionService::Stub* stub) {
    stub->async()->Attend(&context, &request, &response, [this](grpc::Status s) { done.set_value(s); });
  }
};

class Lifecycle : public ::testing::Test {
 protected:
  // Room for one expired/cancelled request plus the follow-up request the tests send.
  static constexpr int kQueueCapacity = 2;

  void SetUp() override {
    auto gate = std::make_unique<GateBackend>();
    gate_ = gate.get();
    server::ServerOptions options = TestServerOptions();
    options.scheduler.worker_threads = 1;
    options.scheduler.queue_capacity = kQueueCapacity;
    StartServer(options, std::move(gate), &server_);
    stub_ = v1::AttentionService::NewStub(server_.client->channel());
  }
  void TearDown() override {
    gate_->Release();
    server_.server.reset();
  }
  std::unique_ptr<AsyncAttend> Send(const std::string& id) {
    auto call = std::make_unique<AsyncAttend>();
    call->request = MakeRequest(ProblemShape{}, id);
    call->context.set_deadline(std::chrono::system_clock::now() + 30s);
    call->Start(stub_.get());
    return call;
  }

  GateBackend* gate_ = nullptr;
  RunningServer server_;
  std::unique_ptr<v1::AttentionService::Stub> stub_;
};

TEST_F(Lifecycle, FullQueueIsResourceExhausted) {
  auto running = Send("running");
  gate_->WaitForCalls(1);
  std::vector<std::unique_ptr<AsyncAttend>> queued;
  for (int i = 0; i < kQueueCapacity; ++i) queued.push_back(Send("queued-" + std::to_string(i)));
  std::this_thread::sleep_for(100ms);  // Let them reach the queue.
  absl::StatusOr<v1::AttendResponse> rejected = server_.client->Attend(MakeRequest(ProblemShape{}, "rejected"));
  EXPECT_EQ(rejected.status().code(), absl::StatusCode::kResourceExhausted) << rejected.status();
  gate_->Release();
  EXPECT_TRUE(running->done.get_future().get().ok());
  for (auto& q : queued) EXPECT_TRUE(q->done.get_future().get().ok());
}

// RESOURCE_EXHAUSTED answers the server sent, counted by its own metrics (every attempt counts).
double ResourceExhaustedAnswers(const RunningServer& s) {
  absl::StatusOr<metrics::testing::ParsedExposition> parsed =
      metrics::testing::ParseExposition(s.server->metrics().RenderText());
  EXPECT_TRUE(parsed.ok()) << parsed.status();
  return parsed.ok() ? parsed->Sum("sageserve_request_errors_total", {{"code", "RESOURCE_EXHAUSTED"}}) : -1;
}

// A client that allows retries rides out a full queue: the server's refusal asks for a retry after
// 10 ms (pushback), and the retry lands once the queue drains. A RESOURCE_EXHAUSTED that retrying
// cannot cure (a tensor over --max_tokens) is refused once, not five times.
TEST_F(Lifecycle, FullQueueRetriedByAClientThatAllowsIt) {
  sageserve::ClientOptions options;
  options.target = server_.target;
  options.max_attempts = 5;
  absl::StatusOr<std::unique_ptr<sageserve::Client>> patient = sageserve::Client::Create(options);
  ASSERT_TRUE(patient.ok()) << patient.status();

  auto running = Send("running");
  gate_->WaitForCalls(1);
  std::vector<std::unique_ptr<AsyncAttend>> queued;
  for (int i = 0; i < kQueueCapacity; ++i) queued.push_back(Send("queued-" + std::to_string(i)));
  std::this_thread::sleep_for(100ms);  // Let them reach the queue.
  const double refused_before = ResourceExhaustedAnswers(server_);
  std::future<absl::StatusOr<v1::AttendResponse>> retried = std::async(std::launch::async, [&] {
    return (*patient)->Attend(MakeRequest(ProblemShape{}, "patient"));
  });
  // Open the gate only once the first attempt has been refused.
  for (int i = 0; i < 2000 && ResourceExhaustedAnswers(server_) == refused_before; ++i) {
    std::this_thread::sleep_for(1ms);
  }
  ASSERT_GT(ResourceExhaustedAnswers(server_), refused_before) << "the first attempt was never refused";
  gate_->Release();
  absl::StatusOr<v1::AttendResponse> answer = retried.get();
  ASSERT_TRUE(answer.ok()) << answer.status();
  EXPECT_EQ(answer->request_id(), "patient");
  EXPECT_TRUE(running->done.get_future().get().ok());
  for (auto& q : queued) EXPECT_TRUE(q->done.get_future().get().ok());

  // A server that takes at most 100 tokens per tensor, and a request of 101.
  server::ServerOptions small_options = TestServerOptions();
  small_options.limits.max_tokens = 100;
  RunningServer small;
  StartServer(small_options, nullptr, &small);
  options.target = small.target;
  absl::StatusOr<std::unique_ptr<sageserve::Client>> patient_small = sageserve::Client::Create(options);
  ASSERT_TRUE(patient_small.ok()) << patient_small.status();
  ProblemShape over;
  over.cu_q = {0, 101};
  over.cu_k = {0, 101};
  const double before = ResourceExhaustedAnswers(small);
  absl::StatusOr<v1::AttendResponse> too_big = (*patient_small)->Attend(MakeRequest(over, "too-big"));
  EXPECT_EQ(too_big.status().code(), absl::StatusCode::kResourceExhausted) << too_big.status();
  EXPECT_EQ(ResourceExhaustedAnswers(small) - before, 1) << "a request that cannot fit was retried";

  options.max_attempts = 6;
  EXPECT_EQ(sageserve::Client::Create(options).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(Lifecycle, DeadlinePassedInQueueIsDroppedNotRun) {
  auto running = Send("running");
  gate_->WaitForCalls(1);
  auto late = std::make_unique<AsyncAttend>();
  late->request = MakeRequest(ProblemShape{}, "late");
  late->context.set_deadline(std::chrono::system_clock::now() + 200ms);
  late->Start(stub_.get());
  EXPECT_EQ(late->done.get_future().get().error_code(), grpc::StatusCode::DEADLINE_EXCEEDED);
  // The server's copy of the deadline is measured from when the call arrived: give it time to
  // pass there too before the worker frees up.
  std::this_thread::sleep_for(100ms);
  gate_->Release();
  EXPECT_TRUE(running->done.get_future().get().ok());
  // FIFO with one worker: once this one is done, "late" has been taken off the queue.
  EXPECT_TRUE(server_.client->Attend(MakeRequest(ProblemShape{}, "after")).ok());
  EXPECT_EQ(gate_->calls(), 2) << "the expired request must not reach the backend";
}

TEST_F(Lifecycle, CancelledCallIsDroppedNotRun) {
  auto running = Send("running");
  gate_->WaitForCalls(1);
  auto cancelled = Send("cancelled");
  std::this_thread::sleep_for(100ms);
  cancelled->context.TryCancel();
  EXPECT_EQ(cancelled->done.get_future().get().error_code(), grpc::StatusCode::CANCELLED);
  std::this_thread::sleep_for(100ms);  // The cancellation (RST_STREAM) reaches the server.
  gate_->Release();
  EXPECT_TRUE(running->done.get_future().get().ok());
  EXPECT_TRUE(server_.client->Attend(MakeRequest(ProblemShape{}, "after")).ok());
  EXPECT_EQ(gate_->calls(), 2) << "the cancelled request must not reach the backend";
}

TEST_F(Lifecycle, ShutdownDrainsInFlightWorkAndRefusesNewWork) {
  // A health watcher and an open stream, both from before the drain.
  auto health = grpc::health::v1::Health::NewStub(server_.client->channel());
  grpc::ClientContext watch_context;
  grpc::health::v1::HealthCheckRequest watch_request;
  auto watch = health->Watch(&watch_context, watch_request);
  grpc::health::v1::HealthCheckResponse status;
  ASSERT_TRUE(watch->Read(&status));
  EXPECT_EQ(status.status(), grpc::health::v1::HealthCheckResponse::SERVING);
  std::unique_ptr<sageserve::StreamSession> stream = server_.client->OpenStream();

  auto running = Send("in-flight");
  gate_->WaitForCalls(1);
  std::thread drain([&] { server_.server->Shutdown(); });

  ASSERT_TRUE(watch->Read(&status));
  EXPECT_EQ(status.status(), grpc::health::v1::HealthCheckResponse::NOT_SERVING);
  // New work on the already-open stream is refused with UNAVAILABLE; the stream stays usable.
  absl::StatusOr<v1::AttendResponse> refused = stream->Send(MakeRequest(ProblemShape{}, "during-drain")).get();
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kUnavailable) << refused.status();
  // New calls are refused too.
  absl::StatusOr<v1::AttendResponse> fresh = server_.client->Attend(MakeRequest(ProblemShape{}, "new"));
  EXPECT_EQ(fresh.status().code(), absl::StatusCode::kUnavailable) << fresh.status();

  gate_->Release();
  EXPECT_TRUE(running->done.get_future().get().ok()) << "in-flight work must complete";
  EXPECT_TRUE(stream->Close().ok());
  drain.join();
  EXPECT_FALSE(watch->Read(&status));
  (void)watch->Finish();
}

}  // namespace
}  // namespace sage::testing

namespace sage::testing {
namespace {

TEST(LifecycleGrace, OpenCallsAreCancelledWhenTheGracePeriodEnds) {
  auto gate = std::make_unique<GateBackend>();
  GateBackend* g = gate.get();
  server::ServerOptions options = TestServerOptions();
  options.scheduler.worker_threads = 1;
  options.grace_period = std::chrono::milliseconds(200);
  RunningServer s;
  StartServer(options, std::move(gate), &s);
  auto stub = sageserve::v1::AttentionService::NewStub(s.client->channel());
  AsyncAttend stuck;
  stuck.request = MakeRequest(ProblemShape{}, "stuck");
  stuck.Start(stub.get());
  // The stream's request goes out only once the unary one holds the only worker: sent together,
  // the stream's could reach the server first and take the gate, and the unary one then arrived
  // during the drain (UNAVAILABLE at once), so the gate was released early and the stream's request
  // was answered. The pause lets it be queued before the drain; one that arrives later is refused,
  // which the checks below accept as well.
  g->WaitForCalls(1);
  std::unique_ptr<sageserve::StreamSession> stream = s.client->OpenStream();
  auto stream_result = stream->Send(MakeRequest(ProblemShape{}, "stream-queued"));
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  std::thread drain([&] { s.server->Shutdown(); });
  const grpc::StatusCode code = stuck.done.get_future().get().error_code();
  // Cancelled by the server at the end of the grace period; the client may see the connection
  // close first.
  EXPECT_TRUE(code == grpc::StatusCode::CANCELLED || code == grpc::StatusCode::UNAVAILABLE) << code;
  g->Release();
  drain.join();
  EXPECT_FALSE(stream_result.get().ok());
  EXPECT_FALSE(stream->Close().ok());
}

// A server that fails to listen after it has been built part-way (scheduler running, services
// made) returns the error; destroying the half-built server must not touch the missing gRPC server.
TEST(LifecycleStart, ListenFailureReturnsAnErrorAndCleansUp) {
  for (const char* address : {"256.256.256.256:1", "not a host:port"}) {
    server::ServerOptions options = TestServerOptions();
    options.listen_address = address;
    absl::StatusOr<std::unique_ptr<server::SageServer>> s =
        server::SageServer::Start(options, std::make_unique<GateBackend>());
    ASSERT_FALSE(s.ok()) << address;
    EXPECT_EQ(s.status().code(), absl::StatusCode::kUnavailable) << s.status();
  }
  // The same with the metrics endpoint up: it is stopped too.
  server::ServerOptions options = TestServerOptions();
  options.listen_address = "256.256.256.256:1";
  options.metrics_listen_address = "127.0.0.1:0";
  EXPECT_FALSE(server::SageServer::Start(options, std::make_unique<GateBackend>()).ok());
}

// Auto workers: two per GPU stream slot over every device, the library default without devices.
TEST(LifecycleStart, AutoWorkerThreadsPerStreamSlot) {
  server::DeviceStats gpu;
  gpu.streams = 4;
  EXPECT_EQ(server::AutoWorkerThreads({gpu}), 8);
  server::DeviceStats other;
  other.streams = 3;
  EXPECT_EQ(server::AutoWorkerThreads({gpu, other}), 14);
  // Light slots (small launches only) add no workers.
  gpu.streams = 12;
  gpu.light_streams = 8;
  EXPECT_EQ(server::AutoWorkerThreads({gpu}), 8);
  EXPECT_EQ(server::AutoWorkerThreads({}), server::FifoSchedulerOptions{}.worker_threads);
}

// worker_threads 0 = auto: with no devices (CPU engine, test backends) the library default.
TEST(LifecycleStart, AutoWorkerThreadsWithoutDevices) {
  server::ServerOptions options = TestServerOptions();
  options.scheduler.worker_threads = 0;
  RunningServer s;
  StartServer(options, std::make_unique<GateBackend>(), &s);
  ASSERT_NE(s.server, nullptr);
  s.server->Shutdown();
}

}  // namespace
}  // namespace sage::testing
