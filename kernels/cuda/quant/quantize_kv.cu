// K/V statistics (k̄, v̄, per-channel V range) and V -> FP8 E4M3 with the P·V operand layout.
#include <cuda_runtime.h>

#include <cfloat>

#include "kernels/cuda/common/status.cuh"
#include "kernels/cuda/quant/quant_common.cuh"
#include "kernels/cuda/quant/quantize.h"
#include "kernels/cuda/quant/quantize_v_block.cuh"

namespace sage::cuda {
namespace {

constexpr int kThreads = kQuantThreads;

// k̄, δV and v̄ of channel c of (sequence b, kv head h) from its key sums and V extrema.
__device__ __forceinline__ void WriteKvStats(const QuantParams& p, int b, int h, int c, int len, float ks, float vs,
                                             float mx, float mn) {
  const float n = static_cast<float>(len);
  const float k_mean = (len > 0 && p.smooth_k) ? __fdiv_rn(ks, n) : 0.f;
  const float v_mean = (len > 0 && p.smooth_v) ? __fdiv_rn(vs, n) : 0.f;
  // max over v of |v − v̄| = max(|max − v̄|, |min − v̄|): fp32 subtraction is monotonic.
  const float amax = len > 0 ? NanMax(fabsf(__fsub_rn(mx, v_mean)), fabsf(__fsub_rn(mn, v_mean))) : 0.f;
  const int64_t o = (int64_t{b} * p.num_kv_heads + h) * p.head_dim + c;
  p.ws.k_mean[o] = k_mean;
  if (p.ws.v_scale) p.ws.v_scale[o] = __fdiv_rn(SafeAmax(amax), kFp8Max);
  if (p.ws.v_mean) p.ws.v_mean[o] = v_mean;
}

// Partial sums / extrema of one chunk of kStatsChunkRows keys of one (sequence, kv head).
// grid (stat_chunks, Hkv, batch). Deterministic: fixed per-thread order, fixed combine order.
// kFinalize (stat_chunks <= 1: every sequence is one chunk): also writes k̄, δV and v̄, with the same
// arithmetic as KvStatsFinalizeKernel over that one chunk, which then need not run (one launch less
// for small problems, where launches cost more than the work).
template <bool kBf16, int D, bool kFinalize>
__global__ void __launch_bounds__(kThreads) KvStatsKernel(QuantParams p, InlineCuSeqlens cu) {
  constexpr int kCols = D / 8;               // 8-channel (16-byte) column groups
  constexpr int kLanes = kThreads / kCols;   // rows processed side by side
  const int b = blockIdx.z, h = blockIdx.y, chunk = blockIdx.x;
  const bool inline_cu = cu.count > 0;
  if (inline_cu && blockIdx.x == 0 && blockIdx.y == 0 && blockIdx.z == 0) {
    // Every later kernel of the call reads cu_seqlens from device memory: store them there.
    for (int i = threadIdx.x; i < cu.count; i += kThreads) {
      cu.q_dst[i] = cu.q[i];
      cu.k_dst[i] = cu.k[i];
    }
  }
  const int32_t* cu_k = inline_cu ? cu.k : p.cu_k;
  const int start = cu_k[b], len = cu_k[b + 1] - start;
  const int r0 = chunk * kStatsChunkRows;
  if (r0 >= len) {
    if constexpr (kFinalize) {
      for (int c = threadIdx.x; c < D; c += kThreads) WriteKvStats(p, b, h, c, 0, 0.f, 0.f, -FLT_MAX, FLT_MAX);
    }
    return;
  }
  const int r1 = min(len, r0 + kStatsChunkRows);
  const int cg = threadIdx.x % kCols, lane = threadIdx.x / kCols;
  float ks[8], vs[8], vmax[8], vmin[8];
#pragma unroll
  for (int i = 0; i < 8; ++i) {
    ks[i] = vs[i] = 0.f;
    vmax[i] = -FLT_MAX;
    vmin[i] = FLT_MAX;
  }
  const int64_t row_stride = int64_t{p.num_kv_heads} * D;
#pragma unroll 4
  for (int r = r0 + lane; r < r1; r += kLanes) {
    const int64_t e = (start + r) * row_stride + int64_t{h} * D + 8 * cg;
    const uint4 kr = LoadRaw8(p.k, e), vr = LoadRaw8(p.v, e);
    const uint32_t kw[4] = {kr.x, kr.y, kr.z, kr.w}, vw[4] = {vr.x, vr.y, vr.z, vr.w};
#pragma unroll
    for (int i = 0; i < 8; ++i) {
      const float kf = RawToFloat<kBf16>(kw[i / 2], i % 2), vf = RawToFloat<kBf16>(vw[i / 2], i % 2);
      ks[i] += kf;
      vs[i] += vf;
      vmax[i] = NanMax(vmax[i], vf);
      vmin[i] = NanMin(vmin[i], vf);
    }
  }
  __shared__ float red[4][kLanes][D];
#pragma unroll
  for (int i = 0; i < 8; ++i) {
    red[0][lane][8 * cg + i] = ks[i];
    red[1][lane][8 * cg + i] = vs[i];
    red[2][lane][8 * cg + i] = vmax[i];
    red[3][lane][8 * cg + i] = vmin[i];
  }
  __syncthreads();
  for (int c = threadIdx.x; c < D; c += kThreads) {
    float s = red[0][0][c], v = red[1][0][c], mx = red[2][0][c], mn = red[3][0][c];
    for (int l = 1; l < kLanes; ++l) {
      s += red[0][l][c]; v += red[1][l][c];
      mx = NanMax(mx, red[2][l][c]); mn = NanMin(mn, red[3][l][c]);
    }
    const int64_t per_stat = int64_t{p.batch} * p.num_kv_heads * p.ws.stat_chunks * D;
    const int64_t o = ((int64_t{b} * p.num_kv_heads + h) * p.ws.stat_chunks + chunk) * D + c;
    p.ws.stats[o] = s;
    p.ws.stats[per_stat + o] = v;
    p.ws.stats[2 * per_stat + o] = mx;
    p.ws.stats[3 * per_stat + o] = mn;
    if constexpr (kFinalize) {
      float ks1 = 0.f, vs1 = 0.f, mx1 = -FLT_MAX, mn1 = FLT_MAX;  // the finalize kernel's fold over one chunk
      ks1 += s;
      vs1 += v;
      mx1 = NanMax(mx1, mx);
      mn1 = NanMin(mn1, mn);
      WriteKvStats(p, b, h, c, len, ks1, vs1, mx1, mn1);
    }
  }
}

// k̄, v̄ and δV per (sequence, kv head, channel) from the chunks' partials, combined in chunk order.
// grid (batch, Hkv), D threads.
__global__ void KvStatsFinalizeKernel(QuantParams p) {
  const int b = blockIdx.x, h = blockIdx.y, c = threadIdx.x, D = p.head_dim;
  const int len = p.cu_k[b + 1] - p.cu_k[b];
  const int chunks = (len + kStatsChunkRows - 1) / kStatsChunkRows;
  const int64_t per_stat = int64_t{p.batch} * p.num_kv_heads * p.ws.stat_chunks * D;
  const int64_t base = (int64_t{b} * p.num_kv_heads + h) * p.ws.stat_chunks * D + c;
  float ks = 0.f, vs = 0.f, mx = -FLT_MAX, mn = FLT_MAX;
  for (int i = 0; i < chunks; ++i) {
    ks += p.ws.stats[base + int64_t{i} * D];
    vs += p.ws.stats[per_stat + base + int64_t{i} * D];
    mx = NanMax(mx, p.ws.stats[2 * per_stat + base + int64_t{i} * D]);
    mn = NanMin(mn, p.ws.stats[3 * per_stat + base + int64_t{i} * D]);
  }
  WriteKvStats(p, b, h, c, len, ks, vs, mx, mn);
}

// V̂ for one 128-token block of one (sequence, kv head). grid (max blocks, Hkv, batch).
template <bool kBf16, int D>
__global__ void __launch_bounds__(kThreads) QuantizeVKernel(QuantParams p) {
  __shared__ VBlockSmem<D> smem;
  QuantizeVBlock<kBf16, D>(p, blockIdx.x, blockIdx.y, blockIdx.z, smem);
}

template <bool kBf16, int D>
sage_status_t LaunchKvStatsT(const QuantParams& p, KvFinalize finalize, const InlineCuSeqlens& cu,
                             cudaStream_t stream) {
  if (finalize == KvFinalize::kInStatsPass) {
    if (p.ws.stat_chunks > 1) {
      return Fail(SAGE_ERR_INTERNAL, "kv stats: finalizing in the stats pass needs one chunk, have %lld",
                  static_cast<long long>(p.ws.stat_chunks));
    }
    if (p.batch == 0) return SAGE_OK;
    // Launched even when no sequence has keys (stat_chunks 0): the means and scales still need values.
    KvStatsKernel<kBf16, D, true><<<dim3(1, p.num_kv_heads, p.batch), kThreads, 0, stream>>>(p, cu);
    SAGE_CHECK_LAUNCH("KvStatsKernel");
    return SAGE_OK;
  }
  // With no keys at all there are no partials, but inline cu_seqlens still need storing.
  const int64_t chunks = p.ws.stat_chunks > 0 ? p.ws.stat_chunks : (cu.count > 0 ? 1 : 0);
  if (p.batch > 0 && chunks > 0) {
    KvStatsKernel<kBf16, D, false><<<dim3(static_cast<unsigned>(chunks), p.num_kv_heads, p.batch), kThreads, 0,
                                     stream>>>(p, cu);
    SAGE_CHECK_LAUNCH("KvStatsKernel");
  }
  if (p.batch > 0) {
    KvStatsFinalizeKernel<<<dim3(p.batch, p.num_kv_heads), D, 0, stream>>>(p);
    SAGE_CHECK_LAUNCH("KvStatsFinalizeKernel");
  }
  return SAGE_OK;
}

template <bool kBf16, int D>
sage_status_t LaunchQuantizeVT(const QuantParams& p, cudaStream_t stream) {
  const int blocks = (p.max_seqlen_k + kKBlockRows - 1) / kKBlockRows;
  if (blocks == 0 || p.batch == 0) return SAGE_OK;
  QuantizeVKernel<kBf16, D><<<dim3(blocks, p.num_kv_heads, p.batch), kThreads, 0, stream>>>(p);
  SAGE_CHECK_LAUNCH("QuantizeVKernel");
  return SAGE_OK;
}

}  // namespace

sage_status_t LaunchKvStats(const QuantParams& p, KvFinalize finalize, const InlineCuSeqlens* cu,
                            cudaStream_t stream) {
  if (cu != nullptr && (cu->count != p.batch + 1 || cu->count > SAGE_INLINE_CU_SEQLENS_MAX + 1 ||
                        cu->q_dst == nullptr || cu->k_dst == nullptr)) {
    return Fail(SAGE_ERR_INTERNAL, "kv stats: inline cu_seqlens with %d entries for batch %d", cu->count, p.batch);
  }
  const InlineCuSeqlens none{};
  const InlineCuSeqlens& c = cu != nullptr ? *cu : none;
  if (p.head_dim == 64) {
    return p.bf16 ? LaunchKvStatsT<true, 64>(p, finalize, c, stream) : LaunchKvStatsT<false, 64>(p, finalize, c, stream);
  }
  if (p.head_dim == 128) {
    return p.bf16 ? LaunchKvStatsT<true, 128>(p, finalize, c, stream)
                  : LaunchKvStatsT<false, 128>(p, finalize, c, stream);
  }
  return Fail(SAGE_ERR_UNSUPPORTED, "kv stats: head_dim %d unsupported (64, 128)", p.head_dim);
}

sage_status_t LaunchQuantizeV(const QuantParams& p, cudaStream_t stream) {
  if (p.head_dim == 64) return p.bf16 ? LaunchQuantizeVT<true, 64>(p, stream) : LaunchQuantizeVT<false, 64>(p, stream);
  if (p.head_dim == 128)
    return p.bf16 ? LaunchQuantizeVT<true, 128>(p, stream) : LaunchQuantizeVT<false, 128>(p, stream);
  return Fail(SAGE_ERR_UNSUPPORTED, "quantize v: head_dim %d unsupported (64, 128)", p.head_dim);
}

}  // namespace sage::cuda
