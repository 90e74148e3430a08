// sage_kv_quantize: a session step's new tokens encoded into their pages on the GPU (INT8 or INT4 K /
// FP8 V quantized, 16-bit rows copied into their head-major slots), so
// the append rides the pool's write stream with no host encode (K centred on the host, or here from
// its 16-bit rows and the session's K mean, wherever they lie). One CTA per token-head, one thread per channel: both amaxes by a
// block max over the bit patterns, then each code and the two scales, with the CPU scheme's
// arithmetic op for op (IEEE division, round half to even by the 1.5·2^23 trick, the same E4M3
// rounding), so the bytes are QuantizeKvTokens's (kernels/reference/kv_pages.cc).
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/cuda/common/status.cuh"
#include "kernels/cuda/decode/int4_nibbles.cuh"
#include "kernels/cuda/decode/page_parts.h"
#include "sageattn.h"

namespace sage::cuda {
namespace {

constexpr int kMaxHeadDim = 256;
constexpr float kInt8Max = 127.0f;
constexpr float kInt4Max = 7.0f;
constexpr float kFp8Max = 448.0f;
constexpr float kMagic = 12582912.0f;  // 1.5 · 2^23: (q + kMagic) - kMagic rounds half to even

__device__ __forceinline__ float RoundHalfEven(float q) { return __fsub_rn(__fadd_rn(q, kMagic), kMagic); }

__device__ __forceinline__ float Scale(float amax, float qmax) { return amax == 0.0f ? 1.0f : __fdiv_rn(amax, qmax); }

// float -> e4m3fn, round half to even, satfinite, NaN -> 0x7F | sign: EncodeFp8E4M3's integer steps.
__device__ __forceinline__ uint8_t EncodeE4M3(float x) {
  const uint32_t bits = __float_as_uint(x);
  const uint32_t sign = (bits >> 24) & 0x80u;
  const uint32_t a = bits & 0x7FFFFFFFu;
  const uint32_t rounded = a + 0x7FFFFu + ((a >> 20) & 1u);
  const uint32_t normal = ((rounded >> 20) - ((127u - 7u) << 3)) & 0x7Fu;
  const float steps = __fmul_rn(__uint_as_float(a < 0x3C800000u ? a : 0u), 512.0f);
  const uint32_t sub = static_cast<uint32_t>(static_cast<int32_t>(RoundHalfEven(steps)));
  uint32_t code = a >= 0x3C800000u ? normal : sub;
  code = a > 0x43E00000u ? 0x7Eu : code;
  code = a > 0x7F800000u ? 0x7Fu : code;
  return static_cast<uint8_t>(sign | code);
}

template <typename T>
__device__ __forceinline__ float ToFloat(uint16_t x);
template <>
__device__ __forceinline__ float ToFloat<__half>(uint16_t x) {
  return __half2float(__ushort_as_half(x));
}
template <>
__device__ __forceinline__ float ToFloat<__nv_bfloat16>(uint16_t x) {
  return __bfloat162float(__ushort_as_bfloat16(x));
}

struct QuantizeArgs {
  bool int4;  // INT4 K (group scales) instead of INT8 K
  PageParts parts;
  RowStrides rows;
  unsigned char* pages;
  int page_tokens;
  int heads;
  int head_dim;
  const uint64_t* page_offsets;
  const int32_t* slots;
  const float* k_centered;
  const uint16_t* v;
  const void* const* k_rows;  // the rows form (k_centered null)
  const void* const* v_rows;
  const float* const* k_means;
};

template <typename T>
__global__ void __launch_bounds__(kMaxHeadDim) KvQuantizeKernel(QuantizeArgs a) {
  __shared__ uint32_t warp_max[2][kMaxHeadDim / 32];
  __shared__ uint8_t nibbles[kMaxHeadDim];
  const int token = blockIdx.x, h = blockIdx.y, c = threadIdx.x;
  const uint64_t row = (static_cast<uint64_t>(token) * a.heads + h) * a.head_dim;
  float k, v;
  if (a.k_centered != nullptr) {
    k = a.k_centered[row + c];
    v = ToFloat<T>(a.v[row + c]);
  } else {  // CenterKTokens: the 16-bit value as float, minus the mean, one rounding
    const int at = h * a.head_dim + c;
    k = __fsub_rn(ToFloat<T>(static_cast<const uint16_t*>(a.k_rows[token])[at]), a.k_means[token][at]);
    v = ToFloat<T>(static_cast<const uint16_t*>(a.v_rows[token])[at]);
  }
  // Largest |value| as the largest bit pattern with the sign cleared (a NaN wins), per tensor.
  const uint32_t km = __reduce_max_sync(0xFFFFFFFFu, __float_as_uint(k) & 0x7FFFFFFFu);
  const uint32_t vm = __reduce_max_sync(0xFFFFFFFFu, __float_as_uint(v) & 0x7FFFFFFFu);
  const int warp = c / 32, warps = a.head_dim / 32;
  if (c % 32 == 0) {
    warp_max[0][warp] = km;
    warp_max[1][warp] = vm;
  }
  __syncthreads();
  uint32_t k_bits = 0, v_bits = 0;
  for (int w = 0; w < warps; ++w) {
    k_bits = max(k_bits, warp_max[0][w]);
    v_bits = max(v_bits, warp_max[1][w]);
  }
  // INT4: this warp's channels are one group, its max the group's.
  const float k_max = a.int4 ? kInt4Max : kInt8Max;
  const float k_scale = Scale(__uint_as_float(a.int4 ? km : k_bits), k_max);
  const float v_scale = Scale(__uint_as_float(v_bits), kFp8Max);
  float r = RoundHalfEven(__fdiv_rn(k, k_scale));
  r = r > k_max ? k_max : r;  // a NaN stays NaN, then becomes code 0
  r = r < -k_max ? -k_max : r;
  const int k_code = r == r ? static_cast<int>(r) : 0;
  const uint8_t v_code = EncodeE4M3(__fdiv_rn(v, v_scale));

  unsigned char* const page = a.pages + a.page_offsets[token];
  const uint64_t sh = a.rows.Of(a.slots[token], h);  // the token-head's row
  const int k_scales_per = a.int4 ? a.head_dim / kInt4GroupChannels : 1;
  const uint64_t k_row = a.int4 ? a.head_dim / 2 : a.head_dim;
  const uint64_t k_scales = a.parts.k_scales, v_scales = a.parts.v_scales;
  page[a.parts.v_codes + sh * a.head_dim + c] = v_code;
  if (a.int4) {
    nibbles[Int4NibbleOf(c, a.head_dim)] = static_cast<uint8_t>(k_code + 8);
    __syncthreads();
    if (c < a.head_dim / 2) page[sh * k_row + c] = static_cast<uint8_t>(nibbles[2 * c] | (nibbles[2 * c + 1] << 4));
    if (c % kInt4GroupChannels == 0) reinterpret_cast<float*>(page + k_scales)[sh * k_scales_per + warp] = k_scale;
  } else {
    reinterpret_cast<int8_t*>(page)[sh * k_row + c] = static_cast<int8_t>(k_code);
    if (c == 0) reinterpret_cast<float*>(page + k_scales)[sh] = k_scale;
  }
  if (c == 0) reinterpret_cast<float*>(page + v_scales)[sh] = v_scale;
}

// 16-bit pages: each token-head's K and V rows copied into its row of the page by one warp, 16
// bytes a lane where the rows allow it (a client's buffer may sit at any even address).
__global__ void __launch_bounds__(32) KvCopyRowsKernel(QuantizeArgs a) {
  const int token = blockIdx.x, h = blockIdx.y;
  unsigned char* const page = a.pages + a.page_offsets[token];
  const uint64_t sh = a.rows.Of(a.slots[token], h);
  const uint64_t row_bytes = static_cast<uint64_t>(a.head_dim) * 2;
  unsigned char* const dst[2] = {page + sh * row_bytes, page + a.parts.v_codes + sh * row_bytes};
  const unsigned char* const src[2] = {static_cast<const unsigned char*>(a.k_rows[token]) + h * row_bytes,
                                       static_cast<const unsigned char*>(a.v_rows[token]) + h * row_bytes};
  for (int part = 0; part < 2; ++part) {
    if (((reinterpret_cast<uintptr_t>(src[part]) | reinterpret_cast<uintptr_t>(dst[part]) | row_bytes) & 15) == 0) {
      for (uint64_t at = threadIdx.x * 16; at < row_bytes; at += 32 * 16) {
        *reinterpret_cast<uint4*>(dst[part] + at) = *reinterpret_cast<const uint4*>(src[part] + at);
      }
    } else {
      for (uint64_t at = threadIdx.x * 2; at < row_bytes; at += 32 * 2) {
        *reinterpret_cast<uint16_t*>(dst[part] + at) = *reinterpret_cast<const uint16_t*>(src[part] + at);
      }
    }
  }
}

}  // namespace
}  // namespace sage::cuda

