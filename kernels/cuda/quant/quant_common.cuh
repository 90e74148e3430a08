// Device helpers shared by the quantizers.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

namespace sage::cuda {

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

// amax == 0 -> 1 (an all-zero group quantizes to zeros with a finite scale).
__device__ __forceinline__ float SafeAmax(float amax) { return amax == 0.0f ? 1.0f : amax; }

// clamp(rint(x · inv), ±qmax): IEEE product, round-half-even.
__device__ __forceinline__ int QuantizeInt(float x, float inv, int qmax) {
  const int q = __float2int_rn(__fmul_rn(x, inv));
  return q > qmax ? qmax : (q < -qmax ? -qmax : q);
}

}  // namespace sage::cuda
