// RegistryService over real gRPC on a loopback port (the service alone, with a registry persisted
// in a temporary state directory): every RPC, error codes, dry-run vs stored calibration, restart.
#include "server/frontend/grpc/registry_service.h"

#include <memory>
#include <string>

#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "kernels/reference/outlier_samples.h"
#include "server/registry/registry_store.h"
#include "tests/registry/registry_test_util.h"

namespace sage::server {
namespace {

namespace v1 = ::sageserve::v1;
namespace reg = ::sage::registry;

constexpr double kTarget = 0.96;  // See calibrator_test.cc for the measured scores.

class Harness {
 public:
  explicit Harness(const std::string& state_dir) {
    backend_ = reg::testing::MakeEngineBackend(reg::testing::CpuBackendInfo());
    reg::RegistryStoreOptions so;
    so.state_dir = state_dir;
    auto store = reg::RegistryStore::Open(so);
    EXPECT_TRUE(store.ok()) << store.status();
    store_ = *std::move(store);
    auto loaded = store_->Load();
    EXPECT_TRUE(loaded.ok()) << loaded.status();
    reg::RegistryOptions ro;
    ro.backend = backend_->info();
    ro.sink = store_.get();
    auto registry = reg::Registry::Create(ro, loaded->snapshot);
    EXPECT_TRUE(registry.ok());
    registry_ = *std::move(registry);
    service_ = std::make_unique<RegistryService>(registry_.get(), backend_.get(), RegistryServiceOptions{});
    grpc::ServerBuilder builder;
    builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port_);
    builder.RegisterService(service_.get());
    builder.SetMaxReceiveMessageSize(64 << 20);
    server_ = builder.BuildAndStart();
    channel_ = grpc::CreateChannel("127.0.0.1:" + std::to_string(port_), grpc::InsecureChannelCredentials());
    stub_ = v1::RegistryService::NewStub(channel_);
  }
  ~Harness() {
    server_->Shutdown();
    service_->Shutdown();
  }
  v1::RegistryService::Stub& stub() { return *stub_; }

