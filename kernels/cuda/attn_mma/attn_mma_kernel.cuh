// The attn_mma kernel template: one CTA (4 warps, 128 threads) per 64-row Q tile of one
// (sequence, head), keys in 128-key blocks. Each warp owns 16 query rows × all keys of a block:
// S = Q·Kᵀ on mma.sync (f16/bf16 m16n8k16, s8 m16n8k32 or s4 m16n8k64), online softmax in the log2
// domain on the accumulator registers, then P·V on mma.sync m16n8k16 (f16 or bf16) with the S
// accumulator reused as the A fragment (FA2 register layout) and V from shared memory.
// Recipe arithmetic: docs/NUMERICS.md; instantiations: attn_mma_<recipe>.cu.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>

#include <cstdint>

#include "kernels/cuda/attn_mma/attn_mma.h"
#include "kernels/cuda/attn_mma/mma_ptx.cuh"
#include "kernels/cuda/internal/workspace.h"

namespace sage::cuda::attn_mma {

enum class QkOperand { kF16, kBF16, kInt8, kInt4 };  // Q·Kᵀ mma input type
enum class PvOperand { kF16, kBF16, kFp8 };          // P̂ (and V̂) before the f16/bf16 mma
enum class VSource { kRawF16, kRawBF16, kFp8Image }; // caller's V buffer, or the workspace's V̂

inline constexpr int kThreads = 128;   // 4 warps
inline constexpr int kWarpRows = 16;   // rows of the Q tile per warp (one m16 tile)
inline constexpr float kLog2e = 1.4426950408889634f;
inline constexpr float kLn2 = 0.69314718055994531f;
inline constexpr float kFp8POffset = 8.807f;  // 2^8.807 ≈ 448: the row max of P̃ maps to e4m3 max.
inline constexpr int kSmemPadBytes = 16;      // row padding of 16-bit tiles: conflict-free ldmatrix

static_assert(kThreads / 32 * kWarpRows == kQTileRows, "4 warps x 16 rows make one 64-row Q tile");
static_assert(kKBlockRows == 128, "the S register tile is 16 n8 tiles wide");

template <QkOperand QK, PvOperand PV, VSource VS, int D>
struct Traits {
  static_assert(D == 64 || D == 128, "head dims 64 and 128");
  static_assert(!(PV == PvOperand::kFp8) || VS == VSource::kFp8Image, "FP8 P·V reads V̂");
  static constexpr bool kIntQk = QK == QkOperand::kInt8 || QK == QkOperand::kInt4;
  // Bytes per Q/K row: integer operands are the workspace tile images (no padding, conflict-free by
  // construction), 16-bit operands rows of the caller's tensor padded by 16 bytes in shared memory.
  static constexpr int kQkRowBytes = QK == QkOperand::kInt4 ? D / 2 : QK == QkOperand::kInt8 ? D : 2 * D;
  static constexpr int kKStride = kIntQk ? kQkRowBytes : kQkRowBytes + kSmemPadBytes;
  static constexpr int kKSmemBytes = kKBlockRows * kKStride;
  static constexpr bool kRawV = VS != VSource::kFp8Image;
  static constexpr int kVStride = kRawV ? 2 * D + kSmemPadBytes : kKBlockRows;  // per key / per channel
  static constexpr int kVSmemBytes = kRawV ? kKBlockRows * kVStride : D * kKBlockRows;
  static constexpr int kDsSmemBytes = kKBlockRows * static_cast<int>(sizeof(float));
  static constexpr int kSmemBytes = kKSmemBytes + kVSmemBytes + kDsSmemBytes;
  // k elements per mma along the head dim, and mma steps per row.
  static constexpr int kQkK = QK == QkOperand::kInt4 ? 64 : QK == QkOperand::kInt8 ? 32 : 16;
  static constexpr int kQkSteps = D / kQkK;
  static constexpr int kNTiles = kKBlockRows / 8;  // n8 tiles of S per block
  static constexpr int kDTiles = D / 8;            // n8 tiles of O
  static constexpr float kPOffset = PV == PvOperand::kFp8 ? kFp8POffset : 0.0f;
  // K fragments by ldmatrix.x4 (two k-steps per instruction) where registers allow: 16-bit Q·Kᵀ at
  // D = 128 holds 32 Q registers and spills with the wider loads, so it reads 32-bit words instead.
  static constexpr bool kLdMatrixK = kQkSteps % 2 == 0 && (kIntQk || D == 64);
  static_assert(kDTiles % 2 == 0, "ldmatrix.x4 loads two O n8 tiles at once");
};

__device__ __forceinline__ float FastExp2(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));  // ex2(-inf) = +0
  return y;
}

