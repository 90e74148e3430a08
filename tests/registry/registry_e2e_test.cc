// End to end through the assembled server (SageServer on a loopback port, CPU backend, registry
// persisted in a temporary state directory): register, calibrate dry-run and real, Attend runs the
// plan's recipe (the same bits as running that recipe locally), explicit recipes override, error
// codes, and a restart keeps the plan. Also: the server refuses a corrupt registry unless told to
// move it aside.
#include <cstring>
#include <filesystem>
#include <memory>
#include <string>

#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "kernels/reference/cpu_engine.h"
#include "sageserve/v1/attention_service.grpc.pb.h"
#include "sageserve/v1/registry.grpc.pb.h"
#include "server/backend/cpu_backend.h"
#include "kernels/reference/outlier_samples.h"
#include "server/app/sage_server.h"
#include "tests/registry/registry_test_util.h"

namespace sage::server {
namespace {

namespace v1 = ::sageserve::v1;
namespace reg = ::sage::registry;

constexpr double kTarget = 0.96;                          // See calibrator_test.cc.
const std::vector<float> kGains = {1.0f, 4.0f, 16.0f};    // -> int8+fp8, int8+fp16, unquantized.

absl::StatusOr<std::unique_ptr<SageServer>> StartServer(const std::string& state_dir,
                                                        reg::CorruptFilePolicy on_corrupt = reg::CorruptFilePolicy::kRefuse) {
  ServerOptions options;
  options.listen_address = "127.0.0.1:0";
  options.registry.state_dir = state_dir;
  options.registry.on_corrupt = on_corrupt;
  options.grace_period = std::chrono::milliseconds(2000);
  absl::StatusOr<std::unique_ptr<AttentionBackend>> backend = CreateCpuBackend(CpuBackendOptions{2});
  if (!backend.ok()) return backend.status();
  return SageServer::Start(options, *std::move(backend));
}

struct Stubs {
  explicit Stubs(int port) {
    auto channel = grpc::CreateChannel("127.0.0.1:" + std::to_string(port), grpc::InsecureChannelCredentials());
    registry = v1::RegistryService::NewStub(channel);
    attention = v1::AttentionService::NewStub(channel);
  }
  std::unique_ptr<v1::RegistryService::Stub> registry;
  std::unique_ptr<v1::AttentionService::Stub> attention;
};

void FillTensor(const std::vector<uint8_t>& bytes, const TensorView& view, v1::Tensor* t) {
  t->set_dtype(v1::DTYPE_FP16);
  t->add_shape(view.tokens);
  t->add_shape(view.heads);
  t->add_shape(view.head_dim);
  t->set_data(bytes.data(), bytes.size());
}

sage::OutlierSample Sample(float gain, uint64_t seed) {
  sage::OutlierSampleSpec spec;
  spec.k_outlier_gain = gain;
  spec.seed = seed;
  return sage::OutlierSample(spec);
}

grpc::Status Calibrate(Stubs& s, bool dry_run, v1::CalibrateResponse* response) {
  grpc::ClientContext ctx;
  auto writer = s.registry->Calibrate(&ctx, response);
  for (size_t layer = 0; layer < kGains.size(); ++layer) {
    for (uint64_t seed = 0; seed < 2; ++seed) {
      v1::CalibrateRequest req;
      if (layer == 0 && seed == 0) {
        req.set_model("demo");
        req.set_dry_run(dry_run);
      }
      sage::OutlierSample sample = Sample(kGains[layer], 100 * layer + seed);
      v1::CalibrationSample* cs = req.mutable_sample();
      cs->set_layer(static_cast<int>(layer));
      FillTensor(sample.q_bytes(), sample.input().q, cs->mutable_q());
      FillTensor(sample.k_bytes(), sample.input().k, cs->mutable_k());
      FillTensor(sample.v_bytes(), sample.input().v, cs->mutable_v());
      writer->Write(req);
    }
  }
  writer->WritesDone();
  return writer->Finish();
}

// Attend with layer_key (model "demo", `layer`) on a fresh sample of the layer's difficulty.
grpc::Status Attend(Stubs& s, const std::string& model, std::optional<int> layer, v1::Recipe explicit_recipe,
                    v1::AttendResponse* response, const sage::OutlierSample& sample) {
  v1::AttendRequest req;
  req.set_request_id("e2e");
  FillTensor(sample.q_bytes(), sample.input().q, req.mutable_q());
  FillTensor(sample.k_bytes(), sample.input().k, req.mutable_k());
  FillTensor(sample.v_bytes(), sample.input().v, req.mutable_v());
  req.set_output_dtype(v1::DTYPE_FP32);
  req.mutable_layer_key()->set_model(model);
  if (layer.has_value()) req.mutable_layer_key()->set_layer(*layer);
  req.set_recipe(explicit_recipe);
  grpc::ClientContext ctx;
  return s.attention->Attend(&ctx, req, response);
}

void RegisterDemo(Stubs& s) {
  v1::RegisterModelRequest req;
  v1::ModelSpec* spec = req.mutable_spec();
  spec->set_name("demo");
  spec->set_num_layers(3);
  spec->set_q_heads(4);
  spec->set_kv_heads(4);
  spec->set_head_dim(128);
  spec->set_accuracy_target(kTarget);
  v1::RegisterModelResponse resp;
  grpc::ClientContext ctx;
  ASSERT_TRUE(s.registry->RegisterModel(&ctx, req, &resp).ok());
}

// The response's O must be bit-identical to running `recipe` locally: proof that the recipe the
// response names is the recipe that ran.
void ExpectRanLocally(const v1::AttendResponse& resp, const sage::OutlierSample& sample) {
  auto engine = CpuEngine::Create(CpuEngineOptions{1});
  ASSERT_TRUE(engine.ok());
  absl::StatusOr<AttnOutput> local =
      (*engine)->Run(sample.input(), ConfigFor(static_cast<Recipe>(static_cast<int>(resp.recipe()) - 1)));
  ASSERT_TRUE(local.ok());
  ASSERT_EQ(resp.o().data().size(), local->o.size() * sizeof(float));
  EXPECT_EQ(std::memcmp(resp.o().data().data(), local->o.data(), resp.o().data().size()), 0);
}

TEST(RegistryEndToEndTest, CalibrateThenAttendFollowsThePlanAcrossARestart) {
  reg::testing::TempDir dir;
  {
    absl::StatusOr<std::unique_ptr<SageServer>> server = StartServer(dir.path());
    ASSERT_TRUE(server.ok()) << server.status();
    Stubs s((*server)->port());
    RegisterDemo(s);

    v1::AttendResponse resp;
    sage::OutlierSample hard = Sample(kGains[2], 9999);
    ASSERT_TRUE(Attend(s, "demo", 2, v1::RECIPE_UNSPECIFIED, &resp, hard).ok());
    EXPECT_EQ(resp.recipe(), v1::RECIPE_INT8_QK_FP8_PV);  // No plan yet: hardware default.

    v1::CalibrateResponse dry;
    grpc::Status st = Calibrate(s, true, &dry);
    ASSERT_TRUE(st.ok()) << st.error_message();
    EXPECT_FALSE(dry.stored());
    ASSERT_TRUE(Attend(s, "demo", 2, v1::RECIPE_UNSPECIFIED, &resp, hard).ok());
    EXPECT_EQ(resp.recipe(), v1::RECIPE_INT8_QK_FP8_PV);  // The dry run changed nothing.

    v1::CalibrateResponse real;
    st = Calibrate(s, false, &real);
    ASSERT_TRUE(st.ok()) << st.error_message();
    ASSERT_TRUE(real.stored());
    const v1::Recipe expected[] = {v1::RECIPE_INT8_QK_FP8_PV, v1::RECIPE_INT8_QK_FP16_PV, v1::RECIPE_UNQUANTIZED};
    for (int layer = 0; layer < 3; ++layer) {
      EXPECT_EQ(real.cells(layer).chosen(), expected[layer]) << real.report();
      sage::OutlierSample sample = Sample(kGains[layer], 5000 + layer);
      ASSERT_TRUE(Attend(s, "demo", layer, v1::RECIPE_UNSPECIFIED, &resp, sample).ok());
      EXPECT_EQ(resp.recipe(), expected[layer]) << "layer " << layer;
      ExpectRanLocally(resp, sample);
    }
    // An explicit recipe overrides the plan.
    ASSERT_TRUE(Attend(s, "demo", 2, v1::RECIPE_INT4_QK_FP8_PV, &resp, hard).ok());
    EXPECT_EQ(resp.recipe(), v1::RECIPE_INT4_QK_FP8_PV);
    ExpectRanLocally(resp, hard);

    EXPECT_EQ(Attend(s, "nope", 0, v1::RECIPE_UNSPECIFIED, &resp, hard).error_code(), grpc::StatusCode::NOT_FOUND);
    grpc::Status out_of_range = Attend(s, "demo", 3, v1::RECIPE_UNSPECIFIED, &resp, hard);
    EXPECT_EQ(out_of_range.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
    EXPECT_NE(out_of_range.error_message().find("layer"), std::string::npos) << out_of_range.error_message();
    EXPECT_EQ(Attend(s, "demo", std::nullopt, v1::RECIPE_UNSPECIFIED, &resp, hard).error_code(),
              grpc::StatusCode::INVALID_ARGUMENT);
    (*server)->Shutdown();
  }
  absl::StatusOr<std::unique_ptr<SageServer>> restarted = StartServer(dir.path());
  ASSERT_TRUE(restarted.ok()) << restarted.status();
  Stubs s((*restarted)->port());
  grpc::ClientContext ctx;
  v1::GetPlanRequest gp;
  gp.set_model("demo");
  v1::GetPlanResponse plan;
  ASSERT_TRUE(s.registry->GetPlan(&ctx, gp, &plan).ok());
  EXPECT_EQ(plan.plan().version(), 1);
  EXPECT_EQ(plan.plan().source(), v1::PLAN_SOURCE_CALIBRATED);
  v1::AttendResponse resp;
  ASSERT_TRUE(Attend(s, "demo", 2, v1::RECIPE_UNSPECIFIED, &resp, Sample(kGains[2], 1)).ok());
  EXPECT_EQ(resp.recipe(), v1::RECIPE_UNQUANTIZED);
}

TEST(RegistryEndToEndTest, CorruptRegistryStopsTheServerUnlessMovedAside) {
  reg::testing::TempDir dir;
  reg::testing::WriteWholeFile(dir.path() + "/registry.json", "{\"format\": \"sageserve-precision-registry\", \"sch");
  absl::StatusOr<std::unique_ptr<SageServer>> refused = StartServer(dir.path());
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_NE(refused.status().message().find(dir.path() + "/registry.json"), std::string::npos) << refused.status();
  EXPECT_NE(refused.status().message().find("truncated"), std::string::npos) << refused.status();

  absl::StatusOr<std::unique_ptr<SageServer>> started = StartServer(dir.path(), reg::CorruptFilePolicy::kMoveAside);
  ASSERT_TRUE(started.ok()) << started.status();
  bool moved = false;
  for (const auto& e : std::filesystem::directory_iterator(dir.path())) {
    moved |= e.path().filename().string().rfind("registry.json.corrupt-", 0) == 0;
  }
  EXPECT_TRUE(moved);
}

}  // namespace
}  // namespace sage::server
