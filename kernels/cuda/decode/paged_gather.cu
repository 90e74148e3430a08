// sage_paged_gather: a batch's cached tokens out of KV pages into contiguous 16-bit K and V, for
// the launches that run the dense kernels over a session's cache (prefill chunks, quantized
// recipes). Grid y = the sequence, grid x = CTAs over its (token, head, 8-channel group) items;
// each thread moves 8 channels: a 16-byte store. 8-bit pages are decoded with the CPU scheme's
// arithmetic (float(code) * scale, one fp32 multiply, then round to nearest even), so the output
// is bit for bit DecodeKvTokens's.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/cuda/common/status.cuh"
#include "kernels/cuda/decode/int4_nibbles.cuh"
#include "kernels/cuda/decode/page_parts.h"
#include "sageattn.h"

namespace sage::cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kItemsPerThread = 4;  // grid sizing: ~4 groups of 8 channels per thread

struct GatherArgs {
  const unsigned char* pages;
  uint64_t page_bytes;
  int page_tokens;
  const int32_t* page_table;
  const int32_t* cu_pages;
  const int32_t* cu_seqlens_k;
  int heads;
  int head_dim;
  RowStrides rows;
  // Byte offsets of a page's parts (kv_pages.h): K codes at 0.
  uint64_t v_codes;
  uint64_t k_scales;
  uint64_t v_scales;
  unsigned char* k_out;
  unsigned char* v_out;
};

template <typename Out>
__device__ __forceinline__ uint16_t Round(float x);
template <>
__device__ __forceinline__ uint16_t Round<__half>(float x) {
  return __half_as_ushort(__float2half_rn(x));
}
template <>
__device__ __forceinline__ uint16_t Round<__nv_bfloat16>(float x) {
  return __bfloat16_as_ushort(__float2bfloat16_rn(x));
}

__device__ __forceinline__ float Fp8ToFloat(uint8_t code) {
  const __half_raw h = __nv_cvt_fp8_to_halfraw(static_cast<__nv_fp8_storage_t>(code), __NV_E4M3);
  return __half2float(__half(h));
}

template <sage_kv_storage_t kStorage, typename Out>
__global__ void __launch_bounds__(kThreads) PagedGatherKernel(GatherArgs a) {
  const int seq = blockIdx.y;
  const int64_t k0 = a.cu_seqlens_k[seq];
  const int64_t len = a.cu_seqlens_k[seq + 1] - k0;
  const int groups = a.head_dim / 8;
  const int64_t items = len * a.heads * groups;
  const int32_t* table = a.page_table + a.cu_pages[seq];
  for (int64_t i = int64_t{blockIdx.x} * kThreads + threadIdx.x; i < items; i += int64_t{gridDim.x} * kThreads) {
    const int g = static_cast<int>(i % groups);
    const int64_t th = i / groups;  // token-head within the sequence
    const int h = static_cast<int>(th % a.heads);
    const int64_t t = th / a.heads;
    const unsigned char* page = a.pages + static_cast<uint64_t>(table[t / a.page_tokens]) * a.page_bytes;
    const int64_t in_page = t % a.page_tokens;
    const uint64_t sh = a.rows.Of(static_cast<int>(in_page), h);  // the token-head's row
    const uint64_t value = sh * a.head_dim + g * 8;  // index of the first of 8
    const uint64_t out = (static_cast<uint64_t>(k0 + t) * a.heads + h) * a.head_dim + g * 8;
    uint4 k16, v16;
    if constexpr (kStorage == SAGE_KV_16BIT) {
      k16 = *reinterpret_cast<const uint4*>(page + value * 2);
      v16 = *reinterpret_cast<const uint4*>(page + a.v_codes + value * 2);
    } else {
      const uint2 vc = *reinterpret_cast<const uint2*>(page + a.v_codes + value);
      const float vs = reinterpret_cast<const float*>(page + a.v_scales)[sh];
      const auto* vb = reinterpret_cast<const uint8_t*>(&vc);
      float kf[8];
      if constexpr (kStorage == SAGE_KV_INT4K_FP8V) {  // 8 channels of one 32-channel group
        const unsigned char* row = page + sh * (a.head_dim / 2);
        const float ks =
            reinterpret_cast<const float*>(page + a.k_scales)[sh * (a.head_dim / kInt4GroupChannels) + g / 4];
#pragma unroll
        for (int c = 0; c < 8; ++c) {
          const int n = Int4NibbleOf(g * 8 + c, a.head_dim);
          const int u = (row[n / 2] >> (4 * (n % 2))) & 0xF;
          kf[c] = __fmul_rn(static_cast<float>(u - 8), ks);
        }
      } else {
        const uint2 kc = *reinterpret_cast<const uint2*>(page + value);
        const float ks = reinterpret_cast<const float*>(page + a.k_scales)[sh];
        const auto* kb = reinterpret_cast<const int8_t*>(&kc);
#pragma unroll
        for (int c = 0; c < 8; ++c) kf[c] = __fmul_rn(static_cast<float>(kb[c]), ks);
      }
      uint16_t ko[8], vo[8];
#pragma unroll
      for (int c = 0; c < 8; ++c) {
        ko[c] = Round<Out>(kf[c]);
        vo[c] = Round<Out>(__fmul_rn(Fp8ToFloat(vb[c]), vs));
      }
      k16 = *reinterpret_cast<const uint4*>(ko);
      v16 = *reinterpret_cast<const uint4*>(vo);
    }
    *reinterpret_cast<uint4*>(a.k_out + out * 2) = k16;
    *reinterpret_cast<uint4*>(a.v_out + out * 2) = v16;
  }
}

