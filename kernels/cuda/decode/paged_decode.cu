// Paged decode: planning (rows per CTA, KV splits), the split-merge kernel and the dispatch over
// head_dim x storage x dtype x rows per CTA. The split kernel is in paged_decode_kernel.cuh.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <type_traits>

#include "kernels/cuda/common/status.cuh"
#include "kernels/cuda/decode/paged_decode.h"
#include "kernels/cuda/decode/paged_decode_kernel.cuh"
#include "kernels/cuda/decode/paged_decode_mma.cuh"

namespace sage::cuda {
namespace {

constexpr size_t kWorkspaceAlign = 256;
constexpr int kMergeWarps = 4;
constexpr int kMergeBatch = 4;  // splits a merge warp loads before it uses the first
constexpr int64_t kMaxMergeBlocks = 1 << 20;
// A split count must raise the last wave's fill by this much to be worth its extra partials.
constexpr double kWaveGain = 0.02;

int64_t CeilDiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

using SplitKernelFn = void (*)(PagedDecodeParams);
struct SplitKernel {
  SplitKernelFn fn = nullptr;
  int smem_bytes = 0;
};

}  // namespace

namespace decode {
SplitKernel SelectSplitKernel(KvCodes codes, IoType io, int head_dim, int rows, bool tma);
}  // namespace decode

bool ReadsWithTma(const sage_paged_decode_params_t& p, int device_major) {
  return SAGE_DECODE_TMA && device_major >= 9 && p.storage == SAGE_KV_INT8K_FP8V && p.head_dim == 128 &&
         p.layout == SAGE_KV_HEAD_MAJOR && p.page_bytes % 128 == 0 && reinterpret_cast<uintptr_t>(p.pages) % 128 == 0;
}

sage_status_t EncodeCodesMap(PagedDecodeParams& p) {
  using Encode = CUresult (*)(CUtensorMap*, CUtensorMapDataType, cuuint32_t, void*, const cuuint64_t*, const cuuint64_t*,
                              const cuuint32_t*, const cuuint32_t*, CUtensorMapInterleave, CUtensorMapSwizzle,
                              CUtensorMapL2promotion, CUtensorMapFloatOOBfill);
  static Encode encode = [] {
    void* fn = nullptr;
    cudaDriverEntryPointQueryResult found{};
    if (cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &fn, 12000, cudaEnableDefault, &found) != cudaSuccess ||
        found != cudaDriverEntryPointSuccess) {
      return static_cast<Encode>(nullptr);
    }
    return reinterpret_cast<Encode>(fn);
  }();
  if (encode == nullptr) return Fail(SAGE_ERR_CUDA, "paged_decode: cuTensorMapEncodeTiled not found in the driver");
  // The map depends on the pool's base alone; a server's pool is one allocation, so each launching
  // thread encodes it once rather than on every decode step.
  thread_local const unsigned char* encoded_for = nullptr;
  thread_local CUtensorMap encoded;
  p.page_rows = static_cast<int64_t>(p.page_bytes / 128);
  p.v_codes_rows = static_cast<int>(p.v_codes_offset / 128);
  if (encoded_for == p.pages) {
    p.codes_map = encoded;
    return SAGE_OK;
  }
  // Rows of 128 bytes from the pool's base; the extent only bounds the map (reads stay inside the
  // pages the tables name), so it is the largest a coordinate can address.
  const cuuint64_t dims[2] = {128, cuuint64_t{1} << 31};
  const cuuint64_t strides[1] = {128};
  const cuuint32_t box[2] = {128, 16};
  const cuuint32_t element_strides[2] = {1, 1};
  const CUresult r = encode(&p.codes_map, CU_TENSOR_MAP_DATA_TYPE_UINT8, 2, const_cast<unsigned char*>(p.pages), dims, strides,
                            box, element_strides, CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B,
                            CU_TENSOR_MAP_L2_PROMOTION_L2_256B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  if (r != CUDA_SUCCESS) return Fail(SAGE_ERR_CUDA, "paged_decode: cuTensorMapEncodeTiled failed (CUresult %d)", static_cast<int>(r));
  encoded_for = p.pages;
  encoded = p.codes_map;
  return SAGE_OK;
}

sage_status_t PlanPagedDecode(const sage_paged_decode_params_t& p, PagedDecodePlan* plan) {
  *plan = PagedDecodePlan{};
  const int group = p.num_q_heads / p.num_kv_heads;
  const int rows = p.max_seqlen_q * group;
  plan->rows_per_cta = rows <= 1 ? 1 : rows <= 2 ? 2 : rows <= 4 ? 4 : 8;
  plan->row_passes = static_cast<int>(CeilDiv(rows, plan->rows_per_cta));

  // Resident CTAs of the chosen kernel on this device: one "wave".
  int device = 0, sms = 0, per_sm = 0;
  SAGE_CUDA_TRY(cudaGetDevice(&device));
  SAGE_CUDA_TRY(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
  int major = 0;
  SAGE_CUDA_TRY(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device));
  plan->tma = ReadsWithTma(p, major);
  const SplitKernel k = decode::SelectSplitKernel(CodesOf(p.storage), p.dtype == SAGE_DTYPE_F16 ? IoType::kF16 : IoType::kBF16,
                                                  p.head_dim, plan->rows_per_cta, plan->tma);
  if (k.fn == nullptr) return Fail(SAGE_ERR_INTERNAL, "paged_decode: no kernel for head_dim %d", p.head_dim);
  SAGE_CUDA_TRY(cudaFuncSetAttribute(reinterpret_cast<const void*>(k.fn), cudaFuncAttributeMaxDynamicSharedMemorySize,
                                     k.smem_bytes));
  SAGE_CUDA_TRY(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, reinterpret_cast<const void*>(k.fn),
                                                              kDecodeThreads, k.smem_bytes));
  const int64_t wave = static_cast<int64_t>(std::max(sms, 1)) * std::max(per_sm, 1);

