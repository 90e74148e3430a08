#include "kernels/reference/kv_pages.h"

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "kernels/reference/numerics.h"

namespace sage {
namespace {

constexpr int kMaxHeadDim = 256;
constexpr float kInt8Max = 127.0f;
constexpr float kInt4Max = 7.0f;
constexpr int kInt4Bias = 8;            // a nibble holds code + 8 (1..15): unpacking needs no sign extension
constexpr int kInt4HeadDimMultiple = 64;  // Int4NibbleChannel permutes 0..D-1 only for such D

float Scale(float amax, float qmax) { return amax == 0.0f ? 1.0f : amax / qmax; }

// Largest |value| as the largest bit pattern with the sign cleared: non-negative floats order as
// their bits do and every NaN lies above inf, so a NaN anywhere gives a NaN (NanMax's rule)
// without a branch.
float AbsMax(const float* x, size_t n) {
  uint32_t bits = 0;
  for (size_t c = 0; c < n; ++c) bits = std::max(bits, std::bit_cast<uint32_t>(x[c]) & 0x7FFFFFFFu);
  return std::bit_cast<float>(bits);
}

// clamp(round_half_even(x / scale), -qmax, qmax) as a float, 0 for NaN (the NaN scale carries it).
// Branch-free, so the loops calling it vectorize.
inline float Code(float x, float scale, float qmax) {
  float r = RoundHalfEven(x / scale);
  r = r > qmax ? qmax : r;  // written so that a NaN stays NaN (std::clamp's behaviour)
  r = r < -qmax ? -qmax : r;
  return r == r ? r : 0.0f;
}

// Every E4M3 code's value, so the gather's dequantization is a load, not a decode.
const float* Fp8Values() {
  static const auto* table = [] {
    auto* t = new float[256];
    for (int c = 0; c < 256; ++c) t[c] = DecodeFp8E4M3(static_cast<uint8_t>(c));
    return t;
  }();
  return table;
}

// Int4NibbleChannel for every nibble of a head_dim (a multiple of 64), computed once.
const uint8_t* NibbleChannels(int head_dim) {
  static const auto* tables = [] {
    auto* t = new uint8_t[kMaxHeadDim / kInt4HeadDimMultiple][kMaxHeadDim];
    for (int d = kInt4HeadDimMultiple; d <= kMaxHeadDim; d += kInt4HeadDimMultiple) {
      for (int n = 0; n < d; ++n) t[d / kInt4HeadDimMultiple - 1][n] = static_cast<uint8_t>(Int4NibbleChannel(n, d));
    }
    return t;
  }();
  return tables[head_dim / kInt4HeadDimMultiple - 1];
}

// One token-head's INT4 K: a scale per 32-channel group, then the codes packed in nibble order.
void QuantizeInt4K(const float* kf, size_t d, uint8_t* codes, float* scales) {
  float code[kMaxHeadDim];
  for (size_t g = 0; g < d / kInt4GroupChannels; ++g) {
    const float* x = kf + g * kInt4GroupChannels;
    const float scale = Scale(AbsMax(x, kInt4GroupChannels), kInt4Max);
    for (size_t c = 0; c < static_cast<size_t>(kInt4GroupChannels); ++c) {
      code[g * kInt4GroupChannels + c] = Code(x[c], scale, kInt4Max);
    }
    scales[g] = scale;
  }
  const uint8_t* channel = NibbleChannels(static_cast<int>(d));
  for (size_t b = 0; b < d / 2; ++b) {
    const int lo = static_cast<int>(code[channel[2 * b]]) + kInt4Bias;
    const int hi = static_cast<int>(code[channel[2 * b + 1]]) + kInt4Bias;
    codes[b] = static_cast<uint8_t>(lo | hi << 4);
  }
}

}  // namespace

std::string_view KvStorageName(KvStorage storage) {
  switch (storage) {
    case KvStorage::k16Bit: return "KV_STORAGE_16BIT";
    case KvStorage::kInt8KFp8V: return "KV_STORAGE_INT8_K_FP8_V";
    case KvStorage::kInt4KFp8V: return "KV_STORAGE_INT4_K_FP8_V";
  }
  return "KV_STORAGE_UNKNOWN";
}

absl::StatusOr<KvStorage> ParseKvStorage(std::string_view name) {
  std::string names;
  for (KvStorage s : kAllKvStorages) {
    if (KvStorageName(s) == name) return s;
    absl::StrAppend(&names, names.empty() ? "" : ", ", std::string(KvStorageName(s)));
  }
  return absl::InvalidArgumentError(absl::StrCat("unknown KV storage '", std::string(name), "' (expected ", names, ")"));
}

absl::Status CheckKvLayout(KvStorage storage, int head_dim) {
  if (storage == KvStorage::kInt4KFp8V && (head_dim <= 0 || head_dim % kInt4HeadDimMultiple != 0)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "head_dim: ", head_dim, " cannot be stored as ", std::string(KvStorageName(storage)), ", which needs a multiple of ",
        kInt4HeadDimMultiple, " (K scales per ", kInt4GroupChannels,
        " channels, nibbles in tensor-core fragment order; docs/NUMERICS.md, \"Session KV storage\")"));
  }
  return absl::OkStatus();
}

