// Paged decode on CUDA cores, used for head_dim 64 (D = 128 runs on tensor cores:
// paged_decode_mma.cuh): one CTA per (sequence, KV head, row pass, KV split).
//
// A CTA streams its split of the sequence's pages in chunks (32 tokens of 16-bit pages, 64 of 8-bit)
// through a 4-stage cp.async ring (K codes, V codes, and for 8-bit pages the per-token scales), so
// ~3 chunks per CTA are in flight while one is computed. The R = n_q x G query rows of the KV head
// (at most kRows per pass) share every chunk, so a page is read once per pass.
//   Q·Kᵀ: 4 lanes per token, each a quarter of D, all kRows rows at once (Q fp32 in shared memory,
//         pre-scaled by softmax_scale·log2 e); two shuffles finish a score. For 8-bit pages a lane
//         takes 2 tokens so each Q load serves both (the Q loads, not DRAM, bounded v1 there).
//   P·V:  each warp owns 8 (16) tokens of every chunk and its own online softmax (m, l, acc): no
//         cross-warp traffic until the end, where the 4 warps are merged through shared memory.
// Math is fp32 on the stored values: K = code · kscale exactly (the scale multiplies the finished
// dot product), V's scale folds into p. Chunks holding a token that some row must not see take a
// masked path, so a NaN in an unseen token never reaches that row (0 · NaN would).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>

#include <cstdint>

#include "kernels/cuda/decode/paged_decode.h"

namespace sage::cuda::decode {

inline constexpr int kStages = 4;
inline constexpr int kWarps = kDecodeThreads / 32;
inline constexpr int kLanesPerToken = 4;
inline constexpr int kTokenSlots = kDecodeThreads / kLanesPerToken;  // tokens one pass of the CTA covers

template <int kHeadDim, KvCodes kCodes, int kRows>
struct Traits {
  static constexpr bool k8Bit = kCodes == KvCodes::kInt8KFp8V;
  static constexpr int kCodeBytes = k8Bit ? 1 : 2;
  static constexpr int kTokensPerLane = k8Bit ? 2 : 1;
  static constexpr int kChunk = kTokenSlots * kTokensPerLane;  // tokens per ring stage
  static constexpr int kTokensPerWarp = kChunk / kWarps;
  static constexpr int kRowBytes = kHeadDim * kCodeBytes;  // one token-head of K (or V)
  static constexpr int kRowUnits = kRowBytes / 16;         // 16-byte units
  static constexpr int kUnitsPerLane = kRowUnits / kLanesPerToken;
  static constexpr int kElemsPerUnit = 16 / kCodeBytes;
  // Lanes t (even, odd) x quarter 0..3 of one LDS.128 phase read units qq + 4i of rows t, t+1; rows
  // are a multiple of 128 bytes apart, so flipping bit 2 of the unit for odd rows spreads them over
  // all 8 bank groups. Rows of 4 units are already 64 bytes apart.
  static constexpr bool kSwizzle = kRowUnits >= 8;
  // Q rows in shared memory: one fp32 unit of kElemsPerUnit, padded for 8-bit (16 floats = 4 bank
  // groups would put quarters 0 and 2 on the same group).
  static constexpr int kQUnitStride = kElemsPerUnit + (k8Bit ? 4 : 0);
  static constexpr int kQRowFloats = kRowUnits * kQUnitStride;
  static constexpr int kVElemsPerLane = kHeadDim / 32;
  static constexpr int kCodeTileBytes = kChunk * kRowBytes;
  static constexpr int kStageBytes = 2 * kCodeTileBytes + (k8Bit ? 2 * kChunk * 4 : 0);
  static constexpr int kRingBytes = kStages * kStageBytes;
  static constexpr int kQBytes = kRows * kQRowFloats * 4;
  static constexpr int kPBytes = kWarps * kTokensPerWarp * kRows * 4;
  static constexpr int kSmemBytes = kRingBytes + kQBytes + kPBytes;
  // The end-of-CTA merge reuses the ring: m, l and acc of every warp.
  static constexpr int kReduceBytes = kWarps * kRows * (2 + kHeadDim) * 4;
  static_assert(kReduceBytes <= kRingBytes, "the warp merge must fit in the cp.async ring");
  static_assert(kUnitsPerLane >= 1, "each of the 4 lanes of a token needs a 16-byte unit");
  static_assert(kDecodeSplitQuantum % kChunk == 0, "splits must end on chunk boundaries");
};

// ---- small device helpers ----

__device__ __forceinline__ float Exp2(float x) {  // ex2.approx: -inf -> +0, NaN -> NaN
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}

__device__ __forceinline__ void CpAsync16(void* smem, const void* gmem, bool valid) {
  const unsigned dst = static_cast<unsigned>(__cvta_generic_to_shared(smem));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(gmem), "r"(valid ? 16 : 0));
}
__device__ __forceinline__ void CpAsync4(void* smem, const void* gmem, bool valid) {
  const unsigned dst = static_cast<unsigned>(__cvta_generic_to_shared(smem));
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(dst), "l"(gmem), "r"(valid ? 4 : 0));
}
__device__ __forceinline__ void CpAsyncCommit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int kPending>
__device__ __forceinline__ void CpAsyncWait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(kPending));
}

