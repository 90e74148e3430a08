// Device workspace of one sage_attn_forward call: what the quantizers write and the attention kernels
// read. Shared by every recipe's kernels (attn_sm90 and attn_mma); host and device code alike.
//
// Padding. Every sequence's rows are padded so that tiles restart at each sequence start: Q rows to
// a multiple of kQTileRows (64), K/V rows to a multiple of kKBlockRows (128). Sequence b starts at
//   padded_q_start(b) = round_up(cu_q[b], 64)  + 64·b      (rows of the padded Q space)
//   padded_k_start(b) = round_up(cu_k[b], 128) + 128·b     (rows of the padded K/V space)
// which leaves every sequence at least round_up(len, tile) rows, computable from cu_seqlens alone
// (no host copy). Capacities: round_up(total, tile) + tile·batch. Pad rows are written as zeros
// (quantized 0, scale 1) by the quantizers, so a kernel may read whole tiles.
//
// Tile image ("core-matrix layout"). A tile of R rows × B bytes per row is stored as the exact
// shared-memory image a wgmma K-major operand without swizzle (and ldmatrix) reads: 8-row × 16-byte
// core matrices of 128 contiguous bytes, row groups outermost:
//   byte(r, c) = ((r / 8) · (B / 16) + c / 16) · 128 + (r % 8) · 16 + c % 16
// so a tile is one contiguous blob (one bulk copy), wgmma descriptors use LBO = 128 (next 16 bytes
// along K) and SBO = B / 16 · 128 (next 8 rows), and ldmatrix row addresses are conflict-free.
//
// Buffers (each 256-byte aligned, in this order; absent ones have size 0):
//   q_i8    int8  [Hq ][q_cap / 64 tiles ] tile image 64 × D          (INT8 recipes)
//   q_i4    s4x2  [Hq ][q_cap / 64 tiles ] tile image 64 × D/2        (INT4 recipe; PTX nibble order:
//                                                                     element 2i low nibble of byte i)
//   q_scale f32   [Hq ][q_cap / 64 tiles ][32]  δQ by Q group (below), always 32 per tile
//   q_mean  f32   [Hq ][q_cap / 64 tiles ][D]   q̄ of the tile (SMOOTH_QK only)
//   k_i8    int8  [Hkv][k_cap / 128 blocks] tile image 128 × D
//   k_i4    s4x2  [Hkv][k_cap / 128 blocks] tile image 128 × D/2
//   k_scale f32   [Hkv][k_cap / 128 blocks][4]  δK by K group (below), always 4 per block
//   k_mean  f32   [batch][Hkv][D]               k̄ of the sequence (zeros when smoothing is off)
//   delta_s f32   [Hq ][q_cap / 64 tiles ][ds_cols]  ΔS[tile][key − seq start], in natural units
//                                                    (not × softmax_scale), SMOOTH_QK only;
//                                                    ds_cols = round_up(max_seqlen_k, 128)
//   v_f8    e4m3  [Hkv][k_cap / 128 blocks] tile image D × 128: rows = channels, bytes = tokens,
//                 tokens permuted within each 16 (kVTokenPermutation) so an S accumulator is the
//                 FP8 wgmma/mma A fragment without shuffles.
//   v_scale f32   [batch][Hkv][D]               δV = amax / 448 per (sequence, kv head, channel)
//   v_mean  f32   [batch][Hkv][D]               v̄ (VSMOOTH_MEAN only; V̂ then holds V − v̄)
//   q_kdot  f32   [Hq][q_cap]                   q_row · k̄ (unsmoothed q) for the LSE correction
//   stats   f32   [4][batch][Hkv][stat_chunks][D]  scratch of the K/V statistics pass: partial
//                                                K sums, V sums, V maxima, V minima per chunk of
//                                                kStatsChunkRows keys (then reduced in order)
//
// Scale groups (docs/NUMERICS.md; recipe.h QuantGranularity). The stored index is always the
// per-thread one, and coarser granularities repeat one value over the groups they merge:
//   Q row r of a 64-row tile -> group (r % 64 / 16) · 8 + r % 8   (warp w = r/16 of the warpgroup)
//   K key j of a 128-key block -> group (j % 8) / 2
#pragma once

#include <cstddef>
#include <cstdint>

#if defined(__CUDACC__)
#define SAGE_HD __host__ __device__ __forceinline__
#else
#define SAGE_HD inline
#endif

