// GPU tests of the mma.sync recipes (kernels/cuda/attn_mma) through the C API: INT4·FP8, INT8·FP16
// and unquantized, each against its CPU emulation and the double oracle (gpu_test_util.h's rule).
#include <gtest/gtest.h>

#include <string>
#include <tuple>
#include <vector>

#include "tests/cuda/gpu_test_util.h"

namespace sage::gputest {
namespace {

using Param = std::tuple<sage_recipe_t, int /*d*/, MaskMode, DType, int /*shape*/>;

class AttnMmaTest : public ::testing::TestWithParam<Param> {};

TEST_P(AttnMmaTest, MatchesEmulationWithinTolerance) {
  SAGE_SKIP_WITHOUT_GPU();
  const auto [recipe, d, mask, dtype, shape_index] = GetParam();
  const ProblemSpec spec = SpecFor(kBatchShapes[shape_index], d, mask, dtype,
                                    1000 + static_cast<uint64_t>(recipe) * 97 + d + shape_index * 13 + (mask == MaskMode::kCausal));
  CheckRecipeAgainstEmulation(spec, DefaultCConfig(recipe));
}

std::string ParamName(const ::testing::TestParamInfo<Param>& info) {
  const auto [recipe, d, mask, dtype, shape_index] = info.param;
  std::string name(RecipeName(ToRecipe(recipe)));
  return name + "_d" + std::to_string(d) + (mask == MaskMode::kCausal ? "_causal_" : "_full_") +
         std::string(DTypeName(dtype)) + "_" + kBatchShapes[shape_index].name;
}

INSTANTIATE_TEST_SUITE_P(Fp16, AttnMmaTest,
                         ::testing::Combine(::testing::Values(SAGE_RECIPE_UNQUANTIZED, SAGE_RECIPE_INT8_QK_FP16_PV,
                                                              SAGE_RECIPE_INT4_QK_FP8_PV),
                                            ::testing::Values(64, 128),
                                            ::testing::Values(MaskMode::kNone, MaskMode::kCausal),
                                            ::testing::Values(DType::kF16), ::testing::Range(0, 4)),  // all but "long"
                         ParamName);

INSTANTIATE_TEST_SUITE_P(Bf16, AttnMmaTest,
                         ::testing::Combine(::testing::Values(SAGE_RECIPE_UNQUANTIZED, SAGE_RECIPE_INT8_QK_FP16_PV,
                                                              SAGE_RECIPE_INT4_QK_FP8_PV),
                                            ::testing::Values(64, 128), ::testing::Values(MaskMode::kCausal),
                                            ::testing::Values(DType::kBF16), ::testing::Values(0, 1)),
                         ParamName);

// Gaussian inputs without LSE: the O-only path.
TEST(AttnMmaNonFinite, NonFiniteInputsComeBackNonFinite) {
  if (!GpuVisible()) GTEST_SKIP() << "no CUDA GPU visible";
  for (sage_recipe_t r : {SAGE_RECIPE_UNQUANTIZED, SAGE_RECIPE_INT8_QK_FP16_PV, SAGE_RECIPE_INT4_QK_FP8_PV}) {
    SCOPED_TRACE(static_cast<int>(r));
    CheckNonFiniteInputsComeBackNonFinite(DefaultCConfig(r));
  }
}

TEST(AttnMmaPlain, GaussianNoLse) {
  SAGE_SKIP_WITHOUT_GPU();
  for (sage_recipe_t r : {SAGE_RECIPE_UNQUANTIZED, SAGE_RECIPE_INT8_QK_FP16_PV, SAGE_RECIPE_INT4_QK_FP8_PV}) {
    ProblemSpec spec;
    spec.q_lens = {200, 33};
    spec.hq = 2;
    spec.hkv = 1;
    spec.d = 128;
    spec.dist = InputDist::kGaussian;
    spec.lse = LseMode::kNone;
    spec.seed = 7 + r;
    CheckRecipeAgainstEmulation(spec, DefaultCConfig(r));
  }
}

// ---- bad parameters come back as the right status, and the library keeps working ----

class AttnMmaBadParams : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!GpuVisible()) GTEST_SKIP() << "no CUDA GPU visible";
    ProblemSpec spec;
    spec.q_lens = {70};
    spec.hq = 4;
    spec.hkv = 2;
    spec.d = 64;
    problem_ = MakeProblem(spec);
    ASSERT_TRUE(dev_.Upload(problem_, stream_.get()).ok());
    ASSERT_TRUE(dev_.workspace.Allocate(64 << 20).ok());
  }
  sage_attn_params_t Params(sage_recipe_t r) const { return dev_.Params(problem_, DefaultCConfig(r)); }

  HostProblem problem_;
  DeviceProblem dev_;
  Stream stream_;
};

TEST_F(AttnMmaBadParams, UnsupportedHeadDim) {
  for (sage_recipe_t r : {SAGE_RECIPE_UNQUANTIZED, SAGE_RECIPE_INT8_QK_FP16_PV, SAGE_RECIPE_INT4_QK_FP8_PV}) {
    sage_attn_params_t p = Params(r);
    p.head_dim = 80;
    const sage_status_t s = sage_attn_forward(&p, stream_.sage());
    EXPECT_TRUE(s == SAGE_ERR_UNSUPPORTED || s == SAGE_ERR_INVALID_ARGUMENT) << sage_status_name(s);
    EXPECT_NE(std::string(sage_last_error()), "");
  }
}