template <sage_kv_storage_t kStorage>
void Launch(const GatherArgs& a, dim3 grid, cudaStream_t stream, sage_dtype_t dtype) {
  if (dtype == SAGE_DTYPE_BF16) {
    PagedGatherKernel<kStorage, __nv_bfloat16><<<grid, kThreads, 0, stream>>>(a);
  } else {
    PagedGatherKernel<kStorage, __half><<<grid, kThreads, 0, stream>>>(a);
  }
}

bool Aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15) == 0; }

}  // namespace
}  // namespace sage::cuda

extern "C" sage_status_t sage_paged_gather(const sage_paged_gather_params_t* p, sage_stream_t stream) {
  using namespace sage::cuda;
  ClearLastError();
  if (p == nullptr) return Fail(SAGE_ERR_INVALID_ARGUMENT, "paged gather: null params");
  if (stream == nullptr) return Fail(SAGE_ERR_INVALID_ARGUMENT, "paged gather: null stream (the default stream is never used)");
  if (p->storage != SAGE_KV_16BIT && p->storage != SAGE_KV_INT8K_FP8V && p->storage != SAGE_KV_INT4K_FP8V) {
    return Fail(SAGE_ERR_INVALID_ARGUMENT, "paged gather: storage %d unknown", static_cast<int>(p->storage));
  }
  if (p->dtype != SAGE_DTYPE_F16 && p->dtype != SAGE_DTYPE_BF16) {
    return Fail(SAGE_ERR_INVALID_ARGUMENT, "paged gather: dtype %d unknown", static_cast<int>(p->dtype));
  }
  if (p->head_dim < 8 || p->head_dim > 256 || p->head_dim % 8 != 0) {
    return Fail(SAGE_ERR_INVALID_ARGUMENT, "paged gather: head_dim %d (a multiple of 8 up to 256)", p->head_dim);
  }
  if (p->num_kv_heads < 1 || p->batch < 0 || p->batch > 65535 || p->max_seqlen_k < 0 || p->total_k < 0) {
    return Fail(SAGE_ERR_INVALID_ARGUMENT, "paged gather: heads %d, batch %d (<= 65535), max_seqlen_k %d, total_k %lld",
                p->num_kv_heads, p->batch, p->max_seqlen_k, static_cast<long long>(p->total_k));
  }
  if (p->page_tokens < 16 || p->page_tokens % 16 != 0) {
    return Fail(SAGE_ERR_INVALID_ARGUMENT, "paged gather: page_tokens %d (a multiple of 16)", p->page_tokens);
  }
  if (p->storage == SAGE_KV_INT4K_FP8V && p->head_dim % 64 != 0) {  // where the nibble order is a permutation
    return Fail(SAGE_ERR_INVALID_ARGUMENT, "paged gather: head_dim %d with INT4K_FP8V (a multiple of 64)", p->head_dim);
  }
  if (p->layout != SAGE_KV_TOKEN_MAJOR && p->layout != SAGE_KV_HEAD_MAJOR) {
    return Fail(SAGE_ERR_INVALID_ARGUMENT, "paged gather: layout %d (TOKEN_MAJOR=0, HEAD_MAJOR=1)", static_cast<int>(p->layout));
  }
  const PageParts parts = PartsOf(p->storage, p->page_tokens, p->num_kv_heads, p->head_dim);
  if (p->page_bytes < parts.bytes || p->page_bytes % 16 != 0) {
    return Fail(SAGE_ERR_INVALID_ARGUMENT, "paged gather: page_bytes %llu (a multiple of 16, at least %llu)",
                static_cast<unsigned long long>(p->page_bytes), static_cast<unsigned long long>(parts.bytes));
  }
  if (p->batch == 0 || p->total_k == 0) return SAGE_OK;
  if (p->pages == nullptr || p->page_table == nullptr || p->cu_pages == nullptr || p->cu_seqlens_k == nullptr ||
      p->k_out == nullptr || p->v_out == nullptr) {
    return Fail(SAGE_ERR_INVALID_ARGUMENT, "paged gather: null pointer");
  }
  if (!Aligned16(p->pages) || !Aligned16(p->k_out) || !Aligned16(p->v_out)) {
    return Fail(SAGE_ERR_INVALID_ARGUMENT, "paged gather: pages, k_out and v_out must be 16-byte aligned");
  }
  GatherArgs a{static_cast<const unsigned char*>(p->pages), p->page_bytes, p->page_tokens, p->page_table, p->cu_pages,
               p->cu_seqlens_k, p->num_kv_heads, p->head_dim, RowsOf(p->layout, p->page_tokens, p->num_kv_heads),
               parts.v_codes, parts.k_scales,
               parts.v_scales,
               static_cast<unsigned char*>(p->k_out), static_cast<unsigned char*>(p->v_out)};
  const int64_t items = int64_t{p->max_seqlen_k} * p->num_kv_heads * (p->head_dim / 8);
  int64_t ctas = (items + int64_t{kThreads} * kItemsPerThread - 1) / (int64_t{kThreads} * kItemsPerThread);
  if (ctas < 1) ctas = 1;
  if (ctas > 4096) ctas = 4096;
  const dim3 grid(static_cast<unsigned>(ctas), static_cast<unsigned>(p->batch));
  const auto st = reinterpret_cast<cudaStream_t>(stream);
  switch (p->storage) {
    case SAGE_KV_16BIT: Launch<SAGE_KV_16BIT>(a, grid, st, p->dtype); break;
    case SAGE_KV_INT8K_FP8V: Launch<SAGE_KV_INT8K_FP8V>(a, grid, st, p->dtype); break;
    case SAGE_KV_INT4K_FP8V: Launch<SAGE_KV_INT4K_FP8V>(a, grid, st, p->dtype); break;
  }
  SAGE_CHECK_LAUNCH("PagedGatherKernel");
  return SAGE_OK;
}