__device__ __forceinline__ uint32_t Ld32(const void* p) { return *static_cast<const uint32_t*>(p); }

// x >= 0 rounded to the nearest e4m3 value (ties to even), saturating at 448: the software form of
// cvt.rn.satfinite.e4m3x2.f32 for sm_80, where P̃ (never negative) is the only input.
__device__ __forceinline__ float RoundNonNegativeToE4M3(float x) {
  constexpr float kMinNormal = 0.015625f;      // 2^-6
  constexpr float kSubnormalSteps = 512.0f;    // subnormal spacing 2^-9
  if (x >= 448.0f) return 448.0f;
  if (x < kMinNormal) return rintf(x * kSubnormalSteps) / kSubnormalSteps;
  uint32_t bits = __float_as_uint(x);
  bits += 0x7FFFFu + ((bits >> 20) & 1u);     // RNE to 3 mantissa bits
  return __uint_as_float(bits & ~0xFFFFFu);
}

// One e4m3 code as an exact fp16 bit pattern (sm_80 path; no NaN codes occur in V̂).
__device__ __forceinline__ uint32_t E4M3ToHalfBits(uint32_t c) {
  const uint32_t sign = (c & 0x80u) << 8, e = (c >> 3) & 0xFu, m = c & 0x7u;
  if (e != 0) return sign | ((e + 8u) << 10) | (m << 7);  // rebias 7 -> 15, 3 -> 10 mantissa bits
  const __half h = __float2half_rn(static_cast<float>(m) * (1.0f / 512.0f));  // subnormal m · 2^-9
  return sign | __half_as_ushort(h);
}

// Two P̃ values as the 32-bit A-fragment register of the P·V mma.
template <PvOperand PV>
__device__ __forceinline__ uint32_t PackP(float x, float y) {
  if constexpr (PV == PvOperand::kBF16) {
    __nv_bfloat162 v = __floats2bfloat162_rn(x, y);
    return *reinterpret_cast<uint32_t*>(&v);
  } else if constexpr (PV == PvOperand::kF16) {
    __half2 v = __floats2half2_rn(x, y);
    return *reinterpret_cast<uint32_t*>(&v);
  } else {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 890
    // No FP8 conversion instructions before sm_89: round in fp32 with the same result (P̃ >= 0).
    __half2 v = __floats2half2_rn(RoundNonNegativeToE4M3(x), RoundNonNegativeToE4M3(y));
    return *reinterpret_cast<uint32_t*>(&v);
#else
    // Round to e4m3 (RN, satfinite, as cvt.rn.satfinite.e4m3x2.f32), then widen exactly to fp16.
    const __nv_fp8x2_storage_t q = __nv_cvt_float2_to_fp8x2(make_float2(x, y), __NV_SATFINITE, __NV_E4M3);
    const __half2_raw h = __nv_cvt_fp8x2_to_halfraw2(q, __NV_E4M3);
    return static_cast<uint32_t>(h.x) | (static_cast<uint32_t>(h.y) << 16);
#endif
  }
}

