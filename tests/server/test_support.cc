#include "tests/server/test_support.h"

#include <random>

#include "kernels/reference/cpu_engine.h"
#include "kernels/reference/recipe.h"
#include "sageserve/client/tensor.h"
#include "server/backend/cpu_backend.h"
#include "server/frontend/grpc/request_codec.h"

namespace sage::testing {
using server::EngineInput;
using server::EngineOutput;

namespace v1 = ::sageserve::v1;

namespace {

std::vector<uint16_t> Random(size_t n, bool fp16, std::mt19937& rng) {
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<uint16_t> out(n);
  for (uint16_t& x : out) x = fp16 ? sageserve::FloatToFp16(normal(rng)) : sageserve::FloatToBf16(normal(rng));
  return out;
}

}  // namespace

std::vector<uint16_t> ChannelBiasedFp16(int64_t n, int heads, int head_dim, uint32_t seed, float bias, int period) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<uint16_t> out(static_cast<size_t>(n) * heads * head_dim);
  for (size_t i = 0; i < out.size(); ++i) {
    const auto channel = static_cast<int>(i % static_cast<size_t>(head_dim));
    out[i] = sageserve::FloatToFp16(normal(rng) + bias * static_cast<float>(channel % period));
  }
  return out;
}

v1::AttendRequest MakeRequest(const ProblemShape& s, const std::string& id) {
  v1::AttendRequest r;
  r.set_request_id(id);
  std::mt19937 rng(s.seed);
  const bool fp16 = s.dtype == v1::DTYPE_FP16;
  const int64_t tq = s.cu_q.back(), tk = s.cu_k.back();
  auto fill = [&](int64_t tokens, int heads, v1::Tensor* t) {
    std::vector<uint16_t> data = Random(static_cast<size_t>(tokens) * heads * s.head_dim, fp16, rng);
    const sageserve::Shape3 shape{tokens, heads, s.head_dim};
    EXPECT_TRUE((fp16 ? sageserve::SetTensorFp16(data, shape, t) : sageserve::SetTensorBf16(data, shape, t)).ok());
  };
  fill(tq, s.heads_q, r.mutable_q());
  fill(tk, s.heads_kv, r.mutable_k());
  fill(tk, s.heads_kv, r.mutable_v());
  for (int32_t c : s.cu_q) r.add_cu_seqlens_q(c);
  for (int32_t c : s.cu_k) r.add_cu_seqlens_k(c);
  r.set_mask(s.causal ? v1::MASK_MODE_CAUSAL : v1::MASK_MODE_NONE);
  r.set_return_lse(s.lse);
  r.set_output_dtype(s.output_dtype);
  r.set_recipe(s.recipe);
  return r;
}

LocalResult RunLocally(const v1::AttendRequest& request, Recipe recipe) {
  server::BackendInfo info;
  info.head_dims = {64, 128};
  info.recipes.assign(std::begin(kAllRecipes), std::end(kAllRecipes));
  info.default_recipe = recipe;
  server::RequestLimits limits;
  auto decoded = server::DecodeAttendRequest(request, info, limits);
  EXPECT_TRUE(decoded.ok()) << decoded.status();
  if (!decoded.ok()) return {};
  auto engine = CpuEngine::Create(CpuEngineOptions{});
  EXPECT_TRUE(engine.ok());
  auto out = (*engine)->Run((*decoded)->core.input, ConfigFor((*decoded)->core.recipe));
  EXPECT_TRUE(out.ok()) << out.status();
  if (!out.ok()) return {};
  return LocalResult{std::move(out->o), std::move(out->lse)};
}

server::BackendInfo TestBackendInfo(const char* name) {
  server::BackendInfo info;
  info.kind = server::BackendKind::kCpu;
  info.devices.push_back({name, "none", 0});
  info.head_dims = {64, 128};
  info.kv_storages.assign(std::begin(kAllKvStorages), std::end(kAllKvStorages));
  info.recipes.assign(std::begin(kAllRecipes), std::end(kAllRecipes));
  return info;
}

