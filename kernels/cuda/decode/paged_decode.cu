// Paged decode: planning (rows per CTA, KV splits), the split-merge kernel and the dispatch over
// head_dim x storage x dtype x rows per CTA. The split kernel is in paged_decode_kernel.cuh.
#include <algorithm>
#include <cstdint>

#include "kernels/cuda/common/status.cuh"
#include "kernels/cuda/decode/paged_decode.h"
#include "kernels/cuda/decode/paged_decode_kernel.cuh"

namespace sage::cuda {
namespace {

constexpr int kCtasPerSmTarget = 3;  // the 16-bit D=128 ring (69 KB) fits 3 CTAs per SM
constexpr size_t kWorkspaceAlign = 256;
constexpr int kMergeWarps = 4;

int64_t CeilDiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

}  // namespace

PagedDecodePlan PlanPagedDecode(const sage_paged_decode_params_t& p, int sm_count) {
  PagedDecodePlan plan;
  const int group = p.num_q_heads / p.num_kv_heads;
  const int rows = p.max_seqlen_q * group;
  plan.rows_per_cta = rows <= 1 ? 1 : rows <= 2 ? 2 : rows <= 4 ? 4 : 8;
  plan.row_passes = static_cast<int>(CeilDiv(rows, plan.rows_per_cta));
  // Splits: enough CTAs to fill the GPU, each split at least kDecodeMinChunksPerSplit chunks, all
  // splits of a sequence the same number of whole chunks (so only a sequence's last chunk has a tail).
  const int64_t base = static_cast<int64_t>(std::max(p.batch, 1)) * p.num_kv_heads * plan.row_passes;
  const int64_t chunks = std::max<int64_t>(1, CeilDiv(std::max(p.max_seqlen_k, 1), kDecodeChunkTokens));
  const int64_t want = CeilDiv(static_cast<int64_t>(std::max(sm_count, 1)) * kCtasPerSmTarget, base);
  const int64_t cap = std::max<int64_t>(1, chunks / kDecodeMinChunksPerSplit);
  const int64_t splits = std::clamp<int64_t>(want, 1, cap);
  const int64_t chunks_per_split = CeilDiv(chunks, splits);
  plan.splits = static_cast<int>(CeilDiv(chunks, chunks_per_split));
  plan.split_tokens = static_cast<int>(chunks_per_split * kDecodeChunkTokens);
  if (plan.splits > 1) {
    const size_t row_heads = static_cast<size_t>(plan.splits) * static_cast<size_t>(p.total_q) * p.num_q_heads;
    const size_t o_bytes = (row_heads * p.head_dim * sizeof(float) + kWorkspaceAlign - 1) / kWorkspaceAlign * kWorkspaceAlign;
    plan.workspace_bytes = o_bytes + row_heads * sizeof(float);
  }
  return plan;
}

namespace decode {

// One warp per (query row, head): O = Σ_s 2^(lse_s - M) o_s / Σ_s 2^(lse_s - M) over the splits the
// row's sequence has. fmaxf keeps a NaN lse out of M; its weight is NaN and so is the row.
template <int kHeadDim, IoType kIo>
__global__ void __launch_bounds__(kMergeWarps * 32) PagedDecodeMergeKernel(const __grid_constant__ PagedDecodeParams p) {
  const float kNegInf = -__int_as_float(0x7f800000);
  constexpr float kLn2 = 0.693147180559945309f;
  constexpr int kPerLane = kHeadDim / 32;
  const int lane = threadIdx.x & 31;
  const int64_t item = static_cast<int64_t>(blockIdx.x) * kMergeWarps + (threadIdx.x >> 5);
  if (item >= p.total_q * p.num_q_heads) return;
  const int64_t q_row = item / p.num_q_heads;
  int lo = 0, hi = p.batch - 1;  // the sequence: last b with cu_seqlens_q[b] <= q_row
  while (lo < hi) {
    const int mid = (lo + hi + 1) / 2;
    if (p.cu_seqlens_q[mid] <= q_row) lo = mid; else hi = mid - 1;
  }
  const int n_splits = (p.seqlens_k[lo] + p.plan.split_tokens - 1) / p.plan.split_tokens;
  const int64_t split_stride = p.total_q * p.num_q_heads;

  float mx = kNegInf;
  for (int s = lane; s < n_splits; s += 32) mx = fmaxf(mx, p.partial_lse[s * split_stride + item]);
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, off));
  const float m_use = mx == kNegInf ? 0.f : mx;
  float lsum = 0.f, acc[kPerLane] = {};
  for (int s = 0; s < n_splits; ++s) {
    const float w = Exp2(p.partial_lse[s * split_stride + item] - m_use);
    lsum += w;
    const float* o = p.partial_o + (s * split_stride + item) * kHeadDim + lane * kPerLane;
#pragma unroll
    for (int j = 0; j < kPerLane; ++j) acc[j] = fmaf(w, o[j], acc[j]);
  }
  const float inv = lsum == 0.f ? 0.f : 1.f / lsum;
#pragma unroll
  for (int j = 0; j < kPerLane; ++j) StoreScalar<kIo>(p.o, item * kHeadDim + lane * kPerLane + j, acc[j] * inv);
  if (lane == 0 && p.lse != nullptr) p.lse[item] = lsum == 0.f ? kNegInf : (m_use + __log2f(lsum)) * kLn2;
}

