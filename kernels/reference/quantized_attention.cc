#include "kernels/reference/quantized_attention.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

#include "kernels/reference/numerics.h"
#include "kernels/reference/oracle.h"
#include "kernels/reference/quantize.h"

namespace sage {
namespace {

constexpr float kNegInf = -std::numeric_limits<float>::infinity();

int CeilDiv(int a, int b) { return (a + b - 1) / b; }

bool QuantizedQk(const RecipeConfig& c) { return c.qk != QkType::kF16; }
bool SmoothK(const RecipeConfig& c) { return QuantizedQk(c) && c.qk_smoothing != QkSmoothing::kNone; }
bool SmoothQ(const RecipeConfig& c) { return QuantizedQk(c) && c.qk_smoothing == QkSmoothing::kQK; }

// Row-sum of one block's P̃ in key order, rescaling the running sum first.
float UpdateRowSum(float l, float alpha, const float* p, int n) {
  float sum = l * alpha;
  for (int j = 0; j < n; ++j) sum += p[j];
  return sum;
}

// acc[c] += Σ_j p[j] · v[j][c], adding keys one at a time in key order (the order the emulation
// defines). Four keys per pass over acc so each acc element is loaded and stored once per four keys.
void AccumulatePv(const float* p, const float* v, int n, int d, float* acc) {
  int j = 0;
  for (; j + 4 <= n; j += 4) {
    const float p0 = p[j], p1 = p[j + 1], p2 = p[j + 2], p3 = p[j + 3];
    const float* v0 = v + static_cast<size_t>(j) * d;
    const float* v1 = v0 + d;
    const float* v2 = v1 + d;
    const float* v3 = v2 + d;
    for (int c = 0; c < d; ++c) {
      float a = acc[c];
      a += p0 * v0[c];
      a += p1 * v1[c];
      a += p2 * v2[c];
      a += p3 * v3[c];
      acc[c] = a;
    }
  }
  for (; j < n; ++j) {
    const float pj = p[j];
    const float* vj = v + static_cast<size_t>(j) * d;
    for (int c = 0; c < d; ++c) acc[c] += pj * vj[c];
  }
}

}  // namespace

QuantizedAttention::QuantizedAttention(const AttnInput& in, const RecipeConfig& config)
    : in_(in),
      config_(config),
      batch_(in.batch()),
      hq_(in.q.heads),
      hkv_(in.k.heads),
      d_(in.q.head_dim),
      q_(ToFloatVector(in.q)),
      k_(ToFloatVector(in.k)),
      v_(ToFloatVector(in.v)) {
  qk16_ = in.q.dtype == DType::kBF16 ? DType::kBF16 : DType::kF16;
  // Unquantized keeps the input's 16-bit type for P̃/V; the INT8+FP16 recipe always uses fp16.
  pv16_ = (config.qk == QkType::kF16 && in.v.dtype == DType::kBF16) ? DType::kBF16 : DType::kF16;
  tile_offset_.resize(static_cast<size_t>(batch_) + 1, 0);
  for (int b = 0; b < batch_; ++b) {
    const int q_len = in.cu_seqlens_q[b + 1] - in.cu_seqlens_q[b];
    tile_offset_[b + 1] = tile_offset_[b] + CeilDiv(q_len, kQTileRows);
  }
  total_q_tiles_ = tile_offset_.back();
  kv_.resize(static_cast<size_t>(batch_) * hkv_);
}

AttnOutput QuantizedAttention::AllocateOutput() const {
  AttnOutput out;
  out.o.assign(static_cast<size_t>(in_.q.numel()), 0.0f);
  if (in_.lse == LseMode::kNatural) {
    out.lse.assign(static_cast<size_t>(in_.q.tokens) * hq_, kNegInf);
  }
  return out;
}

void QuantizedAttention::PrepareKv(int64_t item) {
  const int b = static_cast<int>(item / hkv_);
  const int h = static_cast<int>(item % hkv_);
  KvSlice& kv = kv_[item];
  const int n = in_.cu_seqlens_k[b + 1] - in_.cu_seqlens_k[b];
  const int blocks = CeilDiv(n, kKBlockKeys);
  const int d = d_;
  const int64_t stride = static_cast<int64_t>(hkv_) * d;
  const float* k = k_.data() + in_.cu_seqlens_k[b] * stride + h * d;
  const float* v = v_.data() + in_.cu_seqlens_k[b] * stride + h * d;
  kv.n = n;

  // K: optional smoothing, then per-block quantization written transposed for the score loop.
  kv.k_mean.assign(d, 0.0f);
  if (SmoothK(config_)) ChannelMean(k, stride, n, d, kv.k_mean.data());
  std::vector<float> smoothed(static_cast<size_t>(n) * d);
  for (int j = 0; j < n; ++j) {
    for (int c = 0; c < d; ++c) smoothed[j * d + c] = k[j * stride + c] - kv.k_mean[c];
  }
  kv.k_t.assign(static_cast<size_t>(blocks) * d * kKBlockKeys, 0.0f);
  kv.k_scale.assign(static_cast<size_t>(blocks) * kKBlockKeys, 1.0f);
  std::vector<int8_t> qblock(static_cast<size_t>(kKBlockKeys) * d);
  for (int blk = 0; blk < blocks; ++blk) {
    const int first = blk * kKBlockKeys;
    const int len = std::min(kKBlockKeys, n - first);
    float* kt = &kv.k_t[static_cast<size_t>(blk) * d * kKBlockKeys];
    if (QuantizedQk(config_)) {
      QuantizeTile(&smoothed[static_cast<size_t>(first) * d], d, len, d, TileKind::kKBlock, config_.qk,
                   config_.granularity, qblock.data(), &kv.k_scale[first]);
      for (int j = 0; j < len; ++j) {
        for (int c = 0; c < d; ++c) kt[c * kKBlockKeys + j] = static_cast<float>(qblock[j * d + c]);
      }
    } else {
      for (int j = 0; j < len; ++j) {
        for (int c = 0; c < d; ++c) kt[c * kKBlockKeys + j] = RoundTo16Bit(k[(first + j) * stride + c], qk16_);
      }
    }
  }
  if (SmoothQ(config_)) {
    kv.k_smooth = std::move(smoothed);
  }

  // V: optional mean removal, then FP8 per channel or 16-bit rounding. Padded to whole blocks.
  kv.v_mean.assign(d, 0.0f);
  if (config_.v_smoothing == VSmoothing::kMean) ChannelMean(v, stride, n, d, kv.v_mean.data());
  kv.v_hat.assign(static_cast<size_t>(blocks) * kKBlockKeys * d, 0.0f);
  kv.v_scale.assign(d, 1.0f);
  if (config_.pv == PvType::kFp8E4M3) {
    std::vector<uint8_t> codes(static_cast<size_t>(n) * d);
    const bool smooth_v = config_.v_smoothing == VSmoothing::kMean;
    QuantizeVSlice(v, stride, n, d, smooth_v ? kv.v_mean.data() : nullptr, codes.data(), d, kv.v_scale.data());
    for (size_t i = 0; i < codes.size(); ++i) kv.v_hat[i] = DecodeFp8E4M3(codes[i]);
  } else {
    for (int j = 0; j < n; ++j) {
      for (int c = 0; c < d; ++c) kv.v_hat[j * d + c] = RoundTo16Bit(v[j * stride + c] - kv.v_mean[c], pv16_);
    }
  }
}

// s[i][j] = Σ_c q_hat[i][c] · K[j][c] over one key block, channel order, fp32. A register tile of
// 4 rows x 8 (SSE) or 16 (AVX) keys accumulates over all channels before it is stored, so each
// transposed-K load feeds four rows. Every lane sums in the same order as a plain loop, so both
// paths give identical bits. With AVX, GCC's auto-vectorizer picks gathers for this loop nest, so
// the tile is written with GCC/Clang vector types; on the SSE2 baseline plain loops vectorize better.
void QuantizedAttention::ComputeScores(const KvSlice& kv, int block, const float* q_hat, int rows,
                                       float* s) const {
  constexpr int kRows = 4;
  const int d = d_;
  const float* kt = &kv.k_t[static_cast<size_t>(block) * d * kKBlockKeys];
  int i = 0;
#if defined(__AVX__)
  constexpr int kLanes = 8;
  using Vec = float __attribute__((vector_size(kLanes * sizeof(float))));
  for (; i + kRows <= rows; i += kRows) {
    const float* q0 = q_hat + static_cast<size_t>(i) * d;
    for (int j0 = 0; j0 < kKBlockKeys; j0 += 2 * kLanes) {
      Vec acc[kRows][2] = {};
      for (int c = 0; c < d; ++c) {
        Vec k0, k1;  // memcpy: the K rows are only float-aligned
        std::memcpy(&k0, kt + c * kKBlockKeys + j0, sizeof(Vec));
        std::memcpy(&k1, kt + c * kKBlockKeys + j0 + kLanes, sizeof(Vec));
        for (int r = 0; r < kRows; ++r) {
          const float a = q0[r * d + c];
          acc[r][0] += a * k0;
          acc[r][1] += a * k1;
        }
      }
      for (int r = 0; r < kRows; ++r) {
        std::memcpy(&s[(i + r) * kKBlockKeys + j0], &acc[r][0], sizeof(Vec));
        std::memcpy(&s[(i + r) * kKBlockKeys + j0 + kLanes], &acc[r][1], sizeof(Vec));
      }
    }
  }
#else
  constexpr int kKeys = 8;
  for (; i + kRows <= rows; i += kRows) {
    const float* q0 = q_hat + static_cast<size_t>(i) * d;
    for (int j0 = 0; j0 < kKBlockKeys; j0 += kKeys) {
      float acc[kRows][kKeys] = {};
      for (int c = 0; c < d; ++c) {
        const float* kr = kt + c * kKBlockKeys + j0;
        for (int r = 0; r < kRows; ++r) {
          const float a = q0[r * d + c];
          for (int j = 0; j < kKeys; ++j) acc[r][j] += a * kr[j];
        }
      }
      for (int r = 0; r < kRows; ++r) {
        for (int j = 0; j < kKeys; ++j) s[(i + r) * kKBlockKeys + j0 + j] = acc[r][j];
      }
    }
  }
#endif
  for (; i < rows; ++i) {
    float* si = s + i * kKBlockKeys;
    std::fill(si, si + kKBlockKeys, 0.0f);
    for (int c = 0; c < d; ++c) {
      const float a = q_hat[i * d + c];
      const float* kr = kt + c * kKBlockKeys;
      for (int j = 0; j < kKBlockKeys; ++j) si[j] += a * kr[j];
    }
  }
}

void QuantizedAttention::AttendTile(int64_t item, AttnOutput* out) const {
  const int64_t tile_global = item / hq_;
  const int h = static_cast<int>(item % hq_);
  const int b = static_cast<int>(std::upper_bound(tile_offset_.begin(), tile_offset_.end(), tile_global) -
                                 tile_offset_.begin() - 1);
  const int tile = static_cast<int>(tile_global - tile_offset_[b]);
  const int kvh = h / (hq_ / hkv_);
  const KvSlice& kv = kv_[static_cast<size_t>(b) * hkv_ + kvh];
  const int d = d_;
  const int q_len = in_.cu_seqlens_q[b + 1] - in_.cu_seqlens_q[b];
  const int k_len = kv.n;
  const int row0 = tile * kQTileRows;
  const int rows = std::min(kQTileRows, q_len - row0);
  const int64_t q_stride = static_cast<int64_t>(hq_) * d;
  const float* q = q_.data() + (in_.cu_seqlens_q[b] + row0) * q_stride + h * d;

  // Q: optional tile-mean smoothing (with ΔS over all keys), then quantization or 16-bit rounding.
  std::vector<float> q_hat(static_cast<size_t>(rows) * d);
  std::vector<float> q_scale(rows, 1.0f);
  std::vector<float> delta_s;
  if (QuantizedQk(config_)) {
    std::vector<float> smoothed(static_cast<size_t>(rows) * d);
    std::vector<float> q_mean(d, 0.0f);
    if (SmoothQ(config_)) {
      ChannelMean(q, q_stride, rows, d, q_mean.data());
      delta_s.assign(static_cast<size_t>(CeilDiv(k_len, kKBlockKeys)) * kKBlockKeys, 0.0f);
      DeltaS(q_mean.data(), kv.k_smooth.data(), d, k_len, d, delta_s.data());
    }
    for (int i = 0; i < rows; ++i) {
      for (int c = 0; c < d; ++c) smoothed[i * d + c] = q[i * q_stride + c] - q_mean[c];
    }
    std::vector<int8_t> values(smoothed.size());
    QuantizeTile(smoothed.data(), d, rows, d, TileKind::kQTile, config_.qk, config_.granularity, values.data(),
                 q_scale.data());
    for (size_t i = 0; i < values.size(); ++i) q_hat[i] = static_cast<float>(values[i]);
  } else {
    for (int i = 0; i < rows; ++i) {
      for (int c = 0; c < d; ++c) q_hat[i * d + c] = RoundTo16Bit(q[i * q_stride + c], qk16_);
    }
  }

  // Per-row state of the online softmax.
  std::vector<int> visible(rows);
  int max_visible = 0;
  for (int i = 0; i < rows; ++i) {
    visible[i] = VisibleKeys(in_.mask, row0 + i, q_len, k_len);
    max_visible = std::max(max_visible, visible[i]);
  }
  std::vector<float> m(rows, kNegInf), l(rows, 0.0f);
  std::vector<float> o(static_cast<size_t>(rows) * d, 0.0f);
  std::vector<float> acc(d), step_sum(d);
  std::vector<float> s(static_cast<size_t>(rows) * kKBlockKeys);
  std::vector<float> p(kKBlockKeys);
  const float log2_scale = in_.scale() * kLog2e;
  const bool fp8 = config_.pv == PvType::kFp8E4M3;
  const bool two_level = config_.accumulation == PvAccumulation::kTwoLevel;
  const bool quantized = QuantizedQk(config_);

  for (int blk = 0; blk < CeilDiv(max_visible, kKBlockKeys); ++blk) {
    const int first = blk * kKBlockKeys;
    ComputeScores(kv, blk, q_hat.data(), rows, s.data());
    for (int i = 0; i < rows; ++i) {
      const int len = std::clamp(visible[i] - first, 0, kKBlockKeys);  // unmasked keys of this block
      if (len == 0) continue;
      float* si = &s[static_cast<size_t>(i) * kKBlockKeys];
      // Dequantize (S = acc·δQ·δK + ΔS), move to the log2 domain, take the block max.
      float block_max = kNegInf;
      for (int j = 0; j < len; ++j) {
        float score = si[j];
        if (quantized) score = score * q_scale[i] * kv.k_scale[first + j];
        if (!delta_s.empty()) score += delta_s[first + j];
        si[j] = score * log2_scale;
        block_max = std::max(block_max, si[j]);
      }
      const float m_new = std::max(m[i], block_max);
      const float alpha = m[i] == kNegInf ? 0.0f : std::exp2(m[i] - m_new);
      m[i] = m_new;
      // FP8: subtracting m' = m - 8.807 scales P̃ so the row max is ≈ 448 (l carries the same factor).
      const float shift = fp8 ? m_new - kFp8POffset : m_new;
      for (int j = 0; j < len; ++j) p[j] = std::exp2(si[j] - shift);
      l[i] = UpdateRowSum(l[i], alpha, p.data(), len);
      float* oi = &o[static_cast<size_t>(i) * d];
      const float* v = &kv.v_hat[static_cast<size_t>(first) * d];
      if (fp8) {
        for (int j = 0; j < len; ++j) p[j] = RoundToFp8E4M3(p[j]);
        // kTwoLevel: a fresh FP22 accumulator per block, promoted into fp32 O. kFp22Only: O itself.
        float* target = two_level ? acc.data() : oi;
        if (two_level) {
          std::fill(acc.begin(), acc.end(), 0.0f);
        } else {
          for (int c = 0; c < d; ++c) oi[c] = TruncateMantissa(oi[c] * alpha, kFp22MantissaBits);
        }
        for (int step = 0; step < len; step += kPvStepKeys) {
          std::fill(step_sum.begin(), step_sum.end(), 0.0f);
          const int step_end = std::min(len, step + kPvStepKeys);
          AccumulatePv(&p[step], v + static_cast<size_t>(step) * d, step_end - step, d, step_sum.data());
          for (int c = 0; c < d; ++c) target[c] = TruncateMantissa(target[c] + step_sum[c], kFp22MantissaBits);
        }
        if (two_level) {
          for (int c = 0; c < d; ++c) oi[c] = oi[c] * alpha + acc[c];
        }
      } else {
        for (int j = 0; j < len; ++j) p[j] = RoundTo16Bit(p[j], pv16_);
        for (int c = 0; c < d; ++c) oi[c] *= alpha;
        AccumulatePv(p.data(), v, len, d, oi);
      }
    }
  }

  // Epilogue: normalize, undo the V scale and mean, write O and LSE.
  const float scale = in_.scale();
  for (int i = 0; i < rows; ++i) {
    const int64_t token = in_.cu_seqlens_q[b] + row0 + i;
    float* dst = &out->o[static_cast<size_t>((token * hq_ + h) * d)];
    if (visible[i] == 0 || l[i] == 0.0f) {
      std::fill(dst, dst + d, 0.0f);
      continue;
    }
    const float inv_l = 1.0f / l[i];
    const float* oi = &o[static_cast<size_t>(i) * d];
    for (int c = 0; c < d; ++c) dst[c] = oi[c] * inv_l * kv.v_scale[c] + kv.v_mean[c];
    if (!out->lse.empty()) {
      // What K smoothing subtracted from every score of the row: q_row · k̄ (unsmoothed q, fp32).
      float bias = 0.0f;
      const float* qr = q + i * q_stride;
      for (int c = 0; c < d; ++c) bias += qr[c] * kv.k_mean[c];
      const double log2_max = static_cast<double>(m[i]) - (fp8 ? static_cast<double>(kFp8POffset) : 0.0);
      const double lse = std::log(static_cast<double>(l[i])) + log2_max * static_cast<double>(kLn2) +
                         static_cast<double>(scale) * static_cast<double>(bias);
      out->lse[static_cast<size_t>(token * hq_ + h)] = static_cast<float>(lse);
    }
  }
}

absl::StatusOr<AttnOutput> AttendQuantized(const AttnInput& in, const RecipeConfig& config) {
  if (absl::Status s = ValidateInput(in); !s.ok()) return s;
  QuantizedAttention attn(in, config);
  for (int64_t i = 0; i < attn.num_kv_items(); ++i) attn.PrepareKv(i);
  AttnOutput out = attn.AllocateOutput();
  for (int64_t i = 0; i < attn.num_q_items(); ++i) attn.AttendTile(i, &out);
  return out;
}

}  // namespace sage
