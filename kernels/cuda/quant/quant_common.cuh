// Device helpers shared by the quantizers.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

namespace sage::cuda {

// Threads per block of every quantization kernel (the tile bodies are written for it).
inline constexpr int kQuantThreads = 128;

template <bool kBf16>
__device__ __forceinline__ float2 Load2(const void* base, int64_t elem) {
  if constexpr (kBf16) {
    const __nv_bfloat162 v = *reinterpret_cast<const __nv_bfloat162*>(static_cast<const __nv_bfloat16*>(base) + elem);
    return __bfloat1622float2(v);
  } else {
    const __half2 v = *reinterpret_cast<const __half2*>(static_cast<const __half*>(base) + elem);
    return __half22float2(v);
  }
}

// Two adjacent 16-bit elements as one raw word (element 0 in the low half).
__device__ __forceinline__ uint32_t LoadRaw2(const void* base, int64_t elem) {
  return *reinterpret_cast<const uint32_t*>(static_cast<const uint16_t*>(base) + elem);
}
// Eight adjacent 16-bit elements (16 bytes; elem must be a multiple of 8).
__device__ __forceinline__ uint4 LoadRaw8(const void* base, int64_t elem) {
  return __ldg(reinterpret_cast<const uint4*>(static_cast<const uint16_t*>(base) + elem));
}

template <bool kBf16>
__device__ __forceinline__ float RawToFloat(uint32_t pair, int which) {
  const unsigned short bits = static_cast<unsigned short>(which ? pair >> 16 : pair & 0xFFFFu);
  if constexpr (kBf16) {
    return __bfloat162float(__ushort_as_bfloat16(bits));
  } else {
    return __half2float(__ushort_as_half(bits));
  }
}

// Rows [0, R) of one head of a [tokens, heads, D] tensor -> tile[R][D/2 + 1] (raw 16-bit pairs, odd
// word stride), rows >= valid as zeros (valid >= 1). The 16-byte loads of kBatch iterations are all
// issued before their stores: addresses past the sequence are clamped to its last row (always
// readable) and the value replaced by zeros afterwards, so no branch sits between the loads (a
// `tok < len ? load : 0` per iteration compiled to one load in flight per branch). kTwo: a second
// tensor at the same rows (src1 -> tile1) shares the batches.
template <int R, int D, int kThreads, int kBatch, bool kTwo>
__device__ __forceinline__ void LoadRowsToSmem(uint32_t (*tile0)[D / 2 + 1], uint32_t (*tile1)[D / 2 + 1],
                                               const void* src0, const void* src1, int64_t first_elem,
                                               int64_t row_stride, int valid) {
  constexpr int kIters = R * D / 8 / kThreads;
  static_assert(R * D / 8 % kThreads == 0 && kIters % kBatch == 0, "whole batches");
#pragma unroll
  for (int b0 = 0; b0 < kIters; b0 += kBatch) {
    uint4 a[kBatch], v[kBatch];
#pragma unroll
    for (int i = 0; i < kBatch; ++i) {
      const int idx = static_cast<int>(threadIdx.x) + (b0 + i) * kThreads;
      const int r = idx / (D / 8), c8 = idx % (D / 8);
      const int64_t e = first_elem + static_cast<int64_t>(min(r, valid - 1)) * row_stride + 8 * c8;
      a[i] = LoadRaw8(src0, e);
      if constexpr (kTwo) v[i] = LoadRaw8(src1, e);
    }
#pragma unroll
    for (int i = 0; i < kBatch; ++i) {
      const int idx = static_cast<int>(threadIdx.x) + (b0 + i) * kThreads;
      const int r = idx / (D / 8), c8 = idx % (D / 8);
      const bool in = r < valid;
      tile0[r][4 * c8] = in ? a[i].x : 0u;
      tile0[r][4 * c8 + 1] = in ? a[i].y : 0u;
      tile0[r][4 * c8 + 2] = in ? a[i].z : 0u;
      tile0[r][4 * c8 + 3] = in ? a[i].w : 0u;
      if constexpr (kTwo) {
        tile1[r][4 * c8] = in ? v[i].x : 0u;
        tile1[r][4 * c8 + 1] = in ? v[i].y : 0u;
        tile1[r][4 * c8 + 2] = in ? v[i].z : 0u;
        tile1[r][4 * c8 + 3] = in ? v[i].w : 0u;
      }
    }
  }
}

// max()/min() that keep a NaN from either side (fmaxf/fminf drop it): a quantization group holding
// a NaN gets a NaN scale, so the client's NaN reaches O (docs/NUMERICS.md, "Non-finite inputs").
__device__ __forceinline__ float NanMax(float a, float b) { return (a > b || a != a) ? a : b; }
__device__ __forceinline__ float NanMin(float a, float b) { return (a < b || a != a) ? a : b; }

// amax == 0 -> 1 (an all-zero group quantizes to zeros with a finite scale).
__device__ __forceinline__ float SafeAmax(float amax) { return amax == 0.0f ? 1.0f : amax; }

// clamp(rint(x · inv), ±qmax): IEEE product, round-half-even.
__device__ __forceinline__ int QuantizeInt(float x, float inv, int qmax) {
  const int q = __float2int_rn(__fmul_rn(x, inv));
  return q > qmax ? qmax : (q < -qmax ? -qmax : q);
}

}  // namespace sage::cuda
