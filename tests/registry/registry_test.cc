// The in-memory registry: model CRUD, plans, resolution, hardware defaults, and concurrent writers
// with a real store underneath.
#include "server/registry/registry.h"

#include <atomic>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "server/registry/cost_table.h"
#include "server/registry/registry_store.h"
#include "tests/registry/registry_test_util.h"

namespace sage::registry {
namespace {

using testing::TestModel;

std::unique_ptr<Registry> MakeRegistry(const server::BackendInfo& info = testing::CpuBackendInfo(),
                                       SnapshotSink* sink = nullptr, RegistrySnapshot initial = {}) {
  RegistryOptions options;
  options.backend = info;
  options.sink = sink;
  absl::StatusOr<std::unique_ptr<Registry>> r = Registry::Create(options, std::move(initial));
  EXPECT_TRUE(r.ok()) << r.status();
  return *std::move(r);
}

Plan OneRecipe(Recipe recipe, Range layers = {0, 3}) {
  Plan plan;
  plan.entries = {PlanEntry{layers, std::nullopt, recipe, ConfigFor(recipe)}};
  return plan;
}

TEST(RegistryTest, RegisterListGetDelete) {
  auto r = MakeRegistry();
  ASSERT_TRUE(r->RegisterModel(TestModel("b"), RegisterMode::kCreate).ok());
  ASSERT_TRUE(r->RegisterModel(TestModel("a", 2, 50), RegisterMode::kCreate).ok());
  std::vector<ModelRecord> all = r->ListModels();
  ASSERT_EQ(all.size(), 2u);
  EXPECT_EQ(all[0].spec.name, "a");
  EXPECT_EQ(r->GetModel("a")->spec.num_timesteps, 50);
  EXPECT_EQ(r->GetModel("zz").status().code(), absl::StatusCode::kNotFound);
  EXPECT_TRUE(r->DeleteModel("a").ok());
  EXPECT_EQ(r->DeleteModel("a").code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(r->ListModels().size(), 1u);
}

TEST(RegistryTest, ModelCountIsBounded) {
  RegistryOptions options;
  options.backend = testing::CpuBackendInfo();
  options.max_models = 3;
  absl::StatusOr<std::unique_ptr<Registry>> r = Registry::Create(options, {});
  ASSERT_TRUE(r.ok()) << r.status();
  for (const char* name : {"a", "b", "c"}) ASSERT_TRUE((*r)->RegisterModel(TestModel(name), RegisterMode::kCreate).ok());
  absl::StatusOr<ModelRecord> fourth = (*r)->RegisterModel(TestModel("d"), RegisterMode::kCreate);
  ASSERT_FALSE(fourth.ok());
  EXPECT_EQ(fourth.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_NE(fourth.status().message().find("registry holds 3 models"), std::string::npos) << fourth.status();
  // Replacing or re-registering a model already there is not a new one; after a delete there is room.
  EXPECT_TRUE((*r)->RegisterModel(TestModel("a", 2, 50), RegisterMode::kReplace).ok());
  ASSERT_TRUE((*r)->DeleteModel("b").ok());
  EXPECT_TRUE((*r)->RegisterModel(TestModel("d"), RegisterMode::kCreate).ok());
  EXPECT_EQ((*r)->ListModels().size(), 3u);
}

TEST(RegistryTest, RegisterIsIdempotentButRefusesADifferentSpecUnlessReplacing) {
  auto r = MakeRegistry();
  ASSERT_TRUE(r->RegisterModel(TestModel("m"), RegisterMode::kCreate).ok());
  const int64_t gen = r->Snapshot()->generation;
  EXPECT_TRUE(r->RegisterModel(TestModel("m"), RegisterMode::kCreate).ok());
  EXPECT_EQ(r->Snapshot()->generation, gen);  // Nothing written.
  ASSERT_TRUE(r->SetPlan("m", OneRecipe(Recipe::kUnquantized)).ok());
  EXPECT_EQ(r->RegisterModel(TestModel("m", 8), RegisterMode::kCreate).status().code(),
            absl::StatusCode::kAlreadyExists);
  ASSERT_TRUE(r->RegisterModel(TestModel("m", 8), RegisterMode::kReplace).ok());
  EXPECT_FALSE(r->GetModel("m")->plan.has_value());  // The old plan measured another model.
}

TEST(RegistryTest, InvalidSpecsNameTheField) {
  auto r = MakeRegistry();
  ModelSpec bad = TestModel("m");
  bad.kv_heads = 3;
  EXPECT_NE(r->RegisterModel(bad, RegisterMode::kCreate).status().message().find("model.kv_heads"),
            std::string::npos);
  bad = TestModel("has space");
  EXPECT_NE(r->RegisterModel(bad, RegisterMode::kCreate).status().message().find("model.name"),
            std::string::npos);
  bad = TestModel("m");
  bad.accuracy_target = 99;
  EXPECT_NE(r->RegisterModel(bad, RegisterMode::kCreate).status().message().find("accuracy_target"),
            std::string::npos);
}

TEST(RegistryTest, ResolveFollowsThePlanAndChecksTheAddress) {
  auto r = MakeRegistry();
  ASSERT_TRUE(r->RegisterModel(TestModel("llm", 4), RegisterMode::kCreate).ok());
  ASSERT_TRUE(r->RegisterModel(TestModel("dit", 4, 20), RegisterMode::kCreate).ok());

  absl::StatusOr<Resolution> res = r->Resolve("llm", 2, std::nullopt);
  ASSERT_TRUE(res.ok());
  EXPECT_EQ(res->source, ResolutionSource::kNoPlan);
  EXPECT_EQ(res->recipe, Recipe::kInt8QkFp8Pv);

  ASSERT_TRUE(r->SetPlan("llm", OneRecipe(Recipe::kInt8QkFp16Pv, {0, 1})).ok());
  EXPECT_EQ(r->Resolve("llm", 1, std::nullopt)->recipe, Recipe::kInt8QkFp16Pv);
  EXPECT_EQ(r->Resolve("llm", 1, std::nullopt)->source, ResolutionSource::kPlan);
  EXPECT_EQ(r->Resolve("llm", 1, std::nullopt)->plan_version, 1);
  EXPECT_EQ(r->Resolve("llm", 3, std::nullopt)->source, ResolutionSource::kPlanUncovered);

  EXPECT_EQ(r->Resolve("nope", 0, std::nullopt).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(r->Resolve("llm", 4, std::nullopt).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(r->Resolve("llm", -1, std::nullopt).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(r->Resolve("llm", 0, 3).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(r->Resolve("dit", 0, 20).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(r->Resolve("dit", 0, std::nullopt).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(r->Resolve("dit", 0, 20).status().message().find("timesteps 0..19"), std::string::npos);
  EXPECT_TRUE(r->Resolve("dit", 3, 19).ok());
}

TEST(RegistryTest, ResolvedConfigKeepsThePlansSwitches) {
  auto r = MakeRegistry();
  ASSERT_TRUE(r->RegisterModel(TestModel("m"), RegisterMode::kCreate).ok());
  Plan plan = OneRecipe(Recipe::kInt8QkFp8Pv);
  plan.entries[0].config.granularity = QuantGranularity::kPerBlock;
  ASSERT_TRUE(r->SetPlan("m", plan).ok());
  EXPECT_EQ(r->Resolve("m", 0, std::nullopt)->config.granularity, QuantGranularity::kPerBlock);
}

TEST(RegistryTest, DefaultPlanSuitsTheHardware) {
  // A backend that (wrongly) declares INT4 as default: on sm_90 the registry must not use it.
  server::BackendInfo hopper = testing::CudaBackendInfo("sm_90");
  hopper.default_recipe = Recipe::kInt4QkFp8Pv;
  server::BackendInfo ada = testing::CudaBackendInfo("sm_89");
  ada.default_recipe = Recipe::kInt4QkFp8Pv;
  EXPECT_EQ(DefaultRecipeFor(hopper), Recipe::kInt8QkFp8Pv);
  EXPECT_EQ(DefaultRecipeFor(ada), Recipe::kInt4QkFp8Pv);
  EXPECT_EQ(DefaultRecipeFor(testing::CpuBackendInfo()), Recipe::kInt8QkFp8Pv);

  auto r = MakeRegistry(hopper);
  ASSERT_TRUE(r->RegisterModel(TestModel("m"), RegisterMode::kCreate).ok());
  absl::StatusOr<EffectivePlan> plan = r->GetPlan("m");
  ASSERT_TRUE(plan.ok());
  EXPECT_TRUE(plan->is_default);
  EXPECT_EQ(plan->plan.calibrated_on.architecture, "sm_90");
  EXPECT_EQ(r->Resolve("m", 0, std::nullopt)->recipe, Recipe::kInt8QkFp8Pv);

  const CostTable costs = CostTableFor(hopper);
  EXPECT_EQ(costs.Order({}), (std::vector<Recipe>{Recipe::kInt8QkFp8Pv, Recipe::kInt4QkFp8Pv,
                                                   Recipe::kInt8QkFp16Pv, Recipe::kUnquantized}));
  EXPECT_EQ(CostTableFor(ada).Order({}).front(), Recipe::kInt4QkFp8Pv);
}

TEST(RegistryTest, PlanRecipeTheBackendCannotRunIsReplacedByAMoreAccurateOne) {
  server::BackendInfo no_int4 = testing::CudaBackendInfo("sm_90");
  no_int4.recipes = {Recipe::kInt8QkFp8Pv, Recipe::kInt8QkFp16Pv, Recipe::kUnquantized};
  RegistrySnapshot initial;
  ModelRecord rec;
  rec.spec = TestModel("m");
  rec.plan = OneRecipe(Recipe::kInt4QkFp8Pv);  // e.g. calibrated on an sm_89 box.
  initial.models.emplace("m", rec);
  auto r = MakeRegistry(no_int4, nullptr, initial);
  absl::StatusOr<Resolution> res = r->Resolve("m", 0, std::nullopt);
  ASSERT_TRUE(res.ok());
  EXPECT_EQ(res->recipe, Recipe::kInt8QkFp8Pv);
  EXPECT_EQ(res->substituted_for, Recipe::kInt4QkFp8Pv);
}

// A new session's per-layer KV storage: the plan's, 16-bit where it has none (or no plan at all),
// and where the backend does not run the plan's storage the next wider one it does.
TEST(RegistryTest, SessionKvStoragesFollowThePlanWithWiderStandIns) {
  RegistrySnapshot initial;
  ModelRecord rec;
  rec.spec = TestModel("m", 5);
  rec.plan = Plan{};
  rec.plan->version = 3;
  rec.plan->kv_storages = {KvStorageEntry{{0, 1}, KvStorage::kInt4KFp8V}, KvStorageEntry{{3, 3}, KvStorage::kInt8KFp8V}};
  initial.models.emplace("m", rec);
  ModelRecord bare;
  bare.spec = TestModel("bare", 2);
  initial.models.emplace("bare", bare);

  server::BackendInfo all = testing::CpuBackendInfo();
  all.kv_storages.assign(std::begin(kAllKvStorages), std::end(kAllKvStorages));
  absl::StatusOr<SessionKvPlan> got = MakeRegistry(all, nullptr, initial)->SessionKvStorages("m");
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(got->storages, (std::vector<KvStorage>{KvStorage::kInt4KFp8V, KvStorage::kInt4KFp8V, KvStorage::k16Bit,
                                                   KvStorage::kInt8KFp8V, KvStorage::k16Bit}));
  EXPECT_EQ(got->plan_version, 3);
  EXPECT_EQ(got->spec.num_layers, 5);

  server::BackendInfo no_int4 = all;
  no_int4.kv_storages = {KvStorage::k16Bit, KvStorage::kInt8KFp8V};  // an engine without INT4 pages
  got = MakeRegistry(no_int4, nullptr, initial)->SessionKvStorages("m");
  ASSERT_TRUE(got.ok());
  EXPECT_EQ(got->storages, (std::vector<KvStorage>{KvStorage::kInt8KFp8V, KvStorage::kInt8KFp8V, KvStorage::k16Bit,
                                                   KvStorage::kInt8KFp8V, KvStorage::k16Bit}));
  server::BackendInfo only16 = all;
  only16.kv_storages = {KvStorage::k16Bit};
  got = MakeRegistry(only16, nullptr, initial)->SessionKvStorages("m");
  ASSERT_TRUE(got.ok());
  EXPECT_EQ(got->storages, std::vector<KvStorage>(5, KvStorage::k16Bit));

  got = MakeRegistry(all, nullptr, initial)->SessionKvStorages("bare");
  ASSERT_TRUE(got.ok());
  EXPECT_EQ(got->storages, std::vector<KvStorage>(2, KvStorage::k16Bit));
  EXPECT_EQ(got->plan_version, 0);
  EXPECT_EQ(MakeRegistry(all, nullptr, initial)->SessionKvStorages("nope").status().code(), absl::StatusCode::kNotFound);
}

TEST(RegistryTest, SetPlanVersionsAndOptimisticConcurrency) {
  auto r = MakeRegistry();
  ASSERT_TRUE(r->RegisterModel(TestModel("m"), RegisterMode::kCreate).ok());
  absl::StatusOr<Plan> p1 = r->SetPlan("m", OneRecipe(Recipe::kUnquantized), 0);
  ASSERT_TRUE(p1.ok());
  EXPECT_EQ(p1->version, 1);
  EXPECT_EQ(p1->source, PlanSource::kManual);
  EXPECT_EQ(p1->calibrated_on.architecture, "x86_64");
  EXPECT_EQ(p1->accuracy_target, TestModel("m").accuracy_target);
  EXPECT_EQ(r->SetPlan("m", OneRecipe(Recipe::kInt8QkFp8Pv), 0).status().code(), absl::StatusCode::kAborted);
  EXPECT_EQ(r->SetPlan("m", OneRecipe(Recipe::kInt8QkFp8Pv), 1)->version, 2);
  EXPECT_EQ(r->SetPlan("x", OneRecipe(Recipe::kInt8QkFp8Pv)).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(r->SetPlan("m", OneRecipe(Recipe::kInt8QkFp8Pv, {0, 9})).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(r->GetPlan("m")->plan.version, 2);  // The invalid plan changed nothing.
}

TEST(RegistryTest, CorruptInitialContentIsRefusedNamingTheModel) {
  RegistrySnapshot initial;
  ModelRecord rec;
  rec.spec = TestModel("m", 2);
  rec.plan = OneRecipe(Recipe::kUnquantized, {0, 5});
  initial.models.emplace("m", rec);
  RegistryOptions options;
  options.backend = testing::CpuBackendInfo();
  absl::StatusOr<std::unique_ptr<Registry>> r = Registry::Create(options, initial);
  ASSERT_EQ(r.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(r.status().message().find("model 'm'"), std::string::npos) << r.status();
}

// Another replica's snapshot (the etcd store's watch) replaces the state without going through the
// sink; an older or repeated one is ignored, and an inconsistent one is refused, state untouched.
class CountingSink : public SnapshotSink {
 public:
  absl::Status Save(const RegistrySnapshot&) override {
    ++saves;
    return absl::OkStatus();
  }
  int saves = 0;
};

TEST(RegistryTest, ReplaceStateTakesOnlyNewerValidSnapshotsAndDoesNotSaveThem) {
  CountingSink sink;
  auto r = MakeRegistry(testing::CpuBackendInfo(), &sink);
  ASSERT_TRUE(r->RegisterModel(TestModel("m"), RegisterMode::kCreate).ok());
  ASSERT_EQ(sink.saves, 1);

  RegistrySnapshot remote = *r->Snapshot();
  remote.generation += 5;
  remote.models.at("m").plan = OneRecipe(Recipe::kUnquantized);
  remote.models.at("m").plan->version = 3;
  absl::StatusOr<bool> replaced = r->ReplaceState(remote);
  ASSERT_TRUE(replaced.ok()) << replaced.status();
  EXPECT_TRUE(*replaced);
  EXPECT_EQ(sink.saves, 1);  // Already stored by whoever wrote it.
  EXPECT_EQ(r->Snapshot()->generation, remote.generation);
  absl::StatusOr<Resolution> res = r->Resolve("m", 0, std::nullopt);
  ASSERT_TRUE(res.ok()) << res.status();
  EXPECT_EQ(res->recipe, Recipe::kUnquantized);
  EXPECT_EQ(res->plan_version, 3);

  // The same event again, or an older one: nothing changes.
  EXPECT_FALSE(*r->ReplaceState(remote));
  RegistrySnapshot older = remote;
  older.generation -= 1;
  older.models.clear();
  EXPECT_FALSE(*r->ReplaceState(older));
  EXPECT_EQ(r->ListModels().size(), 1u);

  // A plan that does not fit its model is refused naming it; the served plan stays.
  RegistrySnapshot bad = remote;
  bad.generation += 1;
  bad.models.at("m").plan = OneRecipe(Recipe::kUnquantized, {0, 50});
  absl::StatusOr<bool> refused = r->ReplaceState(bad);
  ASSERT_EQ(refused.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(refused.status().message().find("model 'm'"), std::string::npos) << refused.status();
  EXPECT_EQ(r->Snapshot()->generation, remote.generation);
  EXPECT_EQ(r->Resolve("m", 0, std::nullopt)->plan_version, 3);

  // Local writes continue from the replaced generation.
  ASSERT_TRUE(r->SetPlan("m", OneRecipe(Recipe::kUnquantized), 3).ok());
  EXPECT_EQ(r->Snapshot()->generation, remote.generation + 1);
}

class FailingSink : public SnapshotSink {
 public:
  absl::Status Save(const RegistrySnapshot&) override { return absl::ResourceExhaustedError("disk full"); }
};

TEST(RegistryTest, AChangeTheDiskRefusesIsNotPublished) {
  FailingSink sink;
  auto r = MakeRegistry(testing::CpuBackendInfo(), &sink);
  EXPECT_EQ(r->RegisterModel(TestModel("m"), RegisterMode::kCreate).status().code(),
            absl::StatusCode::kResourceExhausted);
  EXPECT_TRUE(r->ListModels().empty());
  EXPECT_EQ(r->Snapshot()->generation, 0);
}

TEST(RegistryTest, ConcurrentUpdatesFromManyThreadsAreSerializedAndPersisted) {
  testing::TempDir dir;
  RegistryStoreOptions so;
  so.state_dir = dir.path();
  absl::StatusOr<std::unique_ptr<RegistryStore>> store = RegistryStore::Open(so);
  ASSERT_TRUE(store.ok());
  auto r = MakeRegistry(testing::CpuBackendInfo(), store->get());
  ASSERT_TRUE(r->RegisterModel(TestModel("shared"), RegisterMode::kCreate).ok());

  constexpr int kThreads = 8;
  constexpr int kUpdatesPerThread = 12;
  std::atomic<int> resolves{0};
  std::atomic<bool> stop{false};
  // A reader hammering Resolve while writers persist: it must never see an error or block.
  std::thread reader([&] {
    while (!stop.load()) {
      absl::StatusOr<Resolution> res = r->Resolve("shared", 0, std::nullopt);
      ASSERT_TRUE(res.ok()) << res.status();
      resolves.fetch_add(1);
    }
  });
  std::vector<std::thread> writers;
  for (int t = 0; t < kThreads; ++t) {
    writers.emplace_back([&, t] {
      const std::string own = absl::StrCat("model-", t);
      ASSERT_TRUE(r->RegisterModel(TestModel(own), RegisterMode::kCreate).ok());
      for (int i = 0; i < kUpdatesPerThread; ++i) {
        ASSERT_TRUE(r->SetPlan(own, OneRecipe(kAllRecipes[i % 4])).ok());
        // Read-modify-write on the shared model: retry on ABORTED, never lose an increment.
        while (true) {
          const int64_t v = r->GetPlan("shared")->plan.version;
          absl::StatusOr<Plan> p = r->SetPlan("shared", OneRecipe(kAllRecipes[(t + i) % 4]), v);
          if (p.ok()) break;
          ASSERT_EQ(p.status().code(), absl::StatusCode::kAborted) << p.status();
        }
      }
    });
  }
  for (std::thread& w : writers) w.join();
  stop.store(true);
  reader.join();

  std::shared_ptr<const RegistrySnapshot> snap = r->Snapshot();
  EXPECT_EQ(snap->models.size(), kThreads + 1u);
  EXPECT_EQ(snap->models.at("shared").plan->version, kThreads * kUpdatesPerThread);
  for (int t = 0; t < kThreads; ++t) {
    EXPECT_EQ(snap->models.at(absl::StrCat("model-", t)).plan->version, kUpdatesPerThread);
  }
  // 1 + kThreads registrations, 2 plan writes per iteration: every change got its own generation.
  EXPECT_EQ(snap->generation, 1 + kThreads + 2 * kThreads * kUpdatesPerThread);
  EXPECT_GT(resolves.load(), 0);
  // What is on disk is exactly the last published state.
  absl::StatusOr<RegistrySnapshot> on_disk = RegistryStore::ReadFile((*store)->path());
  ASSERT_TRUE(on_disk.ok()) << on_disk.status();
  EXPECT_TRUE(SnapshotsEqual(*on_disk, *snap));
}

TEST(RegistryTest, PlansSurviveARestart) {
  testing::TempDir dir;
  RegistryStoreOptions so;
  so.state_dir = dir.path();
  Plan stored;
  {
    auto store = RegistryStore::Open(so);
    ASSERT_TRUE(store.ok());
    auto r = MakeRegistry(testing::CpuBackendInfo(), store->get());
    ASSERT_TRUE(r->RegisterModel(TestModel("dit", 4, 50), RegisterMode::kCreate).ok());
    Plan plan;
    plan.entries = {PlanEntry{{0, 1}, Range{0, 9}, Recipe::kUnquantized, ConfigFor(Recipe::kUnquantized)},
                    PlanEntry{{0, 3}, Range{10, 49}, Recipe::kInt8QkFp8Pv, ConfigFor(Recipe::kInt8QkFp8Pv)}};
    absl::StatusOr<Plan> p = r->SetPlan("dit", plan);
    ASSERT_TRUE(p.ok()) << p.status();
    stored = *p;
  }
  auto store = RegistryStore::Open(so);
  ASSERT_TRUE(store.ok());
  absl::StatusOr<LoadResult> loaded = (*store)->Load();
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  auto r = MakeRegistry(testing::CpuBackendInfo(), store->get(), loaded->snapshot);
  absl::StatusOr<EffectivePlan> plan = r->GetPlan("dit");
  ASSERT_TRUE(plan.ok());
  EXPECT_FALSE(plan->is_default);
  EXPECT_TRUE(PlansEqual(plan->plan, stored));
  EXPECT_EQ(r->Resolve("dit", 1, 5)->recipe, Recipe::kUnquantized);
  EXPECT_EQ(r->Resolve("dit", 1, 10)->recipe, Recipe::kInt8QkFp8Pv);
  EXPECT_EQ(r->Resolve("dit", 3, 5)->source, ResolutionSource::kPlanUncovered);
}

}  // namespace
}  // namespace sage::registry