// Four int8 codes -> fp32 exactly: the byte (biased to unsigned) becomes the low mantissa of 2^23.
__device__ __forceinline__ void Int8x4ToFloat(uint32_t w, float* f) {
  constexpr float kMagic = 8388608.f + 128.f;  // 2^23 + the bias
  const uint32_t u = w ^ 0x80808080u;
  f[0] = __uint_as_float(__byte_perm(u, 0x4B000000u, 0x7540)) - kMagic;
  f[1] = __uint_as_float(__byte_perm(u, 0x4B000000u, 0x7541)) - kMagic;
  f[2] = __uint_as_float(__byte_perm(u, 0x4B000000u, 0x7542)) - kMagic;
  f[3] = __uint_as_float(__byte_perm(u, 0x4B000000u, 0x7543)) - kMagic;
}

// Two E4M3 codes -> fp32 through the hardware cvt (keeps NaN codes NaN).
__device__ __forceinline__ float2 Fp8x2ToFloat(uint32_t w16) {
  const __half2_raw h = __nv_cvt_fp8x2_to_halfraw2(static_cast<__nv_fp8x2_storage_t>(w16 & 0xFFFFu), __NV_E4M3);
  return __half22float2(__half2(h));
}

template <IoType kIo>
__device__ __forceinline__ float2 Pair16ToFloat(uint32_t w) {
  if constexpr (kIo == IoType::kF16) {
    return __half22float2(*reinterpret_cast<const __half2*>(&w));
  } else {
    return __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&w));
  }
}

template <IoType kIo>
__device__ __forceinline__ float ScalarToFloat(const void* base, int64_t i) {
  if constexpr (kIo == IoType::kF16) {
    return __half2float(static_cast<const __half*>(base)[i]);
  } else {
    return __bfloat162float(static_cast<const __nv_bfloat16*>(base)[i]);
  }
}

template <IoType kIo>
__device__ __forceinline__ void StoreScalar(void* base, int64_t i, float x) {
  if constexpr (kIo == IoType::kF16) {
    static_cast<__half*>(base)[i] = __float2half_rn(x);
  } else {
    static_cast<__nv_bfloat16*>(base)[i] = __float2bfloat16_rn(x);
  }
}

// A 16-byte unit of K codes -> floats (code values; 8-bit scales apply later).
template <KvCodes kCodes, IoType kIo>
__device__ __forceinline__ void UnitToFloat(const uint4& raw, float* f) {
  const uint32_t w[4] = {raw.x, raw.y, raw.z, raw.w};
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    if constexpr (kCodes == KvCodes::kInt8KFp8V) {
      Int8x4ToFloat(w[i], f + 4 * i);
    } else {
      const float2 v = Pair16ToFloat<kIo>(w[i]);
      f[2 * i] = v.x;
      f[2 * i + 1] = v.y;
    }
  }
}