  // Splits: each a whole number of quanta (only a sequence's last chunk has a tail), at least
  // kDecodeMinQuantaPerSplit; among the counts up to 8 waves, the one whose last wave is fullest
  // (equal CTAs assumed), fewer splits unless more fill the last wave by kWaveGain.
  const int64_t base = static_cast<int64_t>(std::max(p.batch, 1)) * p.num_kv_heads * plan->row_passes;
  const int64_t quanta = std::max<int64_t>(1, CeilDiv(std::max(p.max_seqlen_k, 1), kDecodeSplitQuantum));
  const int64_t cap = std::max<int64_t>(1, quanta / kDecodeMinQuantaPerSplit);
  int64_t best = 1;
  double best_fill = 0.0;
  for (int64_t s = 1; s <= cap; ++s) {
    const int64_t per = CeilDiv(quanta, s), splits = CeilDiv(quanta, per);  // realizable count
    if (splits != s) continue;
    const double waves = static_cast<double>(base * s) / static_cast<double>(wave);
    if (waves > 8.0 && s > 1) break;
    const double fill = waves / std::ceil(waves);
    if (fill > best_fill + kWaveGain) {
      best = s;
      best_fill = fill;
    }
  }
  const int64_t per_split = CeilDiv(quanta, best);
  plan->splits = static_cast<int>(CeilDiv(quanta, per_split));
  plan->split_tokens = static_cast<int>(per_split * kDecodeSplitQuantum);
  if (plan->splits > 1) {
    const size_t row_heads = static_cast<size_t>(plan->splits) * static_cast<size_t>(p.total_q) * p.num_q_heads;
    const size_t o_bytes = (row_heads * p.head_dim * sizeof(float) + kWorkspaceAlign - 1) / kWorkspaceAlign * kWorkspaceAlign;
    plan->workspace_bytes = o_bytes + row_heads * sizeof(float);
  }
  return SAGE_OK;
}

