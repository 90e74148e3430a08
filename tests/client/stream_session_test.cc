// StreamSession against a stand-in AttendStream service that never reads: a request larger than the
// HTTP/2 flow-control window stays "being written", and the stream then ends under it (the client
// cancels, its deadline passes, or the server finishes). Every outstanding request must still be
// answered with the stream's status, and Close() and the destructor must return. Found by the soak
// run (docs/BENCHMARKS.md, "Soak"): a write that failed after the read had already failed never
// released the reactor's hold, so OnDone never ran and every waiter hung.
#include "sageserve/client/stream_session.h"

#include <atomic>
#include <chrono>
#include <future>
#include <memory>
#include <string>
#include <thread>

#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "sageserve/client/client.h"
#include "sageserve/client/tensor.h"

namespace {

namespace v1 = ::sageserve::v1;

enum class Ending {
  kWaitForCancel,  // Holds the stream until the client cancels it or its deadline passes.
  kFinishAtOnce,   // Finishes RESOURCE_EXHAUSTED before reading anything.
};

class NeverReads final : public grpc::ServerBidiReactor<v1::AttendRequest, v1::AttendResponse> {
 public:
  explicit NeverReads(Ending ending) {
    // Marked first: a cancellation that follows must not Finish a second time (gRPC aborts on it).
    if (ending == Ending::kFinishAtOnce && !finished_.exchange(true)) {
      Finish(grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED, "go away"));
    }
  }
  void OnCancel() override {
    if (!finished_.exchange(true)) Finish(grpc::Status::CANCELLED);
  }
  void OnDone() override { delete this; }

 private:
  std::atomic<bool> finished_{false};
};

class StandIn final : public v1::AttentionService::CallbackService {
 public:
  explicit StandIn(Ending ending) : ending_(ending) {}
  grpc::ServerBidiReactor<v1::AttendRequest, v1::AttendResponse>* AttendStream(
      grpc::CallbackServerContext* /*context*/) override {
    return new NeverReads(ending_);
  }

 private:
  Ending ending_;
};

class StreamSessionEnds : public ::testing::TestWithParam<Ending> {
 protected:
  void SetUp() override {
    service_ = std::make_unique<StandIn>(GetParam());
    grpc::ServerBuilder builder;
    builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port_);
    builder.RegisterService(service_.get());
    builder.SetMaxReceiveMessageSize(64 << 20);
    server_ = builder.BuildAndStart();
    ASSERT_NE(server_, nullptr);
    sageserve::ClientOptions options;
    options.target = "127.0.0.1:" + std::to_string(port_);
    auto client = sageserve::Client::Create(options);
    ASSERT_TRUE(client.ok()) << client.status();
    client_ = std::move(*client);
  }
  void TearDown() override {
    client_.reset();
    if (server_) server_->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(5));
  }

  // 8 MiB of q: far past any window a peer that never reads grants, so the write cannot finish.
  static v1::AttendRequest Big(const std::string& id) {
    v1::AttendRequest r;
    r.set_request_id(id);
    const sageserve::Shape3 shape{4096, 8, 128};
    EXPECT_TRUE(sageserve::SetTensorBytes(v1::DTYPE_FP16, shape, std::string(shape.numel() * 2, '\x3c'),
                                          r.mutable_q())
                    .ok());
    return r;
  }

  // Waits for `f`. A session that never ends is leaked rather than destroyed (its destructor would
  // wait forever too), with the client and server under it, so that the test fails instead of hanging.
  bool Resolves(std::future<absl::StatusOr<v1::AttendResponse>>& f, std::unique_ptr<sageserve::StreamSession>& session,
                absl::Status* status) {
    if (f.wait_for(std::chrono::seconds(10)) != std::future_status::ready) {
      session.release();  // intentionally leaked, see above
      Abandon();
      return false;
    }
    *status = f.get().status();
    return true;
  }
  void Abandon() {
    client_.release();
    server_.release();
    service_.release();
  }

  std::unique_ptr<StandIn> service_;
  std::unique_ptr<grpc::Server> server_;
  int port_ = 0;
  std::unique_ptr<sageserve::Client> client_;
};

// The way the stream ends is repeated: which of the failed read and the failed write gRPC reports
// first varies from run to run, and only one order used to hang.
constexpr int kRounds = 20;

TEST_P(StreamSessionEnds, EveryRequestIsAnsweredAndCloseReturns) {
  for (int round = 0; round < kRounds; ++round) {
    SCOPED_TRACE(round);
    sageserve::StreamOptions options;
    // Deadline variant: the server holds the stream; only the deadline ends it.
    if (GetParam() == Ending::kWaitForCancel && round % 2 == 1) options.deadline = std::chrono::milliseconds(50);
    auto session = client_->OpenStream(options);
    auto first = session->Send(Big("a"));
    auto second = session->Send(Big("b"));
    if (GetParam() == Ending::kWaitForCancel && round % 2 == 0) {
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
      session->Cancel();
    }
    absl::Status a, b;
    ASSERT_TRUE(Resolves(first, session, &a)) << "the first request was never answered";
    ASSERT_TRUE(Resolves(second, session, &b)) << "the second request was never answered";
    EXPECT_FALSE(a.ok());
    EXPECT_FALSE(b.ok());
    const absl::Status closed = session->Close();
    EXPECT_FALSE(closed.ok());
    if (GetParam() == Ending::kFinishAtOnce) {
      EXPECT_EQ(closed.code(), absl::StatusCode::kResourceExhausted) << closed;
    } else if (round % 2 == 0) {
      EXPECT_EQ(closed.code(), absl::StatusCode::kCancelled) << closed;
    } else {
      EXPECT_EQ(closed.code(), absl::StatusCode::kDeadlineExceeded) << closed;
    }
  }
}

// Destroying a session with a request being written cancels it and returns.
TEST_P(StreamSessionEnds, DestructorReturnsWithAWriteInFlight) {
  for (int round = 0; round < kRounds; ++round) {
    SCOPED_TRACE(round);
    auto finished = std::make_shared<std::promise<void>>();
    std::future<void> done = finished->get_future();
    std::thread([client = client_.get(), finished] {
      auto session = client->OpenStream();
      auto first = session->Send(Big("a"));
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
      session.reset();
      finished->set_value();
    }).detach();
    if (done.wait_for(std::chrono::seconds(10)) != std::future_status::ready) {
      Abandon();  // the thread still uses them
      FAIL() << "the destructor hung";
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Ways, StreamSessionEnds, ::testing::Values(Ending::kWaitForCancel, Ending::kFinishAtOnce),
                         [](const ::testing::TestParamInfo<Ending>& info) {
                           return std::string(info.param == Ending::kWaitForCancel ? "ClientEndsIt"
                                                                                   : "ServerFinishesFirst");
                         });

}  // namespace