// A lane's kVElemsPerLane consecutive V values of one token row (codes; the scale is in p).
template <int kHeadDim, KvCodes kCodes, IoType kIo>
__device__ __forceinline__ void LoadVLane(const unsigned char* row, int lane, float* v) {
  constexpr int kN = kHeadDim / 32;
  if constexpr (kCodes == KvCodes::kInt8KFp8V) {
    if constexpr (kN == 4) {
      const uint32_t w = *reinterpret_cast<const uint32_t*>(row + lane * 4);
      const float2 a = Fp8x2ToFloat(w), b = Fp8x2ToFloat(w >> 16);
      v[0] = a.x, v[1] = a.y, v[2] = b.x, v[3] = b.y;
    } else {
      const float2 a = Fp8x2ToFloat(*reinterpret_cast<const uint16_t*>(row + lane * 2));
      v[0] = a.x, v[1] = a.y;
    }
  } else {
    if constexpr (kN == 4) {
      const uint2 w = *reinterpret_cast<const uint2*>(row + lane * 8);
      const float2 a = Pair16ToFloat<kIo>(w.x), b = Pair16ToFloat<kIo>(w.y);
      v[0] = a.x, v[1] = a.y, v[2] = b.x, v[3] = b.y;
    } else {
      const float2 a = Pair16ToFloat<kIo>(*reinterpret_cast<const uint32_t*>(row + lane * 4));
      v[0] = a.x, v[1] = a.y;
    }
  }
}

// ---- the split kernel ----