// Nibble n: lane n / (D/4) of the 4 that share an MMA row, then within the lane's D/4 nibbles
// 8-nibble words w, each holding 2 k-steps (ks) × 2 operands (the 2 registers of an m16n8k32
// operand) × 2 neighbouring channels (e).
int Int4NibbleChannel(int n, int head_dim) {
  const int per_lane = head_dim / 4;
  const int lane = n / per_lane, r = n % per_lane;
  const int w = r / 8, j = r % 8;
  const int e = j / 4, m = j % 4;
  const int ks = 2 * w + m / 2, operand = m % 2;
  const int i = ks % 4, set = ks / 4;
  const int group = 2 * set + operand;
  return kInt4GroupChannels * group + 8 * i + 2 * lane + e;
}

int Int4ChannelNibble(int channel, int head_dim) {
  const int group = channel / kInt4GroupChannels, in_group = channel % kInt4GroupChannels;
  const int i = in_group / 8, lane = in_group % 8 / 2, e = in_group % 2;
  const int set = group / 2, operand = group % 2;
  const int ks = 4 * set + i;
  const int w = ks / 2, m = 2 * (ks % 2) + operand;
  const int j = 4 * e + m;
  return lane * (head_dim / 4) + 8 * w + j;
}

size_t KvTokenBytes(KvStorage storage, int heads, int head_dim) {
  return KvPageLayout{storage, DType::kF16, 1, heads, head_dim}.page_bytes();
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
  const size_t d = static_cast<size_t>(layout.head_dim), heads = static_cast<size_t>(layout.heads);
  const size_t k_bytes = layout.k_code_bytes(), k_groups = layout.k_scales_per_token_head();
  auto* k_codes = reinterpret_cast<uint8_t*>(page);
  auto* v_codes = reinterpret_cast<uint8_t*>(page + layout.v_codes_offset());
  auto* k_scales = reinterpret_cast<float*>(page + layout.k_scales_offset());
  auto* v_scales = reinterpret_cast<float*>(page + layout.v_scales_offset());
  const bool int4 = layout.storage == KvStorage::kInt4KFp8V;
  const auto* v16 = static_cast<const uint16_t*>(v);
  float vf[kMaxHeadDim];
  for (size_t th = 0; th < static_cast<size_t>(n) * heads; ++th) {  // one token-head of the input at a time
    const size_t r = layout.row(first + static_cast<int>(th / heads), static_cast<int>(th % heads));
    const float* kf = k_centered + th * d;
    DecodeToFloatBulk(v16 + th * d, layout.dtype, vf, d);
    const float v_scale = Scale(AbsMax(vf, d), kFp8E4M3Max);
    if (int4) {
      QuantizeInt4K(kf, d, k_codes + r * k_bytes, k_scales + r * k_groups);
    } else {
      const float k_scale = Scale(AbsMax(kf, d), kInt8Max);
      // Branch-free, one tensor per loop, so each vectorizes (a decode step encodes on the request
      // path: ~2k values per token).
      int8_t* const kc = reinterpret_cast<int8_t*>(k_codes + r * d);
      for (size_t c = 0; c < d; ++c) kc[c] = static_cast<int8_t>(Code(kf[c], k_scale, kInt8Max));
      k_scales[r] = k_scale;
    }
    uint8_t* const vc = v_codes + r * d;
    for (size_t c = 0; c < d; ++c) vc[c] = EncodeFp8E4M3(vf[c] / v_scale);
    v_scales[r] = v_scale;
  }
}

