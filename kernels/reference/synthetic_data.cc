#include "kernels/reference/synthetic_data.h"

#include <cstring>
#include <random>

#include "kernels/reference/numerics.h"

namespace sage {
namespace {

constexpr float kKBiasSigma = 8.0f;      // per-channel K offset, several times the per-token spread
constexpr float kQOutlierGain = 12.0f;   // magnitude of Q's outlier channels
constexpr int kQOutlierEvery = 16;       // every 16th channel is an outlier channel
constexpr float kVOffsetSigma = 4.0f;    // per-channel V offset

bool Has(Distribution d, Distribution part) { return d == part || d == Distribution::kLlmLike; }

std::vector<uint8_t> Encode(const std::vector<float>& x, DType t) {
  std::vector<uint8_t> bytes(x.size() * DTypeSize(t));
  for (size_t i = 0; i < x.size(); ++i) {
    if (t == DType::kF32) {
      std::memcpy(&bytes[i * 4], &x[i], 4);
    } else {
      const uint16_t h = t == DType::kF16 ? EncodeFp16(x[i]) : EncodeBf16(x[i]);
      std::memcpy(&bytes[i * 2], &h, 2);
    }
  }
  return bytes;
}

// Fills [tokens, heads, d] with N(0,1) plus an optional per-(head, channel) offset and channel gain.
std::vector<float> Generate(std::mt19937_64& rng, int64_t tokens, int heads, int d, float offset_sigma,
                            float outlier_gain) {
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<float> offset(static_cast<size_t>(heads) * d, 0.0f);
  if (offset_sigma > 0.0f) {
    for (auto& o : offset) o = offset_sigma * normal(rng);
  }
  std::vector<float> x(static_cast<size_t>(tokens) * heads * d);
  for (int64_t t = 0; t < tokens; ++t) {
    for (int h = 0; h < heads; ++h) {
      for (int c = 0; c < d; ++c) {
        const float gain = (outlier_gain > 0.0f && c % kQOutlierEvery == 3) ? outlier_gain : 1.0f;
        x[(t * heads + h) * d + c] = gain * normal(rng) + offset[static_cast<size_t>(h) * d + c];
      }
    }
  }
  return x;
}

}  // namespace

std::string_view DistributionName(Distribution d) {
  switch (d) {
    case Distribution::kGaussian: return "gaussian";
    case Distribution::kKChannelBias: return "k_channel_bias";
    case Distribution::kQOutliers: return "q_outliers";
    case Distribution::kVChannelOffset: return "v_channel_offset";
    case Distribution::kLlmLike: return "llm_like";
  }
  return "unknown";
}

SyntheticProblem::SyntheticProblem(const ProblemSpec& spec) {
  cu_q_.push_back(0);
  cu_k_.push_back(0);
  for (size_t b = 0; b < spec.q_lens.size() && b < spec.k_lens.size(); ++b) {
    cu_q_.push_back(cu_q_.back() + spec.q_lens[b]);
    cu_k_.push_back(cu_k_.back() + spec.k_lens[b]);
  }
  std::mt19937_64 rng(spec.seed);
  const Distribution dist = spec.distribution;
  const bool q_outliers = Has(dist, Distribution::kQOutliers);
  const std::vector<float> q = Generate(rng, cu_q_.back(), spec.q_heads, spec.head_dim,
                                        q_outliers ? 1.0f : 0.0f, q_outliers ? kQOutlierGain : 0.0f);
  const std::vector<float> k = Generate(rng, cu_k_.back(), spec.kv_heads, spec.head_dim,
                                        Has(dist, Distribution::kKChannelBias) ? kKBiasSigma : 0.0f, 0.0f);
  const std::vector<float> v = Generate(rng, cu_k_.back(), spec.kv_heads, spec.head_dim,
                                        Has(dist, Distribution::kVChannelOffset) ? kVOffsetSigma : 0.0f, 0.0f);
  q_ = Encode(q, spec.dtype);
  k_ = Encode(k, spec.dtype);
  v_ = Encode(v, spec.dtype);
  input_.q = TensorView{spec.dtype, q_.data(), cu_q_.back(), spec.q_heads, spec.head_dim};
  input_.k = TensorView{spec.dtype, k_.data(), cu_k_.back(), spec.kv_heads, spec.head_dim};
  input_.v = TensorView{spec.dtype, v_.data(), cu_k_.back(), spec.kv_heads, spec.head_dim};
  input_.cu_seqlens_q = cu_q_;
  input_.cu_seqlens_k = cu_k_;
  input_.mask = spec.mask;
  input_.lse = spec.lse;
}

}  // namespace sage
