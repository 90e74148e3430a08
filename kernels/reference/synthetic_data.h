// Seeded synthetic attention problems for tests, benchmarks and the accuracy report. The
// distributions mimic what makes real LLM/DiT attention hard to quantize.
#pragma once

#include <cstdint>
#include <string_view>
#include <vector>

#include "kernels/reference/attention_problem.h"

namespace sage {

enum class Distribution {
  kGaussian,        // q, k, v ~ N(0, 1)
  kKChannelBias,    // K gets a large per-(kv-head, channel) offset shared by all tokens
  kQOutliers,       // a few Q channels are 12x larger (and carry a per-channel offset)
  kVChannelOffset,  // V gets a per-channel offset larger than its spread
  kLlmLike,         // all three at once
};
std::string_view DistributionName(Distribution d);

struct ProblemSpec {
  std::vector<int> q_lens = {256};
  std::vector<int> k_lens = {256};
  int q_heads = 4;
  int kv_heads = 4;
  int head_dim = 128;
  MaskMode mask = MaskMode::kNone;
  LseMode lse = LseMode::kNone;
  DType dtype = DType::kF16;
  Distribution distribution = Distribution::kGaussian;
  uint64_t seed = 1;
};

// Owns the buffers an AttnInput points to. Move-only so the views stay valid.
class SyntheticProblem {
 public:
  explicit SyntheticProblem(const ProblemSpec& spec);
  SyntheticProblem(SyntheticProblem&&) = default;
  SyntheticProblem& operator=(SyntheticProblem&&) = default;
  SyntheticProblem(const SyntheticProblem&) = delete;
  SyntheticProblem& operator=(const SyntheticProblem&) = delete;

  const AttnInput& input() const { return input_; }
  AttnInput& mutable_input() { return input_; }

 private:
  std::vector<uint8_t> q_, k_, v_;
  std::vector<int32_t> cu_q_, cu_k_;
  AttnInput input_;
};

}  // namespace sage
