#include "kernels/reference/quantize.h"

#include <algorithm>
#include <cmath>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "kernels/reference/numerics.h"

namespace sage {
namespace {

// The packed tensor must hold exactly cu.back() tokens of heads x d values, with sane cu_seqlens.
absl::Status CheckPacked(size_t size, int heads, int d, std::span<const int32_t> cu) {
  if (heads <= 0 || d <= 0) return absl::InvalidArgumentError("heads/d: must be > 0");
  if (cu.size() < 2 || cu[0] != 0) return absl::InvalidArgumentError("cu_seqlens: need cu[0] = 0 and batch >= 1");
  for (size_t i = 1; i < cu.size(); ++i) {
    if (cu[i] < cu[i - 1]) return absl::InvalidArgumentError(absl::StrCat("cu_seqlens[", i, "]: decreases"));
  }
  if (size != static_cast<size_t>(cu.back()) * heads * d) {
    return absl::InvalidArgumentError(absl::StrCat("x: size ", size, " != tokens x heads x d"));
  }
  return absl::OkStatus();
}

}  // namespace

int QkMax(QkType t) { return t == QkType::kInt4 ? 7 : 127; }

int QGroupOfRow(QuantGranularity g, int r) {
  switch (g) {
    case QuantGranularity::kPerBlock: return 0;
    case QuantGranularity::kPerWarp: return r / kWarpRows;
    // Rows w·16+g and w·16+g+8 share the accumulator thread, hence one scale.
    case QuantGranularity::kPerThread: return (r / kWarpRows) * 8 + (r % 8);
  }
  return 0;
}

int KGroupOfKey(QuantGranularity g, int j) {
  // Keys 8i+2t and 8i+2t+1 land in thread t's accumulator columns for every n8 tile i.
  return g == QuantGranularity::kPerThread ? (j % 8) / 2 : 0;
}

void ChannelMean(const float* x, int64_t stride, int n, int d, float* mean) {
  std::fill(mean, mean + d, 0.0f);
  for (int i = 0; i < n; ++i) {
    const float* row = x + i * stride;
    for (int c = 0; c < d; ++c) mean[c] += row[c];
  }
  const auto count = static_cast<float>(n);
  for (int c = 0; c < d; ++c) mean[c] /= count;
}

void QuantizeTile(const float* x, int64_t stride, int rows, int d, TileKind kind, QkType type,
                  QuantGranularity g, int8_t* values, float* row_scale) {
  const auto qmax = static_cast<float>(QkMax(type));
  float amax[kMaxGroupsPerTile] = {};
  auto group_of = [&](int i) { return kind == TileKind::kQTile ? QGroupOfRow(g, i) : KGroupOfKey(g, i); };
  for (int i = 0; i < rows; ++i) {
    const float* row = x + i * stride;
    float m = 0.0f;
    for (int c = 0; c < d; ++c) m = NanMax(m, std::fabs(row[c]));
    float& a = amax[group_of(i)];
    a = NanMax(a, m);
  }
  float inv[kMaxGroupsPerTile];
  float scale[kMaxGroupsPerTile];
  for (int k = 0; k < kMaxGroupsPerTile; ++k) {
    const float a = amax[k] == 0.0f ? 1.0f : amax[k];  // an all-zero group keeps zeros exactly
    inv[k] = qmax / a;
    scale[k] = a / qmax;
  }
  for (int i = 0; i < rows; ++i) {
    const float* row = x + i * stride;
    const int grp = group_of(i);
    const float s = inv[grp];
    int8_t* out = values + static_cast<int64_t>(i) * d;
    for (int c = 0; c < d; ++c) {
      const float r = std::clamp(RoundHalfEven(row[c] * s), -qmax, qmax);
      out[c] = static_cast<int8_t>(r == r ? r : 0.0f);  // non-finite input: defined result, no UB cast
    }
    row_scale[i] = scale[grp];
  }
}

void DeltaS(const float* q_mean, const float* k_smoothed, int64_t stride, int n, int d, float* delta_s) {
  for (int j = 0; j < n; ++j) {
    const float* row = k_smoothed + j * stride;
    float acc = 0.0f;
    for (int c = 0; c < d; ++c) acc += q_mean[c] * row[c];
    delta_s[j] = acc;
  }
}

void QuantizeVSlice(const float* v, int64_t stride, int n, int d, const float* mean, uint8_t* codes,
                    int64_t code_stride, float* scale) {
  constexpr int kMaxHeadDim = 256;
  float amax[kMaxHeadDim] = {};
  float inv[kMaxHeadDim];
  for (int t = 0; t < n; ++t) {
    const float* row = v + t * stride;
    for (int c = 0; c < d; ++c) amax[c] = NanMax(amax[c], std::fabs(mean ? row[c] - mean[c] : row[c]));
  }
  for (int c = 0; c < d; ++c) {
    const float a = amax[c] == 0.0f ? 1.0f : amax[c];
    inv[c] = kFp8E4M3Max / a;
    scale[c] = a / kFp8E4M3Max;
  }
  for (int t = 0; t < n; ++t) {
    const float* row = v + t * stride;
    uint8_t* out = codes + t * code_stride;
    for (int c = 0; c < d; ++c) out[c] = EncodeFp8E4M3((mean ? row[c] - mean[c] : row[c]) * inv[c]);
  }
}

std::vector<float> SequenceChannelMeans(std::span<const float> x, int heads, int d,
                                        std::span<const int32_t> cu_seqlens) {
  const int batch = static_cast<int>(cu_seqlens.size()) - 1;
  std::vector<float> means(static_cast<size_t>(std::max(batch, 0)) * heads * d, 0.0f);
  const int64_t stride = static_cast<int64_t>(heads) * d;
  for (int b = 0; b < batch; ++b) {
    const int n = cu_seqlens[b + 1] - cu_seqlens[b];
    if (n <= 0) continue;
    for (int h = 0; h < heads; ++h) {
      ChannelMean(x.data() + cu_seqlens[b] * stride + h * d, stride, n, d,
                  &means[(static_cast<size_t>(b) * heads + h) * d]);
    }
  }
  return means;
}

absl::StatusOr<QkQuantized> QuantizeK(std::span<const float> k, int heads, int d,
                                      std::span<const int32_t> cu_seqlens, QkType type,
                                      QuantGranularity g, QkSmoothing smoothing) {
  if (absl::Status s = CheckPacked(k.size(), heads, d, cu_seqlens); !s.ok()) return s;
  if (type == QkType::kF16) return absl::InvalidArgumentError("type: kF16 is not a quantized type");
  const int64_t stride = static_cast<int64_t>(heads) * d;
  QkQuantized out;
  out.values.resize(k.size());
  out.scales.resize(static_cast<size_t>(cu_seqlens.back()) * heads);
  if (smoothing != QkSmoothing::kNone) out.means = SequenceChannelMeans(k, heads, d, cu_seqlens);
  std::vector<float> block(static_cast<size_t>(kKBlockKeys) * d);
  std::vector<int8_t> qblock(block.size());
  std::vector<float> scale(kKBlockKeys);
  for (size_t b = 0; b + 1 < cu_seqlens.size(); ++b) {
    for (int h = 0; h < heads; ++h) {
      const float* mean = out.means.empty() ? nullptr : &out.means[(b * heads + h) * d];
      for (int start = cu_seqlens[b]; start < cu_seqlens[b + 1]; start += kKBlockKeys) {
        const int n = std::min(kKBlockKeys, cu_seqlens[b + 1] - start);
        for (int j = 0; j < n; ++j) {
          const float* src = k.data() + (start + j) * stride + h * d;
          for (int c = 0; c < d; ++c) block[j * d + c] = mean ? src[c] - mean[c] : src[c];
        }
        QuantizeTile(block.data(), d, n, d, TileKind::kKBlock, type, g, qblock.data(), scale.data());
        for (int j = 0; j < n; ++j) {
          std::copy_n(&qblock[j * d], d, &out.values[(start + j) * stride + h * d]);
          out.scales[static_cast<size_t>(start + j) * heads + h] = scale[j];
        }
      }
    }
  }
  return out;
}

absl::StatusOr<QkQuantized> QuantizeQ(std::span<const float> q, int heads, int d,
                                      std::span<const int32_t> cu_seqlens, QkType type,
                                      QuantGranularity g, QkSmoothing smoothing) {
  if (absl::Status s = CheckPacked(q.size(), heads, d, cu_seqlens); !s.ok()) return s;
  if (type == QkType::kF16) return absl::InvalidArgumentError("type: kF16 is not a quantized type");
  const int64_t stride = static_cast<int64_t>(heads) * d;
  const bool smooth = smoothing == QkSmoothing::kQK;
  QkQuantized out;
  out.values.resize(q.size());
  out.scales.resize(static_cast<size_t>(cu_seqlens.back()) * heads);
  std::vector<float> tile(static_cast<size_t>(kQTileRows) * d);
  std::vector<int8_t> qtile(tile.size());
  std::vector<float> scale(kQTileRows);
  std::vector<float> mean(d);
  for (size_t b = 0; b + 1 < cu_seqlens.size(); ++b) {
    for (int start = cu_seqlens[b]; start < cu_seqlens[b + 1]; start += kQTileRows) {
      const int n = std::min(kQTileRows, cu_seqlens[b + 1] - start);
      for (int h = 0; h < heads; ++h) {
        const float* src = q.data() + start * stride + h * d;
        if (smooth) {
          ChannelMean(src, stride, n, d, mean.data());
          out.means.insert(out.means.end(), mean.begin(), mean.end());
        }
        for (int i = 0; i < n; ++i) {
          for (int c = 0; c < d; ++c) tile[i * d + c] = smooth ? src[i * stride + c] - mean[c] : src[i * stride + c];
        }
        QuantizeTile(tile.data(), d, n, d, TileKind::kQTile, type, g, qtile.data(), scale.data());
        for (int i = 0; i < n; ++i) {
          std::copy_n(&qtile[i * d], d, &out.values[(start + i) * stride + h * d]);
          out.scales[static_cast<size_t>(start + i) * heads + h] = scale[i];
        }
      }
    }
  }
  return out;
}

absl::StatusOr<VQuantized> QuantizeV(std::span<const float> v, int heads, int d,
                                     std::span<const int32_t> cu_seqlens, VSmoothing smoothing) {
  if (absl::Status s = CheckPacked(v.size(), heads, d, cu_seqlens); !s.ok()) return s;
  const int64_t stride = static_cast<int64_t>(heads) * d;
  const int batch = static_cast<int>(cu_seqlens.size()) - 1;
  VQuantized out;
  out.codes.resize(v.size());
  out.scales.resize(static_cast<size_t>(batch) * heads * d);
  out.means = smoothing == VSmoothing::kMean ? SequenceChannelMeans(v, heads, d, cu_seqlens)
                                             : std::vector<float>(out.scales.size(), 0.0f);
  for (int b = 0; b < batch; ++b) {
    for (int h = 0; h < heads; ++h) {
      const size_t slice = (static_cast<size_t>(b) * heads + h) * d;
      const int64_t first = cu_seqlens[b] * stride + h * d;
      QuantizeVSlice(v.data() + first, stride, cu_seqlens[b + 1] - cu_seqlens[b], d,
                     smoothing == VSmoothing::kMean ? &out.means[slice] : nullptr, out.codes.data() + first,
                     stride, &out.scales[slice]);
    }
  }
  return out;
}

}  // namespace sage