GateBackend::GateBackend() : info_(TestBackendInfo("gate (test)")) {}

absl::StatusOr<EngineOutput> GateBackend::Attend(const EngineInput& in, const RecipeConfig& /*config*/) {
  std::unique_lock<std::mutex> lock(mu_);
  calls_.fetch_add(1);
  cv_.notify_all();
  cv_.wait(lock, [this] { return released_; });
  EngineOutput out;
  out.o.assign(static_cast<size_t>(in.q.numel()), 0.0f);
  if (in.lse == LseMode::kNatural) out.lse.assign(static_cast<size_t>(in.q.tokens * in.q.heads), 0.0f);
  return out;
}

void GateBackend::Release() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    released_ = true;
  }
  cv_.notify_all();
}

void GateBackend::WaitForCalls(int n) {
  std::unique_lock<std::mutex> lock(mu_);
  cv_.wait(lock, [&] { return calls_.load() >= n; });
}

bool GateBackend::WaitForCalls(int n, std::chrono::milliseconds timeout) {
  std::unique_lock<std::mutex> lock(mu_);
  return cv_.wait_for(lock, timeout, [&] { return calls_.load() >= n; });
}

server::ServerOptions TestServerOptions() {
  server::ServerOptions o;
  o.listen_address = "127.0.0.1:0";
  o.backend.choice = server::BackendChoice::kCpu;
  o.scheduler.worker_threads = 2;
  o.scheduler.queue_capacity = 128;
  o.grace_period = std::chrono::milliseconds(5000);
  o.sessions.pool_bytes = size_t{64} << 20;
  return o;
}

void StartServer(const server::ServerOptions& options, std::unique_ptr<server::AttentionBackend> backend,
                 RunningServer* out) {
  absl::StatusOr<std::unique_ptr<server::SageServer>> server =
      backend ? server::SageServer::Start(options, std::move(backend)) : server::SageServer::Start(options);
  ASSERT_TRUE(server.ok()) << server.status();
  out->server = *std::move(server);
  out->target = "127.0.0.1:" + std::to_string(out->server->port());
  sageserve::ClientOptions co;
  co.target = out->target;
  co.deadline = std::chrono::milliseconds(60000);
  auto client = sageserve::Client::Create(co);
  ASSERT_TRUE(client.ok()) << client.status();
  out->client = *std::move(client);
}

sageserve::v1::CreateSessionRequest TestSessionRequest(const TestSessionShape& shape) {
  sageserve::v1::CreateSessionRequest req;
  req.set_layers(shape.layers);
  req.set_heads_q(shape.heads_q);
  req.set_heads_kv(shape.heads_kv);
  req.set_head_dim(shape.head_dim);
  req.set_dtype(sageserve::v1::DTYPE_FP16);
  req.set_kv_storage(shape.storage);
  req.set_max_tokens(shape.max_tokens);
  return req;
}

std::string CreateTestSession(sageserve::v1::SessionService::Stub& stub, const TestSessionShape& shape) {
  grpc::ClientContext ctx;
  sageserve::v1::CreateSessionResponse resp;
  grpc::Status st = stub.CreateSession(&ctx, TestSessionRequest(shape), &resp);
  EXPECT_TRUE(st.ok()) << st.error_message();
  return resp.session_id();
}

int64_t TestSessionLength(sageserve::v1::SessionService::Stub& stub, const std::string& id, int layer) {
  grpc::ClientContext ctx;
  sageserve::v1::GetSessionRequest req;
  req.set_session_id(id);
  sageserve::v1::GetSessionResponse resp;
  grpc::Status st = stub.GetSession(&ctx, req, &resp);
  EXPECT_TRUE(st.ok()) << st.error_message();
  return layer < resp.info().layer_lengths_size() ? resp.info().layer_lengths(layer) : -1;
}

}  // namespace sage::testing