template <int kHeadDim, KvCodes kCodes, IoType kIo, int kRows>
sage_status_t LaunchSplit(const PagedDecodeParams& p, cudaStream_t stream) {
  using T = Traits<kHeadDim, kCodes, kRows>;
  auto* kernel = PagedDecodeSplitKernel<kHeadDim, kCodes, kIo, kRows>;
  SAGE_CUDA_TRY(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, T::kSmemBytes));
  const dim3 grid(p.plan.splits, p.num_kv_heads * p.plan.row_passes, p.batch);
  kernel<<<grid, kDecodeThreads, T::kSmemBytes, stream>>>(p);
  SAGE_CHECK_LAUNCH("paged_decode_split");
  if (p.plan.splits > 1) {
    const int64_t items = p.total_q * p.num_q_heads;
    PagedDecodeMergeKernel<kHeadDim, kIo>
        <<<static_cast<unsigned>(CeilDiv(items, kMergeWarps)), kMergeWarps * 32, 0, stream>>>(p);
    SAGE_CHECK_LAUNCH("paged_decode_merge");
  }
  return SAGE_OK;
}

template <int kHeadDim, KvCodes kCodes, IoType kIo>
sage_status_t DispatchRows(const PagedDecodeParams& p, cudaStream_t stream) {
  switch (p.plan.rows_per_cta) {
    case 1: return LaunchSplit<kHeadDim, kCodes, kIo, 1>(p, stream);
    case 2: return LaunchSplit<kHeadDim, kCodes, kIo, 2>(p, stream);
    case 4: return LaunchSplit<kHeadDim, kCodes, kIo, 4>(p, stream);
    case 8: return LaunchSplit<kHeadDim, kCodes, kIo, 8>(p, stream);
  }
  return Fail(SAGE_ERR_INTERNAL, "paged_decode: rows per CTA %d not instantiated", p.plan.rows_per_cta);
}

template <int kHeadDim, KvCodes kCodes>
sage_status_t DispatchIo(const PagedDecodeParams& p, cudaStream_t stream) {
  return p.io == IoType::kF16 ? DispatchRows<kHeadDim, kCodes, IoType::kF16>(p, stream)
                              : DispatchRows<kHeadDim, kCodes, IoType::kBF16>(p, stream);
}

template <int kHeadDim>
sage_status_t DispatchCodes(const PagedDecodeParams& p, cudaStream_t stream) {
  return p.codes == KvCodes::k16Bit ? DispatchIo<kHeadDim, KvCodes::k16Bit>(p, stream)
                                    : DispatchIo<kHeadDim, KvCodes::kInt8KFp8V>(p, stream);
}

}  // namespace decode

sage_status_t LaunchPagedDecode(const PagedDecodeParams& p, cudaStream_t stream) {
  switch (p.head_dim) {
    case 64: return decode::DispatchCodes<64>(p, stream);
    case 128: return decode::DispatchCodes<128>(p, stream);
  }
  return Fail(SAGE_ERR_UNSUPPORTED, "head_dim %d unsupported (64, 128)", p.head_dim);
}

}  // namespace sage::cuda
