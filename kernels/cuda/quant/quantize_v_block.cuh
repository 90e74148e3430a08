// One 128-token block of V -> FP8 E4M3 tile image with the P·V operand layout. A device function so
// that the per-tensor kernel (quantize_kv.cu) and the one-launch Q/K/V kernel (quantize_qkv.cu) run
// the same code.
#pragma once

#include <cuda_runtime.h>

#include <cfloat>

#include "kernels/cuda/common/ptx_sm90.cuh"
#include "kernels/cuda/quant/quant_common.cuh"
#include "kernels/cuda/quant/quantize.h"

namespace sage::cuda {

// V̂ = e4m3((v − v̄) · (448 / amax)) for one 128-token block of one (sequence, kv head), written as
// the D × 128 tile image with permuted token order.
template <int D>
struct VBlockSmem {
  uint32_t tile[kKBlockRows][D / 2 + 1];  // raw 16-bit pairs; odd word stride
  float inv[D], mean[D];
};

// Block `blk` of kv head `h` of sequence `b`, by a block of kQuantThreads threads; blocks past the
// sequence's end return at once. Needs the K/V statistics pass (stats and v_mean) to have run.
template <bool kBf16, int D>
__device__ __forceinline__ void QuantizeVBlock(const QuantParams& p, int blk, int h, int b, VBlockSmem<D>& smem) {
  constexpr int kThreads = kQuantThreads;
  const int start = p.cu_k[b], len = p.cu_k[b + 1] - start;
  if (blk * kKBlockRows >= len) return;
  auto& tile = smem.tile;
  float* const inv = smem.inv;
  float* const mean = smem.mean;
  const int64_t sb = (int64_t{b} * p.num_kv_heads + h) * D;
  // δV = amax/448 was stored; the quantizer needs 448/amax with amax itself, recomputed from the
  // stats exactly as the finalize kernel did (no round trip through δV).
  for (int c = threadIdx.x; c < D; c += kThreads) {
    const int len_chunks = (len + kStatsChunkRows - 1) / kStatsChunkRows;
    const int64_t per_stat = int64_t{p.batch} * p.num_kv_heads * p.ws.stat_chunks * D;
    const int64_t base = (int64_t{b} * p.num_kv_heads + h) * p.ws.stat_chunks * D + c;
    float mx = -FLT_MAX, mn = FLT_MAX;
    for (int i = 0; i < len_chunks; ++i) {
      mx = NanMax(mx, p.ws.stats[2 * per_stat + base + int64_t{i} * D]);
      mn = NanMin(mn, p.ws.stats[3 * per_stat + base + int64_t{i} * D]);
    }
    const float vm = p.ws.v_mean ? p.ws.v_mean[sb + c] : 0.f;
    const float amax = NanMax(fabsf(__fsub_rn(mx, vm)), fabsf(__fsub_rn(mn, vm)));
    inv[c] = __fdiv_rn(kFp8Max, SafeAmax(amax));
    mean[c] = vm;
  }
  const int64_t row_stride = int64_t{p.num_kv_heads} * D;
  LoadRowsToSmem<kKBlockRows, D, kThreads, 8, false>(tile, nullptr, p.v, nullptr,
                                                      (start + int64_t{blk} * kKBlockRows) * row_stride + int64_t{h} * D,
                                                      row_stride, min(kKBlockRows, len - blk * kKBlockRows));
  __syncthreads();
  const int valid = min(kKBlockRows, len - blk * kKBlockRows);
  uint8_t* img = p.ws.v_f8 + (int64_t{h} * p.ws.k_cap + PaddedKStart(p.cu_k, b) + int64_t{blk} * kKBlockRows) * D;
  // item -> (channel c, 16-token slab s); consecutive items write consecutive 16-byte chunks.
  for (int item = threadIdx.x; item < D * (kKBlockRows / 16); item += kThreads) {
    const int c = (item / 64) * 8 + item % 8;
    const int s = (item / 8) % 8;
    uint32_t words[4];
#pragma unroll
    for (int w = 0; w < 4; ++w) {
      float x[4];
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        const int pos = 4 * w + j;
        // inverse of VTokenPosition: positions 4t..4t+3 hold keys 2t, 2t+1, 8+2t, 9+2t
        const int key = (pos / 4) * 2 + (pos % 4 >= 2 ? 8 : 0) + pos % 2;
        const int r = s * 16 + key;
        x[j] = r < valid ? __fmul_rn(__fsub_rn(RawToFloat<kBf16>(tile[r][c / 2], c % 2), mean[c]), inv[c]) : 0.f;
      }
      words[w] = ptx::PackE4M3x4(x[0], x[1], x[2], x[3]);
    }
    *reinterpret_cast<uint4*>(img + TileImageOffset(c, s * 16, kKBlockRows)) =
        make_uint4(words[0], words[1], words[2], words[3]);
  }
}

}  // namespace sage::cuda
