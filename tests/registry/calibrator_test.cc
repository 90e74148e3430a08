// Calibration picks recipes from measured accuracy: constructed layers whose difficulty is known
// (K outlier channels of growing strength, see outlier_samples.h) must land on the expected recipe.
#include "server/registry/calibrator.h"

#include <atomic>
#include <cstring>
#include <vector>

#include "gtest/gtest.h"
#include "server/registry/calibrate_model.h"
#include "kernels/reference/numerics.h"
#include "kernels/reference/outlier_samples.h"
#include "tests/registry/registry_test_util.h"

namespace sage::registry {
namespace {

// Measured on the CPU emulation with 256-token samples (scores cos·(1-relL1), worst of 2 seeds):
//   gain 1 (Gaussian):  int8+fp8 0.963, int8+fp16 0.989, int4 0.79, unquantized 0.9998
//   gain 4:             int8+fp8 0.955, int8+fp16 0.974
//   gain 16:            int8+fp8 0.887, int8+fp16 0.893
// so a target of 0.96 separates the three cases with margins of ~0.003 or more.
constexpr double kTarget = 0.96;
constexpr float kBenignGain = 1.0f;
constexpr float kModerateGain = 4.0f;
constexpr float kAdversarialGain = 16.0f;
constexpr int kSamplesPerCell = 2;

struct SampleSet {
  std::vector<OutlierSample> owned;
  std::vector<CalibrationSample> samples;

  void Add(int layer, std::optional<int> timestep, float gain, int count = kSamplesPerCell) {
    for (int i = 0; i < count; ++i) {
      OutlierSampleSpec spec;
      spec.k_outlier_gain = gain;
      spec.seed = 1000 * static_cast<uint64_t>(layer) + 10 * static_cast<uint64_t>(timestep.value_or(0)) + i;
      owned.emplace_back(spec);
      samples.push_back({layer, timestep, AttnInput{}});
    }
  }
  // Views are taken once all samples exist (the vector of owners no longer reallocates).
  std::span<const CalibrationSample> Finish() {
    for (size_t i = 0; i < owned.size(); ++i) samples[i].input = owned[i].input();
    return samples;
  }
};

class CalibratorTest : public ::testing::Test {
 protected:
  CalibratorTest() : backend_(testing::MakeEngineBackend(testing::CpuBackendInfo())), calibrator_(backend_.get()) {}

  ModelSpec Model(int layers, std::optional<int> timesteps = std::nullopt) {
    ModelSpec spec = testing::TestModel("cal", layers, timesteps);
    spec.accuracy_target = kTarget;
    return spec;
  }