TEST_F(AttnMmaBadParams, HeadsNotMultiple) {
  sage_attn_params_t p = Params(SAGE_RECIPE_INT8_QK_FP16_PV);
  p.num_kv_heads = 3;
  EXPECT_EQ(sage_attn_forward(&p, stream_.sage()), SAGE_ERR_INVALID_ARGUMENT);
}

TEST_F(AttnMmaBadParams, NullPointersAndScale) {
  sage_attn_params_t p = Params(SAGE_RECIPE_UNQUANTIZED);
  p.q = nullptr;
  EXPECT_EQ(sage_attn_forward(&p, stream_.sage()), SAGE_ERR_INVALID_ARGUMENT);
  p = Params(SAGE_RECIPE_UNQUANTIZED);
  p.o = nullptr;
  EXPECT_EQ(sage_attn_forward(&p, stream_.sage()), SAGE_ERR_INVALID_ARGUMENT);
  p = Params(SAGE_RECIPE_INT4_QK_FP8_PV);
  p.softmax_scale = 0.0f;
  EXPECT_EQ(sage_attn_forward(&p, stream_.sage()), SAGE_ERR_INVALID_ARGUMENT);
  EXPECT_EQ(sage_attn_forward(nullptr, stream_.sage()), SAGE_ERR_INVALID_ARGUMENT);
}

TEST_F(AttnMmaBadParams, WorkspaceTooSmall) {
  sage_attn_params_t p = Params(SAGE_RECIPE_INT4_QK_FP8_PV);
  size_t need = 0;
  ASSERT_EQ(sage_attn_workspace_size(&p, &need), SAGE_OK);
  ASSERT_GT(need, 0u);
  p.workspace_bytes = need - 1;
  EXPECT_EQ(sage_attn_forward(&p, stream_.sage()), SAGE_ERR_INVALID_ARGUMENT);
}

TEST_F(AttnMmaBadParams, StillWorksAfterErrors) {
  sage_attn_params_t p = Params(SAGE_RECIPE_UNQUANTIZED);
  p.head_dim = 96;
  EXPECT_NE(sage_attn_forward(&p, stream_.sage()), SAGE_OK);
  p = Params(SAGE_RECIPE_UNQUANTIZED);
  EXPECT_EQ(sage_attn_forward(&p, stream_.sage()), SAGE_OK) << sage_last_error();
  EXPECT_EQ(cudaStreamSynchronize(stream_.get()), cudaSuccess);
}

// Speed of each recipe through the C API (quantize + attend), seq 4096 × 16 heads × d 128, batch 2.
// Not a correctness test: run with --gtest_also_run_disabled_tests on the device.
TEST(AttnMmaTiming, DISABLED_Throughput) {
  SAGE_SKIP_WITHOUT_GPU();
  for (int d : {64, 128}) {
    for (MaskMode mask : {MaskMode::kNone, MaskMode::kCausal}) {
      ProblemSpec spec;
      spec.q_lens = {4096, 4096};
      spec.hq = 2048 / d;
      spec.hkv = spec.hq;
      spec.d = d;
      spec.mask = mask;
      spec.dist = InputDist::kGaussian;
      spec.lse = LseMode::kNone;
      const HostProblem p = MakeProblem(spec);
      Stream stream;
      DeviceProblem dp;
      ASSERT_TRUE(dp.Upload(p, stream.get()).ok());
      for (sage_recipe_t r : {SAGE_RECIPE_INT8_QK_FP8_PV, SAGE_RECIPE_INT8_QK_FP16_PV, SAGE_RECIPE_UNQUANTIZED,
                              SAGE_RECIPE_INT4_QK_FP8_PV}) {
        absl::StatusOr<sage_attn_params_t> params = dp.ParamsWithWorkspace(p, DefaultCConfig(r));
        ASSERT_TRUE(params.ok()) << params.status();
        sage_attn_params_t prm = *params;
        const sage_status_t warm = sage_attn_forward(&prm, stream.sage());
        if (warm != SAGE_OK) {
          std::printf("  %-16s d=%d %s: %s\n", std::string(RecipeName(ToRecipe(r))).c_str(), d,
                      mask == MaskMode::kCausal ? "causal" : "full", sage_last_error());
          continue;
        }
        cudaEvent_t t0, t1;
        SAGE_CUDA_ASSERT(cudaEventCreate(&t0));
        SAGE_CUDA_ASSERT(cudaEventCreate(&t1));
        const int reps = r == SAGE_RECIPE_INT4_QK_FP8_PV ? 3 : 10;
        SAGE_CUDA_ASSERT(cudaEventRecord(t0, stream.get()));
        for (int i = 0; i < reps; ++i) ASSERT_EQ(sage_attn_forward(&prm, stream.sage()), SAGE_OK);
        SAGE_CUDA_ASSERT(cudaEventRecord(t1, stream.get()));
        SAGE_CUDA_ASSERT(cudaEventSynchronize(t1));
        float ms = 0;
        SAGE_CUDA_ASSERT(cudaEventElapsedTime(&ms, t0, t1));
        ms /= reps;
        double flops = 4.0 * 2 * spec.hq * 4096.0 * 4096.0 * d;
        if (mask == MaskMode::kCausal) flops /= 2;
        std::printf("  %-16s d=%-3d %-6s %8.3f ms %7.1f TOPS (quantize + attend)\n",
                    std::string(RecipeName(ToRecipe(r))).c_str(), d, mask == MaskMode::kCausal ? "causal" : "full",
                    ms, flops / (ms * 1e-3) / 1e12);
        cudaEventDestroy(t0);
        cudaEventDestroy(t1);
      }
    }
  }
}

}  // namespace
}  // namespace sage::gputest
