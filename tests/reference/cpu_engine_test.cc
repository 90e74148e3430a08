#include "kernels/reference/cpu_engine.h"

#include <cmath>
#include <cstring>
#include <limits>
#include <thread>

#include "gtest/gtest.h"
#include "kernels/reference/quantized_attention.h"
#include "kernels/reference/synthetic_data.h"

namespace sage {
namespace {

ProblemSpec Mixed(uint64_t seed) {
  return {.q_lens = {130, 64, 7, 200}, .k_lens = {130, 300, 1, 129}, .q_heads = 4, .kv_heads = 2,
          .head_dim = 64, .mask = MaskMode::kCausal, .lse = LseMode::kNatural, .dtype = DType::kBF16,
          .distribution = Distribution::kLlmLike, .seed = seed};
}

std::vector<RecipeConfig> Configs() {
  std::vector<RecipeConfig> configs;
  for (Recipe r : kAllRecipes) configs.push_back(ConfigFor(r));
  RecipeConfig variant = ConfigFor(Recipe::kInt8QkFp8Pv);
  variant.granularity = QuantGranularity::kPerWarp;
  variant.v_smoothing = VSmoothing::kMean;
  variant.accumulation = PvAccumulation::kFp22Only;
  configs.push_back(variant);
  return configs;
}

// Compares bit patterns: NaN-safe and stricter than ==.
void ExpectBitIdentical(const std::vector<float>& a, const std::vector<float>& b) {
  ASSERT_EQ(a.size(), b.size());
  EXPECT_EQ(std::memcmp(a.data(), b.data(), a.size() * sizeof(float)), 0);
}

TEST(CpuEngine, MultiThreadedEqualsSingleThreadedBitForBit) {
  SyntheticProblem p(Mixed(1));
  auto engine = CpuEngine::Create({.num_threads = 4});
  ASSERT_TRUE(engine.ok());
  for (const RecipeConfig& config : Configs()) {
    auto single = AttendQuantized(p.input(), config);
    auto multi = (*engine)->Run(p.input(), config);
    ASSERT_TRUE(single.ok() && multi.ok()) << DescribeConfig(config);
    ExpectBitIdentical(single->o, multi->o);
    ExpectBitIdentical(single->lse, multi->lse);
  }
}

TEST(CpuEngine, SequenceResultDoesNotDependOnBatchMates) {
  const ProblemSpec packed_spec = Mixed(2);
  SyntheticProblem packed(packed_spec);
  auto engine = CpuEngine::Create({.num_threads = 3});
  ASSERT_TRUE(engine.ok());
  for (const RecipeConfig& config : Configs()) {
    auto all = (*engine)->Run(packed.input(), config);
    ASSERT_TRUE(all.ok());
    // Re-run sequence 1 alone from the same bytes.
    const AttnInput& in = packed.input();
    const int b = 1;
    const int q0 = in.cu_seqlens_q[b], q_len = in.cu_seqlens_q[b + 1] - q0;
    const int k0 = in.cu_seqlens_k[b], k_len = in.cu_seqlens_k[b + 1] - k0;
    const size_t esz = DTypeSize(in.q.dtype);
    AttnInput alone = in;
    const int32_t cu_q[] = {0, q_len}, cu_k[] = {0, k_len};
    alone.q.data = static_cast<const uint8_t*>(in.q.data) + static_cast<size_t>(q0) * in.q.heads * in.q.head_dim * esz;
    alone.k.data = static_cast<const uint8_t*>(in.k.data) + static_cast<size_t>(k0) * in.k.heads * in.k.head_dim * esz;
    alone.v.data = static_cast<const uint8_t*>(in.v.data) + static_cast<size_t>(k0) * in.v.heads * in.v.head_dim * esz;
    alone.q.tokens = q_len;
    alone.k.tokens = alone.v.tokens = k_len;
    alone.cu_seqlens_q = cu_q;
    alone.cu_seqlens_k = cu_k;
    auto one = (*engine)->Run(alone, config);
    ASSERT_TRUE(one.ok());
    const size_t row = static_cast<size_t>(in.q.heads) * in.q.head_dim;
    const std::vector<float> slice(all->o.begin() + q0 * row, all->o.begin() + (q0 + q_len) * row);
    ExpectBitIdentical(one->o, slice);
    const std::vector<float> lse_slice(all->lse.begin() + q0 * in.q.heads, all->lse.begin() + (q0 + q_len) * in.q.heads);
    ExpectBitIdentical(one->lse, lse_slice);
  }
}

TEST(CpuEngine, ConcurrentRunsAgree) {
  SyntheticProblem p(Mixed(3));
  auto engine = CpuEngine::Create({.num_threads = 2});
  ASSERT_TRUE(engine.ok());
  const RecipeConfig config = ConfigFor(Recipe::kInt4QkFp8Pv);
  auto expected = AttendQuantized(p.input(), config);
  ASSERT_TRUE(expected.ok());
  std::vector<std::vector<float>> results(4);
  std::vector<std::thread> callers;
  for (int t = 0; t < 4; ++t) {
    callers.emplace_back([&, t] {
      auto r = (*engine)->Run(p.input(), config);
      if (r.ok()) results[t] = std::move(r->o);
    });
  }
  for (auto& c : callers) c.join();
  for (const auto& r : results) ExpectBitIdentical(r, expected->o);
}

// Non-finite values are not validated (that would cost a full pass over the data); they must not
// crash or hit undefined behaviour, and finite sequences packed beside them stay finite.
TEST(CpuEngine, NonFiniteInputsDoNotCrash) {
  std::vector<float> q(2 * 64 * 64, 0.5f), k(2 * 64 * 64, 0.25f), v(2 * 64 * 64, 1.0f);
  q[3] = std::numeric_limits<float>::infinity();
  k[5] = std::numeric_limits<float>::quiet_NaN();
  const int32_t cu[] = {0, 64, 128};
  AttnInput in;
  in.q = TensorView{DType::kF32, q.data(), 128, 1, 64};
  in.k = TensorView{DType::kF32, k.data(), 128, 1, 64};
  in.v = TensorView{DType::kF32, v.data(), 128, 1, 64};
  in.cu_seqlens_q = cu;
  in.cu_seqlens_k = cu;
  auto engine = CpuEngine::Create({.num_threads = 2});
  ASSERT_TRUE(engine.ok());
  for (const RecipeConfig& config : Configs()) {
    auto out = (*engine)->Run(in, config);
    ASSERT_TRUE(out.ok());
    for (size_t i = 64 * 64; i < out->o.size(); ++i) ASSERT_TRUE(std::isfinite(out->o[i])) << DescribeConfig(config);
  }
}

TEST(CpuEngine, RejectsNegativeThreadCount) {
  EXPECT_EQ(CpuEngine::Create({.num_threads = -1}).status().code(), absl::StatusCode::kInvalidArgument);
  auto engine = CpuEngine::Create({});
  ASSERT_TRUE(engine.ok());
  EXPECT_GE((*engine)->num_threads(), 1);
}

}  // namespace
}  // namespace sage
