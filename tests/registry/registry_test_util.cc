#include "tests/registry/registry_test_util.h"

#include <stdlib.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <sstream>
#include <stdexcept>

#include "absl/strings/str_cat.h"
#include "kernels/reference/cpu_engine.h"

namespace sage::registry::testing {
namespace {
using server::EngineInput;
using server::EngineOutput;


class EngineBackend final : public server::AttentionBackend {
 public:
  EngineBackend(server::BackendInfo info, std::unique_ptr<CpuEngine> engine)
      : info_(std::move(info)), engine_(std::move(engine)) {}
  const server::BackendInfo& info() const override { return info_; }
  absl::StatusOr<server::EngineOutput> Attend(const server::EngineInput& in, const RecipeConfig& config) override {
    absl::StatusOr<AttnOutput> out = engine_->Run(in, config);
    if (!out.ok()) return out.status();
    return server::EngineOutput(*std::move(out));
  }

 private:
  server::BackendInfo info_;
  std::unique_ptr<CpuEngine> engine_;
};

}  // namespace

server::BackendInfo CpuBackendInfo() {
  server::BackendInfo info;
  info.kind = server::BackendKind::kCpu;
  info.devices.push_back({"cpu (test)", "x86_64", 0});
  info.head_dims = {64, 128};
  info.recipes.assign(std::begin(kAllRecipes), std::end(kAllRecipes));
  info.default_recipe = Recipe::kInt8QkFp8Pv;
  return info;
}

server::BackendInfo CudaBackendInfo(const std::string& arch) {
  server::BackendInfo info = CpuBackendInfo();
  info.kind = server::BackendKind::kCuda;
  info.devices = {{absl::StrCat("test gpu ", arch), arch, int64_t{80} << 30}};
  return info;
}

std::unique_ptr<server::AttentionBackend> MakeEngineBackend(const server::BackendInfo& info) {
  CpuEngineOptions options;
  options.num_threads = 2;  // The test machines have two cores shared by everyone.
  absl::StatusOr<std::unique_ptr<CpuEngine>> engine = CpuEngine::Create(options);
  if (!engine.ok()) throw std::runtime_error(std::string(engine.status().message()));
  return std::make_unique<EngineBackend>(info, *std::move(engine));
}

TempDir::TempDir() {
  const char* base = std::getenv("TMPDIR");
  std::string pattern = absl::StrCat(base != nullptr ? base : "/tmp", "/sage_registry_test.XXXXXX");
  if (::mkdtemp(pattern.data()) == nullptr) throw std::runtime_error("mkdtemp failed");
  path_ = pattern;
}

TempDir::~TempDir() {
  std::error_code ec;
  std::filesystem::remove_all(path_, ec);
}

ModelSpec TestModel(const std::string& name, int layers, std::optional<int> timesteps) {
  ModelSpec spec;
  spec.name = name;
  spec.num_layers = layers;
  spec.q_heads = 4;
  spec.kv_heads = 4;
  spec.head_dim = 128;
  spec.num_timesteps = timesteps;
  spec.accuracy_target = 0.95;
  return spec;
}

RegistrySnapshot SnapshotForGeneration(int64_t generation) {
  RegistrySnapshot snap;
  snap.generation = generation;
  // A few models whose plans depend on the generation, so two versions differ in many bytes.
  const int models = 1 + static_cast<int>(generation % 5);
  for (int m = 0; m < models; ++m) {
    ModelRecord r;
    r.spec = TestModel(absl::StrCat("model-", m), 8 + m, m % 2 == 0 ? std::optional<int>(50) : std::nullopt);
    r.created_at = absl::FromUnixSeconds(1'700'000'000 + m);
    r.updated_at = absl::FromUnixSeconds(1'700'000'000 + generation);
    Plan plan;
    plan.version = generation;
    plan.source = PlanSource::kCalibrated;
    plan.calibrated_on = {"cpu", "cpu (test)", "x86_64"};
    plan.accuracy_target = r.spec.accuracy_target;
    plan.created_at = r.updated_at;
    plan.sample_count = static_cast<int>(generation % 97);
    for (int l = 0; l < r.spec.num_layers; ++l) {
      PlanEntry e;
      e.layers = {l, l};
      e.recipe = kAllRecipes[(generation + l + m) % 4];
      e.config = ConfigFor(e.recipe);
      plan.entries.push_back(e);
    }
    if (!r.spec.num_timesteps.has_value()) {  // LLM-like: per-layer KV storage for its sessions
      plan.kv_storages = {KvStorageEntry{{0, 1}, KvStorage::kInt4KFp8V},
                          KvStorageEntry{{2, 2 + static_cast<int>(generation % 3)}, KvStorage::kInt8KFp8V}};
    }
    r.plan = plan;
    snap.models.emplace(r.spec.name, r);
  }
  return snap;
}

std::string ReadWholeFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

void WriteWholeFile(const std::string& path, const std::string& contents) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << contents;
}

}  // namespace sage::registry::testing
