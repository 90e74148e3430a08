// Shared helpers for the server end-to-end tests: request builders, a controllable fake backend,
// and an in-process server on a free loopback port.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/reference/attention_problem.h"
#include "sageserve/client/client.h"
#include "sageserve/v1/session.grpc.pb.h"
#include "server/backend/backend.h"
#include "server/app/sage_server.h"

namespace sage::testing {
using server::EngineInput;
using server::EngineOutput;


struct ProblemShape {
  std::vector<int32_t> cu_q = {0, 64};
  std::vector<int32_t> cu_k = {0, 64};
  int heads_q = 4;
  int heads_kv = 2;
  int head_dim = 64;
  bool causal = false;
  bool lse = false;
  sageserve::v1::DType dtype = sageserve::v1::DTYPE_FP16;
  sageserve::v1::DType output_dtype = sageserve::v1::DTYPE_FP32;
  sageserve::v1::Recipe recipe = sageserve::v1::RECIPE_UNSPECIFIED;
  uint32_t seed = 7;
};

// n × heads × head_dim fp16 values ~ N(0,1) plus bias · (channel % period): a per-channel offset, as
// LLM keys have (the session tests' K and V).
std::vector<uint16_t> ChannelBiasedFp16(int64_t n, int heads, int head_dim, uint32_t seed, float bias, int period);

// A random request with the given shape (q/k/v ~ N(0,1) in 16-bit).
sageserve::v1::AttendRequest MakeRequest(const ProblemShape& shape, const std::string& id);

// The engine's answer for `request`, computed locally with the same recipe as the server would
// run (`recipe` = the server's choice when the request names none).
struct LocalResult {
  std::vector<float> o;
  std::vector<float> lse;
};
LocalResult RunLocally(const sageserve::v1::AttendRequest& request, Recipe recipe);

// What the stand-in backends of the tests say of themselves: a CPU-kind device named `name`, head
// dims 64 and 128, every recipe.
server::BackendInfo TestBackendInfo(const char* name);

// A backend that blocks every Attend until Release(), counting calls; returns zeros.
class GateBackend final : public server::AttentionBackend {
 public:
  GateBackend();
  const server::BackendInfo& info() const override { return info_; }
  absl::StatusOr<EngineOutput> Attend(const EngineInput& in, const RecipeConfig& config) override;
  void Release();
  // Blocks until `n` calls have entered Attend.
  void WaitForCalls(int n);
  // False when fewer than n calls arrived within `timeout`.
  bool WaitForCalls(int n, std::chrono::milliseconds timeout);
  int calls() const { return calls_.load(); }

 private:
  server::BackendInfo info_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool released_ = false;
  std::atomic<int> calls_{0};
};

// A server on 127.0.0.1:<free port> with small, test-friendly defaults.
server::ServerOptions TestServerOptions();

// The session tests' sessions (fp16): created on `stub`, or "" with a test failure when refused.
struct TestSessionShape {
  int layers = 2;
  int heads_q = 4;
  int heads_kv = 2;
  int head_dim = 64;
  sageserve::v1::KvStorage storage = sageserve::v1::KV_STORAGE_16BIT;
  int64_t max_tokens = 4096;
};
std::string CreateTestSession(sageserve::v1::SessionService::Stub& stub, const TestSessionShape& shape);
// Its CreateSessionRequest (fp16), for tests that change it or expect a refusal.
sageserve::v1::CreateSessionRequest TestSessionRequest(const TestSessionShape& shape);
// The cached length of the session's `layer` (GetSession).
int64_t TestSessionLength(sageserve::v1::SessionService::Stub& stub, const std::string& id, int layer);

struct RunningServer {
  std::unique_ptr<server::SageServer> server;
  std::unique_ptr<sageserve::Client> client;
  std::string target;
};
// Fails the test (ASSERT) if the server does not start.
void StartServer(const server::ServerOptions& options, std::unique_ptr<server::AttentionBackend> backend,
                 RunningServer* out);

}  // namespace sage::testing