// Four e4m3 codes (keys 2t, 2t+1, 8+2t, 9+2t of a 16-key slab, from V̂'s permuted order) as the two
// fp16 B-fragment registers of an m16n8k16 P·V mma.
__device__ __forceinline__ void Fp8WordToB(uint32_t w, uint32_t& b0, uint32_t& b1) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 890
  b0 = E4M3ToHalfBits(w & 0xFFu) | (E4M3ToHalfBits((w >> 8) & 0xFFu) << 16);
  b1 = E4M3ToHalfBits((w >> 16) & 0xFFu) | (E4M3ToHalfBits(w >> 24) << 16);
  return;
#endif
  const __half2_raw lo = __nv_cvt_fp8x2_to_halfraw2(static_cast<__nv_fp8x2_storage_t>(w & 0xFFFFu), __NV_E4M3);
  const __half2_raw hi = __nv_cvt_fp8x2_to_halfraw2(static_cast<__nv_fp8x2_storage_t>(w >> 16), __NV_E4M3);
  b0 = static_cast<uint32_t>(lo.x) | (static_cast<uint32_t>(lo.y) << 16);
  b1 = static_cast<uint32_t>(hi.x) | (static_cast<uint32_t>(hi.y) << 16);
}

// 8 bf16 -> 8 fp16 (V of a bf16 request on the FP16 P·V recipe).
__device__ __forceinline__ uint4 Bf16x8ToF16x8(uint4 v) {
  uint32_t w[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const __nv_bfloat162 b = *reinterpret_cast<const __nv_bfloat162*>(&w[i]);
    const float2 f = __bfloat1622float2(b);
    __half2 h = __floats2half2_rn(f.x, f.y);
    w[i] = *reinterpret_cast<uint32_t*>(&h);
  }
  return make_uint4(w[0], w[1], w[2], w[3]);
}

__device__ __forceinline__ float Load16AsFloat(const uint16_t* p, sage_dtype_t dt) {
  const uint16_t bits = *p;
  if (dt == SAGE_DTYPE_BF16) return __uint_as_float(static_cast<uint32_t>(bits) << 16);
  return __half2float(__ushort_as_half(bits));
}

// Copies `rows` rows of a packed [tokens, heads, D] 16-bit tensor (starting at token `first`, head
// `head`) into a padded shared tile; rows at or past `valid` become zeros.
template <int D, bool kBf16ToF16>
__device__ __forceinline__ void LoadRawRows(unsigned char* smem, int stride, const uint16_t* src, int64_t first,
                                            int heads, int head, int rows, int valid) {
  constexpr int kChunks = D * 2 / 16;  // 16-byte chunks per row
  for (int c = threadIdx.x; c < rows * kChunks; c += kThreads) {
    const int r = c / kChunks, ch = c % kChunks;
    uint4 val = make_uint4(0, 0, 0, 0);
    if (r < valid) {
      val = *reinterpret_cast<const uint4*>(src + ((first + r) * heads + head) * D + ch * 8);
      if constexpr (kBf16ToF16) val = Bf16x8ToF16x8(val);
    }
    *reinterpret_cast<uint4*>(smem + r * stride + ch * 16) = val;
  }
}

// 16 bytes global -> shared without registers (cp.async, sm_80+); `valid == false` writes zeros.
__device__ __forceinline__ void CpAsync16(void* smem, const void* gmem, bool valid) {
  const auto dst = static_cast<uint32_t>(__cvta_generic_to_shared(smem));
  const int src_bytes = valid ? 16 : 0;
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(gmem), "r"(src_bytes));
}
__device__ __forceinline__ void CpAsyncCommit() { asm volatile("cp.async.commit_group;\n" ::); }
// Waits until at most `kPending` of this thread's committed groups are still in flight.
template <int kPending>
__device__ __forceinline__ void CpAsyncWait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(kPending));
}

