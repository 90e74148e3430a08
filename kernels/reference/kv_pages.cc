#include "kernels/reference/kv_pages.h"

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstring>
#include <vector>

#include "kernels/reference/numerics.h"

namespace sage {
namespace {

constexpr int kMaxHeadDim = 256;
constexpr float kInt8Max = 127.0f;

float Scale(float amax, float qmax) { return amax == 0.0f ? 1.0f : amax / qmax; }

// Every E4M3 code's value, so the gather's dequantization is a load, not a decode.
const float* Fp8Values() {
  static const auto* table = [] {
    auto* t = new float[256];
    for (int c = 0; c < 256; ++c) t[c] = DecodeFp8E4M3(static_cast<uint8_t>(c));
    return t;
  }();
  return table;
}

}  // namespace

size_t KvTokenBytes(KvStorage storage, int heads, int head_dim) {
  const size_t d = static_cast<size_t>(head_dim), h = static_cast<size_t>(heads);
  return storage == KvStorage::k16Bit ? 4 * d * h : (2 * d + 2 * sizeof(float)) * h;
}

void CenterKTokens(DType dtype, const void* k, size_t values, std::span<const float> k_mean, float* out) {
  DecodeToFloatBulk(static_cast<const uint16_t*>(k), dtype, out, values);
  const size_t row = k_mean.size();
  for (size_t at = 0; at < values; at += row) {
    for (size_t c = 0; c < row; ++c) out[at + c] -= k_mean[c];
  }
}

void QuantizeKvTokens(const KvPageLayout& layout, std::byte* page, int first, int n, const float* k_centered,
                      const void* v) {
  const size_t d = static_cast<size_t>(layout.head_dim), row = static_cast<size_t>(layout.heads) * d;
  const size_t at = static_cast<size_t>(first) * row;  // values before the first token
  auto* k_codes = reinterpret_cast<int8_t*>(page) + at;
  auto* v_codes = reinterpret_cast<uint8_t*>(page + layout.codes_per_tensor()) + at;
  auto* k_scales = reinterpret_cast<float*>(page + 2 * layout.codes_per_tensor()) + static_cast<size_t>(first) * layout.heads;
  auto* v_scales = k_scales + static_cast<size_t>(layout.page_tokens) * layout.heads;
  const auto* v16 = static_cast<const uint16_t*>(v);
  float vf[kMaxHeadDim];
  for (size_t th = 0; th < static_cast<size_t>(n) * layout.heads; ++th) {  // one token-head at a time
    const float* kf = k_centered + th * d;
    DecodeToFloatBulk(v16 + th * d, layout.dtype, vf, d);
    // Largest |value| as the largest bit pattern with the sign cleared: non-negative floats order
    // as their bits do and every NaN lies above inf, so a NaN anywhere gives a NaN (NanMax's rule)
    // without a branch.
    uint32_t k_bits = 0, v_bits = 0;
    for (size_t c = 0; c < d; ++c) k_bits = std::max(k_bits, std::bit_cast<uint32_t>(kf[c]) & 0x7FFFFFFFu);
    for (size_t c = 0; c < d; ++c) v_bits = std::max(v_bits, std::bit_cast<uint32_t>(vf[c]) & 0x7FFFFFFFu);
    const float k_amax = std::bit_cast<float>(k_bits), v_amax = std::bit_cast<float>(v_bits);
    const float k_scale = Scale(k_amax, kInt8Max), v_scale = Scale(v_amax, kFp8E4M3Max);
    // Branch-free, one tensor per loop, so each vectorizes (a decode step encodes on the request
    // path: ~2k values per token).
    int8_t* const kc = k_codes + th * d;
    uint8_t* const vc = v_codes + th * d;
    for (size_t c = 0; c < d; ++c) {
      float r = RoundHalfEven(kf[c] / k_scale);
      r = r > kInt8Max ? kInt8Max : r;  // written so that a NaN stays NaN (std::clamp's behaviour)
      r = r < -kInt8Max ? -kInt8Max : r;
      kc[c] = static_cast<int8_t>(r == r ? r : 0.0f);  // NaN: code 0, the NaN scale carries it
    }
    for (size_t c = 0; c < d; ++c) vc[c] = EncodeFp8E4M3(vf[c] / v_scale);
    k_scales[th] = k_scale;
    v_scales[th] = v_scale;
  }
}

void EncodeKvTokens(const KvPageLayout& layout, std::byte* page, int first, int n, const void* k, const void* v,
                    std::span<const float> k_mean) {
  const size_t row = static_cast<size_t>(layout.heads) * layout.head_dim;
  const size_t at = static_cast<size_t>(first) * row;  // values before the first token
  if (layout.storage == KvStorage::k16Bit) {
    std::memcpy(page + at * 2, k, static_cast<size_t>(n) * row * 2);
    std::memcpy(page + layout.codes_per_tensor() + at * 2, v, static_cast<size_t>(n) * row * 2);
    return;
  }
  std::vector<float> centered(static_cast<size_t>(n) * row);
  CenterKTokens(layout.dtype, k, centered.size(), k_mean, centered.data());
  QuantizeKvTokens(layout, page, first, n, centered.data(), v);
}

void DecodeKvTokens(const KvPageLayout& layout, const std::byte* page, int first, int n, void* k, void* v) {
  const size_t d = static_cast<size_t>(layout.head_dim), row = static_cast<size_t>(layout.heads) * d;
  const size_t at = static_cast<size_t>(first) * row;
  if (layout.storage == KvStorage::k16Bit) {
    std::memcpy(k, page + at * 2, static_cast<size_t>(n) * row * 2);
    std::memcpy(v, page + layout.codes_per_tensor() + at * 2, static_cast<size_t>(n) * row * 2);
    return;
  }
  const auto* k_codes = reinterpret_cast<const int8_t*>(page) + at;
  const auto* v_codes = reinterpret_cast<const uint8_t*>(page + layout.codes_per_tensor()) + at;
  const auto* k_scales =
      reinterpret_cast<const float*>(page + 2 * layout.codes_per_tensor()) + static_cast<size_t>(first) * layout.heads;
  const auto* v_scales = k_scales + static_cast<size_t>(layout.page_tokens) * layout.heads;
  // The whole run in float, then one bulk conversion per tensor.
  const size_t values = static_cast<size_t>(n) * row;
  const float* fp8 = Fp8Values();
  thread_local std::vector<float> kf, vf;
  kf.resize(values);
  vf.resize(values);
  for (size_t th = 0; th < static_cast<size_t>(n) * layout.heads; ++th) {
    const float ks = k_scales[th], vs = v_scales[th];
    const int8_t* kc = k_codes + th * d;
    const uint8_t* vc = v_codes + th * d;
    float* ko = kf.data() + th * d;
    float* vo = vf.data() + th * d;
    for (size_t c = 0; c < d; ++c) {
      ko[c] = static_cast<float>(kc[c]) * ks;
      vo[c] = fp8[vc[c]] * vs;
    }
  }
  EncodeFromFloatBulk(kf.data(), k, values, layout.dtype);
  EncodeFromFloatBulk(vf.data(), v, values, layout.dtype);
}

}  // namespace sage
