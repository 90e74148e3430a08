// Warp-level tensor-core instructions (mma.sync, ldmatrix) used by the attn_mma kernels, as thin
// inline-PTX wrappers. Fragment layouts (PTX ISA, "Matrix fragments for mma.m16n8kK"), lane l,
// g = l / 4, t = l % 4:
//   C/D (m16n8, 32-bit):   c0,c1 = row g, cols 2t,2t+1;  c2,c3 = row g+8, same cols.
//   A f16/bf16 (m16k16):   a0 = row g, k 2t..2t+1; a1 = row g+8; a2 = row g, k 8+2t; a3 = row g+8, k 8+2t.
//   B f16/bf16 (k16n8):    b0 = k 2t..2t+1, col g;  b1 = k 8+2t..9+2t, col g.
//   A s8 (m16k32):         a0 = row g, k 4t..4t+3; a1 = row g+8; a2 = row g, k 16+4t; a3 = row g+8, k 16+4t.
//   B s8 (k32n8):          b0 = k 4t..4t+3, col g;  b1 = k 16+4t.., col g.
//   A s4 (m16k64):         a0 = row g, k 8t..8t+7; a1 = row g+8; a2 = row g, k 32+8t; a3 = row g+8.
//   B s4 (k64n8):          b0 = k 8t..8t+7, col g;  b1 = k 32+8t.., col g.
// So for 8-bit and 4-bit operands stored row-major (K-major), a fragment register is always the
// 32-bit word at byte 4t (or 16 + 4t) of a 32-byte slice of one row.
#pragma once

#include <cstdint>

namespace sage::cuda::mma {

// D = A·B + D, fp16 inputs, fp32 accumulators.
__device__ __forceinline__ void MmaF16(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// D = A·B + D, bf16 inputs, fp32 accumulators.
__device__ __forceinline__ void MmaBf16(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// D = A·B + D, signed 8-bit inputs, int32 accumulators (native IMMA on sm_80/89/90).
__device__ __forceinline__ void MmaS8(int32_t (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};\n"
      : "+r"(d[0]), "+r"(d[1]), "+r"(d[2]), "+r"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// D = A·B + D, signed 4-bit inputs (PTX nibble order), int32 accumulators. Native on sm_80/sm_89;
// on sm_90 ptxas lowers it to a software routine (about 52 TOPS on the H100).
__device__ __forceinline__ void MmaS4(int32_t (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k64.row.col.s32.s4.s4.s32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};\n"
      : "+r"(d[0]), "+r"(d[1]), "+r"(d[2]), "+r"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// Four 8×8 16-bit matrices from shared memory; lane l supplies the row address of matrix l / 8, row
// l % 8, and receives row l / 4, 16-bit elements 2(l % 4), 2(l % 4) + 1 of each: with rows = keys
// that is a Q·Kᵀ B-fragment register (for 8-bit data too: 4 bytes 4t..4t+3 of row g).
__device__ __forceinline__ void LdMatrixX4(uint32_t (&r)[4], const void* smem_row) {
  const auto addr = static_cast<uint32_t>(__cvta_generic_to_shared(smem_row));
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}

// Four transposed 8×8 16-bit matrices from shared memory; lane l supplies the row address of
// matrix l / 8, row l % 8. Lane l receives M[2t][g], M[2t+1][g] of each matrix: with rows = keys
// and columns = channels that is exactly a B fragment register of P·V.
__device__ __forceinline__ void LdMatrixX4Trans(uint32_t (&r)[4], const void* smem_row) {
  const auto addr = static_cast<uint32_t>(__cvta_generic_to_shared(smem_row));
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}

}  // namespace sage::cuda::mma
