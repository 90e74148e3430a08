#include "kernels/reference/oracle.h"

#include <cmath>
#include <limits>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/reference/numerics.h"
#include "kernels/reference/synthetic_data.h"

namespace sage {
namespace {

// Textbook attention for one sequence and one head: full score matrix, explicit mask matrix.
struct Naive {
  std::vector<double> o;  // [q_len][d]
  std::vector<double> lse;
};
Naive NaiveAttention(const std::vector<float>& q, const std::vector<float>& k, const std::vector<float>& v,
                     int q_len, int k_len, int d, bool causal, double scale) {
  Naive r;
  r.o.assign(static_cast<size_t>(q_len) * d, 0.0);
  r.lse.assign(q_len, -std::numeric_limits<double>::infinity());
  for (int i = 0; i < q_len; ++i) {
    std::vector<double> s(k_len);
    std::vector<bool> allowed(k_len);
    for (int j = 0; j < k_len; ++j) {
      allowed[j] = !causal || (j - (k_len - q_len) <= i);
      double dot = 0.0;
      for (int c = 0; c < d; ++c) dot += static_cast<double>(q[i * d + c]) * k[j * d + c];
      s[j] = dot * scale;
    }
    double sum = 0.0;
    for (int j = 0; j < k_len; ++j) sum += allowed[j] ? std::exp(s[j]) : 0.0;  // small inputs: no overflow
    if (sum == 0.0) continue;
    r.lse[i] = std::log(sum);
    for (int j = 0; j < k_len; ++j) {
      if (!allowed[j]) continue;
      const double p = std::exp(s[j]) / sum;
      for (int c = 0; c < d; ++c) r.o[i * d + c] += p * v[j * d + c];
    }
  }
  return r;
}

// Pulls one (sequence, head) slice out of a packed tensor.
std::vector<float> Slice(const TensorView& t, int first, int len, int head) {
  const std::vector<float> all = ToFloatVector(t);
  std::vector<float> out;
  for (int i = first; i < first + len; ++i) {
    const float* row = &all[(static_cast<size_t>(i) * t.heads + head) * t.head_dim];
    out.insert(out.end(), row, row + t.head_dim);
  }
  return out;
}

void ExpectMatchesNaive(const ProblemSpec& spec) {
  SyntheticProblem problem(spec);
  const AttnInput& in = problem.input();
  auto exact = AttendExact(in);
  ASSERT_TRUE(exact.ok()) << exact.status();
  const int d = spec.head_dim;
  const int group = spec.q_heads / spec.kv_heads;
  for (size_t b = 0; b < spec.q_lens.size(); ++b) {
    for (int h = 0; h < spec.q_heads; ++h) {
      const int q0 = in.cu_seqlens_q[b], k0 = in.cu_seqlens_k[b];
      const Naive naive = NaiveAttention(Slice(in.q, q0, spec.q_lens[b], h), Slice(in.k, k0, spec.k_lens[b], h / group),
                                         Slice(in.v, k0, spec.k_lens[b], h / group), spec.q_lens[b], spec.k_lens[b], d,
                                         spec.mask == MaskMode::kCausal, in.scale());
      for (int i = 0; i < spec.q_lens[b]; ++i) {
        const size_t row = static_cast<size_t>(q0 + i) * spec.q_heads + h;
        if (std::isinf(naive.lse[i])) {
          EXPECT_TRUE(std::isinf(exact->lse[row]) && exact->lse[row] < 0) << "row " << i;
        } else {
          EXPECT_NEAR(exact->lse[row], naive.lse[i], 1e-10);
        }
        for (int c = 0; c < d; ++c) ASSERT_NEAR(exact->o[row * d + c], naive.o[i * d + c], 1e-12) << b << "," << h << "," << i;
      }
    }
  }
}

TEST(Oracle, MatchesNaiveNonCausal) {
  ExpectMatchesNaive({.q_lens = {40}, .k_lens = {70}, .q_heads = 2, .kv_heads = 2, .head_dim = 64});
}

TEST(Oracle, MatchesNaiveCausalGqaVarlen) {
  ExpectMatchesNaive({.q_lens = {17, 64, 5}, .k_lens = {17, 100, 33}, .q_heads = 8, .kv_heads = 2,
                      .head_dim = 64, .mask = MaskMode::kCausal, .dtype = DType::kBF16, .seed = 5});
}

TEST(Oracle, MatchesNaiveMqaFp32) {
  ExpectMatchesNaive({.q_lens = {30, 9}, .k_lens = {12, 50}, .q_heads = 4, .kv_heads = 1, .head_dim = 128,
                      .mask = MaskMode::kCausal, .dtype = DType::kF32, .seed = 6});
}

TEST(Oracle, CausalIsBottomRightAligned) {
  SyntheticProblem p({.q_lens = {4}, .k_lens = {10}, .q_heads = 1, .kv_heads = 1, .head_dim = 64,
                      .mask = MaskMode::kCausal});
  auto causal = AttendExact(p.input());
  ASSERT_TRUE(causal.ok());
  EXPECT_EQ(VisibleKeys(MaskMode::kCausal, 0, 4, 10), 7);
  EXPECT_EQ(VisibleKeys(MaskMode::kCausal, 3, 4, 10), 10);
  // The last query row sees every key, so it equals the non-causal result.
  p.mutable_input().mask = MaskMode::kNone;
  auto full = AttendExact(p.input());
  ASSERT_TRUE(full.ok());
  for (int c = 0; c < 64; ++c) EXPECT_DOUBLE_EQ(causal->o[3 * 64 + c], full->o[3 * 64 + c]);
  EXPECT_NE(causal->o[0], full->o[0]);
}

TEST(Oracle, RowsThatSeeNoKeyAreZeroWithNegInfLse) {
  SyntheticProblem p({.q_lens = {6}, .k_lens = {2}, .q_heads = 1, .kv_heads = 1, .head_dim = 64,
                      .mask = MaskMode::kCausal});
  auto r = AttendExact(p.input());
  ASSERT_TRUE(r.ok());
  for (int i = 0; i < 6; ++i) {
    const bool sees_none = i < 4;  // row i sees keys j <= i - 4
    EXPECT_EQ(std::isinf(r->lse[i]), sees_none) << i;
    if (sees_none) {
      for (int c = 0; c < 64; ++c) EXPECT_EQ(r->o[i * 64 + c], 0.0);
    }
  }
}

TEST(Oracle, LseIsLogOfRowSums) {
  SyntheticProblem p({.q_lens = {8}, .k_lens = {20}, .q_heads = 1, .kv_heads = 1, .head_dim = 64});
  auto r = AttendExact(p.input());
  ASSERT_TRUE(r.ok());
  const std::vector<float> q = ToFloatVector(p.input().q), k = ToFloatVector(p.input().k);
  const double scale = p.input().scale();
  for (int i = 0; i < 8; ++i) {
    double sum = 0.0;
    for (int j = 0; j < 20; ++j) {
      double dot = 0.0;
      for (int c = 0; c < 64; ++c) dot += static_cast<double>(q[i * 64 + c]) * k[j * 64 + c];
      sum += std::exp(dot * scale);
    }
    EXPECT_NEAR(r->lse[i], std::log(sum), 1e-12);
  }
}

}  // namespace
}  // namespace sage