void EncodeKvTokens(const KvPageLayout& layout, std::byte* page, int first, int n, const void* k, const void* v,
                    std::span<const float> k_mean) {
  const size_t row = static_cast<size_t>(layout.heads) * layout.head_dim;
  if (layout.storage == KvStorage::k16Bit) {
    const size_t bytes = static_cast<size_t>(layout.head_dim) * 2;  // one token-head
    const auto* ks = static_cast<const std::byte*>(k);
    const auto* vs = static_cast<const std::byte*>(v);
    std::byte* const v_page = page + layout.v_codes_offset();
    for (int t = 0; t < n; ++t) {
      for (int h = 0; h < layout.heads; ++h) {
        const size_t from = (static_cast<size_t>(t) * layout.heads + h) * bytes, to = layout.row(first + t, h) * bytes;
        std::memcpy(page + to, ks + from, bytes);
        std::memcpy(v_page + to, vs + from, bytes);
      }
    }
    return;
  }
  std::vector<float> centered(static_cast<size_t>(n) * row);
  CenterKTokens(layout.dtype, k, centered.size(), k_mean, centered.data());
  QuantizeKvTokens(layout, page, first, n, centered.data(), v);
}

void DecodeKvTokens(const KvPageLayout& layout, const std::byte* page, int first, int n, void* k, void* v) {
  const size_t d = static_cast<size_t>(layout.head_dim), heads = static_cast<size_t>(layout.heads), row = heads * d;
  if (layout.storage == KvStorage::k16Bit) {
    const size_t bytes = d * 2;
    auto* ko = static_cast<std::byte*>(k);
    auto* vo = static_cast<std::byte*>(v);
    const std::byte* const v_page = page + layout.v_codes_offset();
    for (int t = 0; t < n; ++t) {
      for (int h = 0; h < layout.heads; ++h) {
        const size_t to = (static_cast<size_t>(t) * heads + h) * bytes, from = layout.row(first + t, h) * bytes;
        std::memcpy(ko + to, page + from, bytes);
        std::memcpy(vo + to, v_page + from, bytes);
      }
    }
    return;
  }
  const size_t k_bytes = layout.k_code_bytes(), k_groups = layout.k_scales_per_token_head();
  const auto* k_codes = reinterpret_cast<const uint8_t*>(page);
  const auto* v_codes = reinterpret_cast<const uint8_t*>(page + layout.v_codes_offset());
  const auto* k_scales = reinterpret_cast<const float*>(page + layout.k_scales_offset());
  const auto* v_scales = reinterpret_cast<const float*>(page + layout.v_scales_offset());
  const bool int4 = layout.storage == KvStorage::kInt4KFp8V;
  const uint8_t* channel = int4 ? NibbleChannels(layout.head_dim) : nullptr;
  // The whole run in float, then one bulk conversion per tensor.
  const size_t values = static_cast<size_t>(n) * row;
  const float* fp8 = Fp8Values();
  thread_local std::vector<float> kf, vf;
  kf.resize(values);
  vf.resize(values);
  for (size_t th = 0; th < static_cast<size_t>(n) * heads; ++th) {  // one token-head of the output at a time
    const size_t r = layout.row(first + static_cast<int>(th / heads), static_cast<int>(th % heads));
    const uint8_t* kc = k_codes + r * k_bytes;
    const float* ks = k_scales + r * k_groups;
    float* ko = kf.data() + th * d;
    if (int4) {
      for (size_t nib = 0; nib < d; ++nib) {
        const int c = channel[nib];
        const int u = (kc[nib / 2] >> (4 * (nib % 2))) & 0xF;
        ko[c] = static_cast<float>(u - kInt4Bias) * ks[c / kInt4GroupChannels];
      }
    } else {
      for (size_t c = 0; c < d; ++c) ko[c] = static_cast<float>(static_cast<int8_t>(kc[c])) * ks[0];
    }
    const float vs = v_scales[r];
    const uint8_t* vc = v_codes + r * d;
    float* vo = vf.data() + th * d;
    for (size_t c = 0; c < d; ++c) vo[c] = fp8[vc[c]] * vs;
  }
  EncodeFromFloatBulk(kf.data(), k, values, layout.dtype);
  EncodeFromFloatBulk(vf.data(), v, values, layout.dtype);
}

}  // namespace sage
