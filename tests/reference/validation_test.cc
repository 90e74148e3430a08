#include <cmath>
#include <functional>
#include <limits>
#include <string>

#include "gtest/gtest.h"
#include "kernels/reference/attention_problem.h"
#include "kernels/reference/cpu_engine.h"
#include "kernels/reference/oracle.h"
#include "kernels/reference/quantized_attention.h"
#include "kernels/reference/recipe.h"
#include "kernels/reference/synthetic_data.h"

namespace sage {
namespace {

struct BadCase {
  std::string name;
  std::function<void(AttnInput&)> corrupt;
  std::string field;  // must appear in the error message
};

TEST(Validation, EveryBadInputIsInvalidArgumentNamingTheField) {
  static const int32_t kCuDecreasing[] = {0, 50, 40, 100};
  static const int32_t kCuBadStart[] = {1, 50, 100};
  static const int32_t kCuBadEnd[] = {0, 50, 99};
  static const int32_t kCuEmpty[] = {0, 50, 50, 100};
  static const int32_t kCuThree[] = {0, 30, 60, 100};
  static const int32_t kCuOne[] = {0};
  const std::vector<BadCase> cases = {
      {"null q", [](AttnInput& in) { in.q.data = nullptr; }, "q.data"},
      {"null k", [](AttnInput& in) { in.k.data = nullptr; }, "k.data"},
      {"null v", [](AttnInput& in) { in.v.data = nullptr; }, "v.data"},
      {"zero tokens", [](AttnInput& in) { in.q.tokens = 0; }, "q.tokens"},
      {"negative heads", [](AttnInput& in) { in.k.heads = -1; }, "k.heads"},
      {"zero head_dim", [](AttnInput& in) { in.v.head_dim = 0; }, "v.head_dim"},
      {"unsupported head_dim", [](AttnInput& in) { in.q.head_dim = in.k.head_dim = in.v.head_dim = 96; }, "q.head_dim"},
      {"q/k head_dim mismatch", [](AttnInput& in) { in.k.head_dim = 128; in.v.head_dim = 128; }, "k.head_dim"},
      {"k/v head_dim mismatch", [](AttnInput& in) { in.v.head_dim = 128; }, "v.head_dim"},
      {"k/v tokens mismatch", [](AttnInput& in) { in.v.tokens = 99; }, "v.tokens"},
      {"k/v heads mismatch", [](AttnInput& in) { in.v.heads = 1; }, "v.heads"},
      {"gqa not divisible", [](AttnInput& in) { in.q.heads = 3; }, "q.heads"},
      {"bad dtype", [](AttnInput& in) { in.q.dtype = static_cast<DType>(9); }, "q.dtype"},
      {"cu size mismatch", [](AttnInput& in) { in.cu_seqlens_k = kCuThree; }, "cu_seqlens_k"},
      {"batch < 1", [](AttnInput& in) { in.cu_seqlens_q = kCuOne; in.cu_seqlens_k = kCuOne; }, "cu_seqlens_q"},
      {"cu[0] != 0", [](AttnInput& in) { in.cu_seqlens_q = kCuBadStart; }, "cu_seqlens_q[0]"},
      {"decreasing", [](AttnInput& in) { in.cu_seqlens_q = kCuDecreasing; in.cu_seqlens_k = kCuThree; }, "cu_seqlens_q[2]"},
      {"last != total", [](AttnInput& in) { in.cu_seqlens_k = kCuBadEnd; }, "cu_seqlens_k[2]"},
      {"empty sequence", [](AttnInput& in) { in.cu_seqlens_k = kCuEmpty; in.cu_seqlens_q = kCuThree; }, "sequence 1"},
      {"nan scale", [](AttnInput& in) { in.softmax_scale = std::numeric_limits<float>::quiet_NaN(); }, "softmax_scale"},
      {"inf scale", [](AttnInput& in) { in.softmax_scale = std::numeric_limits<float>::infinity(); }, "softmax_scale"},
      {"zero scale", [](AttnInput& in) { in.softmax_scale = 0.0f; }, "softmax_scale"},
      {"negative scale", [](AttnInput& in) { in.softmax_scale = -1.0f; }, "softmax_scale"},
      {"bad mask", [](AttnInput& in) { in.mask = static_cast<MaskMode>(7); }, "mask"},
  };
  SyntheticProblem p({.q_lens = {50, 50}, .k_lens = {50, 50}, .q_heads = 2, .kv_heads = 2, .head_dim = 64});
  ASSERT_TRUE(ValidateInput(p.input()).ok());
  auto engine = CpuEngine::Create({.num_threads = 2});
  ASSERT_TRUE(engine.ok());
  for (const BadCase& c : cases) {
    AttnInput in = p.input();
    c.corrupt(in);
    const absl::Status direct = ValidateInput(in);
    EXPECT_EQ(direct.code(), absl::StatusCode::kInvalidArgument) << c.name;
    EXPECT_NE(std::string(direct.message()).find(c.field), std::string::npos) << c.name << ": " << direct;
    EXPECT_EQ(AttendExact(in).status().code(), absl::StatusCode::kInvalidArgument) << c.name;
    EXPECT_EQ(AttendQuantized(in, ConfigFor(Recipe::kInt8QkFp8Pv)).status().code(),
              absl::StatusCode::kInvalidArgument) << c.name;
    EXPECT_EQ((*engine)->Run(in, ConfigFor(Recipe::kInt4QkFp8Pv)).status().code(),
              absl::StatusCode::kInvalidArgument) << c.name;
  }
}

TEST(Validation, ScaleDefaultsToInverseSqrtHeadDim) {
  SyntheticProblem p({.q_lens = {8}, .k_lens = {8}, .q_heads = 1, .kv_heads = 1, .head_dim = 128});
  EXPECT_FLOAT_EQ(p.input().scale(), 1.0f / std::sqrt(128.0f));
  p.mutable_input().softmax_scale = 0.25f;
  EXPECT_EQ(p.input().scale(), 0.25f);
}

TEST(Recipes, NamesRoundTripAndConfigsMatchThePaper) {
  for (Recipe r : kAllRecipes) {
    auto parsed = ParseRecipe(RecipeName(r));
    ASSERT_TRUE(parsed.ok());
    EXPECT_EQ(*parsed, r);
  }
  EXPECT_EQ(ParseRecipe("int3").status().code(), absl::StatusCode::kInvalidArgument);
  const RecipeConfig b4 = ConfigFor(Recipe::kInt4QkFp8Pv);
  EXPECT_EQ(b4.qk, QkType::kInt4);
  EXPECT_EQ(b4.qk_smoothing, QkSmoothing::kQK);
  EXPECT_EQ(b4.granularity, QuantGranularity::kPerThread);
  const RecipeConfig b8 = ConfigFor(Recipe::kInt8QkFp8Pv);
  EXPECT_EQ(b8.qk, QkType::kInt8);
  EXPECT_EQ(b8.qk_smoothing, QkSmoothing::kK);
  EXPECT_EQ(b8.pv, PvType::kFp8E4M3);
  EXPECT_EQ(b8.accumulation, PvAccumulation::kTwoLevel);
  EXPECT_EQ(ConfigFor(Recipe::kInt8QkFp16Pv).pv, PvType::kF16);
  EXPECT_EQ(ConfigFor(Recipe::kUnquantized).qk, QkType::kF16);
  EXPECT_EQ(ConfigFor(Recipe::kUnquantized).qk_smoothing, QkSmoothing::kNone);
  EXPECT_FALSE(DescribeConfig(b4).empty());
}

}  // namespace
}  // namespace sage