namespace sage::cuda {

inline constexpr int kQTileRows = 64;    // one warpgroup's wgmma M tile (4 warps × 16 rows).
inline constexpr int kKBlockRows = 128;  // keys per K/V block: the wgmma N of Q·Kᵀ and K of P·V.
inline constexpr int kQGroupsPerTile = 32;
inline constexpr int kKGroupsPerBlock = 4;
inline constexpr int kCoreRows = 8;      // a core matrix: 8 rows × 16 bytes.
inline constexpr int kCoreBytes = 16;
inline constexpr float kFp8Max = 448.0f;
inline constexpr size_t kWorkspaceAlign = 256;
inline constexpr int kStatsChunkRows = 512;  // keys per partial-statistics block (deterministic sums)

SAGE_HD int64_t RoundUp(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

SAGE_HD int64_t PaddedQStart(const int32_t* cu_q, int b) { return RoundUp(cu_q[b], kQTileRows) + int64_t{kQTileRows} * b; }
SAGE_HD int64_t PaddedKStart(const int32_t* cu_k, int b) { return RoundUp(cu_k[b], kKBlockRows) + int64_t{kKBlockRows} * b; }

// Byte offset of (row, byte) inside a tile image whose rows are row_bytes long.
SAGE_HD int TileImageOffset(int row, int byte, int row_bytes) {
  return ((row / kCoreRows) * (row_bytes / kCoreBytes) + byte / kCoreBytes) * (kCoreRows * kCoreBytes) +
         (row % kCoreRows) * kCoreBytes + byte % kCoreBytes;
}

SAGE_HD int QScaleGroup(int row_in_tile) { return (row_in_tile % kQTileRows / 16) * 8 + row_in_tile % 8; }
SAGE_HD int KScaleGroup(int key_in_block) { return (key_in_block % 8) / 2; }

// Position of key j (0..15) of a 16-key slab in V̂'s permuted token order: positions 4t..4t+3 hold
// keys 2t, 2t+1, 8+2t, 9+2t (the columns one accumulator thread holds), i.e. the order
// [0,1,8,9, 2,3,10,11, 4,5,12,13, 6,7,14,15].
SAGE_HD int VTokenPosition(int key_in_16) {
  return key_in_16 < 8 ? (key_in_16 / 2) * 4 + key_in_16 % 2 : ((key_in_16 - 8) / 2) * 4 + 2 + key_in_16 % 2;
}

struct WorkspaceShape {
  int64_t total_q = 0, total_k = 0;
  int batch = 0, num_q_heads = 0, num_kv_heads = 0, head_dim = 0;
  int max_seqlen_k = 0;
  bool int8_qk = true;    // INT8 Q/K images (else INT4)
  bool fp8_v = true;      // V̂ + δV (else V stays in the caller's buffer)
  bool smooth_q = false;  // q_mean + delta_s
  bool smooth_v = false;  // v_mean
};

struct WorkspaceLayout {
  int64_t q_cap = 0;        // padded Q rows
  int64_t k_cap = 0;        // padded K/V rows
  int64_t q_tiles = 0;      // q_cap / 64
  int64_t k_blocks = 0;     // k_cap / 128
  int64_t ds_cols = 0;
  int64_t stat_chunks = 0;  // ceil(max_seqlen_k / kStatsChunkRows)
  // Byte offsets from the workspace base; size_* in bytes (0 = absent).
  size_t q_i8 = 0, q_i4 = 0, q_scale = 0, q_mean = 0, k_i8 = 0, k_i4 = 0, k_scale = 0, k_mean = 0,
         delta_s = 0, v_f8 = 0, v_scale = 0, v_mean = 0, q_kdot = 0, stats = 0;
  size_t size_q_i8 = 0, size_q_i4 = 0, size_q_scale = 0, size_q_mean = 0, size_k_i8 = 0, size_k_i4 = 0,
         size_k_scale = 0, size_k_mean = 0, size_delta_s = 0, size_v_f8 = 0, size_v_scale = 0, size_v_mean = 0,
         size_q_kdot = 0, size_stats = 0;
  size_t total_bytes = 0;
};

inline WorkspaceLayout ComputeWorkspaceLayout(const WorkspaceShape& s) {
  WorkspaceLayout l;
  l.q_cap = RoundUp(s.total_q, kQTileRows) + int64_t{kQTileRows} * s.batch;
  l.k_cap = RoundUp(s.total_k, kKBlockRows) + int64_t{kKBlockRows} * s.batch;
  l.q_tiles = l.q_cap / kQTileRows;
  l.k_blocks = l.k_cap / kKBlockRows;
  l.ds_cols = RoundUp(s.max_seqlen_k, kKBlockRows);
  l.stat_chunks = (s.max_seqlen_k + kStatsChunkRows - 1) / kStatsChunkRows;
  const size_t hq = static_cast<size_t>(s.num_q_heads), hkv = static_cast<size_t>(s.num_kv_heads);
  const size_t d = static_cast<size_t>(s.head_dim), f = sizeof(float);
  size_t off = 0;
  auto place = [&](size_t& offset, size_t& size, size_t bytes) {
    offset = off;
    size = bytes;
    off += static_cast<size_t>(RoundUp(static_cast<int64_t>(bytes), kWorkspaceAlign));
  };
  place(l.q_i8, l.size_q_i8, s.int8_qk ? hq * l.q_cap * d : 0);
  place(l.q_i4, l.size_q_i4, s.int8_qk ? 0 : hq * l.q_cap * d / 2);
  place(l.q_scale, l.size_q_scale, hq * l.q_tiles * kQGroupsPerTile * f);
  place(l.q_mean, l.size_q_mean, s.smooth_q ? hq * l.q_tiles * d * f : 0);
  place(l.k_i8, l.size_k_i8, s.int8_qk ? hkv * l.k_cap * d : 0);
  place(l.k_i4, l.size_k_i4, s.int8_qk ? 0 : hkv * l.k_cap * d / 2);
  place(l.k_scale, l.size_k_scale, hkv * l.k_blocks * kKGroupsPerBlock * f);
  place(l.k_mean, l.size_k_mean, static_cast<size_t>(s.batch) * hkv * d * f);
  place(l.delta_s, l.size_delta_s, s.smooth_q ? hq * l.q_tiles * static_cast<size_t>(l.ds_cols) * f : 0);
  place(l.v_f8, l.size_v_f8, s.fp8_v ? hkv * l.k_cap * d : 0);
  place(l.v_scale, l.size_v_scale, s.fp8_v ? static_cast<size_t>(s.batch) * hkv * d * f : 0);
  place(l.v_mean, l.size_v_mean, s.smooth_v ? static_cast<size_t>(s.batch) * hkv * d * f : 0);
  place(l.q_kdot, l.size_q_kdot, hq * l.q_cap * f);
  place(l.stats, l.size_stats, 4 * static_cast<size_t>(s.batch) * hkv * l.stat_chunks * d * f);
  l.total_bytes = off;
  return l;
}

// Typed device pointers into one workspace (null where absent), passed inside kernel params.
struct WorkspaceView {
  int8_t* q_i8 = nullptr;
  uint8_t* q_i4 = nullptr;
  float* q_scale = nullptr;
  float* q_mean = nullptr;
  int8_t* k_i8 = nullptr;
  uint8_t* k_i4 = nullptr;
  float* k_scale = nullptr;
  float* k_mean = nullptr;
  float* delta_s = nullptr;
  uint8_t* v_f8 = nullptr;
  float* v_scale = nullptr;
  float* v_mean = nullptr;
  float* q_kdot = nullptr;
  float* stats = nullptr;
  int64_t q_cap = 0, k_cap = 0, q_tiles = 0, k_blocks = 0, ds_cols = 0, stat_chunks = 0;
};

inline WorkspaceView MakeWorkspaceView(void* base, const WorkspaceLayout& l) {
  auto* b = static_cast<unsigned char*>(base);
  auto at = [&](size_t off, size_t size) -> unsigned char* { return size ? b + off : nullptr; };
  WorkspaceView v;
  v.q_i8 = reinterpret_cast<int8_t*>(at(l.q_i8, l.size_q_i8));
  v.q_i4 = at(l.q_i4, l.size_q_i4);
  v.q_scale = reinterpret_cast<float*>(at(l.q_scale, l.size_q_scale));
  v.q_mean = reinterpret_cast<float*>(at(l.q_mean, l.size_q_mean));
  v.k_i8 = reinterpret_cast<int8_t*>(at(l.k_i8, l.size_k_i8));
  v.k_i4 = at(l.k_i4, l.size_k_i4);
  v.k_scale = reinterpret_cast<float*>(at(l.k_scale, l.size_k_scale));
  v.k_mean = reinterpret_cast<float*>(at(l.k_mean, l.size_k_mean));
  v.delta_s = reinterpret_cast<float*>(at(l.delta_s, l.size_delta_s));
  v.v_f8 = at(l.v_f8, l.size_v_f8);
  v.v_scale = reinterpret_cast<float*>(at(l.v_scale, l.size_v_scale));
  v.v_mean = reinterpret_cast<float*>(at(l.v_mean, l.size_v_mean));
  v.q_kdot = reinterpret_cast<float*>(at(l.q_kdot, l.size_q_kdot));
  v.stats = reinterpret_cast<float*>(at(l.stats, l.size_stats));
  v.q_cap = l.q_cap;
  v.k_cap = l.k_cap;
  v.q_tiles = l.q_tiles;
  v.k_blocks = l.k_blocks;
  v.ds_cols = l.ds_cols;
  v.stat_chunks = l.stat_chunks;
  return v;
}

// Element addressing helpers (global padded row -> tile and row in tile).
SAGE_HD int64_t QImageByte(int64_t head, int64_t padded_row, int byte, int row_bytes, int64_t q_cap) {
  return (head * q_cap + padded_row / kQTileRows * kQTileRows) * row_bytes +
         TileImageOffset(static_cast<int>(padded_row % kQTileRows), byte, row_bytes);
}
SAGE_HD int64_t KImageByte(int64_t head, int64_t padded_row, int byte, int row_bytes, int64_t k_cap) {
  return (head * k_cap + padded_row / kKBlockRows * kKBlockRows) * row_bytes +
         TileImageOffset(static_cast<int>(padded_row % kKBlockRows), byte, row_bytes);
}
// V̂ byte of (padded token row, channel): block image D × 128 with permuted token positions.
SAGE_HD int64_t VImageByte(int64_t head, int64_t padded_row, int channel, int head_dim, int64_t k_cap) {
  const int key = static_cast<int>(padded_row % kKBlockRows);
  const int pos = key / 16 * 16 + VTokenPosition(key % 16);
  return (head * k_cap + padded_row / kKBlockRows * kKBlockRows) * head_dim +
         TileImageOffset(channel, pos, kKBlockRows);
}

}  // namespace sage::cuda
