// One Q or K tile -> INT8/INT4 tile image with per-thread/per-warp/per-block scales (K − k̄, optional
// Q − q̄), and the q·k̄ term of the LSE correction. A device function so that the per-tensor kernel
// (quantize_qk.cu) and the one-launch Q/K/V kernel (quantize_qkv.cu) run the same code.
#pragma once

#include <cuda_runtime.h>

#include "kernels/cuda/quant/quant_common.cuh"
#include "kernels/cuda/quant/quantize.h"

namespace sage::cuda {

// Scale class of a row (which rows share one amax) and of a stored scale slot.
template <bool kIsK>
__device__ __forceinline__ int RowClass(int r, sage_granularity_t g) {
  if constexpr (kIsK) {
    return g == SAGE_GRAN_PER_THREAD ? KScaleGroup(r) : 0;
  } else {
    return g == SAGE_GRAN_PER_THREAD ? QScaleGroup(r) : (g == SAGE_GRAN_PER_WARP ? r / 16 : 0);
  }
}
template <bool kIsK>
__device__ __forceinline__ int SlotClass(int s, sage_granularity_t g) {
  if constexpr (kIsK) {
    return g == SAGE_GRAN_PER_THREAD ? s : 0;
  } else {
    return g == SAGE_GRAN_PER_THREAD ? s : (g == SAGE_GRAN_PER_WARP ? s / 8 : 0);
  }
}

// Shared memory of one Q or K tile (R rows).
template <int R, int D>
struct QkTileSmem {
  uint32_t raw[R][D / 2 + 1];  // raw 16-bit pairs, odd word stride: conflict-free rows
  float kmean[D];
  float qmean[D];
  int amax_cls[32];
};

template <bool kIsK, int D>
using QkTileSmemFor = QkTileSmem<kIsK ? kKBlockRows : kQTileRows, D>;

// Tile `tile` (64 Q rows or 128 K rows) of head `h` of sequence `b`, by a block of kQuantThreads
// threads; blocks past the sequence's end return at once.
template <bool kBf16, int D, bool kIsK, bool kInt4>
__device__ __forceinline__ void QuantizeQKTile(const QuantParams& p, int tile, int h, int b,
                                               QkTileSmemFor<kIsK, D>& smem) {
  constexpr int kThreads = kQuantThreads;
  constexpr int R = kIsK ? kKBlockRows : kQTileRows;
  constexpr int kGroups = kIsK ? kKGroupsPerBlock : kQGroupsPerTile;
  constexpr int kQmax = kInt4 ? 7 : 127;
  constexpr int kRowBytes = kInt4 ? D / 2 : D;
  const int32_t* cu = kIsK ? p.cu_k : p.cu_q;
  const int start = cu[b], len = cu[b + 1] - start;
  if (tile * R >= len) return;
  const int heads = kIsK ? p.num_kv_heads : p.num_q_heads;
  const int hk = kIsK ? h : h / (p.num_q_heads / p.num_kv_heads);

  auto& raw = smem.raw;
  float* const kmean = smem.kmean;
  float* const qmean = smem.qmean;
  int* const amax_cls = smem.amax_cls;

  for (int c = threadIdx.x; c < D; c += kThreads) kmean[c] = p.ws.k_mean[(int64_t{b} * p.num_kv_heads + hk) * D + c];
  if (threadIdx.x < 32) amax_cls[threadIdx.x] = 0;
  const int64_t row_stride = int64_t{heads} * D;
  LoadRowsToSmem<R, D, kThreads, (R * D / 8 / kThreads < 8 ? R * D / 8 / kThreads : 8), false>(
      raw, nullptr, kIsK ? p.k : p.q, nullptr, (start + int64_t{tile} * R) * row_stride + int64_t{h} * D, row_stride,
      min(R, len - tile * R));
  __syncthreads();
  const int valid = min(R, len - tile * R);
  const int64_t padded_row0 = (kIsK ? PaddedKStart(p.cu_k, b) : PaddedQStart(p.cu_q, b)) + int64_t{tile} * R;
  const bool smooth_q = !kIsK && p.smooth_q;
  if (smooth_q) {
    const int64_t t_global = padded_row0 / kQTileRows;
    for (int c = threadIdx.x; c < D; c += kThreads) {
      float s = 0.f;
      for (int r = 0; r < valid; ++r) s = __fadd_rn(s, RawToFloat<kBf16>(raw[r][c / 2], c % 2));
      const float m = __fdiv_rn(s, static_cast<float>(valid));
      qmean[c] = m;
      p.ws.q_mean[(int64_t{h} * p.ws.q_tiles + t_global) * D + c] = m;
    }
    __syncthreads();
  }

  const int r = threadIdx.x;
  float x[D];
  int cls = 0;
  if (r < R) {
    float amax = 0.f, kdot = 0.f;
#pragma unroll
    for (int c = 0; c < D; ++c) {
      const float v = r < valid ? RawToFloat<kBf16>(raw[r][c / 2], c % 2) : 0.f;
      if constexpr (!kIsK) kdot = __fmaf_rn(v, kmean[c], kdot);
      float xc = v;
      if constexpr (kIsK) {
        xc = r < valid ? __fsub_rn(v, kmean[c]) : 0.f;
      } else {
        if (smooth_q && r < valid) xc = __fsub_rn(v, qmean[c]);
      }
      x[c] = xc;
      amax = NanMax(amax, fabsf(xc));
    }
    if constexpr (!kIsK) p.ws.q_kdot[int64_t{h} * p.ws.q_cap + padded_row0 + r] = kdot;
    cls = RowClass<kIsK>(r, p.granularity);
    atomicMax(&amax_cls[cls], __float_as_int(amax));  // amax >= 0: int order == float order
  }
  __syncthreads();
  if (r < R) {
    const float inv = __fdiv_rn(static_cast<float>(kQmax), SafeAmax(__int_as_float(amax_cls[cls])));
    int8_t* img8 = kIsK ? p.ws.k_i8 : p.ws.q_i8;
    uint8_t* img4 = kIsK ? p.ws.k_i4 : p.ws.q_i4;
    const int64_t cap = kIsK ? p.ws.k_cap : p.ws.q_cap;
    unsigned char* tile_base = (kInt4 ? img4 : reinterpret_cast<uint8_t*>(img8)) + (int64_t{h} * cap + padded_row0) * kRowBytes;
#pragma unroll
    for (int chunk = 0; chunk < kRowBytes / 16; ++chunk) {
      uint32_t w[4];
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        uint32_t word = 0;
#pragma unroll
        for (int j = 0; j < 4; ++j) {
          const int byte = chunk * 16 + i * 4 + j;
          uint32_t bv;
          if constexpr (kInt4) {
            const int lo = QuantizeInt(x[2 * byte], inv, kQmax), hi = QuantizeInt(x[2 * byte + 1], inv, kQmax);
            bv = (static_cast<uint32_t>(lo) & 0xFu) | ((static_cast<uint32_t>(hi) & 0xFu) << 4);
          } else {
            bv = static_cast<uint32_t>(QuantizeInt(x[byte], inv, kQmax)) & 0xFFu;
          }
          word |= bv << (8 * j);
        }
        w[i] = word;
      }
      *reinterpret_cast<uint4*>(tile_base + TileImageOffset(r, chunk * 16, kRowBytes)) = make_uint4(w[0], w[1], w[2], w[3]);
    }
  }
  if (threadIdx.x < kGroups) {
    const int s = threadIdx.x;
    const float scale = __fdiv_rn(SafeAmax(__int_as_float(amax_cls[SlotClass<kIsK>(s, p.granularity)])),
                                  static_cast<float>(kQmax));
    float* scales = kIsK ? p.ws.k_scale : p.ws.q_scale;
    const int64_t tiles = kIsK ? p.ws.k_blocks : p.ws.q_tiles;
    scales[(int64_t{h} * tiles + padded_row0 / R) * kGroups + s] = scale;
  }
}

}  // namespace sage::cuda
