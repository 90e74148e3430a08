// The SageAttention2 quantizers as standalone functions, so GPU quantizers can be compared against
// them element by element. Definitions: docs/NUMERICS.md. All arithmetic is fp32 in a fixed order.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "absl/status/statusor.h"
#include "kernels/reference/recipe.h"

namespace sage {

inline constexpr int kQTileRows = 64;    // rows per Q tile (one Hopper CTA, 4 warps x 16 rows)
inline constexpr int kKBlockKeys = 128;  // keys per K/V block
inline constexpr int kWarpRows = 16;     // rows of a Q tile owned by one warp
inline constexpr int kMaxGroupsPerTile = 32;  // per-thread Q: 4 warps x 8 row pairs

// 127 for INT8, 7 for INT4 (INT4 uses the symmetric range [-7, 7]).
int QkMax(QkType t);

// Scale group of row r (0-based inside its 64-row Q tile) and of key j (inside its 128-key block).
int QGroupOfRow(QuantGranularity g, int r);
int KGroupOfKey(QuantGranularity g, int j);

// ---- Building blocks over one (sequence, head) slice; row i of x is at x + i * stride. ----

// mean[c] = (Σ_i x[i][c]) / n: fp32 sum in row order, then one fp32 division.
void ChannelMean(const float* x, int64_t stride, int n, int d, float* mean);

enum class TileKind { kQTile, kKBlock };

// Quantizes `rows` rows (<= 64 for kQTile, <= 128 for kKBlock) of one tile with the group map of
// `g`: values[i*d + c] in [-qmax, qmax], row_scale[i] = δ of row i's group.
void QuantizeTile(const float* x, int64_t stride, int rows, int d, TileKind kind, QkType type,
                  QuantGranularity g, int8_t* values, float* row_scale);

// ΔS[j] = Σ_c q_mean[c] · k_smoothed[j][c] in fp32 (channel order), for j < n.
void DeltaS(const float* q_mean, const float* k_smoothed, int64_t stride, int n, int d, float* delta_s);

// FP8 V for one (sequence, head) slice of n tokens (d <= 256): per channel amax of (v - mean) over
// the tokens (mean may be null), scale[c] = amax / 448, codes = e4m3((v - mean) · (448 / amax)).
void QuantizeVSlice(const float* v, int64_t stride, int n, int d, const float* mean, uint8_t* codes,
                    int64_t code_stride, float* scale);

// ---- Whole packed tensors [tokens, heads, D] with varlen cu_seqlens. ----

struct QkQuantized {
  std::vector<int8_t> values;   // [tokens, heads, D], integers in [-qmax, qmax]
  std::vector<float> scales;    // [tokens, heads]: δ of the group the token belongs to
  std::vector<float> means;     // smoothing means; see each function (empty when not smoothed)
};

// Mean per (sequence, head, channel): [batch, heads, D].
std::vector<float> SequenceChannelMeans(std::span<const float> x, int heads, int d,
                                        std::span<const int32_t> cu_seqlens);

// K quantization (128-key blocks per sequence). smoothing != kNone subtracts the per-sequence mean
// first; means = [batch, heads, D].
absl::StatusOr<QkQuantized> QuantizeK(std::span<const float> k, int heads, int d,
                                      std::span<const int32_t> cu_seqlens, QkType type,
                                      QuantGranularity g, QkSmoothing smoothing);

// Q quantization (64-row tiles per sequence). smoothing == kQK subtracts each tile's mean; means =
// [num_tiles, heads, D] with tiles numbered in sequence order (sequence b's first tile follows all
// tiles of sequences < b).
absl::StatusOr<QkQuantized> QuantizeQ(std::span<const float> q, int heads, int d,
                                      std::span<const int32_t> cu_seqlens, QkType type,
                                      QuantGranularity g, QkSmoothing smoothing);

struct VQuantized {
  std::vector<uint8_t> codes;  // [tokens, heads, D] e4m3fn codes of (v - mean) · 448 / amax
  std::vector<float> scales;   // [batch, heads, D]: δV = amax / 448
  std::vector<float> means;    // [batch, heads, D]: v̄ (zeros without V smoothing)
};

// Per-(sequence, head, channel) FP8 quantization of V.
absl::StatusOr<VQuantized> QuantizeV(std::span<const float> v, int heads, int d,
                                     std::span<const int32_t> cu_seqlens, VSmoothing smoothing);

}  // namespace sage