template <int kHeadDim, KvCodes kCodes, IoType kIo, int kRows>
__global__ void __launch_bounds__(kDecodeThreads) PagedDecodeSplitKernel(const __grid_constant__ PagedDecodeParams p) {
  using T = Traits<kHeadDim, kCodes, kRows>;
  constexpr int kChunk = T::kChunk;
  constexpr int kTpl = T::kTokensPerLane;
  const float kNegInf = -__int_as_float(0x7f800000);
  constexpr float kLn2 = 0.693147180559945309f;
  extern __shared__ __align__(128) unsigned char smem[];
  float* q_s = reinterpret_cast<float*>(smem + T::kRingBytes);
  float* p_s = reinterpret_cast<float*>(smem + T::kRingBytes + T::kQBytes);

  // Let the merge grid (a programmatic dependent) launch now; it waits for this grid's completion.
  asm volatile("griddepcontrol.launch_dependents;\n" ::: "memory");
  const int split = blockIdx.x;
  const int kvh = blockIdx.y / p.plan.row_passes;
  const int row0 = (blockIdx.y % p.plan.row_passes) * kRows;
  const int b = blockIdx.z;
  const int group = p.num_q_heads / p.num_kv_heads;
  const int len = p.seqlens_k[b];
  const int q_first = p.cu_seqlens_q[b];
  const int n_q = p.cu_seqlens_q[b + 1] - q_first;
  const int split_start = split * p.plan.split_tokens;
  if (row0 >= n_q * group || split_start >= len) return;  // uniform per CTA
  const int split_end = min(len, split_start + p.plan.split_tokens);
  const int n_chunks = (split_end - split_start + kChunk - 1) / kChunk;

  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;

  // Q rows of this pass, fp32 and pre-scaled into the exp2 domain; rows past n_q·G are zeros.
  for (int i = tid; i < kRows * kHeadDim; i += kDecodeThreads) {
    const int r = i / kHeadDim, d = i % kHeadDim, rho = row0 + r, qi = rho / group;
    float x = 0.f;
    if (qi < n_q) {
      const int64_t at = ((static_cast<int64_t>(q_first) + qi) * p.num_q_heads + kvh * group + rho % group) * kHeadDim + d;
      x = ScalarToFloat<kIo>(p.q, at) * p.scale_log2;
    }
    q_s[r * T::kQRowFloats + (d / T::kElemsPerUnit) * T::kQUnitStride + d % T::kElemsPerUnit] = x;
  }
  // Bottom-right causal: row qi sees tokens [0, len - n_q + qi]. Rows past n_q·G see everything.
  int limit[kRows];
#pragma unroll
  for (int r = 0; r < kRows; ++r) {
    const int qi = (row0 + r) / group;
    limit[r] = qi < n_q ? len - n_q + qi : len - 1;
  }
  const int limit_min = limit[0];

  // Copy role: tokens ct + 32 j of each chunk, quarter cq of their rows. The page ids of the next
  // chunk are loaded one iteration ahead so the cp.async issue never waits on the page table.
  const int ct = tid / kLanesPerToken, cq = tid % kLanesPerToken;
  const int64_t page_list = p.cu_pages[b];
  int page[kTpl];
  auto load_pages = [&](int c) {
#pragma unroll
    for (int j = 0; j < kTpl; ++j) {
      const int t_abs = split_start + c * kChunk + ct + kTokenSlots * j;
      page[j] = (c < n_chunks && t_abs < len) ? __ldg(p.page_table + page_list + p.page_div.Div(t_abs)) : 0;
    }
  };
  auto issue = [&](int c) {
    unsigned char* st = smem + (c % kStages) * T::kStageBytes;
#pragma unroll
    for (int j = 0; j < kTpl; ++j) {
      const int tc = ct + kTokenSlots * j, t_abs = split_start + c * kChunk + tc;
      const bool valid = t_abs < len;  // else zero-fill (tail of the sequence)
      const uint64_t slot = valid ? p.rows.Of(p.page_div.Mod(t_abs), kvh) : 0;
      const unsigned char* pg = p.pages + (valid ? static_cast<uint64_t>(page[j]) * p.page_bytes : 0);
      const unsigned char* k_row = pg + slot * T::kRowBytes;
#pragma unroll
      for (int i = 0; i < T::kUnitsPerLane; ++i) {
        const int u = cq + kLanesPerToken * i;
        const int pu = T::kSwizzle ? (u ^ ((tc & 1) << 2)) : u;
        CpAsync16(st + tc * T::kRowBytes + pu * 16, k_row + u * 16, valid);
        CpAsync16(st + T::kCodeTileBytes + tc * T::kRowBytes + u * 16, k_row + p.v_codes_offset + u * 16, valid);
      }
      if constexpr (T::k8Bit) {
        float* scales = reinterpret_cast<float*>(st + 2 * T::kCodeTileBytes);
        if (cq < 2) {
          const uint64_t off = cq == 0 ? p.k_scales_offset : p.v_scales_offset;
          CpAsync4(scales + cq * kChunk + tc, pg + off + slot * 4, valid);
        }
      }
    }
  };

  load_pages(0);
#pragma unroll
  for (int s = 0; s < kStages - 1; ++s) {
    if (s < n_chunks) {
      issue(s);
      load_pages(s + 1);
    }
    CpAsyncCommit();
  }

  // Compute role: tokens t0 + 8 j of the chunk (warp w owns its kTokensPerWarp tokens), quarter qq of D.
  constexpr int kTokensPerWarp = T::kTokensPerWarp;
  const int t0 = warp * kTokensPerWarp + lane / kLanesPerToken, qq = lane % kLanesPerToken;
  float m[kRows], l[kRows], acc[kRows][T::kVElemsPerLane];
#pragma unroll
  for (int r = 0; r < kRows; ++r) {
    m[r] = kNegInf;
    l[r] = 0.f;
#pragma unroll
    for (int j = 0; j < T::kVElemsPerLane; ++j) acc[r][j] = 0.f;
  }
  float* p_w = p_s + warp * kTokensPerWarp * kRows;

  for (int c = 0; c < n_chunks; ++c) {
    CpAsyncWait<kStages - 2>();
    __syncthreads();  // chunk c landed for all threads; chunk c-1's stage is free to refill
    if (c + kStages - 1 < n_chunks) {
      issue(c + kStages - 1);
      load_pages(c + kStages);
    }
    CpAsyncCommit();

    const unsigned char* st = smem + (c % kStages) * T::kStageBytes;
    const int chunk_start = split_start + c * kChunk;
    const bool masked = chunk_start + kChunk - 1 > limit_min;  // warp- and CTA-uniform

    // S = Q·Kᵀ for this lane's tokens: a quarter of D per lane, then two shuffles.
    float s[kTpl][kRows];
#pragma unroll
    for (int j = 0; j < kTpl; ++j)
#pragma unroll
      for (int r = 0; r < kRows; ++r) s[j][r] = 0.f;
#pragma unroll
    for (int i = 0; i < T::kUnitsPerLane; ++i) {
      const int u = qq + kLanesPerToken * i;
      float kf[kTpl][T::kElemsPerUnit];
#pragma unroll
      for (int j = 0; j < kTpl; ++j) {
        const int t = t0 + 8 * j;
        const int pu = T::kSwizzle ? (u ^ ((t & 1) << 2)) : u;
        UnitToFloat<kCodes, kIo>(*reinterpret_cast<const uint4*>(st + t * T::kRowBytes + pu * 16), kf[j]);
      }
#pragma unroll
      for (int r = 0; r < kRows; ++r) {
        const float* qr = q_s + r * T::kQRowFloats + u * T::kQUnitStride;
#pragma unroll
        for (int e = 0; e < T::kElemsPerUnit; e += 4) {
          const float4 qv = *reinterpret_cast<const float4*>(qr + e);
#pragma unroll
          for (int j = 0; j < kTpl; ++j) {
            s[j][r] = fmaf(kf[j][e], qv.x, s[j][r]);
            s[j][r] = fmaf(kf[j][e + 1], qv.y, s[j][r]);
            s[j][r] = fmaf(kf[j][e + 2], qv.z, s[j][r]);
            s[j][r] = fmaf(kf[j][e + 3], qv.w, s[j][r]);
          }
        }
      }
    }
    float v_scale[kTpl];
#pragma unroll
    for (int j = 0; j < kTpl; ++j) {
      const int t = t0 + 8 * j;
      float k_scale = 1.f;
      v_scale[j] = 1.f;
      if constexpr (T::k8Bit) {
        const float* scales = reinterpret_cast<const float*>(st + 2 * T::kCodeTileBytes);
        k_scale = scales[t];
        v_scale[j] = scales[kChunk + t];
      }
#pragma unroll
      for (int r = 0; r < kRows; ++r) {
        s[j][r] += __shfl_xor_sync(0xffffffffu, s[j][r], 1);
        s[j][r] += __shfl_xor_sync(0xffffffffu, s[j][r], 2);
        if constexpr (T::k8Bit) s[j][r] *= k_scale;
        if (masked && chunk_start + t > limit[r]) s[j][r] = kNegInf;  // also hides a NaN the row must not see
      }
    }

    // Online softmax over the warp's tokens. fmaxf drops NaN scores from the max; their p is NaN
    // and reaches l and acc, so the row still comes out NaN.
#pragma unroll
    for (int r = 0; r < kRows; ++r) {
      float mx = s[0][r];
#pragma unroll
      for (int j = 1; j < kTpl; ++j) mx = fmaxf(mx, s[j][r]);
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 4));
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 8));
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 16));
      const float m_new = fmaxf(m[r], mx);
      const float m_use = m_new == kNegInf ? 0.f : m_new;  // no row seen yet: avoid -inf - -inf
      const float alpha = Exp2(m[r] - m_use);
      float psum = 0.f;