// Asynchronous LoadRawRows (no conversion): rows at or past `valid` are zero-filled.
template <int D>
__device__ __forceinline__ void LoadRawRowsAsync(unsigned char* smem, int stride, const uint16_t* src, int64_t first,
                                                 int heads, int head, int rows, int valid) {
  constexpr int kChunks = D * 2 / 16;
  for (int c = threadIdx.x; c < rows * kChunks; c += kThreads) {
    const int r = c / kChunks, ch = c % kChunks;
    const uint16_t* g = r < valid ? src + ((first + r) * heads + head) * D + ch * 8 : src;
    CpAsync16(smem + r * stride + ch * 16, g, r < valid);
  }
}

// Copies a contiguous blob (a workspace tile image) into shared memory, asynchronously.
__device__ __forceinline__ void LoadBlobAsync(unsigned char* smem, const unsigned char* src, int bytes) {
  for (int c = threadIdx.x; c < bytes / 16; c += kThreads) CpAsync16(smem + c * 16, src + c * 16, true);
}

template <QkOperand QK, PvOperand PV, VSource VS, int D>
__global__ void __launch_bounds__(kThreads) AttnMmaKernel(const __grid_constant__ AttnMmaParams p) {
  using T = Traits<QK, PV, VS, D>;
  extern __shared__ __align__(16) unsigned char smem[];
  unsigned char* k_smem = smem;
  unsigned char* v_smem = smem + T::kKSmemBytes;
  float* ds_smem = reinterpret_cast<float*>(v_smem + T::kVSmemBytes);

  // Highest Q tiles first: under a causal mask they see the most keys, so the long CTAs start early
  // and the short ones fill the tail.
  const int b = blockIdx.z, h = blockIdx.y, qtile = gridDim.x - 1 - blockIdx.x;
  const int q_begin = p.cu_seqlens_q[b], q_len = p.cu_seqlens_q[b + 1] - q_begin;
  if (qtile * kQTileRows >= q_len) return;
  const int k_begin = p.cu_seqlens_k[b], k_len = p.cu_seqlens_k[b + 1] - k_begin;
  const int hk = h / (p.num_q_heads / p.num_kv_heads);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  const int r0 = warp * kWarpRows + g;          // this thread's rows in the tile: r0 and r0 + 8
  const int i0 = qtile * kQTileRows + r0;       // ... and in the sequence
  const int row_of[2] = {i0, i0 + 8};
  const bool causal = p.mask == SAGE_MASK_CAUSAL;
  const int diag = k_len - q_len;               // bottom-right: query i sees keys j <= i + diag
  int kv_end = k_len;
  if (causal) kv_end = min(k_len, qtile * kQTileRows + kQTileRows + diag);
  const int n_blocks = kv_end > 0 ? (kv_end + kKBlockRows - 1) / kKBlockRows : 0;
  const float scale_log2 = p.softmax_scale * kLog2e;

  // Padded tile / block numbers of the workspace images (tiles restart at each sequence start).
  const int64_t q_tile_ws = PaddedQStart(p.cu_seqlens_q, b) / kQTileRows + qtile;
  const int64_t k_block_ws0 = PaddedKStart(p.cu_seqlens_k, b) / kKBlockRows;

  // ---- Q fragments, kept in registers for the whole tile ----
  uint32_t qa[T::kQkSteps][4];
  float q_coef = scale_log2;  // S·scale·log2e = acc · q_coef · δK  (δK = 1 for 16-bit Q·Kᵀ)
  if constexpr (T::kIntQk) {
    const unsigned char* img = (QK == QkOperand::kInt8 ? reinterpret_cast<const unsigned char*>(p.ws.q_i8)
                                                       : p.ws.q_i4) +
                               (h * p.ws.q_cap + q_tile_ws * kQTileRows) * T::kQkRowBytes;
#pragma unroll
    for (int ks = 0; ks < T::kQkSteps; ++ks) {
      qa[ks][0] = Ld32(img + TileImageOffset(r0, ks * 32 + 4 * t, T::kQkRowBytes));
      qa[ks][1] = Ld32(img + TileImageOffset(r0 + 8, ks * 32 + 4 * t, T::kQkRowBytes));
      qa[ks][2] = Ld32(img + TileImageOffset(r0, ks * 32 + 16 + 4 * t, T::kQkRowBytes));
      qa[ks][3] = Ld32(img + TileImageOffset(r0 + 8, ks * 32 + 16 + 4 * t, T::kQkRowBytes));
    }
    // Rows r0 and r0 + 8 are one per-thread group (workspace.h QScaleGroup).
    q_coef *= p.ws.q_scale[(h * p.ws.q_tiles + q_tile_ws) * kQGroupsPerTile + QScaleGroup(r0)];
  } else {
    const auto* q = static_cast<const uint16_t*>(p.q);
#pragma unroll
    for (int e = 0; e < 2; ++e) {
      const bool valid = row_of[e] < q_len;
      const uint16_t* row = q + (static_cast<int64_t>(q_begin + row_of[e]) * p.num_q_heads + h) * D;
#pragma unroll
      for (int ks = 0; ks < T::kQkSteps; ++ks) {
        qa[ks][e] = valid ? Ld32(row + ks * 16 + 2 * t) : 0u;
        qa[ks][2 + e] = valid ? Ld32(row + ks * 16 + 8 + 2 * t) : 0u;
      }
    }
  }

  float o[T::kDTiles][4];
#pragma unroll
  for (int n = 0; n < T::kDTiles; ++n) o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0.0f;
  float m[2] = {-INFINITY, -INFINITY};  // running row max of s2
  float l[2] = {0.0f, 0.0f};            // this thread's partial row sums of fp32 P̃
  const bool has_ds = T::kIntQk && p.ws.delta_s != nullptr;

  // Loads are split so each overlaps compute: K_{j+1} streams in during P·V of block j, V_j during
  // Q·K_jᵀ and the softmax (cp.async groups; single K and V buffers keep 2+ CTAs per SM).
  auto issue_k = [&](int blk) {
    const int key0 = blk * kKBlockRows;
    const int64_t kb_ws = k_block_ws0 + blk;
    if constexpr (T::kIntQk) {
      const unsigned char* kimg = (QK == QkOperand::kInt8 ? reinterpret_cast<const unsigned char*>(p.ws.k_i8)
                                                          : p.ws.k_i4) +
                                  (hk * p.ws.k_cap + kb_ws * kKBlockRows) * T::kQkRowBytes;
      LoadBlobAsync(k_smem, kimg, T::kKSmemBytes);
      if (has_ds) {
        const int j = threadIdx.x;  // one key per thread; visible after the next __syncthreads
        ds_smem[j] = key0 + j < k_len
                         ? p.ws.delta_s[(h * p.ws.q_tiles + q_tile_ws) * p.ws.ds_cols + key0 + j] * scale_log2
                         : 0.0f;
      }
    } else {
      LoadRawRowsAsync<D>(k_smem, T::kKStride, static_cast<const uint16_t*>(p.k), k_begin + key0, p.num_kv_heads,
                          hk, kKBlockRows, k_len - key0);
    }
  };
  auto issue_v = [&](int blk) {
    const int key0 = blk * kKBlockRows;
    if constexpr (T::kRawV) {
      if constexpr (VS == VSource::kRawBF16 && PV == PvOperand::kF16) {  // converts: synchronous
        LoadRawRows<D, true>(v_smem, T::kVStride, static_cast<const uint16_t*>(p.v), k_begin + key0,
                             p.num_kv_heads, hk, kKBlockRows, k_len - key0);
      } else {
        LoadRawRowsAsync<D>(v_smem, T::kVStride, static_cast<const uint16_t*>(p.v), k_begin + key0, p.num_kv_heads,
                            hk, kKBlockRows, k_len - key0);
      }
    } else {
      LoadBlobAsync(v_smem, p.ws.v_f8 + (hk * p.ws.k_cap + (k_block_ws0 + blk) * kKBlockRows) * D, T::kVSmemBytes);
    }
  };

  if (n_blocks > 0) issue_k(0);
  CpAsyncCommit();
  for (int blk = 0; blk < n_blocks; ++blk) {
    const int key0 = blk * kKBlockRows;
    const int64_t kb_ws = k_block_ws0 + blk;
    issue_v(blk);
    CpAsyncCommit();
    CpAsyncWait<1>();  // K_blk has landed (V_blk may be in flight)
    __syncthreads();

    // ---- S = Q·Kᵀ for 16 rows × 128 keys, scaled into the log2 domain ----
    float s[T::kNTiles][4];
    if constexpr (T::kIntQk) {
      const float coef = q_coef * p.ws.k_scale[(hk * p.ws.k_blocks + kb_ws) * kKGroupsPerBlock + t];
#pragma unroll
      for (int j = 0; j < T::kNTiles; ++j) {
        int32_t acc[4] = {0, 0, 0, 0};
        if constexpr (T::kLdMatrixK) {
          // One ldmatrix.x4 = the B fragments of two k-steps: 16-byte chunks 2ks .. 2ks+3 of rows j*8..j*8+7.
#pragma unroll
          for (int ks = 0; ks < T::kQkSteps; ks += 2) {
            uint32_t kb[4];
            mma::LdMatrixX4(kb, k_smem + TileImageOffset(j * 8 + lane % 8, (2 * ks + lane / 8) * 16, T::kQkRowBytes));
            if constexpr (QK == QkOperand::kInt8) {
              mma::MmaS8(acc, qa[ks], kb[0], kb[1]);
              mma::MmaS8(acc, qa[ks + 1], kb[2], kb[3]);
            } else {
              mma::MmaS4(acc, qa[ks], kb[0], kb[1]);
              mma::MmaS4(acc, qa[ks + 1], kb[2], kb[3]);
            }
          }
        } else {
#pragma unroll
          for (int ks = 0; ks < T::kQkSteps; ++ks) {
            const uint32_t b0 = Ld32(k_smem + TileImageOffset(j * 8 + g, ks * 32 + 4 * t, T::kQkRowBytes));
            const uint32_t b1 = Ld32(k_smem + TileImageOffset(j * 8 + g, ks * 32 + 16 + 4 * t, T::kQkRowBytes));
            if constexpr (QK == QkOperand::kInt8) mma::MmaS8(acc, qa[ks], b0, b1);
            else mma::MmaS4(acc, qa[ks], b0, b1);
          }
        }
#pragma unroll
        for (int e = 0; e < 4; ++e) s[j][e] = static_cast<float>(acc[e]) * coef;
        if (has_ds) {
          const float d0 = ds_smem[j * 8 + 2 * t], d1 = ds_smem[j * 8 + 2 * t + 1];
          s[j][0] += d0; s[j][1] += d1; s[j][2] += d0; s[j][3] += d1;
        }
      }
    } else {
#pragma unroll
      for (int j = 0; j < T::kNTiles; ++j) {
        float acc[4] = {0.0f, 0.0f, 0.0f, 0.0f};
        if constexpr (T::kLdMatrixK) {
          // One ldmatrix.x4 = the B fragments of two k16 steps (channels 16ks .. 16ks+31 of 8 keys).
          const unsigned char* krow = k_smem + (j * 8 + lane % 8) * T::kKStride + (lane / 8) * 16;
#pragma unroll
          for (int ks = 0; ks < T::kQkSteps; ks += 2) {
            uint32_t kb[4];
            mma::LdMatrixX4(kb, krow + ks * 32);
            if constexpr (QK == QkOperand::kBF16) {
              mma::MmaBf16(acc, qa[ks], kb[0], kb[1]);
              mma::MmaBf16(acc, qa[ks + 1], kb[2], kb[3]);
            } else {
              mma::MmaF16(acc, qa[ks], kb[0], kb[1]);
              mma::MmaF16(acc, qa[ks + 1], kb[2], kb[3]);
            }
          }
        } else {
          const unsigned char* krow = k_smem + (j * 8 + g) * T::kKStride + 4 * t;
#pragma unroll
          for (int ks = 0; ks < T::kQkSteps; ++ks) {
            const uint32_t b0 = Ld32(krow + ks * 32), b1 = Ld32(krow + ks * 32 + 16);
            if constexpr (QK == QkOperand::kBF16) mma::MmaBf16(acc, qa[ks], b0, b1);
            else mma::MmaF16(acc, qa[ks], b0, b1);
          }
        }
#pragma unroll
        for (int e = 0; e < 4; ++e) s[j][e] = acc[e] * q_coef;
      }
    }

    // ---- mask: past the sequence's keys, or above the bottom-right causal diagonal ----
    const bool need_mask = key0 + kKBlockRows > k_len || (causal && key0 + kKBlockRows - 1 > qtile * kQTileRows + diag);
    if (need_mask) {
#pragma unroll
      for (int j = 0; j < T::kNTiles; ++j)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int key = key0 + j * 8 + 2 * t + (e & 1);
          if (key >= k_len || (causal && key > row_of[e / 2] + diag)) s[j][e] = -INFINITY;
        }
    }

    // ---- online softmax (rows r0: e = 0, r0 + 8: e = 1; a row lives in one lane quad) ----
    float mx[2] = {-INFINITY, -INFINITY};
#pragma unroll
    for (int j = 0; j < T::kNTiles; ++j) {
      mx[0] = fmaxf(mx[0], fmaxf(s[j][0], s[j][1]));
      mx[1] = fmaxf(mx[1], fmaxf(s[j][2], s[j][3]));
    }
    float base[2];
#pragma unroll
    for (int e = 0; e < 2; ++e) {
      mx[e] = fmaxf(mx[e], __shfl_xor_sync(0xFFFFFFFFu, mx[e], 1));
      mx[e] = fmaxf(mx[e], __shfl_xor_sync(0xFFFFFFFFu, mx[e], 2));
      const float m_new = fmaxf(m[e], mx[e]);
      const float m_use = m_new == -INFINITY ? 0.0f : m_new;  // a row with no visible key yet
      const float alpha = FastExp2(m[e] - m_use);
      l[e] *= alpha;
#pragma unroll
      for (int n = 0; n < T::kDTiles; ++n) {
        o[n][2 * e] *= alpha;
        o[n][2 * e + 1] *= alpha;
      }
      m[e] = m_new;
      base[e] = m_use - T::kPOffset;
    }
#pragma unroll
    for (int j = 0; j < T::kNTiles; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        s[j][e] = FastExp2(s[j][e] - base[e / 2]);
        l[e / 2] += s[j][e];
      }

    __syncthreads();  // every warp is done with k_smem / ds_smem
    if (blk + 1 < n_blocks) issue_k(blk + 1);
    CpAsyncCommit();
    CpAsyncWait<1>();  // V_blk has landed (K_{blk+1} may be in flight)
    __syncthreads();

    // ---- O += P̂·V̂ over the block's 8 k16 slabs ----
#pragma unroll
    for (int sl = 0; sl < T::kNTiles / 2; ++sl) {
      uint32_t pa[4];
      pa[0] = PackP<PV>(s[2 * sl][0], s[2 * sl][1]);
      pa[1] = PackP<PV>(s[2 * sl][2], s[2 * sl][3]);
      pa[2] = PackP<PV>(s[2 * sl + 1][0], s[2 * sl + 1][1]);
      pa[3] = PackP<PV>(s[2 * sl + 1][2], s[2 * sl + 1][3]);
      if constexpr (T::kRawV) {
        const int mi = lane / 8, mr = lane % 8;
        const unsigned char* vrow = v_smem + (sl * 16 + (mi & 1) * 8 + mr) * T::kVStride + (mi >> 1) * 16;
#pragma unroll
        for (int n = 0; n < T::kDTiles; n += 2) {
          uint32_t vb[4];
          mma::LdMatrixX4Trans(vb, vrow + n * 16);
          if constexpr (PV == PvOperand::kBF16) {
            mma::MmaBf16(o[n], pa, vb[0], vb[1]);
            mma::MmaBf16(o[n + 1], pa, vb[2], vb[3]);
          } else {
            mma::MmaF16(o[n], pa, vb[0], vb[1]);
            mma::MmaF16(o[n + 1], pa, vb[2], vb[3]);
          }
        }
      } else {
#pragma unroll
        for (int n = 0; n < T::kDTiles; ++n) {
          uint32_t b0, b1;
          Fp8WordToB(Ld32(v_smem + TileImageOffset(n * 8 + g, sl * 16 + 4 * t, kKBlockRows)), b0, b1);
          mma::MmaF16(o[n], pa, b0, b1);
        }
      }
    }
    __syncthreads();  // every warp is done with v_smem before the next block's V lands there
  }

  // ---- epilogue: O / l (· δV + v̄), 16-bit store; LSE ----
  const int64_t vstat = (static_cast<int64_t>(b) * p.num_kv_heads + hk) * D;
