// Q and K -> INT8/INT4 tile images with per-thread/per-warp/per-block scales (K − k̄, optional
// Q − q̄ with its ΔS table), and the q·k̄ term of the LSE correction.
#include <cuda_runtime.h>

#include "kernels/cuda/common/status.cuh"
#include "kernels/cuda/quant/quant_common.cuh"
#include "kernels/cuda/quant/quantize.h"

namespace sage::cuda {
namespace {

constexpr int kThreads = 128;

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

// One tile (64 Q rows or 128 K rows) of one (sequence, head). grid (max tiles, heads, batch).
template <bool kBf16, int D, bool kIsK, bool kInt4>
__global__ void __launch_bounds__(kThreads) QuantizeQKKernel(QuantParams p) {
  constexpr int R = kIsK ? kKBlockRows : kQTileRows;
  constexpr int kGroups = kIsK ? kKGroupsPerBlock : kQGroupsPerTile;
  constexpr int kQmax = kInt4 ? 7 : 127;
  constexpr int kRowBytes = kInt4 ? D / 2 : D;
  const int b = blockIdx.z, h = blockIdx.y, tile = blockIdx.x;
  const int32_t* cu = kIsK ? p.cu_k : p.cu_q;
  const int start = cu[b], len = cu[b + 1] - start;
  if (tile * R >= len) return;
  const int heads = kIsK ? p.num_kv_heads : p.num_q_heads;
  const int hk = kIsK ? h : h / (p.num_q_heads / p.num_kv_heads);

  __shared__ uint32_t raw[R][D / 2 + 1];  // raw 16-bit pairs, odd word stride: conflict-free rows
  __shared__ float kmean[D];
  __shared__ float qmean[D];
  __shared__ int amax_cls[32];

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
      amax = fmaxf(amax, fabsf(xc));
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

// ΔS[tile][key] = q̄_tile · (K − k̄)[key], fp32, natural units. grid (max q tiles, Hq, batch).
template <bool kBf16, int D>
__global__ void __launch_bounds__(kThreads) DeltaSKernel(QuantParams p) {
  const int b = blockIdx.z, h = blockIdx.y, tile = blockIdx.x;
  const int q_len = p.cu_q[b + 1] - p.cu_q[b];
  if (tile * kQTileRows >= q_len) return;
  const int k_start = p.cu_k[b], k_len = p.cu_k[b + 1] - k_start;
  const int hk = h / (p.num_q_heads / p.num_kv_heads);
  const int64_t t_global = PaddedQStart(p.cu_q, b) / kQTileRows + tile;
  __shared__ float qbar[D], kmean[D];
  for (int c = threadIdx.x; c < D; c += kThreads) {
    qbar[c] = p.ws.q_mean[(int64_t{h} * p.ws.q_tiles + t_global) * D + c];
    kmean[c] = p.ws.k_mean[(int64_t{b} * p.num_kv_heads + hk) * D + c];
  }
  __syncthreads();
  float* out = p.ws.delta_s + (int64_t{h} * p.ws.q_tiles + t_global) * p.ws.ds_cols;
  const int cols = static_cast<int>(RoundUp(k_len, kKBlockRows));
  const int64_t row_stride = int64_t{p.num_kv_heads} * D;
  for (int key = threadIdx.x; key < cols; key += kThreads) {
    float acc = 0.f;
    if (key < k_len) {
      const int64_t e = (k_start + key) * row_stride + int64_t{hk} * D;
      for (int c = 0; c < D; c += 2) {
        const float2 kv = Load2<kBf16>(p.k, e + c);
        acc = __fmaf_rn(qbar[c], __fsub_rn(kv.x, kmean[c]), acc);
        acc = __fmaf_rn(qbar[c + 1], __fsub_rn(kv.y, kmean[c + 1]), acc);
      }
    }
    out[key] = acc;
  }
}

template <bool kIsK, bool kBf16, int D>
sage_status_t LaunchQKT(const QuantParams& p, cudaStream_t stream) {
  const int R = kIsK ? kKBlockRows : kQTileRows;
  const int max_len = kIsK ? p.max_seqlen_k : p.max_seqlen_q;
  const int tiles = (max_len + R - 1) / R;
  if (tiles == 0 || p.batch == 0) return SAGE_OK;
  const dim3 grid(tiles, kIsK ? p.num_kv_heads : p.num_q_heads, p.batch);
  if (p.int4) {
    QuantizeQKKernel<kBf16, D, kIsK, true><<<grid, kThreads, 0, stream>>>(p);
  } else {
    QuantizeQKKernel<kBf16, D, kIsK, false><<<grid, kThreads, 0, stream>>>(p);
  }
  SAGE_CHECK_LAUNCH("QuantizeQKKernel");
  return SAGE_OK;
}

template <bool kIsK>
sage_status_t LaunchQK(const QuantParams& p, cudaStream_t stream) {
  if (p.head_dim == 64) return p.bf16 ? LaunchQKT<kIsK, true, 64>(p, stream) : LaunchQKT<kIsK, false, 64>(p, stream);
  if (p.head_dim == 128) return p.bf16 ? LaunchQKT<kIsK, true, 128>(p, stream) : LaunchQKT<kIsK, false, 128>(p, stream);
  return Fail(SAGE_ERR_UNSUPPORTED, "quantize %s: head_dim %d unsupported (64, 128)", kIsK ? "k" : "q", p.head_dim);
}

}  // namespace

sage_status_t LaunchQuantizeK(const QuantParams& p, cudaStream_t stream) { return LaunchQK<true>(p, stream); }
sage_status_t LaunchQuantizeQ(const QuantParams& p, cudaStream_t stream) { return LaunchQK<false>(p, stream); }

sage_status_t LaunchDeltaS(const QuantParams& p, cudaStream_t stream) {
  const int tiles = (p.max_seqlen_q + kQTileRows - 1) / kQTileRows;
  if (tiles == 0 || p.batch == 0) return SAGE_OK;
  const dim3 grid(tiles, p.num_q_heads, p.batch);
  if (p.head_dim == 64) {
    if (p.bf16) DeltaSKernel<true, 64><<<grid, kThreads, 0, stream>>>(p); else DeltaSKernel<false, 64><<<grid, kThreads, 0, stream>>>(p);
  } else if (p.head_dim == 128) {
    if (p.bf16) DeltaSKernel<true, 128><<<grid, kThreads, 0, stream>>>(p); else DeltaSKernel<false, 128><<<grid, kThreads, 0, stream>>>(p);
  } else {
    return Fail(SAGE_ERR_UNSUPPORTED, "delta_s: head_dim %d unsupported (64, 128)", p.head_dim);
  }
  SAGE_CHECK_LAUNCH("DeltaSKernel");
  return SAGE_OK;
}

sage_status_t LaunchQuantizeAll(const QuantParams& p, bool quantize_v, cudaStream_t stream) {
  SAGE_RETURN_IF_ERROR(LaunchKvStats(p, stream));
  SAGE_RETURN_IF_ERROR(LaunchQuantizeK(p, stream));
  SAGE_RETURN_IF_ERROR(LaunchQuantizeQ(p, stream));
  if (quantize_v) SAGE_RETURN_IF_ERROR(LaunchQuantizeV(p, stream));
  if (p.smooth_q) SAGE_RETURN_IF_ERROR(LaunchDeltaS(p, stream));
  return SAGE_OK;
}

}  // namespace sage::cuda