extern "C" sage_status_t sage_kv_quantize(const sage_kv_quantize_params_t* p, sage_stream_t stream) {
  using namespace sage::cuda;
  ClearLastError();
  if (p == nullptr) return Fail(SAGE_ERR_INVALID_ARGUMENT, "kv quantize: null params");
  if (stream == nullptr) return Fail(SAGE_ERR_INVALID_ARGUMENT, "kv quantize: null stream (the default stream is never used)");
  if (p->dtype != SAGE_DTYPE_F16 && p->dtype != SAGE_DTYPE_BF16) {
    return Fail(SAGE_ERR_INVALID_ARGUMENT, "kv quantize: dtype %d unknown", static_cast<int>(p->dtype));
  }
  const bool copy = p->storage == SAGE_KV_16BIT;
  if (copy ? (p->head_dim < 1 || p->head_dim > kMaxHeadDim)
           : (p->head_dim < 32 || p->head_dim > kMaxHeadDim || p->head_dim % 32 != 0)) {
    return Fail(SAGE_ERR_INVALID_ARGUMENT, "kv quantize: head_dim %d (quantized: a multiple of 32; at most 256)", p->head_dim);
  }
  if (p->num_kv_heads < 1 || p->num_kv_heads > 65535 || p->page_tokens < 1 || p->count < 0) {
    return Fail(SAGE_ERR_INVALID_ARGUMENT, "kv quantize: heads %d (1..65535), page_tokens %d, count %d", p->num_kv_heads,
                p->page_tokens, p->count);
  }
  if (p->storage != SAGE_KV_16BIT && p->storage != SAGE_KV_INT8K_FP8V && p->storage != SAGE_KV_INT4K_FP8V) {
    return Fail(SAGE_ERR_INVALID_ARGUMENT, "kv quantize: storage %d unknown", static_cast<int>(p->storage));
  }
  if (p->storage == SAGE_KV_INT4K_FP8V && p->head_dim % 64 != 0) {  // where the nibble order is a permutation
    return Fail(SAGE_ERR_INVALID_ARGUMENT, "kv quantize: head_dim %d with INT4K_FP8V (a multiple of 64)", p->head_dim);
  }
  if (p->layout != SAGE_KV_TOKEN_MAJOR && p->layout != SAGE_KV_HEAD_MAJOR) {
    return Fail(SAGE_ERR_INVALID_ARGUMENT, "kv quantize: layout %d (TOKEN_MAJOR=0, HEAD_MAJOR=1)", static_cast<int>(p->layout));
  }
  if (p->count == 0) return SAGE_OK;
  const bool centred = p->k_centered != nullptr || p->v != nullptr;
  if (copy && centred) return Fail(SAGE_ERR_INVALID_ARGUMENT, "kv quantize: 16BIT storage takes the rows form (k_rows, v_rows)");
  if (p->pages == nullptr || p->page_offsets == nullptr || p->slots == nullptr ||
      (centred && (p->k_centered == nullptr || p->v == nullptr)) ||
      (!centred && (p->k_rows == nullptr || p->v_rows == nullptr || (!copy && p->k_means == nullptr)))) {
    return Fail(SAGE_ERR_INVALID_ARGUMENT,
                "kv quantize: null pointer (k_centered and v, or k_rows, v_rows and k_means; 16BIT: k_rows and v_rows)");
  }
  const QuantizeArgs a{p->storage == SAGE_KV_INT4K_FP8V, PartsOf(p->storage, p->page_tokens, p->num_kv_heads, p->head_dim),
                       RowsOf(p->layout, p->page_tokens, p->num_kv_heads),
                       static_cast<unsigned char*>(p->pages), p->page_tokens, p->num_kv_heads, p->head_dim,
                       p->page_offsets, p->slots, p->k_centered, static_cast<const uint16_t*>(p->v),
                       centred ? nullptr : p->k_rows, centred ? nullptr : p->v_rows, centred ? nullptr : p->k_means};
  const dim3 grid(static_cast<unsigned>(p->count), static_cast<unsigned>(p->num_kv_heads));
  const auto st = reinterpret_cast<cudaStream_t>(stream);
  if (copy) {
    KvCopyRowsKernel<<<grid, 32, 0, st>>>(a);
  } else if (p->dtype == SAGE_DTYPE_BF16) {
    KvQuantizeKernel<__nv_bfloat16><<<grid, p->head_dim, 0, st>>>(a);
  } else {
    KvQuantizeKernel<__half><<<grid, p->head_dim, 0, st>>>(a);
  }
  SAGE_CHECK_LAUNCH("KvQuantizeKernel");
  return SAGE_OK;
}