#pragma unroll
      for (int j = 0; j < kTpl; ++j) {
        const float pr = Exp2(s[j][r] - m_use);
        psum += pr;
        if (qq == 0) p_w[(lane / kLanesPerToken + 8 * j) * kRows + r] = pr * v_scale[j];
      }
      m[r] = m_new;
      l[r] = l[r] * alpha + (qq == 0 ? psum : 0.f);  // one lane per token counts it
#pragma unroll
      for (int j = 0; j < T::kVElemsPerLane; ++j) acc[r][j] *= alpha;
    }
    __syncwarp();

    // O += P·V over the warp's tokens; each lane owns kVElemsPerLane columns of every row.
    const unsigned char* v_tile = st + T::kCodeTileBytes;
#pragma unroll
    for (int tl = 0; tl < kTokensPerWarp; ++tl) {
      const int tv = warp * kTokensPerWarp + tl;
      float v[T::kVElemsPerLane];
      LoadVLane<kHeadDim, kCodes, kIo>(v_tile + tv * T::kRowBytes, lane, v);
#pragma unroll
      for (int r = 0; r < kRows; ++r) {
        const float pr = p_w[tl * kRows + r];
        if (!masked || chunk_start + tv <= limit[r]) {
#pragma unroll
          for (int j = 0; j < T::kVElemsPerLane; ++j) acc[r][j] = fmaf(pr, v[j], acc[r][j]);
        }
      }
    }
    __syncwarp();  // p_w is rewritten next chunk
  }

  // Merge the 4 warps' softmax states through shared memory (the ring is drained first).
  CpAsyncWait<0>();
  __syncthreads();
  float* red_m = reinterpret_cast<float*>(smem);
  float* red_l = red_m + kWarps * kRows;
  float* red_acc = red_l + kWarps * kRows;
