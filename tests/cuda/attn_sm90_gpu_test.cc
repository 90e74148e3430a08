// GPU tests of the fused SageAttn2-8b kernel (kernels/cuda/attn_sm90) through the C API:
// INT8 Q·Kᵀ + FP8 P·V on wgmma, against its CPU emulation and the double oracle with the rule and
// tolerance of gpu_test_util.h (INT8_QK_FP8_PV: k = 1.5, atol_l1 = out rounding + 2e-3,
// atol_lse = 5e-3), plus the issue's absolute accuracy bar on K-biased inputs.
#include <gtest/gtest.h>

#include <string>
#include <tuple>
#include <vector>

#include "tests/cuda/gpu_test_util.h"

namespace sage::gputest {
namespace {

#define SAGE_SKIP_WITHOUT_SM90()                                                        \
  do {                                                                                  \
    SAGE_SKIP_WITHOUT_GPU();                                                            \
    if (DeviceSm() != 90) GTEST_SKIP() << "int8_qk_fp8_pv runs on sm_90 only (wgmma)";   \
  } while (0)

using Param = std::tuple<int /*d*/, MaskMode, DType, int /*shape*/>;

class AttnSm90Test : public ::testing::TestWithParam<Param> {};

TEST_P(AttnSm90Test, MatchesEmulationWithinTolerance) {
  SAGE_SKIP_WITHOUT_SM90();
  const auto [d, mask, dtype, shape_index] = GetParam();
  const ProblemSpec spec = SpecFor(kBatchShapes[shape_index], d, mask, dtype,
                                    5000 + d + shape_index * 13 + (mask == MaskMode::kCausal) + 7 * (dtype == DType::kBF16));
  CheckRecipeAgainstEmulation(spec, DefaultCConfig(SAGE_RECIPE_INT8_QK_FP8_PV));
}

std::string ParamName(const ::testing::TestParamInfo<Param>& info) {
  const auto [d, mask, dtype, shape_index] = info.param;
  std::string name = "d";
  name.append(std::to_string(d));
  name.append(mask == MaskMode::kCausal ? "_causal_" : "_full_");
  name.append(DTypeName(dtype));
  name.append("_");
  name.append(kBatchShapes[shape_index].name);
  return name;
}

INSTANTIATE_TEST_SUITE_P(All, AttnSm90Test,
                         ::testing::Combine(::testing::Values(64, 128),
                                            ::testing::Values(MaskMode::kNone, MaskMode::kCausal),
                                            ::testing::Values(DType::kF16, DType::kBF16),
                                            ::testing::Range(0, static_cast<int>(std::size(kBatchShapes)))),
                         ParamName);

// Non-default configurations of the same recipe: coarser scale groups, no smoothing, V smoothing,
// Gaussian inputs, no LSE.
struct Variant {
  const char* name;
  sage_granularity_t granularity;
  sage_qk_smoothing_t qk;
  sage_v_smoothing_t v;
  InputDist dist;
  LseMode lse;
};
const Variant kVariants[] = {
    {"per_warp", SAGE_GRAN_PER_WARP, SAGE_SMOOTH_K, SAGE_VSMOOTH_NONE, InputDist::kOutliers, LseMode::kNatural},
    {"per_block", SAGE_GRAN_PER_BLOCK, SAGE_SMOOTH_K, SAGE_VSMOOTH_NONE, InputDist::kOutliers, LseMode::kNatural},
    {"no_smoothing", SAGE_GRAN_PER_THREAD, SAGE_SMOOTH_NONE, SAGE_VSMOOTH_NONE, InputDist::kGaussian, LseMode::kNatural},
    {"v_smoothing", SAGE_GRAN_PER_THREAD, SAGE_SMOOTH_K, SAGE_VSMOOTH_MEAN, InputDist::kOutliers, LseMode::kNatural},
    {"gaussian_no_lse", SAGE_GRAN_PER_THREAD, SAGE_SMOOTH_K, SAGE_VSMOOTH_NONE, InputDist::kGaussian, LseMode::kNone},
};

class AttnSm90Variant : public ::testing::TestWithParam<int> {};

TEST_P(AttnSm90Variant, MatchesEmulationWithinTolerance) {
  SAGE_SKIP_WITHOUT_SM90();
  const Variant& var = kVariants[GetParam()];
  for (const MaskMode mask : {MaskMode::kNone, MaskMode::kCausal}) {
    ProblemSpec spec;
    spec.q_lens = {200, 1, 333};
    spec.k_lens = {};
    spec.hq = 4;
    spec.hkv = 2;
    spec.d = 128;
    spec.mask = mask;
    spec.dist = var.dist;
    spec.lse = var.lse;
    spec.seed = 9000 + GetParam() * 3 + (mask == MaskMode::kCausal);
    sage_recipe_config_t cfg = DefaultCConfig(SAGE_RECIPE_INT8_QK_FP8_PV);
    cfg.granularity = var.granularity;
    cfg.qk_smoothing = var.qk;
    cfg.v_smoothing = var.v;
    CheckRecipeAgainstEmulation(spec, cfg);
  }
}

INSTANTIATE_TEST_SUITE_P(Configs, AttnSm90Variant, ::testing::Range(0, static_cast<int>(std::size(kVariants))),
                         [](const ::testing::TestParamInfo<int>& info) { return std::string(kVariants[info.param].name); });

// The issue's bar: cosine >= 0.9993 and relative L1 <= 0.04 against full precision on inputs with
// K channel bias (and Q outlier channels), at both head dims.
TEST(AttnSm90Accuracy, MeetsIssueBarOnKBiasedInputs) {
  SAGE_SKIP_WITHOUT_SM90();
  for (const int d : {64, 128}) {
    for (const MaskMode mask : {MaskMode::kNone, MaskMode::kCausal}) {
      ProblemSpec spec;
      spec.q_lens = {1024};
      spec.hq = 2;
      spec.hkv = 2;
      spec.d = d;
      spec.mask = mask;
      spec.dist = InputDist::kOutliers;
      spec.lse = LseMode::kNone;
      spec.seed = 77 + d + (mask == MaskMode::kCausal);
      SCOPED_TRACE(Describe(spec));
      const HostProblem p = MakeProblem(spec);
      Stream stream;
      absl::StatusOr<GpuResult> gpu = RunGpu(p, DefaultCConfig(SAGE_RECIPE_INT8_QK_FP8_PV), stream);
      ASSERT_TRUE(gpu.ok()) << gpu.status();
      absl::StatusOr<ExactOutput> exact = AttendExact(p.Input());
      ASSERT_TRUE(exact.ok()) << exact.status();
      const ErrorStats e = Compare(gpu->o, exact->o);
      EXPECT_GE(e.cosine, 0.9993);
      EXPECT_LE(e.rel_l1, 0.04);
      std::printf("  [bar] d=%d %s cos %.6f relL1 %.5f\n", d, mask == MaskMode::kCausal ? "causal" : "full", e.cosine,
                  e.rel_l1);
    }
  }
}

// Repeated runs on the same inputs give bit-identical outputs (no races, deterministic quantizers).
TEST(AttnSm90Determinism, SameInputsSameBits) {
  SAGE_SKIP_WITHOUT_SM90();
  ProblemSpec spec;
  spec.q_lens = {300, 129};
  spec.hq = 4;
  spec.hkv = 4;
  spec.d = 128;
  spec.mask = MaskMode::kCausal;
  const HostProblem p = MakeProblem(spec);
  Stream stream;
  absl::StatusOr<GpuResult> a = RunGpu(p, DefaultCConfig(SAGE_RECIPE_INT8_QK_FP8_PV), stream);
  absl::StatusOr<GpuResult> b = RunGpu(p, DefaultCConfig(SAGE_RECIPE_INT8_QK_FP8_PV), stream);
  ASSERT_TRUE(a.ok() && b.ok());
  ASSERT_EQ(a->o.size(), b->o.size());
  EXPECT_EQ(0, std::memcmp(a->o.data(), b->o.data(), a->o.size() * sizeof(float)));
  EXPECT_EQ(0, std::memcmp(a->lse.data(), b->lse.data(), a->lse.size() * sizeof(float)));
}

TEST(AttnSm90NonFinite, NonFiniteInputsComeBackNonFinite) {
  SAGE_SKIP_WITHOUT_SM90();
  CheckNonFiniteInputsComeBackNonFinite(DefaultCConfig(SAGE_RECIPE_INT8_QK_FP8_PV));
}

// Configurations the sm90 kernel does not implement are refused with a message, not run wrong.
TEST(AttnSm90Params, UnsupportedConfigsAreRefused) {
  SAGE_SKIP_WITHOUT_SM90();
  ProblemSpec spec;
  spec.q_lens = {10};
  const HostProblem p = MakeProblem(spec);
  Stream stream;
  for (int which = 0; which < 2; ++which) {
    sage_recipe_config_t cfg = DefaultCConfig(SAGE_RECIPE_INT8_QK_FP8_PV);
    if (which == 0) cfg.qk_smoothing = SAGE_SMOOTH_QK;
    if (which == 1) cfg.accumulation = SAGE_ACCUM_FP22_ONLY;
    DeviceProblem dp;
    ASSERT_TRUE(dp.Upload(p, stream.get()).ok());
    sage_attn_params_t prm = dp.Params(p, cfg);
    size_t bytes = 0;
    EXPECT_EQ(sage_attn_workspace_size(&prm, &bytes), SAGE_ERR_UNSUPPORTED);
    EXPECT_NE(std::string(sage_last_error()), "");
    EXPECT_EQ(sage_attn_forward(&prm, stream.sage()), SAGE_ERR_UNSUPPORTED);
  }
}

// Pointer checks: q/k/v must be 16-byte aligned for the quantizers, the stream must not be null, and
// a failed call leaves the library usable.
TEST(AttnSm90Params, MisalignedInputsAndNullStreamAreRefused) {
  SAGE_SKIP_WITHOUT_SM90();
  ProblemSpec spec;
  spec.q_lens = {10};
  const HostProblem p = MakeProblem(spec);
  Stream stream;
  DeviceProblem dp;
  ASSERT_TRUE(dp.Upload(p, stream.get()).ok());
  absl::StatusOr<sage_attn_params_t> params = dp.ParamsWithWorkspace(p, DefaultCConfig(SAGE_RECIPE_INT8_QK_FP8_PV));
  ASSERT_TRUE(params.ok()) << params.status();
  const sage_attn_params_t prm = *params;
  sage_attn_params_t bad = prm;
  bad.k = static_cast<const char*>(prm.k) + 2;
  EXPECT_EQ(sage_attn_forward(&bad, stream.sage()), SAGE_ERR_INVALID_ARGUMENT);
  EXPECT_NE(std::string(sage_last_error()).find("k:"), std::string::npos) << sage_last_error();
  EXPECT_EQ(sage_attn_forward(&prm, nullptr), SAGE_ERR_INVALID_ARGUMENT);
  EXPECT_NE(std::string(sage_last_error()).find("stream"), std::string::npos) << sage_last_error();
  EXPECT_EQ(sage_attn_forward(&prm, stream.sage()), SAGE_OK) << sage_last_error();
  EXPECT_EQ(cudaStreamSynchronize(stream.get()), cudaSuccess);
  EXPECT_STREQ(sage_last_error(), "");
}

}  // namespace
}  // namespace sage::gputest