 private:
  std::unique_ptr<AttentionBackend> backend_;
  std::unique_ptr<reg::RegistryStore> store_;
  std::unique_ptr<reg::Registry> registry_;
  std::unique_ptr<RegistryService> service_;
  std::unique_ptr<grpc::Server> server_;
  int port_ = 0;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::RegistryService::Stub> stub_;
};

v1::ModelSpec Spec(const std::string& name, int layers) {
  v1::ModelSpec s;
  s.set_name(name);
  s.set_num_layers(layers);
  s.set_q_heads(4);
  s.set_kv_heads(4);
  s.set_head_dim(128);
  s.set_accuracy_target(kTarget);
  return s;
}

void FillTensor(const std::vector<uint8_t>& bytes, const TensorView& view, v1::Tensor* t) {
  t->set_dtype(v1::DTYPE_FP16);
  t->add_shape(view.tokens);
  t->add_shape(view.heads);
  t->add_shape(view.head_dim);
  t->set_data(bytes.data(), bytes.size());
}

void AddSample(int layer, float gain, uint64_t seed, v1::CalibrateRequest* req) {
  sage::OutlierSampleSpec spec;
  spec.k_outlier_gain = gain;
  spec.seed = seed;
  sage::OutlierSample sample(spec);
  v1::CalibrationSample* s = req->mutable_sample();
  s->set_layer(layer);
  FillTensor(sample.q_bytes(), sample.input().q, s->mutable_q());
  FillTensor(sample.k_bytes(), sample.input().k, s->mutable_k());
  FillTensor(sample.v_bytes(), sample.input().v, s->mutable_v());
}

grpc::Status Calibrate(v1::RegistryService::Stub& stub, const std::string& model, bool dry_run,
                       const std::vector<float>& gains, v1::CalibrateResponse* response) {
  grpc::ClientContext ctx;
  auto writer = stub.Calibrate(&ctx, response);
  for (size_t layer = 0; layer < gains.size(); ++layer) {
    for (uint64_t seed = 0; seed < 2; ++seed) {
      v1::CalibrateRequest req;
      if (layer == 0 && seed == 0) {
        req.set_model(model);
        req.set_dry_run(dry_run);
      }
      AddSample(static_cast<int>(layer), gains[layer], 100 * layer + seed, &req);
      if (!writer->Write(req)) break;
    }
  }
  writer->WritesDone();
  return writer->Finish();
}

TEST(RegistryServiceTest, RegisterListGetDeleteAndErrorCodes) {
  reg::testing::TempDir dir;
  Harness h(dir.path());
  grpc::ClientContext c1;
  v1::RegisterModelRequest reg_req;
  *reg_req.mutable_spec() = Spec("m", 4);
  v1::RegisterModelResponse reg_resp;
  ASSERT_TRUE(h.stub().RegisterModel(&c1, reg_req, &reg_resp).ok());
  EXPECT_EQ(reg_resp.model().plan().source(), v1::PLAN_SOURCE_DEFAULT);
  EXPECT_EQ(reg_resp.model().plan().default_recipe(), v1::RECIPE_INT8_QK_FP8_PV);

  grpc::ClientContext c2;
  *reg_req.mutable_spec() = Spec("m", 8);
  EXPECT_EQ(h.stub().RegisterModel(&c2, reg_req, &reg_resp).error_code(), grpc::StatusCode::ALREADY_EXISTS);
  grpc::ClientContext c3;
  *reg_req.mutable_spec() = Spec("bad name", 8);
  grpc::Status bad = h.stub().RegisterModel(&c3, reg_req, &reg_resp);
  EXPECT_EQ(bad.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(bad.error_message().find("model.name"), std::string::npos);

  grpc::ClientContext c4;
  v1::ListModelsResponse list;
  ASSERT_TRUE(h.stub().ListModels(&c4, v1::ListModelsRequest(), &list).ok());
  ASSERT_EQ(list.models_size(), 1);
  EXPECT_EQ(list.models(0).spec().num_layers(), 4);

  grpc::ClientContext c5;
  v1::GetModelRequest get;
  get.set_name("nope");
  v1::GetModelResponse got;
  EXPECT_EQ(h.stub().GetModel(&c5, get, &got).error_code(), grpc::StatusCode::NOT_FOUND);

  grpc::ClientContext c6;
  v1::SetPlanRequest set;
  set.set_model("m");
  v1::PlanEntry* e = set.mutable_plan()->add_entries();
  e->mutable_layers()->set_first(0);
  e->mutable_layers()->set_last(9);
  e->set_recipe(v1::RECIPE_UNQUANTIZED);
  v1::SetPlanResponse set_resp;
  grpc::Status s = h.stub().SetPlan(&c6, set, &set_resp);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(s.error_message().find("plan.entries[0].layers"), std::string::npos) << s.error_message();

  grpc::ClientContext c7;
  e->mutable_layers()->set_last(3);
  set.set_expected_version(0);
  ASSERT_TRUE(h.stub().SetPlan(&c7, set, &set_resp).ok());
  EXPECT_EQ(set_resp.plan().version(), 1);
  EXPECT_EQ(set_resp.plan().source(), v1::PLAN_SOURCE_MANUAL);
  EXPECT_EQ(set_resp.plan().entries(0).config().pv(), v1::PV_TYPE_F16);  // Recipe defaults filled.
  grpc::ClientContext c8;
  EXPECT_EQ(h.stub().SetPlan(&c8, set, &set_resp).error_code(), grpc::StatusCode::ABORTED);

  grpc::ClientContext c9;
  v1::DeleteModelRequest del;
  del.set_name("m");
  v1::DeleteModelResponse del_resp;
  EXPECT_TRUE(h.stub().DeleteModel(&c9, del, &del_resp).ok());
  grpc::ClientContext c10;
  EXPECT_EQ(h.stub().DeleteModel(&c10, del, &del_resp).error_code(), grpc::StatusCode::NOT_FOUND);
}

TEST(RegistryServiceTest, CalibrateDryRunThenStoreThenRestart) {
  reg::testing::TempDir dir;
  {
    Harness h(dir.path());
    grpc::ClientContext c;
    v1::RegisterModelRequest reg_req;
    *reg_req.mutable_spec() = Spec("four", 3);
    v1::RegisterModelResponse reg_resp;
    ASSERT_TRUE(h.stub().RegisterModel(&c, reg_req, &reg_resp).ok());

    v1::CalibrateResponse dry;
    grpc::Status s = Calibrate(h.stub(), "four", true, {1.0f, 4.0f, 16.0f}, &dry);
    ASSERT_TRUE(s.ok()) << s.error_message();
    EXPECT_FALSE(dry.stored());
    ASSERT_EQ(dry.cells_size(), 3);
    EXPECT_EQ(dry.cells(0).chosen(), v1::RECIPE_INT8_QK_FP8_PV) << dry.report();
    EXPECT_EQ(dry.cells(1).chosen(), v1::RECIPE_INT8_QK_FP16_PV) << dry.report();
    EXPECT_EQ(dry.cells(2).chosen(), v1::RECIPE_UNQUANTIZED) << dry.report();
    EXPECT_EQ(dry.cells(0).scores_size(), 4);
    EXPECT_EQ(dry.sample_count(), 6);
    EXPECT_FALSE(dry.report().empty());
    grpc::ClientContext c2;
    v1::GetPlanRequest gp;
    gp.set_model("four");
    v1::GetPlanResponse plan;
    ASSERT_TRUE(h.stub().GetPlan(&c2, gp, &plan).ok());
    EXPECT_EQ(plan.plan().source(), v1::PLAN_SOURCE_DEFAULT);  // Dry run stored nothing.

    v1::CalibrateResponse real;
    s = Calibrate(h.stub(), "four", false, {1.0f, 4.0f, 16.0f}, &real);
    ASSERT_TRUE(s.ok()) << s.error_message();
    EXPECT_TRUE(real.stored());
    EXPECT_EQ(real.plan().version(), 1);

    v1::CalibrateResponse unknown;
    EXPECT_EQ(Calibrate(h.stub(), "nope", true, {1.0f}, &unknown).error_code(), grpc::StatusCode::NOT_FOUND);
    v1::CalibrateResponse too_many_layers;
    EXPECT_EQ(Calibrate(h.stub(), "four", true, {1, 1, 1, 1}, &too_many_layers).error_code(),
              grpc::StatusCode::INVALID_ARGUMENT);
  }
  Harness restarted(dir.path());
  grpc::ClientContext c;
  v1::GetPlanRequest gp;
  gp.set_model("four");
  v1::GetPlanResponse plan;
  ASSERT_TRUE(restarted.stub().GetPlan(&c, gp, &plan).ok());
  EXPECT_EQ(plan.plan().source(), v1::PLAN_SOURCE_CALIBRATED);
  EXPECT_EQ(plan.plan().version(), 1);
  ASSERT_EQ(plan.plan().entries_size(), 3);
  EXPECT_EQ(plan.plan().entries(2).recipe(), v1::RECIPE_UNQUANTIZED);
  EXPECT_EQ(plan.plan().calibrated_on().architecture(), "x86_64");
}

TEST(RegistryServiceTest, CalibrateStreamWithoutModelOrWithBadTensorsIsInvalid) {
  reg::testing::TempDir dir;
  Harness h(dir.path());
  {
    grpc::ClientContext ctx;
    v1::CalibrateResponse resp;
    auto writer = h.stub().Calibrate(&ctx, &resp);
    writer->WritesDone();
    EXPECT_EQ(writer->Finish().error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  }
  grpc::ClientContext c;
  v1::RegisterModelRequest reg_req;
  *reg_req.mutable_spec() = Spec("m", 1);
  v1::RegisterModelResponse reg_resp;
  ASSERT_TRUE(h.stub().RegisterModel(&c, reg_req, &reg_resp).ok());
  grpc::ClientContext ctx;
  v1::CalibrateResponse resp;
  auto writer = h.stub().Calibrate(&ctx, &resp);
  v1::CalibrateRequest req;
  req.set_model("m");
  AddSample(0, 1.0f, 1, &req);
  req.mutable_sample()->mutable_k()->mutable_data()->resize(10);  // Bytes do not match the shape.
  writer->Write(req);
  writer->WritesDone();
  grpc::Status s = writer->Finish();
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(s.error_message().find("samples[0].k"), std::string::npos) << s.error_message();
}

}  // namespace
}  // namespace sage::server