#pragma unroll
  for (int r = 0; r < kRows; ++r) {
    float lr = l[r];
#pragma unroll
    for (int off = 1; off < 32; off <<= 1) lr += __shfl_xor_sync(0xffffffffu, lr, off);
    if (lane == 0) {
      red_m[warp * kRows + r] = m[r];
      red_l[warp * kRows + r] = lr;
    }
#pragma unroll
    for (int j = 0; j < T::kVElemsPerLane; ++j)
      red_acc[(warp * kRows + r) * kHeadDim + lane * T::kVElemsPerLane + j] = acc[r][j];
  }
  __syncthreads();

  for (int i = tid; i < kRows * kHeadDim; i += kDecodeThreads) {
    const int r = i / kHeadDim, d = i % kHeadDim, rho = row0 + r, qi = rho / group;
    if (qi >= n_q) continue;
    float mx = kNegInf;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) mx = fmaxf(mx, red_m[w * kRows + r]);
    const float m_use = mx == kNegInf ? 0.f : mx;
    float lsum = 0.f, a = 0.f;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) {
      const float wt = Exp2(red_m[w * kRows + r] - m_use);
      lsum += red_l[w * kRows + r] * wt;
      a += red_acc[(w * kRows + r) * kHeadDim + d] * wt;
    }
    const float o = lsum == 0.f ? 0.f : a / lsum;  // a row that saw nothing: O = 0, LSE = -inf
    const float lse2 = lsum == 0.f ? kNegInf : m_use + __log2f(lsum);
    const int64_t row_head = (static_cast<int64_t>(q_first) + qi) * p.num_q_heads + kvh * group + rho % group;
    if (p.plan.splits == 1) {
      StoreScalar<kIo>(p.o, row_head * kHeadDim + d, o);
      if (d == 0 && p.lse != nullptr) p.lse[row_head] = lse2 * kLn2;
    } else {
      const int64_t at = static_cast<int64_t>(split) * p.total_q * p.num_q_heads + row_head;
      p.partial_o[at * kHeadDim + d] = o;
      if (d == 0) p.partial_lse[at] = lse2;
    }
  }
}

}  // namespace sage::cuda::decode