#pragma unroll
  for (int e = 0; e < 2; ++e) {
    l[e] += __shfl_xor_sync(0xFFFFFFFFu, l[e], 1);
    l[e] += __shfl_xor_sync(0xFFFFFFFFu, l[e], 2);
    const int i = row_of[e];
    const bool row_valid = i < q_len;
    const float inv = l[e] > 0.0f ? 1.0f / l[e] : 0.0f;  // no visible key: O = 0
    if (row_valid) {
      const int64_t out_off = (static_cast<int64_t>(q_begin + i) * p.num_q_heads + h) * D;
#pragma unroll
      for (int n = 0; n < T::kDTiles; ++n) {
        const int c = n * 8 + 2 * t;
        float x = o[n][2 * e] * inv, y = o[n][2 * e + 1] * inv;
        if constexpr (PV == PvOperand::kFp8) {
          x *= p.ws.v_scale[vstat + c];
          y *= p.ws.v_scale[vstat + c + 1];
          if (p.ws.v_mean != nullptr && l[e] > 0.0f) {
            x += p.ws.v_mean[vstat + c];
            y += p.ws.v_mean[vstat + c + 1];
          }
        }
        if (p.dtype == SAGE_DTYPE_BF16) {
          *reinterpret_cast<__nv_bfloat162*>(static_cast<__nv_bfloat16*>(p.o) + out_off + c) =
              __floats2bfloat162_rn(x, y);
        } else {
          *reinterpret_cast<__half2*>(static_cast<__half*>(p.o) + out_off + c) = __floats2half2_rn(x, y);
        }
      }
    }
    if (p.lse != nullptr) {
      // K smoothing dropped softmax_scale·(q·k̄) from every score of the row; LSE adds it back.
      float corr = 0.0f;
      if (T::kIntQk && p.ws.k_mean != nullptr && row_valid) {
        const auto* qrow = static_cast<const uint16_t*>(p.q) + (static_cast<int64_t>(q_begin + i) * p.num_q_heads + h) * D;
        for (int c = t; c < D; c += 4) corr += Load16AsFloat(qrow + c, p.dtype) * p.ws.k_mean[vstat + c];
      }
      corr += __shfl_xor_sync(0xFFFFFFFFu, corr, 1);
      corr += __shfl_xor_sync(0xFFFFFFFFu, corr, 2);
      if (row_valid && t == 0) {
        const float lse = l[e] > 0.0f ? (m[e] - T::kPOffset + __log2f(l[e])) * kLn2 + p.softmax_scale * corr
                                      : -INFINITY;
        p.lse[static_cast<int64_t>(q_begin + i) * p.num_q_heads + h] = lse;
      }
    }
  }
}

}  // namespace sage::cuda::attn_mma
