// Accuracy of each recipe's emulation against the double oracle. Floors (cosine similarity):
//   int8_qk_fp8_pv (INT8 per-thread, K smoothing, FP8 P·V):  >= 0.999 on llm_like data
//   int8_qk_fp16_pv:                                         >= 0.999
//   int4_qk_fp8_pv (INT4 per-thread, Q+K smoothing):         >= 0.99
//   unquantized:                                             >= 0.9999
#include "kernels/reference/quantized_attention.h"

#include <cmath>

#include "gtest/gtest.h"
#include "kernels/reference/metrics.h"
#include "kernels/reference/oracle.h"
#include "kernels/reference/quantize.h"
#include "kernels/reference/numerics.h"
#include "kernels/reference/synthetic_data.h"

namespace sage {
namespace {

struct Measured {
  ErrorMetrics metrics;
  double max_lse_error = 0.0;
  double mean_lse_error = 0.0;
};

Measured Measure(const SyntheticProblem& p, const RecipeConfig& config) {
  auto exact = AttendExact(p.input());
  auto got = AttendQuantized(p.input(), config);
  EXPECT_TRUE(exact.ok() && got.ok());
  Measured m;
  if (!exact.ok() || !got.ok()) return m;
  m.metrics = CompareToReference(got->o, exact->o);
  for (size_t i = 0; i < got->lse.size(); ++i) {
    if (std::isinf(exact->lse[i])) {
      EXPECT_TRUE(std::isinf(got->lse[i]));
      continue;
    }
    const double err = std::fabs(got->lse[i] - exact->lse[i]);
    m.max_lse_error = std::max(m.max_lse_error, err);
    m.mean_lse_error += err / static_cast<double>(got->lse.size());
  }
  return m;
}

ProblemSpec LlmLike(uint64_t seed) {
  return {.q_lens = {200, 77}, .k_lens = {300, 77}, .q_heads = 4, .kv_heads = 2, .head_dim = 128,
          .mask = MaskMode::kCausal, .lse = LseMode::kNatural, .dtype = DType::kF16,
          .distribution = Distribution::kLlmLike, .seed = seed};
}

TEST(Accuracy, EachRecipeMeetsItsFloorOnOutlierHeavyData) {
  SyntheticProblem p(LlmLike(42));
  const struct {
    Recipe recipe;
    double min_cosine;
    double max_mean_lse_error;  // Q outlier channels make per-row LSE errors of INT8/INT4 visible
  } floors[] = {{Recipe::kInt8QkFp8Pv, 0.999, 0.05},
                {Recipe::kInt8QkFp16Pv, 0.999, 0.05},
                {Recipe::kInt4QkFp8Pv, 0.99, 0.6},
                {Recipe::kUnquantized, 0.9999, 0.001}};
  for (const auto& f : floors) {
    const Measured m = Measure(p, ConfigFor(f.recipe));
    EXPECT_GE(m.metrics.cosine, f.min_cosine) << RecipeName(f.recipe);
    EXPECT_LE(m.mean_lse_error, f.max_mean_lse_error) << RecipeName(f.recipe);
    EXPECT_LT(m.metrics.relative_l1, 0.2) << RecipeName(f.recipe);
  }
}

TEST(Accuracy, UnsmoothedInt4IsMeasurablyWorseOnKBiasedData) {
  SyntheticProblem p({.q_lens = {256}, .k_lens = {256}, .q_heads = 2, .kv_heads = 2, .head_dim = 128,
                      .distribution = Distribution::kKChannelBias, .seed = 8});
  RecipeConfig none = ConfigFor(Recipe::kInt4QkFp8Pv);
  none.qk_smoothing = QkSmoothing::kNone;
  const Measured smoothed = Measure(p, ConfigFor(Recipe::kInt4QkFp8Pv));
  const Measured raw = Measure(p, none);
  EXPECT_GT(raw.metrics.relative_l1, 2.0 * smoothed.metrics.relative_l1);
  EXPECT_LT(raw.metrics.cosine, smoothed.metrics.cosine - 0.01);
}

TEST(Accuracy, TwoLevelAccumulationBeatsFp22OnLongSequences) {
  SyntheticProblem p({.q_lens = {64}, .k_lens = {8192}, .q_heads = 1, .kv_heads = 1, .head_dim = 64,
                      .distribution = Distribution::kVChannelOffset, .seed = 9});
  RecipeConfig fp22 = ConfigFor(Recipe::kInt8QkFp8Pv);
  fp22.accumulation = PvAccumulation::kFp22Only;
  const Measured two_level = Measure(p, ConfigFor(Recipe::kInt8QkFp8Pv));
  const Measured truncated = Measure(p, fp22);
  EXPECT_LT(two_level.metrics.relative_l1 * 1.5, truncated.metrics.relative_l1);
  EXPECT_LT(two_level.metrics.rmse, truncated.metrics.rmse);
}

TEST(Accuracy, LseIncludesTheKSmoothingCorrection) {
  // With a large K bias, forgetting q·k̄ would shift the LSE by many units.
  SyntheticProblem p({.q_lens = {64}, .k_lens = {128}, .q_heads = 1, .kv_heads = 1, .head_dim = 64,
                      .lse = LseMode::kNatural, .distribution = Distribution::kKChannelBias, .seed = 10});
  for (Recipe r : kAllRecipes) {
    EXPECT_LT(Measure(p, ConfigFor(r)).max_lse_error, r == Recipe::kInt4QkFp8Pv ? 0.5 : 0.05) << RecipeName(r);
  }
}

// The int8/fp16 recipe against an independent pipeline built from the standalone quantizers:
// S = acc·δQ·δK from QuantizeQ/QuantizeK, exact softmax, V rounded to fp16.
TEST(Emulation, Int8Fp16MatchesStandaloneQuantizers) {
  SyntheticProblem p({.q_lens = {100}, .k_lens = {150}, .q_heads = 1, .kv_heads = 1, .head_dim = 64,
                      .distribution = Distribution::kKChannelBias, .seed = 12});
  const AttnInput& in = p.input();
  const int d = 64;
  const std::vector<float> q = ToFloatVector(in.q), k = ToFloatVector(in.k), v = ToFloatVector(in.v);
  auto qq = QuantizeQ(q, 1, d, in.cu_seqlens_q, QkType::kInt8, QuantGranularity::kPerThread, QkSmoothing::kK);
  auto kq = QuantizeK(k, 1, d, in.cu_seqlens_k, QkType::kInt8, QuantGranularity::kPerThread, QkSmoothing::kK);
  ASSERT_TRUE(qq.ok() && kq.ok());
  auto got = AttendQuantized(in, ConfigFor(Recipe::kInt8QkFp16Pv));
  ASSERT_TRUE(got.ok());
  double max_err = 0.0;
  for (int i = 0; i < 100; ++i) {
    std::vector<double> s(150);
    double mx = -INFINITY, sum = 0.0;
    for (int j = 0; j < 150; ++j) {
      int32_t acc = 0;
      for (int c = 0; c < d; ++c) acc += qq->values[i * d + c] * kq->values[j * d + c];
      s[j] = static_cast<double>(acc) * qq->scales[i] * kq->scales[j] * in.scale();
      mx = std::max(mx, s[j]);
    }
    for (double& x : s) sum += (x = std::exp(x - mx));
    for (int c = 0; c < d; ++c) {
      double o = 0.0;
      for (int j = 0; j < 150; ++j) o += s[j] / sum * RoundToFp16(v[j * d + c]);
      max_err = std::max(max_err, std::fabs(o - got->o[i * d + c]));
    }
  }
  EXPECT_LT(max_err, 5e-3);  // only P̃'s fp16 rounding and fp32 sums differ
}

TEST(Emulation, VSmoothingHelpsFp22OnOffsetV) {
  SyntheticProblem p({.q_lens = {64}, .k_lens = {4096}, .q_heads = 1, .kv_heads = 1, .head_dim = 64,
                      .distribution = Distribution::kVChannelOffset, .seed = 13});
  RecipeConfig fp22 = ConfigFor(Recipe::kInt8QkFp8Pv);
  fp22.accumulation = PvAccumulation::kFp22Only;
  RecipeConfig fp22_smooth_v = fp22;
  fp22_smooth_v.v_smoothing = VSmoothing::kMean;
  EXPECT_LT(Measure(p, fp22_smooth_v).metrics.relative_l1, Measure(p, fp22).metrics.relative_l1);
}

}  // namespace
}  // namespace sage
