// sage_attn_forward with host copies of cu_seqlens (sageattn.h, host_cu_seqlens_q/k): the call
// stores them in the device arrays itself (in the statistics kernel's parameters for a quantized
// recipe and a small batch, by copy otherwise). The results must be the bits of the ordinary call
// whose device arrays the caller filled, whatever the device arrays held before.
#include <gtest/gtest.h>

#include <cstdint>
#include <string>
#include <vector>

#include "tests/cuda/gpu_test_util.h"

namespace sage::gputest {
namespace {

struct Outputs {
  std::vector<uint16_t> o;
  std::vector<float> lse;
  std::vector<int32_t> cu_q, cu_k;
};

// One forward on a fresh upload; `host_cu`: pass cu_seqlens from the host and poison the device ones.
void Forward(const HostProblem& p, sage_recipe_t recipe, bool host_cu, Outputs& out) {
  Stream stream;
  DeviceProblem dp;
  ASSERT_TRUE(dp.Upload(p, stream.get()).ok());
  absl::StatusOr<sage_attn_params_t> params = dp.ParamsWithWorkspace(p, DefaultCConfig(recipe));
  ASSERT_TRUE(params.ok()) << params.status();
  sage_attn_params_t prm = *params;
  ASSERT_TRUE(dp.o.Poison(stream.get()).ok() && dp.lse.Poison(stream.get()).ok());
  if (host_cu) {
    ASSERT_TRUE(dp.cu_q.Poison(stream.get()).ok() && dp.cu_k.Poison(stream.get()).ok());
    prm.host_cu_seqlens_q = p.cu_q.data();
    prm.host_cu_seqlens_k = p.cu_k.data();
  }
  ASSERT_EQ(sage_attn_forward(&prm, stream.sage()), SAGE_OK) << sage_last_error();
  ASSERT_TRUE(dp.o.Download(&out.o, stream.get()).ok());
  ASSERT_TRUE(dp.lse.Download(&out.lse, stream.get()).ok());
  ASSERT_TRUE(dp.cu_q.Download(&out.cu_q, stream.get()).ok());
  ASSERT_TRUE(dp.cu_k.Download(&out.cu_k, stream.get()).ok());
}

struct Case {
  const char* name;
  sage_recipe_t recipe;
  std::vector<int> q_lens, k_lens;
};

class HostCuSeqlens : public ::testing::TestWithParam<Case> {};

TEST_P(HostCuSeqlens, SameBitsAsDeviceCuSeqlens) {
  SAGE_SKIP_WITHOUT_GPU();
  const Case& c = GetParam();
  ProblemSpec spec;
  spec.q_lens = c.q_lens;
  spec.k_lens = c.k_lens;
  spec.hq = 8;
  spec.hkv = 4;
  spec.seed = 77;
  const HostProblem p = MakeProblem(spec);
  Outputs want, got;
  Forward(p, c.recipe, false, want);
  if (HasFatalFailure()) return;
  Forward(p, c.recipe, true, got);
  if (HasFatalFailure()) return;
  EXPECT_EQ(got.cu_q, p.cu_q);
  EXPECT_EQ(got.cu_k, p.cu_k);
  EXPECT_EQ(got.o, want.o);
  EXPECT_EQ(got.lse, want.lse);
}

std::vector<int> Lens(int n, int base) {
  std::vector<int> lens;
  for (int i = 0; i < n; ++i) lens.push_back(base + 7 * i % 50);
  return lens;
}

INSTANTIATE_TEST_SUITE_P(
    Paths, HostCuSeqlens,
    ::testing::Values(
        // In the statistics kernel's parameters: fused plan, per-tensor plan (keys > 512), the limit.
        Case{"int8_fp16_small", SAGE_RECIPE_INT8_QK_FP16_PV, {128, 40, 1}, {}},
        Case{"int8_fp16_long_keys", SAGE_RECIPE_INT8_QK_FP16_PV, {64, 9}, {700, 1100}},
        Case{"int8_fp16_64_sequences", SAGE_RECIPE_INT8_QK_FP16_PV, Lens(SAGE_INLINE_CU_SEQLENS_MAX, 3), {}},
        // Copied by the call: too many sequences, and a recipe without a quantization pass.
        Case{"int8_fp16_65_sequences", SAGE_RECIPE_INT8_QK_FP16_PV, Lens(SAGE_INLINE_CU_SEQLENS_MAX + 1, 3), {}},
        Case{"unquantized", SAGE_RECIPE_UNQUANTIZED, {128, 40, 1}, {}}),
    [](const ::testing::TestParamInfo<Case>& info) { return std::string(info.param.name); });

// The FP8 P·V recipe (sm_90 only) takes the same path; skipped where it cannot run.
TEST(HostCuSeqlensSm90, SameBitsAsDeviceCuSeqlens) {
  SAGE_SKIP_WITHOUT_GPU();
  int major = 0;
  ASSERT_EQ(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, 0), cudaSuccess);
  if (major != 9) GTEST_SKIP() << "int8_qk_fp8_pv needs sm_90";
  ProblemSpec spec;
  spec.q_lens = {128, 17, 300};
  spec.hq = 8;
  spec.hkv = 8;
  const HostProblem p = MakeProblem(spec);
  Outputs want, got;
  Forward(p, SAGE_RECIPE_INT8_QK_FP8_PV, false, want);
  if (HasFatalFailure()) return;
  Forward(p, SAGE_RECIPE_INT8_QK_FP8_PV, true, got);
  if (HasFatalFailure()) return;
  EXPECT_EQ(got.o, want.o);
  EXPECT_EQ(got.lse, want.lse);
}

TEST(HostCuSeqlensBadParams, OneWithoutTheOtherIsRefused) {
  SAGE_SKIP_WITHOUT_GPU();
  ProblemSpec spec;
  spec.q_lens = {16};
  const HostProblem p = MakeProblem(spec);
  Stream stream;
  DeviceProblem dp;
  ASSERT_TRUE(dp.Upload(p, stream.get()).ok());
  absl::StatusOr<sage_attn_params_t> params = dp.ParamsWithWorkspace(p, DefaultCConfig(SAGE_RECIPE_INT8_QK_FP16_PV));
  ASSERT_TRUE(params.ok()) << params.status();
  sage_attn_params_t prm = *params;
  prm.host_cu_seqlens_q = p.cu_q.data();
  EXPECT_EQ(sage_attn_forward(&prm, stream.sage()), SAGE_ERR_INVALID_ARGUMENT);
  EXPECT_NE(std::string(sage_last_error()).find("host_cu_seqlens_q/k: give both or neither"), std::string::npos)
      << sage_last_error();
}

}  // namespace
}  // namespace sage::gputest
