// Register-level pieces of the tensor-core paged decode (paged_decode_mma.cuh): the mma.sync
// wrappers, and the exact conversions of stored codes into MMA operand fragments (INT8 and INT4 K to
// f16/bf16 pairs, E4M3 V to f16 pairs), plus the non-finite mask of the masked-chunk path.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>

#include <cstdint>

#include "kernels/cuda/decode/paged_decode.h"
#include "kernels/cuda/decode/paged_decode_kernel.cuh"

namespace sage::cuda::decode {

template <IoType kIo>
__device__ __forceinline__ void Mma1688(float* d, uint32_t a0, uint32_t a1, uint32_t b0) {
  if constexpr (kIo == IoType::kF16) {
    asm volatile("mma.sync.aligned.m16n8k8.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5}, {%6}, {%0,%1,%2,%3};\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                 : "r"(a0), "r"(a1), "r"(b0));
  } else {
    asm volatile("mma.sync.aligned.m16n8k8.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5}, {%6}, {%0,%1,%2,%3};\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                 : "r"(a0), "r"(a1), "r"(b0));
  }
}

template <IoType kIo>
__device__ __forceinline__ void Mma16816(float* d, const uint32_t* a, uint32_t b0, uint32_t b1) {
  if constexpr (kIo == IoType::kF16) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  } else {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
}

// Four int8 codes (channels e..e+3) -> two packed 16-bit pairs (e, e+1), (e+2, e+3), exactly.
template <IoType kIo>
__device__ __forceinline__ void Int8x4To16x2(uint32_t w, uint32_t& lo, uint32_t& hi) {
  const uint32_t u = w ^ 0x80808080u;  // biased to unsigned
  if constexpr (kIo == IoType::kF16) {
    // 0x64XX is 1024 + XX in f16; minus 1152 = 1024 + the bias, exact.
    const uint32_t a = __byte_perm(u, 0x64646464u, 0x4140);
    const uint32_t b = __byte_perm(u, 0x64646464u, 0x4342);
    const __half2 bias = __half2(__ushort_as_half(0x6480), __ushort_as_half(0x6480));
    const __half2 x = __hsub2(*reinterpret_cast<const __half2*>(&a), bias);
    const __half2 y = __hsub2(*reinterpret_cast<const __half2*>(&b), bias);
    lo = *reinterpret_cast<const uint32_t*>(&x);
    hi = *reinterpret_cast<const uint32_t*>(&y);
  } else {
    float f[4];
    Int8x4ToFloat(w, f);
    const __nv_bfloat162 x = __floats2bfloat162_rn(f[0], f[1]);  // |code| <= 128: exact
    const __nv_bfloat162 y = __floats2bfloat162_rn(f[2], f[3]);
    lo = *reinterpret_cast<const uint32_t*>(&x);
    hi = *reinterpret_cast<const uint32_t*>(&y);
  }
}

// Eight INT4 K codes (nibbles u = code + 8 of one word) -> four packed 16-bit pairs, exactly: out[j]
// holds nibbles j (low half) and j + 4 (high half), the pairs kv_pages.h's nibble order makes MMA
// B fragments. The nibble lands in the mantissa of 1024 (f16) or 128 (bf16), whose ulp is 1.
template <IoType kIo>
__device__ __forceinline__ void Int4x8To16x2(uint32_t w, uint32_t* out) {
  constexpr uint32_t kMagic = kIo == IoType::kF16 ? 0x64006400u : 0x43004300u;
#pragma unroll
  for (int j = 0; j < 4; ++j) {
    const uint32_t x = ((w >> (4 * j)) & 0x000F000Fu) | kMagic;
    if constexpr (kIo == IoType::kF16) {
      const __half2 bias = __half2(__ushort_as_half(0x6408), __ushort_as_half(0x6408));  // 1032
      const __half2 y = __hsub2(*reinterpret_cast<const __half2*>(&x), bias);
      out[j] = *reinterpret_cast<const uint32_t*>(&y);
    } else {
      const __nv_bfloat162 bias = __nv_bfloat162(__ushort_as_bfloat16(0x4308), __ushort_as_bfloat16(0x4308));  // 136
      const __nv_bfloat162 y = __hsub2(*reinterpret_cast<const __nv_bfloat162*>(&x), bias);
      out[j] = *reinterpret_cast<const uint32_t*>(&y);
    }
  }
}

// Two E4M3 codes in the low 16 bits -> f16x2 (exact; NaN codes stay NaN).
__device__ __forceinline__ uint32_t Fp8x2ToHalf2(uint32_t w16) {
  const __half2_raw h = __nv_cvt_fp8x2_to_halfraw2(static_cast<__nv_fp8x2_storage_t>(w16 & 0xFFFFu), __NV_E4M3);
  return static_cast<uint32_t>(h.x) | (static_cast<uint32_t>(h.y) << 16);
}

// Masked chunks: a token some row must not see has p = 0 for that row, and 0 · NaN (or Inf) V would
// still poison it through the MMA. There the non-finite V values are zeroed in the B fragment and
// counted separately: F = visible · [V non-finite] (one more MMA per n-tile), and O[g][d] becomes NaN
// where F > 0, as in the emulation (for Inf too, where the emulation may give ±Inf).
template <bool kBf16>
__device__ __forceinline__ uint32_t NonFiniteMask(uint32_t x) {  // 0xFFFF per non-finite 16-bit half
  constexpr uint32_t kExp = kBf16 ? 0x7F807F80u : 0x7C007C00u;
  return __vcmpeq2(x & kExp, kExp);
}

}  // namespace sage::cuda::decode
