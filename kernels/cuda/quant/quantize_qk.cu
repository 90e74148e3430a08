// Q and K -> INT8/INT4 tile images with per-thread/per-warp/per-block scales (K − k̄, optional
// Q − q̄ with its ΔS table), and the q·k̄ term of the LSE correction.
#include <cuda_runtime.h>

#include "kernels/cuda/common/status.cuh"
#include "kernels/cuda/quant/quant_common.cuh"
#include "kernels/cuda/quant/quantize.h"
#include "kernels/cuda/quant/quantize_qk_tile.cuh"

namespace sage::cuda {
namespace {

constexpr int kThreads = kQuantThreads;

// One tile (64 Q rows or 128 K rows) of one (sequence, head). grid (max tiles, heads, batch).
template <bool kBf16, int D, bool kIsK, bool kInt4>
__global__ void __launch_bounds__(kThreads) QuantizeQKKernel(QuantParams p) {
  __shared__ QkTileSmemFor<kIsK, D> smem;
  QuantizeQKTile<kBf16, D, kIsK, kInt4>(p, blockIdx.x, blockIdx.y, blockIdx.z, smem);
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

}  // namespace sage::cuda
