#include "server/registry/plan.h"

#include "gtest/gtest.h"
#include "tests/registry/registry_test_util.h"

namespace sage::registry {
namespace {

PlanEntry Entry(Range layers, std::optional<Range> steps, Recipe recipe) {
  return PlanEntry{layers, steps, recipe, ConfigFor(recipe)};
}

TEST(PlanTest, ValidPlanPassesAndFindEntryResolvesCells) {
  const ModelSpec spec = testing::TestModel("m", 4, 10);
  Plan plan;
  plan.entries = {Entry({0, 1}, std::nullopt, Recipe::kInt8QkFp8Pv),
                  Entry({2, 3}, Range{0, 4}, Recipe::kUnquantized)};
  ASSERT_TRUE(ValidatePlan(spec, plan).ok());
  EXPECT_EQ(FindEntry(plan, 1, 9)->recipe, Recipe::kInt8QkFp8Pv);
  EXPECT_EQ(FindEntry(plan, 3, 4)->recipe, Recipe::kUnquantized);
  EXPECT_EQ(FindEntry(plan, 3, 5), nullptr);  // Left to the hardware default.
}

TEST(PlanTest, InvalidPlansNameTheEntryAndField) {
  const ModelSpec llm = testing::TestModel("llm", 4);
  const ModelSpec dit = testing::TestModel("dit", 4, 10);
  struct Case {
    const ModelSpec* spec;
    std::vector<PlanEntry> entries;
    std::string expect;
  };
  PlanEntry mismatched = Entry({0, 0}, std::nullopt, Recipe::kInt8QkFp8Pv);
  mismatched.config.pv = PvType::kF16;
  const Case cases[] = {
      {&llm, {Entry({0, 4}, std::nullopt, Recipe::kUnquantized)}, "plan.entries[0].layers"},
      {&llm, {Entry({2, 1}, std::nullopt, Recipe::kUnquantized)}, "plan.entries[0].layers"},
      {&llm, {Entry({0, 0}, Range{0, 0}, Recipe::kUnquantized)}, "has no timesteps"},
      {&dit, {Entry({0, 0}, Range{5, 10}, Recipe::kUnquantized)}, "plan.entries[0].timesteps"},
      {&dit,
       {Entry({0, 1}, Range{0, 5}, Recipe::kUnquantized), Entry({1, 2}, Range{5, 9}, Recipe::kUnquantized)},
       "plan.entries[1]: overlaps plan.entries[0]"},
      {&llm, {mismatched}, "plan.entries[0].config"},
  };
  for (const Case& c : cases) {
    Plan plan;
    plan.entries = c.entries;
    absl::Status s = ValidatePlan(*c.spec, plan);
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << c.expect;
    EXPECT_NE(s.message().find(c.expect), std::string::npos) << s;
  }
}

TEST(PlanTest, KvStoragesAreValidatedPerLayerAndFound) {
  ModelSpec llm = testing::TestModel("llm", 6);
  llm.head_dim = 128;
  Plan plan;
  plan.kv_storages = {KvStorageEntry{{0, 1}, KvStorage::kInt4KFp8V}, KvStorageEntry{{3, 5}, KvStorage::kInt8KFp8V}};
  ASSERT_TRUE(ValidatePlan(llm, plan).ok());
  EXPECT_EQ(FindKvStorage(plan, 1), KvStorage::kInt4KFp8V);
  EXPECT_EQ(FindKvStorage(plan, 2), std::nullopt);
  EXPECT_EQ(FindKvStorage(plan, 5), KvStorage::kInt8KFp8V);

  const struct {
    std::vector<KvStorageEntry> entries;
    int head_dim;
    std::string expect;
  } cases[] = {
      {{KvStorageEntry{{4, 6}, KvStorage::kInt8KFp8V}}, 128, "plan.kv_storages[0].layers: [4, 6] is not inside layers 0..5"},
      {{KvStorageEntry{{2, 1}, KvStorage::kInt8KFp8V}}, 128, "plan.kv_storages[0].layers"},
      {{KvStorageEntry{{0, 2}, KvStorage::k16Bit}, KvStorageEntry{{2, 3}, KvStorage::kInt8KFp8V}}, 128,
       "plan.kv_storages[1]: overlaps plan.kv_storages[0]"},
      {{KvStorageEntry{{0, 0}, KvStorage::kInt4KFp8V}}, 96, "plan.kv_storages[0].kv_storage: model 'llm' head_dim: 96"},
  };
  for (const auto& c : cases) {
    Plan bad;
    bad.kv_storages = c.entries;
    llm.head_dim = c.head_dim;
    const absl::Status s = ValidatePlan(llm, bad);
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << c.expect;
    EXPECT_NE(s.message().find(c.expect), std::string::npos) << s;
  }
}

TEST(PlanTest, PerLayerStoragesCompressToRuns) {
  const std::optional<KvStorage> per_layer[] = {KvStorage::kInt4KFp8V, KvStorage::kInt4KFp8V, std::nullopt,
                                                KvStorage::kInt8KFp8V, KvStorage::kInt8KFp8V, KvStorage::kInt4KFp8V};
  const std::vector<KvStorageEntry> want = {KvStorageEntry{{0, 1}, KvStorage::kInt4KFp8V},
                                            KvStorageEntry{{3, 4}, KvStorage::kInt8KFp8V},
                                            KvStorageEntry{{5, 5}, KvStorage::kInt4KFp8V}};
  EXPECT_EQ(KvStorageEntries(per_layer), want);
  EXPECT_EQ(DescribeKvStorageEntry(want[0]), "layers 0-1: KV_STORAGE_INT4_K_FP8_V");
}

TEST(PlanTest, SwitchesWithinARecipeAreAllowed) {
  Plan plan;
  PlanEntry e = Entry({0, 3}, std::nullopt, Recipe::kInt8QkFp8Pv);
  e.config.granularity = QuantGranularity::kPerBlock;
  e.config.v_smoothing = VSmoothing::kMean;
  plan.entries = {e};
  EXPECT_TRUE(ValidatePlan(testing::TestModel("m"), plan).ok());
}

TEST(PlanTest, GridCompressesToFewEntries) {
  const ModelSpec spec = testing::TestModel("m", 6, 8);
  absl::StatusOr<PlanGrid> grid = PlanGrid::Create(spec);
  ASSERT_TRUE(grid.ok());
  const PlanCell fast{Recipe::kInt8QkFp8Pv, ConfigFor(Recipe::kInt8QkFp8Pv)};
  const PlanCell safe{Recipe::kUnquantized, ConfigFor(Recipe::kUnquantized)};
  for (int l = 0; l < 6; ++l) {
    for (int t = 0; t < 8; ++t) grid->at(l, t) = (l >= 4 && t < 2) ? safe : fast;
  }
  std::vector<PlanEntry> entries = grid->ToEntries();
  ASSERT_EQ(entries.size(), 3u);
  EXPECT_TRUE(EntriesEqual(entries[0], Entry({0, 3}, std::nullopt, Recipe::kInt8QkFp8Pv)));
  EXPECT_TRUE(EntriesEqual(entries[1], Entry({4, 5}, Range{0, 1}, Recipe::kUnquantized)));
  EXPECT_TRUE(EntriesEqual(entries[2], Entry({4, 5}, Range{2, 7}, Recipe::kInt8QkFp8Pv)));
  // And back: the same cells.
  Plan plan;
  plan.entries = entries;
  ASSERT_TRUE(ValidatePlan(spec, plan).ok());
  absl::StatusOr<PlanGrid> again = PlanGrid::FromPlan(spec, plan);
  ASSERT_TRUE(again.ok());
  for (int l = 0; l < 6; ++l) {
    for (int t = 0; t < 8; ++t) EXPECT_EQ(again->at(l, t)->recipe, grid->at(l, t)->recipe);
  }
}

}  // namespace
}  // namespace sage::registry