namespace decode {

// One CTA per (query row, head): O = Σ_s 2^(lse_s - M) o_s / Σ_s 2^(lse_s - M) over the splits the
// row's sequence has. Warp w takes splits w, w + 4, ..., kMergeBatch of them per round with every
// load issued before the first is used, so a long sequence's dozens of splits cost a few memory
// latencies rather than one each; the warps' sums meet in shared memory. fmaxf keeps a NaN lse out
// of M; its weight is NaN and so is the row.
template <int kHeadDim, IoType kIo>
__global__ void __launch_bounds__(kMergeWarps * 32) PagedDecodeMergeKernel(const __grid_constant__ PagedDecodeParams p) {
  const float kNegInf = -__int_as_float(0x7f800000);
  constexpr float kLn2 = 0.693147180559945309f;
  constexpr int kPerLane = kHeadDim / 32;  // consecutive channels per lane: one 8- or 16-byte load
  using Vec = std::conditional_t<kPerLane == 4, float4, float2>;
  __shared__ float red_acc[kMergeWarps][kHeadDim];
  __shared__ float red_l[kMergeWarps];
  // Launched as a programmatic dependent of the split kernel: wait until its partials are visible.
  asm volatile("griddepcontrol.wait;\n" ::: "memory");
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int64_t items = p.total_q * p.num_q_heads;
  const int64_t split_stride = items;
  for (int64_t item = blockIdx.x; item < items; item += gridDim.x) {
    const int64_t q_row = item / p.num_q_heads;
    int lo = 0, hi = p.batch - 1;  // the sequence: last b with cu_seqlens_q[b] <= q_row
    while (lo < hi) {
      const int mid = (lo + hi + 1) / 2;
      if (p.cu_seqlens_q[mid] <= q_row) lo = mid; else hi = mid - 1;
    }
    const int n_splits = (p.seqlens_k[lo] + p.plan.split_tokens - 1) / p.plan.split_tokens;

    float mx = kNegInf;
    for (int s = lane; s < n_splits; s += 32) mx = fmaxf(mx, p.partial_lse[s * split_stride + item]);
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, off));
    const float m_use = mx == kNegInf ? 0.f : mx;
    float lsum = 0.f, acc[kPerLane] = {};
    for (int s0 = warp; s0 < n_splits; s0 += kMergeWarps * kMergeBatch) {
      float lse[kMergeBatch];
      Vec o[kMergeBatch];
#pragma unroll
      for (int j = 0; j < kMergeBatch; ++j) {
        const int64_t s = s0 + j * kMergeWarps;
        const bool live = s < n_splits;  // a missing split weighs 2^-inf = 0 over zeros
        lse[j] = live ? p.partial_lse[s * split_stride + item] : kNegInf;
        o[j] = live ? reinterpret_cast<const Vec*>(p.partial_o + (s * split_stride + item) * kHeadDim)[lane] : Vec{};
      }
#pragma unroll
      for (int j = 0; j < kMergeBatch; ++j) {
        const float w = Exp2(lse[j] - m_use);
        lsum += w;
        const float* v = reinterpret_cast<const float*>(&o[j]);
#pragma unroll
        for (int e = 0; e < kPerLane; ++e) acc[e] = fmaf(w, v[e], acc[e]);
      }
    }
#pragma unroll
    for (int e = 0; e < kPerLane; ++e) red_acc[warp][lane * kPerLane + e] = acc[e];
    if (lane == 0) red_l[warp] = lsum;
    __syncthreads();
    for (int d = threadIdx.x; d < kHeadDim; d += kMergeWarps * 32) {
      float a = 0.f, l = 0.f;
#pragma unroll
      for (int w = 0; w < kMergeWarps; ++w) a += red_acc[w][d], l += red_l[w];
      StoreScalar<kIo>(p.o, item * kHeadDim + d, l == 0.f ? 0.f : a / l);
      if (d == 0 && p.lse != nullptr) p.lse[item] = l == 0.f ? kNegInf : (m_use + __log2f(l)) * kLn2;
    }
    __syncthreads();  // red_* are reused by the next item
  }
}

template <int kHeadDim, KvCodes kCodes, IoType kIo, int kRows>
SplitKernel Split() {
  return {PagedDecodeSplitKernel<kHeadDim, kCodes, kIo, kRows>, Traits<kHeadDim, kCodes, kRows>::kSmemBytes};
}

template <int kHeadDim, KvCodes kCodes, IoType kIo>
SplitKernel SelectRows(int rows) {
  switch (rows) {
    case 1: return Split<kHeadDim, kCodes, kIo, 1>();
    case 2: return Split<kHeadDim, kCodes, kIo, 2>();
    case 4: return Split<kHeadDim, kCodes, kIo, 4>();
    case 8: return Split<kHeadDim, kCodes, kIo, 8>();
  }
  return {};
}

// D = 128 runs on tensor cores (paged_decode_mma.cuh); D = 64 on CUDA cores.
template <KvCodes kCodes, IoType kIo, bool kTma = false>
SplitKernel SelectMmaRows(int rows) {
  constexpr int kSmem = MmaTraits<kCodes, kTma>::kSmemBytes;
  switch (rows) {
    case 1: return {PagedDecodeMmaKernel<kCodes, kIo, 1, kTma>, kSmem};
    case 2: return {PagedDecodeMmaKernel<kCodes, kIo, 2, kTma>, kSmem};
    case 4: return {PagedDecodeMmaKernel<kCodes, kIo, 4, kTma>, kSmem};
    case 8: return {PagedDecodeMmaKernel<kCodes, kIo, 8, kTma>, kSmem};
  }
  return {};
}

