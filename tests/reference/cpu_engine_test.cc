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

// The non-finite policy (docs/NUMERICS.md, "Non-finite inputs"): a client's NaN or Inf comes
// back non-finite, never as a plausible finite answer. Every O element the unquantized recipe makes
// non-finite is non-finite under every recipe (quantized recipes may poison more: a quantization
// group shares one scale), and a finite sequence packed beside the poisoned one stays finite.
TEST(CpuEngine, NonFiniteInputsComeBackNonFinite) {
  struct Poison {
    const char* what;
    char tensor;  // 'q', 'k' or 'v'
    int index;    // element of sequence 0: token * 64 + channel
    float value;
  };
  const float nan = std::numeric_limits<float>::quiet_NaN(), inf = std::numeric_limits<float>::infinity();
  const Poison poisons[] = {
      {"NaN in q", 'q', 3 * 64 + 7, nan},   {"NaN in k", 'k', 5 * 64 + 1, nan},
      {"NaN in v", 'v', 9 * 64 + 2, nan},   {"Inf in q", 'q', 11 * 64, inf},
      {"-Inf in k", 'k', 17 * 64 + 3, -inf}, {"Inf in v", 'v', 4 * 64 + 60, inf},
  };
  auto engine = CpuEngine::Create({.num_threads = 2});
  ASSERT_TRUE(engine.ok());
  for (const Poison& poison : poisons) {
    SCOPED_TRACE(poison.what);
    std::vector<float> q(2 * 64 * 64), k(2 * 64 * 64), v(2 * 64 * 64);
    for (size_t i = 0; i < q.size(); ++i) {
      q[i] = std::sin(0.37f * static_cast<float>(i));
      k[i] = std::cos(0.11f * static_cast<float>(i));
      v[i] = std::sin(0.05f * static_cast<float>(i) + 1.0f);
    }
    (poison.tensor == 'q' ? q : poison.tensor == 'k' ? k : v)[static_cast<size_t>(poison.index)] = poison.value;
    const int32_t cu[] = {0, 64, 128};
    AttnInput in;
    in.q = TensorView{DType::kF32, q.data(), 128, 1, 64};
    in.k = TensorView{DType::kF32, k.data(), 128, 1, 64};
    in.v = TensorView{DType::kF32, v.data(), 128, 1, 64};
    in.cu_seqlens_q = cu;
    in.cu_seqlens_k = cu;
    in.lse = LseMode::kNatural;
    absl::StatusOr<AttnOutput> reference = (*engine)->Run(in, ConfigFor(Recipe::kUnquantized));
    ASSERT_TRUE(reference.ok());
    size_t poisoned = 0;
    for (size_t i = 0; i < 64 * 64; ++i) poisoned += std::isfinite(reference->o[i]) ? 0 : 1;
    ASSERT_GT(poisoned, 0u) << "the unquantized recipe itself turned the poison into finite O";
    for (const RecipeConfig& config : Configs()) {
      SCOPED_TRACE(DescribeConfig(config));
      absl::StatusOr<AttnOutput> out = (*engine)->Run(in, config);
      ASSERT_TRUE(out.ok());
      for (size_t i = 0; i < 64 * 64; ++i) {
        if (!std::isfinite(reference->o[i])) {
          ASSERT_FALSE(std::isfinite(out->o[i])) << "O[" << i << "] is finite: " << out->o[i];
        }
      }
      for (size_t i = 64 * 64; i < out->o.size(); ++i) ASSERT_TRUE(std::isfinite(out->o[i])) << "sequence 1, " << i;
      for (size_t r = 64; r < 128; ++r) ASSERT_TRUE(std::isfinite(out->lse[r])) << "sequence 1 LSE, row " << r;
    }
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
