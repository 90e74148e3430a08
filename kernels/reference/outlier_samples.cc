#include "kernels/reference/outlier_samples.h"

#include <cstring>
#include <random>

#include "kernels/reference/numerics.h"

namespace sage {
namespace {

// Which channel of every `every` carries the outliers; not 0, so nothing depends on channel order.
constexpr int kOutlierChannelPhase = 3;

// Gaussian [tokens, heads, d] in fp16; channels c with c % every == phase are scaled by `gain`.
std::vector<uint8_t> Generate(std::mt19937_64& rng, int tokens, int heads, int d, float gain, int every) {
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<uint8_t> bytes(static_cast<size_t>(tokens) * heads * d * sizeof(uint16_t));
  size_t i = 0;
  for (int t = 0; t < tokens; ++t) {
    for (int h = 0; h < heads; ++h) {
      for (int c = 0; c < d; ++c, ++i) {
        const float g = (every > 0 && c % every == kOutlierChannelPhase) ? gain : 1.0f;
        const uint16_t half = EncodeFp16(g * normal(rng));
        std::memcpy(&bytes[i * sizeof(uint16_t)], &half, sizeof(uint16_t));
      }
    }
  }
  return bytes;
}

}  // namespace

OutlierSample::OutlierSample(const OutlierSampleSpec& spec) {
  std::mt19937_64 rng(spec.seed);
  const int every = spec.outlier_channel_every;
  q_ = Generate(rng, spec.tokens, spec.q_heads, spec.head_dim, 1.0f / spec.k_outlier_gain, every);
  k_ = Generate(rng, spec.tokens, spec.kv_heads, spec.head_dim, spec.k_outlier_gain, every);
  v_ = Generate(rng, spec.tokens, spec.kv_heads, spec.head_dim, 1.0f, 0);
  cu_ = {0, spec.tokens};
  input_.q = TensorView{DType::kF16, q_.data(), spec.tokens, spec.q_heads, spec.head_dim};
  input_.k = TensorView{DType::kF16, k_.data(), spec.tokens, spec.kv_heads, spec.head_dim};
  input_.v = TensorView{DType::kF16, v_.data(), spec.tokens, spec.kv_heads, spec.head_dim};
  input_.cu_seqlens_q = cu_;
  input_.cu_seqlens_k = cu_;
}

}  // namespace sage