template <int kHeadDim>
SplitKernel SelectHeadDim(KvCodes codes, IoType io, int rows, bool tma) {
  if constexpr (kHeadDim == 128) {
    if (tma) {  // ReadsWithTma: 8-bit pages only
      return io == IoType::kF16 ? SelectMmaRows<KvCodes::kInt8KFp8V, IoType::kF16, true>(rows)
                                : SelectMmaRows<KvCodes::kInt8KFp8V, IoType::kBF16, true>(rows);
    }
    if (codes == KvCodes::kInt4KFp8V) {
      return io == IoType::kF16 ? SelectMmaRows<KvCodes::kInt4KFp8V, IoType::kF16>(rows)
                                : SelectMmaRows<KvCodes::kInt4KFp8V, IoType::kBF16>(rows);
    }
    if (codes == KvCodes::k16Bit) {
      return io == IoType::kF16 ? SelectMmaRows<KvCodes::k16Bit, IoType::kF16>(rows)
                                : SelectMmaRows<KvCodes::k16Bit, IoType::kBF16>(rows);
    }
    return io == IoType::kF16 ? SelectMmaRows<KvCodes::kInt8KFp8V, IoType::kF16>(rows)
                              : SelectMmaRows<KvCodes::kInt8KFp8V, IoType::kBF16>(rows);
  } else {
    if (codes == KvCodes::kInt4KFp8V) return {};  // INT4 pages: D = 128 only (the API refuses others)
    if (codes == KvCodes::k16Bit) {
      return io == IoType::kF16 ? SelectRows<kHeadDim, KvCodes::k16Bit, IoType::kF16>(rows)
                                : SelectRows<kHeadDim, KvCodes::k16Bit, IoType::kBF16>(rows);
    }
    return io == IoType::kF16 ? SelectRows<kHeadDim, KvCodes::kInt8KFp8V, IoType::kF16>(rows)
                              : SelectRows<kHeadDim, KvCodes::kInt8KFp8V, IoType::kBF16>(rows);
  }
}

SplitKernel SelectSplitKernel(KvCodes codes, IoType io, int head_dim, int rows, bool tma) {
  switch (head_dim) {
    case 64: return SelectHeadDim<64>(codes, io, rows, tma);
    case 128: return SelectHeadDim<128>(codes, io, rows, tma);
  }
  return {};
}

}  // namespace decode

sage_status_t LaunchPagedDecode(const PagedDecodeParams& p, cudaStream_t stream) {
  const SplitKernel k = decode::SelectSplitKernel(p.codes, p.io, p.head_dim, p.plan.rows_per_cta, p.plan.tma);
  if (k.fn == nullptr)
    return Fail(SAGE_ERR_UNSUPPORTED, "paged_decode: head_dim %d / %d rows per CTA not instantiated", p.head_dim,
                p.plan.rows_per_cta);
  SAGE_CUDA_TRY(cudaFuncSetAttribute(reinterpret_cast<const void*>(k.fn), cudaFuncAttributeMaxDynamicSharedMemorySize,
                                     k.smem_bytes));
  const dim3 grid(p.plan.splits, p.num_kv_heads * p.plan.row_passes, p.batch);
  k.fn<<<grid, kDecodeThreads, k.smem_bytes, stream>>>(p);
  SAGE_CHECK_LAUNCH("paged_decode_split");
  if (p.plan.splits > 1) {
    // Programmatic dependent launch: the merge grid is launched while the split grid still runs
    // (the split kernels trigger at their start) and waits in griddepcontrol.wait, so the second
    // launch's latency hides behind the first kernel's tail.
    const unsigned blocks = static_cast<unsigned>(std::min(p.total_q * p.num_q_heads, kMaxMergeBlocks));
    cudaLaunchConfig_t cfg = {};
    cfg.gridDim = dim3(blocks);
    cfg.blockDim = dim3(kMergeWarps * 32);
    cfg.dynamicSmemBytes = 0;
    cfg.stream = stream;
    cudaLaunchAttribute attr[1];
    attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attr[0].val.programmaticStreamSerializationAllowed = 1;
    cfg.attrs = attr;
    cfg.numAttrs = 1;
    void (*merge)(PagedDecodeParams) = nullptr;
    if (p.head_dim == 64) {
      merge = p.io == IoType::kF16 ? decode::PagedDecodeMergeKernel<64, IoType::kF16>
                                   : decode::PagedDecodeMergeKernel<64, IoType::kBF16>;
    } else {
      merge = p.io == IoType::kF16 ? decode::PagedDecodeMergeKernel<128, IoType::kF16>
                                   : decode::PagedDecodeMergeKernel<128, IoType::kBF16>;
    }
    SAGE_CUDA_TRY(cudaLaunchKernelEx(&cfg, merge, p));
    SAGE_CHECK_LAUNCH("paged_decode_merge");
  }
  return SAGE_OK;
}

}  // namespace sage::cuda