  std::unique_ptr<server::AttentionBackend> backend_;
  Calibrator calibrator_;
};

TEST_F(CalibratorTest, BenignModerateAdversarialLayersGetCheapSafeRecipes) {
  SampleSet set;
  set.Add(0, std::nullopt, kBenignGain);
  set.Add(1, std::nullopt, kModerateGain);
  set.Add(2, std::nullopt, kAdversarialGain);
  absl::StatusOr<CalibrationReport> report = calibrator_.Calibrate(Model(3), std::nullopt, set.Finish(), {});
  ASSERT_TRUE(report.ok()) << report.status();
  ASSERT_EQ(report->cells.size(), 3u);
  EXPECT_EQ(report->cells[0].chosen, Recipe::kInt8QkFp8Pv) << FormatReport(*report);
  EXPECT_EQ(report->cells[1].chosen, Recipe::kInt8QkFp16Pv) << FormatReport(*report);
  EXPECT_EQ(report->cells[2].chosen, Recipe::kUnquantized) << FormatReport(*report);
  for (const CellReport& c : report->cells) {
    EXPECT_TRUE(c.met_target);
    EXPECT_EQ(c.samples, kSamplesPerCell);
    ASSERT_EQ(c.scores.size(), 4u);
    for (const RecipeScore& s : c.scores) {
      EXPECT_TRUE(s.error.empty()) << s.error;
      EXPECT_LE(s.min_score, s.mean_score);
      EXPECT_GE(s.std_score, 0.0);
      EXPECT_EQ(s.meets_target, s.min_score >= kTarget);
    }
  }
  // The CPU backend ranks like sm_90: INT8+FP8 first, emulated INT4 never ahead of it.
  EXPECT_EQ(report->cost_order.front(), Recipe::kInt8QkFp8Pv);
  ASSERT_EQ(report->plan.entries.size(), 3u);
  EXPECT_EQ(report->plan.entries[2].recipe, Recipe::kUnquantized);
  EXPECT_EQ(report->plan.source, PlanSource::kCalibrated);
  EXPECT_EQ(report->plan.calibrated_on.architecture, "x86_64");
  EXPECT_EQ(report->plan.sample_count, 3 * kSamplesPerCell);
}

TEST_F(CalibratorTest, DecisionUsesTheWorstSampleNotTheMean) {
  // One benign and one moderate sample in the same cell: the mean of INT8+FP8 is ~0.959 but the
  // point is the worst one (0.955) fails, so the cell must not get INT8+FP8.
  SampleSet set;
  set.Add(0, std::nullopt, kBenignGain, 3);
  set.Add(0, std::nullopt, kModerateGain, 1);
  absl::StatusOr<CalibrationReport> report = calibrator_.Calibrate(Model(1), std::nullopt, set.Finish(), {});
  ASSERT_TRUE(report.ok()) << report.status();
  const RecipeScore& int8fp8 = report->cells[0].scores[0];
  ASSERT_EQ(int8fp8.recipe, Recipe::kInt8QkFp8Pv);
  EXPECT_GT(int8fp8.mean_score, kTarget) << FormatReport(*report);
  EXPECT_LT(int8fp8.min_score, kTarget);
  EXPECT_GT(int8fp8.std_score, 0.0);
  EXPECT_EQ(report->cells[0].chosen, Recipe::kInt8QkFp16Pv);
}

TEST_F(CalibratorTest, NativeInt4HardwarePrefersInt4WhereItIsAccurateEnough) {
  auto sm89 = testing::MakeEngineBackend(testing::CudaBackendInfo("sm_89"));
  auto sm90 = testing::MakeEngineBackend(testing::CudaBackendInfo("sm_90"));
  SampleSet set;
  set.Add(0, std::nullopt, kBenignGain);
  std::span<const CalibrationSample> samples = set.Finish();
  ModelSpec spec = Model(1);
  spec.accuracy_target = 0.7;  // INT4 scores ~0.79 on Gaussian data.
  absl::StatusOr<CalibrationReport> on89 = Calibrator(sm89.get()).Calibrate(spec, std::nullopt, samples, {});
  absl::StatusOr<CalibrationReport> on90 = Calibrator(sm90.get()).Calibrate(spec, std::nullopt, samples, {});
  ASSERT_TRUE(on89.ok() && on90.ok());
  EXPECT_EQ(on89->cost_order.front(), Recipe::kInt4QkFp8Pv);
  EXPECT_EQ(on89->cells[0].chosen, Recipe::kInt4QkFp8Pv) << FormatReport(*on89);
  EXPECT_EQ(on90->cost_order.front(), Recipe::kInt8QkFp8Pv);
  EXPECT_EQ(on90->cells[0].chosen, Recipe::kInt8QkFp8Pv) << FormatReport(*on90);
  EXPECT_EQ(on90->plan.calibrated_on.architecture, "sm_90");
}

TEST_F(CalibratorTest, UnreachableTargetPicksMostAccurateAndSaysSo) {
  SampleSet set;
  set.Add(0, std::nullopt, kAdversarialGain, 1);
  CalibrationOptions options;
  options.candidates = {Recipe::kInt8QkFp8Pv, Recipe::kInt8QkFp16Pv};
  absl::StatusOr<CalibrationReport> report = calibrator_.Calibrate(Model(1), std::nullopt, set.Finish(), options);
  ASSERT_TRUE(report.ok());
  EXPECT_FALSE(report->cells[0].met_target);
  EXPECT_EQ(report->cells[0].chosen, Recipe::kInt8QkFp16Pv);
  EXPECT_NE(report->cells[0].reason.find("no candidate"), std::string::npos);
}

// A backend that runs every session KV storage (the CPU engine's list), for the per-layer choice.
std::unique_ptr<server::AttentionBackend> KvBackend() {
  server::BackendInfo info = testing::CpuBackendInfo();
  info.kv_storages.assign(std::begin(kAllKvStorages), std::end(kAllKvStorages));
  return testing::MakeEngineBackend(info);
}

// Per-layer KV storage (models without timesteps): scored fewest bytes first; 16-bit storage is
// exact, so its scores are the cell's own unquantized and chosen-recipe scores, run for run; the
// choice is the first storage whose worst decode and prefill samples both meet the target, and
// the plan carries it. Layers with stronger K outliers never get fewer bytes.
TEST_F(CalibratorTest, EachLayerGetsTheFewestKvBytesThatMeetTheTarget) {
  auto backend = KvBackend();
  SampleSet set;
  set.Add(0, std::nullopt, kBenignGain);
  set.Add(1, std::nullopt, kAdversarialGain);
  // Measured here (worst of 2 samples, decode / prefill with the layer's recipe): Gaussian K,
  // INT4 0.897 / 0.890, INT8 0.974 / 0.954; gain-16 outliers, INT4 0.390, INT8 0.937 (one outlier
  // channel per 32 sets every group's INT4 scale). 0.85 separates them with margins >= 0.04.
  ModelSpec spec = Model(2);
  spec.accuracy_target = 0.85;
  absl::StatusOr<CalibrationReport> report = Calibrator(backend.get()).Calibrate(spec, std::nullopt, set.Finish(), {});
  ASSERT_TRUE(report.ok()) << report.status();
  ASSERT_EQ(report->kv_layers.size(), 2u) << FormatReport(*report);
  std::vector<double> chosen_bytes;
  for (const LayerKvReport& l : report->kv_layers) {
    SCOPED_TRACE(FormatReport(*report));
    const CellReport& cell = report->cells[static_cast<size_t>(l.layer)];
    ASSERT_EQ(l.scores.size(), 3u);
    EXPECT_EQ(l.scores[0].storage, KvStorage::kInt4KFp8V);
    EXPECT_EQ(l.scores[1].storage, KvStorage::kInt8KFp8V);
    EXPECT_EQ(l.scores[2].storage, KvStorage::k16Bit);
    EXPECT_LT(l.scores[0].relative_bytes, l.scores[1].relative_bytes);
    EXPECT_DOUBLE_EQ(l.scores[2].relative_bytes, 1.0);
    const auto recipe_min = [&cell](Recipe r) {
      for (const RecipeScore& s : cell.scores) {
        if (s.recipe == r) return s.min_score;
      }
      return -1.0;
    };
    EXPECT_EQ(l.scores[2].min_decode_score, recipe_min(Recipe::kUnquantized));
    EXPECT_EQ(l.scores[2].min_prefill_score, recipe_min(cell.chosen));
    const KvStorageScore* first_ok = nullptr;
    for (const KvStorageScore& s : l.scores) {
      EXPECT_TRUE(s.error.empty()) << s.error;
      EXPECT_EQ(s.samples, kSamplesPerCell);
      EXPECT_EQ(s.meets_target, s.min_decode_score >= spec.accuracy_target && s.min_prefill_score >= spec.accuracy_target);
      if (first_ok == nullptr && s.meets_target) first_ok = &s;
    }
    EXPECT_EQ(l.chosen, first_ok != nullptr ? first_ok->storage : KvStorage::k16Bit);
    EXPECT_EQ(l.met_target, first_ok != nullptr);
    EXPECT_EQ(FindKvStorage(report->plan, l.layer), l.chosen);
    chosen_bytes.push_back(KvTokenBytes(l.chosen, 1, spec.head_dim));
  }
  EXPECT_EQ(report->kv_layers[0].chosen, KvStorage::kInt4KFp8V) << FormatReport(*report);
  EXPECT_GT(chosen_bytes[1], chosen_bytes[0]) << FormatReport(*report);
  // A target no storage reaches with the layer's recipe: 16-bit, saying so.
  spec.accuracy_target = 0.99999;
  report = Calibrator(backend.get()).Calibrate(spec, std::nullopt, set.Finish(), {});
  ASSERT_TRUE(report.ok()) << report.status();
  EXPECT_EQ(report->kv_layers[1].chosen, KvStorage::k16Bit);
  EXPECT_FALSE(report->kv_layers[1].met_target);
  EXPECT_NE(report->kv_layers[1].reason.find("no storage meets"), std::string::npos);
}

TEST_F(CalibratorTest, KvStorageIsLeftAloneForModelsWithTimestepsAndCandidatesAreChecked) {
  auto backend = KvBackend();
  SampleSet set;
  set.Add(0, 0, kBenignGain);
  absl::StatusOr<CalibrationReport> dit = Calibrator(backend.get()).Calibrate(Model(1, 10), std::nullopt, set.Finish(), {});
  ASSERT_TRUE(dit.ok()) << dit.status();
  EXPECT_TRUE(dit->kv_layers.empty());
  EXPECT_TRUE(dit->plan.kv_storages.empty());

  SampleSet llm;
  llm.Add(0, std::nullopt, kBenignGain);
  CalibrationOptions only8;
  only8.kv_storages = {KvStorage::kInt8KFp8V};
  absl::StatusOr<CalibrationReport> one = Calibrator(backend.get()).Calibrate(Model(1), std::nullopt, llm.Finish(), only8);
  ASSERT_TRUE(one.ok()) << one.status();
  ASSERT_EQ(one->kv_layers.size(), 1u);
  ASSERT_EQ(one->kv_layers[0].scores.size(), 1u);
  EXPECT_EQ(one->kv_layers[0].scores[0].storage, KvStorage::kInt8KFp8V);
  // A storage the backend does not run is refused, naming it.
  auto no_kv = testing::MakeEngineBackend(testing::CpuBackendInfo());
  const absl::Status st = Calibrator(no_kv.get()).Calibrate(Model(1), std::nullopt, llm.samples, only8).status();
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(st.message().find("kv_storage_candidates: the running backend does not run KV_STORAGE_INT8_K_FP8_V"),
            std::string::npos) << st;
}

// The storage round trip the scores rest on: 16-bit gives the bytes back, the quantized storages
// give K centred on each sequence's own mean within the scheme's rounding; fp32 K/V and a head_dim
// INT4 cannot hold are refused.
TEST(KvStorageCalibration, StoreAndLoadIsTheSessionsStorage) {
  OutlierSampleSpec spec;
  spec.tokens = 48;
  spec.head_dim = 128;
  OutlierSample sample(spec);
  const AttnInput& in = sample.input();
  std::vector<uint16_t> k, v;
  ASSERT_TRUE(StoreAndLoadKv(in, KvStorage::k16Bit, k, v).ok());
  EXPECT_EQ(std::memcmp(k.data(), in.k.data, in.k.bytes()), 0);
  EXPECT_EQ(std::memcmp(v.data(), in.v.data, in.v.bytes()), 0);
  ASSERT_TRUE(StoreAndLoadKv(in, KvStorage::kInt8KFp8V, k, v).ok());
  const size_t row = static_cast<size_t>(in.k.heads) * in.k.head_dim;
  const auto* kin = static_cast<const uint16_t*>(in.k.data);
  for (size_t c = 0; c < row; c += 37) {
    double mean = 0.0;
    for (int64_t t = 0; t < in.k.tokens; ++t) mean += DecodeFp16(kin[static_cast<size_t>(t) * row + c]);
    mean /= static_cast<double>(in.k.tokens);
    for (int64_t t = 0; t < in.k.tokens; t += 5) {
      const double want = DecodeFp16(kin[static_cast<size_t>(t) * row + c]) - mean;
      EXPECT_NEAR(DecodeFp16(k[static_cast<size_t>(t) * row + c]), want, 0.05) << "token " << t << " channel " << c;
    }
  }
  AttnInput f32 = in;
  f32.k.dtype = DType::kF32;
  EXPECT_EQ(StoreAndLoadKv(f32, KvStorage::kInt8KFp8V, k, v).code(), absl::StatusCode::kInvalidArgument);
  spec.head_dim = 96;
  OutlierSample d96(spec);
  EXPECT_EQ(StoreAndLoadKv(d96.input(), KvStorage::kInt4KFp8V, k, v).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(StoreAndLoadKv(d96.input(), KvStorage::kInt8KFp8V, k, v).ok());
}

TEST_F(CalibratorTest, TimestepsBetweenCalibratedOnesTakeTheSaferNeighbour) {
  // Layer 0 calibrated at t=0 (benign) and t=9 (adversarial); t=1..8 must run unquantized, the
  // more accurate neighbour, and layer 1 stays uncovered (hardware default at resolve time).
  SampleSet set;
  set.Add(0, 0, kBenignGain, 1);
  set.Add(0, 9, kAdversarialGain, 1);
  absl::StatusOr<CalibrationReport> report = calibrator_.Calibrate(Model(2, 10), std::nullopt, set.Finish(), {});
  ASSERT_TRUE(report.ok()) << report.status();
  ASSERT_EQ(report->plan.entries.size(), 2u) << FormatReport(*report);
  EXPECT_EQ(report->plan.entries[0].layers, (Range{0, 0}));
  EXPECT_EQ(report->plan.entries[0].timesteps, (Range{0, 0}));
  EXPECT_EQ(report->plan.entries[0].recipe, Recipe::kInt8QkFp8Pv);
  EXPECT_EQ(report->plan.entries[1].timesteps, (Range{1, 9}));
  EXPECT_EQ(report->plan.entries[1].recipe, Recipe::kUnquantized);
}

TEST_F(CalibratorTest, SamplesThatDoNotFitTheModelAreRejectedByIndex) {
  SampleSet set;
  set.Add(0, std::nullopt, kBenignGain, 1);
  set.Add(5, std::nullopt, kBenignGain, 1);
  absl::StatusOr<CalibrationReport> report = calibrator_.Calibrate(Model(2), std::nullopt, set.Finish(), {});
  ASSERT_EQ(report.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(report.status().message().find("samples[1]"), std::string::npos) << report.status();

  ModelSpec wide = Model(1);
  wide.q_heads = 8;
  SampleSet one;
  one.Add(0, std::nullopt, kBenignGain, 1);
  report = calibrator_.Calibrate(wide, std::nullopt, one.Finish(), {});
  ASSERT_EQ(report.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(report.status().message().find("Hq=8"), std::string::npos) << report.status();
}

TEST_F(CalibratorTest, CancellationStopsTheRun) {
  SampleSet set;
  set.Add(0, std::nullopt, kBenignGain, 1);
  CalibrationOptions options;
  options.is_cancelled = [] { return true; };
  EXPECT_EQ(calibrator_.Calibrate(Model(1), std::nullopt, set.Finish(), options).status().code(),
            absl::StatusCode::kCancelled);
}

TEST_F(CalibratorTest, DryRunStoresNothingAndARealRunStoresAndMerges) {
  RegistryOptions ro;
  ro.backend = backend_->info();
  absl::StatusOr<std::unique_ptr<Registry>> registry = Registry::Create(ro, {});
  ASSERT_TRUE(registry.ok());
  ASSERT_TRUE((*registry)->RegisterModel(Model(2), RegisterMode::kCreate).ok());

  SampleSet first;
  first.Add(0, std::nullopt, kAdversarialGain, 1);
  absl::StatusOr<CalibrationOutcome> dry = CalibrateModel(**registry, calibrator_, "cal", first.Finish(), {},
                                                          CalibrationMode::kDryRun);
  ASSERT_TRUE(dry.ok()) << dry.status();
  EXPECT_FALSE(dry->stored);
  EXPECT_EQ(dry->plan.entries.size(), 1u);
  EXPECT_TRUE((*registry)->GetPlan("cal")->is_default);

  absl::StatusOr<CalibrationOutcome> real = CalibrateModel(**registry, calibrator_, "cal", first.samples, {},
                                                           CalibrationMode::kStore);
  ASSERT_TRUE(real.ok()) << real.status();
  EXPECT_TRUE(real->stored);
  EXPECT_EQ(real->plan.version, 1);
  EXPECT_EQ((*registry)->Resolve("cal", 0, std::nullopt)->recipe, Recipe::kUnquantized);

  // Calibrating layer 1 later keeps layer 0's entry (same hardware).
  SampleSet second;
  second.Add(1, std::nullopt, kBenignGain, 1);
  real = CalibrateModel(**registry, calibrator_, "cal", second.Finish(), {}, CalibrationMode::kStore);
  ASSERT_TRUE(real.ok()) << real.status();
  EXPECT_EQ(real->plan.version, 2);
  EXPECT_EQ((*registry)->Resolve("cal", 0, std::nullopt)->recipe, Recipe::kUnquantized);
  EXPECT_EQ((*registry)->Resolve("cal", 1, std::nullopt)->recipe, Recipe::kInt8QkFp8Pv);
  EXPECT_EQ((*registry)->Resolve("cal", 1, std::nullopt)->source, ResolutionSource::kPlan);

  EXPECT_EQ(CalibrateModel(**registry, calibrator_, "nope", second.samples, {}, CalibrationMode::kStore)
                .status()
                .code(),
            absl::StatusCode::kNotFound);
}

}  // namespace
}  // namespace sage::registry
