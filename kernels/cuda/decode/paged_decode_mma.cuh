// Paged decode on tensor cores (mma.sync m16n8k16, fp32 accumulation), D = 128: 16-bit, INT8-K and INT4-K pages.
//
// Same grid, split plan, 64-token chunks and 4-stage cp.async ring as the CUDA-core kernel
// (paged_decode_kernel.cuh); warp w owns tokens 16w..16w+15 of every chunk and its own online
// softmax. The <= 8 query rows of a pass are the M rows 0..7 of the MMAs (8..15 are zero padding).
//   S = Q·Kᵀ:  A = Q (f16/bf16 as sent, held in registers for the whole CTA), B = Kᵀ with the int8
//              codes converted exactly to f16/bf16 in registers (prmt + one HSUB2 per pair for f16).
//              Channels are permuted inside each k-step (lane c of a token owns channels
//              32c..32c+31: two LDS.128 per token); A and B use the same permutation, so the dot
//              product is unchanged. Products are exact; fp32 accumulation. The per-token K scale
//              and softmax_scale·log2 e multiply the finished dot product, as in the CUDA-core path.
//   O += P·V:  the S accumulator fragment is the P fragment (FA2 register reuse). V codes are
//              E4M3 -> f16 exactly (cvt.rn.f16x2.e4m3x2); the per-token V scale is folded into P
//              relative to the warp's running max V scale vref (p·vscale/vref <= 1), and P is rounded
//              to f16 there: the one rounding this path adds (relative 2^-11 per term, NUMERICS §9a).
//              The accumulator is in units of vref and is rescaled with alpha when vref grows.
// Shared-memory swizzles are chosen so both fragment loads are bank-conflict free: K unit u of token
// t sits at u ^ (t & 1); V unit u at u ^ (((t >> 1) & 3) << 1).
// INT4-K pages: a token's 64 bytes of nibbles are stored in MMA fragment order (kv_pages.h), one
// LDS.128 per lane; each k-step pairs two 32-channel groups in A rows 0..7 and 8..15 (the rows a
// decode pass leaves empty), so the group sums come out apart and their scales multiply them after.
// Fragment helpers: mma_fragments.cuh.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>

#include <cstdint>

#include "kernels/cuda/common/ptx_sm90.cuh"
#include "kernels/cuda/decode/paged_decode.h"
#include "kernels/cuda/decode/mma_fragments.cuh"
#include "kernels/cuda/decode/paged_decode_kernel.cuh"

namespace sage::cuda::decode {

// Ring depth and the CTAs per SM the register budget is fitted to (tuning knobs, overridable at
// build time for A/B runs).
#ifndef SAGE_DECODE_MMA_STAGES
#define SAGE_DECODE_MMA_STAGES 4
#endif
#ifndef SAGE_DECODE_MMA_MIN_CTAS
#define SAGE_DECODE_MMA_MIN_CTAS 1
#endif
#ifndef SAGE_DECODE_MMA_LAZY_RESCALE  // skip the O rescale while no lane's alpha differs from 1
#define SAGE_DECODE_MMA_LAZY_RESCALE 1
#endif
inline constexpr int kMmaStages = SAGE_DECODE_MMA_STAGES;
inline constexpr int kMmaMinCtas = SAGE_DECODE_MMA_MIN_CTAS;

// kTma: the stages are filled by the TMA engine (8-bit pages, PagedDecodePlan::tma): each stage
// 1024-byte aligned, the code tiles in the 128-byte swizzle the copies write (16-byte unit u of
// row t at u ^ (t & 7)), which keeps both fragment loads bank-conflict free as well.
template <KvCodes kCodes, bool kTma = false>
struct MmaTraits {
  static constexpr bool kInt4 = kCodes == KvCodes::kInt4KFp8V;
  static constexpr bool k8Bit = kCodes != KvCodes::k16Bit;  // FP8 V with per-token scales (INT8 or INT4 K)
  static_assert(!kTma || kCodes == KvCodes::kInt8KFp8V, "TMA reads are for INT8-K / FP8-V pages");
  static constexpr int kHeadDim = 128;
  static constexpr int kTokensPerWarp = k8Bit ? 16 : 8;  // one k16 (k8) step of P·V per chunk
  static constexpr int kChunk = kWarps * kTokensPerWarp;
  static constexpr int kRowBytes = kHeadDim * (k8Bit ? 1 : 2);  // a V row (and a K row but for INT4)
  static constexpr int kKRowBytes = kInt4 ? kHeadDim / 2 : kRowBytes;
  static constexpr int kKScales = kInt4 ? kHeadDim / kInt4GroupChannels : k8Bit ? 1 : 0;  // fp32 per token-head
  static constexpr int kCodeTileBytes = kChunk * kRowBytes;
  // A stage: [K codes][V codes][K scales][V scales] of kChunk tokens.
  static constexpr int kVTile = kChunk * kKRowBytes;
  static constexpr int kKScaleTile = kVTile + kCodeTileBytes;
  static constexpr int kVScaleTile = kKScaleTile + kChunk * kKScales * 4;
  static constexpr int kStageData = kVScaleTile + (k8Bit ? kChunk * 4 : 0);
  static constexpr int kStageBytes = kTma ? (kStageData + 1023) / 1024 * 1024 : kStageData;
  static constexpr int kRingBytes = kMmaStages * kStageBytes;
  // TMA: the ring's base rounded up to 1024 bytes in the allocation, then one mbarrier per stage.
  static constexpr int kSmemBytes = kTma ? 1024 + kRingBytes + kMmaStages * 8 : kRingBytes;
  static constexpr int kReduceBytes = kWarps * 8 * (2 + kHeadDim + 4) * 4;
  static_assert(kReduceBytes <= kRingBytes, "the warp merge must fit in the cp.async ring");
  static_assert(kDecodeSplitQuantum % kChunk == 0, "splits must end on chunk boundaries");
  static_assert(!kTma || kVTile % 1024 == 0, "TMA code tiles start on 1024-byte swizzle blocks");
  // Physical 16-byte unit of unit u of token t (chunk-local): bank-conflict-free fragment loads.
  __device__ static __forceinline__ int KUnit(int u, int t) {
    if constexpr (kTma) return u ^ (t & 7);
    else if constexpr (kInt4) return u;  // 4 units per token: 8 lanes read 128 contiguous bytes
    else if constexpr (k8Bit) return u ^ (t & 1);
    else return u ^ (((u >> 3) & 1) << 1) ^ (t & 1);
  }
  __device__ static __forceinline__ int VUnit(int u, int t) {
    if constexpr (kTma) return u ^ (t & 7);
    else if constexpr (k8Bit) return u ^ (((t >> 1) & 3) << 1);
    else return u ^ ((t >> 1) & 1) ^ (((t >> 2) & 1) << 2);
  }
};

// TMA reads copy a chunk in blocks of this many tokens: a block lies in one page (pages hold a
// multiple of 16 tokens), so it is one 2-D copy of one head's K (or V) rows.
inline constexpr int kTmaBlockTokens = 16;

template <KvCodes kCodes, IoType kIo, int kRows, bool kTma = false>
__global__ void __launch_bounds__(kDecodeThreads, kMmaMinCtas) PagedDecodeMmaKernel(const __grid_constant__ PagedDecodeParams p) {
  static_assert(kRows <= 8, "query rows are the MMA's M rows 0..7");
  using T = MmaTraits<kCodes, kTma>;
  constexpr bool k8Bit = T::k8Bit;
  constexpr int kHeadDim = T::kHeadDim;
  constexpr int kChunk = T::kChunk;
  constexpr int kTpl = kChunk / kTokenSlots;  // tokens a copy lane moves per chunk
  constexpr int kKUnitsPerLane = T::kKRowBytes / 16 / kLanesPerToken;
  constexpr int kVUnitsPerLane = T::kRowBytes / 16 / kLanesPerToken;
  const float kNegInf = -__int_as_float(0x7f800000);
  constexpr float kLn2 = 0.693147180559945309f;
  extern __shared__ __align__(128) unsigned char smem_raw[];
  // TMA: the ring from the first 1024-byte boundary (the swizzle is a function of the address).
  unsigned char* const smem =
      kTma ? smem_raw + ((1024 - ptx::SmemAddr(smem_raw) % 1024) % 1024) : smem_raw;
  uint64_t* const full = reinterpret_cast<uint64_t*>(smem + T::kRingBytes);  // kTma: stage ch % S landed

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
  const int g = lane >> 2, c = lane & 3;  // MMA group (row / token / d) and thread in group

  // Copy role (as the CUDA-core kernel): tokens ct + 32 j of each chunk, quarter cq of a row.
  const int ct = tid / kLanesPerToken, cq = tid % kLanesPerToken;
  const int64_t page_list = p.cu_pages[b];
  int page[kTpl];
  auto load_pages = [&](int ch) {
#pragma unroll
    for (int j = 0; j < kTpl; ++j) {
      const int t_abs = split_start + ch * kChunk + ct + kTokenSlots * j;
      page[j] = (ch < n_chunks && t_abs < len) ? __ldg(p.page_table + page_list + p.page_div.Div(t_abs)) : 0;
    }
  };
  auto issue = [&](int ch) {
    unsigned char* st = smem + (ch % kMmaStages) * T::kStageBytes;
#pragma unroll
    for (int j = 0; j < kTpl; ++j) {
      const int tc = ct + kTokenSlots * j, t_abs = split_start + ch * kChunk + tc;
      const bool valid = t_abs < len;  // else zero-fill (tail of the sequence)
      const uint64_t slot = valid ? p.rows.Of(p.page_div.Mod(t_abs), kvh) : 0;
      const unsigned char* pg = p.pages + (valid ? static_cast<uint64_t>(page[j]) * p.page_bytes : 0);
      const unsigned char* k_row = pg + slot * T::kKRowBytes;
      const unsigned char* v_row = pg + p.v_codes_offset + slot * T::kRowBytes;
#pragma unroll
      for (int i = 0; i < kKUnitsPerLane; ++i) {
        const int u = cq + kLanesPerToken * i;
        CpAsync16(st + tc * T::kKRowBytes + T::KUnit(u, tc) * 16, k_row + u * 16, valid);
      }
#pragma unroll
      for (int i = 0; i < kVUnitsPerLane; ++i) {
        const int u = cq + kLanesPerToken * i;
        CpAsync16(st + T::kVTile + tc * T::kRowBytes + T::VUnit(u, tc) * 16, v_row + u * 16, valid);
      }
      if constexpr (T::kInt4) {  // the token's 4 group scales: one 16-byte unit
        if (cq == 0) CpAsync16(st + T::kKScaleTile + tc * 16, pg + p.k_scales_offset + slot * 16, valid);
      } else if constexpr (k8Bit) {
        if (cq == 0) CpAsync4(st + T::kKScaleTile + tc * 4, pg + p.k_scales_offset + slot * 4, valid);
      }
      if constexpr (k8Bit) {
        if (cq == 1) CpAsync4(st + T::kVScaleTile + tc * 4, pg + p.v_scales_offset + slot * 4, valid);
      }
    }
  };

  // TMA reads: warp 0 holds the page ids of a chunk's 16-token blocks in lanes 0..3, and lane 0
  // issues the chunk's copies on the stage's mbarrier: per block one 2-D copy of the head's K code
  // rows, one of its V code rows (2 KiB each) and one 1-D copy of each scale run (64 bytes).
  constexpr int kBlocks = kChunk / kTmaBlockTokens;
  auto block_pages = [&](int ch) {  // warp 0
    const int t0 = split_start + ch * kChunk + (lane % kBlocks) * kTmaBlockTokens;
    return (lane < kBlocks && ch < n_chunks && t0 < len) ? __ldg(p.page_table + page_list + p.page_div.Div(t0)) : 0;
  };
  auto issue_tma = [&](int ch, int pages_of_blocks) {  // warp 0, converged
    const int stage = ch % kMmaStages;
    unsigned char* st = smem + stage * T::kStageBytes;
    int id[kBlocks];
#pragma unroll
    for (int b = 0; b < kBlocks; ++b) id[b] = __shfl_sync(0xffffffffu, pages_of_blocks, b);
    if (lane != 0) return;
    const int chunk_start = split_start + ch * kChunk;
    const int blocks = min(kBlocks, (len - chunk_start + kTmaBlockTokens - 1) / kTmaBlockTokens);
    constexpr uint32_t kBlockBytes = 2 * kTmaBlockTokens * T::kRowBytes + 2 * kTmaBlockTokens * 4;
    ptx::MbarArriveExpectTx(&full[stage], static_cast<uint32_t>(blocks) * kBlockBytes);
    for (int b = 0; b < blocks; ++b) {
      const int in_page = p.page_div.Mod(chunk_start + b * kTmaBlockTokens);
      const int slot = static_cast<int>(p.rows.Of(in_page, kvh));  // the block's first row in each part
      const int row = static_cast<int>(id[b] * p.page_rows) + slot;
      const int tile = b * kTmaBlockTokens * T::kRowBytes;
      ptx::TensorCopy2dG2S(st + tile, &p.codes_map, 0, row, &full[stage]);
      ptx::TensorCopy2dG2S(st + T::kVTile + tile, &p.codes_map, 0, row + p.v_codes_rows, &full[stage]);
      const unsigned char* pg = p.pages + static_cast<uint64_t>(id[b]) * p.page_bytes + static_cast<uint64_t>(slot) * 4;
      ptx::BulkCopyG2S(st + T::kKScaleTile + b * kTmaBlockTokens * 4, pg + p.k_scales_offset, kTmaBlockTokens * 4, &full[stage]);
      ptx::BulkCopyG2S(st + T::kVScaleTile + b * kTmaBlockTokens * 4, pg + p.v_scales_offset, kTmaBlockTokens * 4, &full[stage]);
    }
  };

  int next_pages = 0;  // kTma, warp 0: the page ids of the next chunk to issue
  if constexpr (kTma) {
    if (tid == 0) {
#pragma unroll
      for (int s = 0; s < kMmaStages; ++s) ptx::MbarInit(&full[s], 1);
      ptx::FenceMbarInit();
    }
    __syncthreads();
    if (warp == 0) {
      int ids = block_pages(0);
#pragma unroll
      for (int s = 0; s < kMmaStages - 1; ++s) {
        const int next = block_pages(s + 1);
        if (s < n_chunks) issue_tma(s, ids);
        ids = next;
      }
      next_pages = ids;
    }
  } else {
    load_pages(0);
#pragma unroll
    for (int s = 0; s < kMmaStages - 1; ++s) {
      if (s < n_chunks) {
        issue(s);
        load_pages(s + 1);
      }
      CpAsyncCommit();
    }
  }

  // Q row g of this pass as the A fragment (rows 8..15 zero): k-step s, lane c holds channels
  // 32c + 4s .. 32c + 4s + 3 (pairs (0,1) as k = 2c, 2c+1 and (2,3) as k = 2c+8, 2c+9).
  uint32_t qa[8][2];
  {
    const int rho = row0 + g, qi = rho / group;
    const bool live = g < kRows && qi < n_q;
    const int64_t at =
        live ? ((static_cast<int64_t>(q_first) + qi) * p.num_q_heads + kvh * group + rho % group) * kHeadDim : 0;
    if constexpr (T::kInt4) {
      // INT4 K: k-step ks covers groups 2·(ks/4) (k < 8, A rows 0..7) and 2·(ks/4) + 1 (k >= 8, rows
      // 8..15), channels 8·(ks%4) + 2c + {0, 1} of each: qa[ks] = {group A pair, group B pair}.
      const uint32_t* src = reinterpret_cast<const uint32_t*>(static_cast<const uint16_t*>(p.q) + at + 2 * c);
#pragma unroll
      for (int ks = 0; ks < 8; ++ks) {
        const int ch = 2 * kInt4GroupChannels * (ks / 4) + 8 * (ks % 4);
        qa[ks][0] = live ? src[ch / 2] : 0u;
        qa[ks][1] = live ? src[(ch + kInt4GroupChannels) / 2] : 0u;
      }
    } else {
      const uint4* src = reinterpret_cast<const uint4*>(static_cast<const uint16_t*>(p.q) + at + 32 * c);
#pragma unroll
      for (int k = 0; k < 4; ++k) {
        const uint4 w = live ? src[k] : make_uint4(0, 0, 0, 0);
        qa[2 * k][0] = w.x, qa[2 * k][1] = w.y, qa[2 * k + 1][0] = w.z, qa[2 * k + 1][1] = w.w;
      }
    }
  }
  // Bottom-right causal: row qi sees tokens [0, len - n_q + qi]. Padding rows see everything.
  int limit_g;
  {
    const int qi = (row0 + g) / group;
    limit_g = (g < kRows && qi < n_q) ? len - n_q + qi : len - 1;
  }
  int limit_min = len - 1;
#pragma unroll
  for (int r = 0; r < kRows; ++r) {
    const int qi = (row0 + r) / group;
    limit_min = min(limit_min, qi < n_q ? len - n_q + qi : len - 1);
  }

  constexpr int kNT = T::kTokensPerWarp / 8;  // n-tiles of S per warp and chunk
  float m = kNegInf, l = 0.f, vref = k8Bit ? 0.f : 1.f;  // row g; l is this lane's partial sum
  float acc[16][2];  // O[g][32c + i], O[g][32c + 16 + i] (8-bit: in units of vref)
#pragma unroll
  for (int i = 0; i < 16; ++i) acc[i][0] = acc[i][1] = 0.f;
  const int tb = warp * T::kTokensPerWarp;  // the warp's tokens in a chunk

  for (int ch = 0; ch < n_chunks; ++ch) {
    if constexpr (kTma) {
      __syncthreads();  // every warp is done with chunk ch-1: its stage is free to refill
      if (warp == 0 && ch + kMmaStages - 1 < n_chunks) {
        const int next = block_pages(ch + kMmaStages);
        issue_tma(ch + kMmaStages - 1, next_pages);
        next_pages = next;
      }
      ptx::MbarWait(&full[ch % kMmaStages], (ch / kMmaStages) & 1);  // chunk ch landed
    } else {
      CpAsyncWait<kMmaStages - 2>();
      __syncthreads();  // chunk ch landed for all threads; chunk ch-1's stage is free to refill
      if (ch + kMmaStages - 1 < n_chunks) {
        issue(ch + kMmaStages - 1);
        load_pages(ch + kMmaStages);
      }
      CpAsyncCommit();
    }

    const unsigned char* st = smem + (ch % kMmaStages) * T::kStageBytes;
    const float* k_scales = reinterpret_cast<const float*>(st + T::kKScaleTile);
    const float* v_scales = reinterpret_cast<const float*>(st + T::kVScaleTile);
    const int chunk_start = split_start + ch * kChunk;
    const bool masked = chunk_start + kChunk - 1 > limit_min;  // CTA-uniform

    // S[g][n-tile j, cols 2c, 2c+1] = tokens tb + 8j + 2c + {0, 1}. INT4: s4[j][set] holds the sums
    // of group 2·set (fragment 0, 1: row g) and 2·set + 1 (fragment 2, 3: row g + 8) separately.
    float s[kNT][4];
    float s4[T::kInt4 ? kNT : 1][2][4];
#pragma unroll
    for (int j = 0; j < kNT; ++j) {
      s[j][0] = s[j][1] = s[j][2] = s[j][3] = 0.f;
      const int t = tb + 8 * j + g;  // this lane's B column: token t, channels 32c..32c+31
      if constexpr (T::kInt4) {
        const uint4 kv = *reinterpret_cast<const uint4*>(st + t * T::kKRowBytes + c * 16);
        const uint32_t kw[4] = {kv.x, kv.y, kv.z, kv.w};
#pragma unroll
        for (int set = 0; set < 2; ++set) s4[j][set][0] = s4[j][set][1] = s4[j][set][2] = s4[j][set][3] = 0.f;
#pragma unroll
        for (int w = 0; w < 4; ++w) {  // word w: k-steps 2w, 2w + 1
          uint32_t b[4];
          Int4x8To16x2<kIo>(kw[w], b);
          const uint32_t a0[4] = {qa[2 * w][0], 0u, 0u, qa[2 * w][1]};
          Mma16816<kIo>(s4[j][w / 2], a0, b[0], b[1]);
          const uint32_t a1[4] = {qa[2 * w + 1][0], 0u, 0u, qa[2 * w + 1][1]};
          Mma16816<kIo>(s4[j][w / 2], a1, b[2], b[3]);
        }
        continue;
      }
      const unsigned char* row = st + t * T::kRowBytes;
      if constexpr (k8Bit) {
        const uint4 k0 = *reinterpret_cast<const uint4*>(row + T::KUnit(2 * c, t) * 16);
        const uint4 k1 = *reinterpret_cast<const uint4*>(row + T::KUnit(2 * c + 1, t) * 16);
        const uint32_t kw[8] = {k0.x, k0.y, k0.z, k0.w, k1.x, k1.y, k1.z, k1.w};
#pragma unroll
        for (int ks = 0; ks < 8; ++ks) {
          uint32_t b0, b1;
          Int8x4To16x2<kIo>(kw[ks], b0, b1);
          const uint32_t a[4] = {qa[ks][0], 0u, qa[ks][1], 0u};
          Mma16816<kIo>(s[j], a, b0, b1);
        }
      } else {
#pragma unroll
        for (int h = 0; h < 4; ++h) {
          const uint4 kv = *reinterpret_cast<const uint4*>(row + T::KUnit(4 * c + h, t) * 16);
          const uint32_t a0[4] = {qa[2 * h][0], 0u, qa[2 * h][1], 0u};
          Mma16816<kIo>(s[j], a0, kv.x, kv.y);
          const uint32_t a1[4] = {qa[2 * h + 1][0], 0u, qa[2 * h + 1][1], 0u};
          Mma16816<kIo>(s[j], a1, kv.z, kv.w);
        }
      }
    }
    // Scores of tokens u = 8j + 2c + e in the exp2 domain, masked.
    float sc[2 * kNT], vs[2 * kNT];
#pragma unroll
    for (int j = 0; j < kNT; ++j) {
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        const int t = tb + 8 * j + 2 * c + e;
        float x;
        if constexpr (T::kInt4) {
          const float4 ks = reinterpret_cast<const float4*>(k_scales)[t];
          x = (ks.x * s4[j][0][e] + ks.y * s4[j][0][2 + e] + ks.z * s4[j][1][e] + ks.w * s4[j][1][2 + e]) * p.scale_log2;
          vs[2 * j + e] = v_scales[t];
        } else if constexpr (k8Bit) {
          x = s[j][e] * (k_scales[t] * p.scale_log2);
          vs[2 * j + e] = v_scales[t];
        } else {
          x = s[j][e] * p.scale_log2;
          vs[2 * j + e] = 1.f;
        }
        if (masked && chunk_start + t > limit_g) {
          x = kNegInf;  // also hides a NaN the row must not see
          // TMA blocks bring whatever the page holds past the sequence's end (cp.async zero-fills
          // it): such a V scale must not become the row's vref.
          if constexpr (kTma) vs[2 * j + e] = 0.f;
        }
        sc[2 * j + e] = x;
      }
    }
    float mx = sc[0];
#pragma unroll
    for (int i = 1; i < 2 * kNT; ++i) mx = fmaxf(mx, sc[i]);
    mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
    mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
    const float m_new = fmaxf(m, mx);
    const float m_use = m_new == kNegInf ? 0.f : m_new;  // no token seen yet: avoid -inf - -inf
    const float alpha = Exp2(m - m_use);
    float inv_vref = 1.f, rescale = alpha;
    if constexpr (k8Bit) {
      float vmx = fmaxf(fmaxf(vs[0], vs[1]), fmaxf(vs[2], vs[3]));  // fmaxf drops NaN scales
      vmx = fmaxf(vmx, __shfl_xor_sync(0xffffffffu, vmx, 1));
      vmx = fmaxf(vmx, __shfl_xor_sync(0xffffffffu, vmx, 2));
      const float vref_new = fmaxf(vref, vmx);
      inv_vref = vref_new > 0.f ? 1.f / vref_new : 0.f;
      rescale = vref_new == vref ? alpha : alpha * (vref * inv_vref);  // x · (1/x) need not be 1
      vref = vref_new;
    }
    m = m_new;
    float pw[2 * kNT], psum = 0.f;
#pragma unroll
    for (int i = 0; i < 2 * kNT; ++i) {
      const float pr = Exp2(sc[i] - m_use);
      psum += pr;  // NaN scores make l NaN, and the row NaN
      // A token the row must not see contributes exactly 0 (0 · a NaN scale would not).
      if constexpr (k8Bit) pw[i] = sc[i] == kNegInf ? 0.f : pr * (vs[i] * inv_vref);
      else pw[i] = pr;
    }
    l = l * alpha + psum;
    // Once a row's max and the V scales settle (most chunks of a long sequence), alpha is exactly 1:
    // the 32 multiplies are skipped when no lane of the warp needs them.
    if (!SAGE_DECODE_MMA_LAZY_RESCALE || __any_sync(0xffffffffu, rescale != 1.f)) {
#pragma unroll
      for (int i = 0; i < 16; ++i) {
        acc[i][0] *= rescale;
        acc[i][1] *= rescale;
      }
    }

    // O[g][d] += Σ_u P[g][u] V[u][d]; B = V, n-tile i, col g -> d = 16g + i.
    const unsigned char* v_tile = st + T::kVTile;
    if constexpr (k8Bit) {
      // k = tokens 2c, 2c+1 | 2c+8, 2c+9; E4M3 -> f16 exactly, P' = p·vscale/vref in f16.
      const __half2 p01 = __floats2half2_rn(pw[0], pw[1]);
      const __half2 p23 = __floats2half2_rn(pw[2], pw[3]);
      const uint32_t pa[4] = {*reinterpret_cast<const uint32_t*>(&p01), 0u, *reinterpret_cast<const uint32_t*>(&p23),
                              0u};
      uint32_t va[4] = {0u, 0u, 0u, 0u};  // visibility (f16 1.0) for the masked-chunk NaN count
      if (masked) {
#pragma unroll
        for (int i = 0; i < 4; ++i)
          if (chunk_start + tb + 8 * (i / 2) + 2 * c + (i % 2) <= limit_g) va[(i / 2) * 2] |= 0x3C00u << (16 * (i % 2));
      }
      uint4 vw[4];
#pragma unroll
      for (int q = 0; q < 4; ++q) {
        const int t = tb + 2 * c + (q & 1) + 8 * (q >> 1);
        vw[q] = *reinterpret_cast<const uint4*>(v_tile + t * T::kRowBytes + T::VUnit(g, t) * 16);
      }
#pragma unroll
      for (int wd = 0; wd < 4; ++wd) {
        const uint32_t w0 = (&vw[0].x)[wd], w1 = (&vw[1].x)[wd], w2 = (&vw[2].x)[wd], w3 = (&vw[3].x)[wd];
        const uint32_t lo01 = __byte_perm(w0, w1, 0x5140), hi01 = __byte_perm(w0, w1, 0x7362);
        const uint32_t lo23 = __byte_perm(w2, w3, 0x5140), hi23 = __byte_perm(w2, w3, 0x7362);
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const uint32_t x01 = e < 2 ? lo01 : hi01, x23 = e < 2 ? lo23 : hi23;
          uint32_t b0 = Fp8x2ToHalf2(e % 2 == 0 ? x01 : x01 >> 16);
          uint32_t b1 = Fp8x2ToHalf2(e % 2 == 0 ? x23 : x23 >> 16);
          const int i = 4 * wd + e;
          float f4[4] = {0.f, 0.f, 0.f, 0.f};
          if (masked) {
            const uint32_t m0 = NonFiniteMask<false>(b0), m1 = NonFiniteMask<false>(b1);
            b0 &= ~m0, b1 &= ~m1;
            Mma16816<IoType::kF16>(f4, va, m0 & 0x3C003C00u, m1 & 0x3C003C00u);
          }
          float d4[4] = {acc[i][0], acc[i][1], 0.f, 0.f};
          Mma16816<IoType::kF16>(d4, pa, b0, b1);
          acc[i][0] = f4[0] > 0.f ? __int_as_float(0x7fffffff) : d4[0];
          acc[i][1] = f4[1] > 0.f ? __int_as_float(0x7fffffff) : d4[1];
        }
      }
    } else {
      // k = tokens 2c, 2c+1 (m16n8k8); P rounded to the V type.
      uint32_t pa;
      if constexpr (kIo == IoType::kF16) {
        const __half2 h = __floats2half2_rn(pw[0], pw[1]);
        pa = *reinterpret_cast<const uint32_t*>(&h);
      } else {
        const __nv_bfloat162 h = __floats2bfloat162_rn(pw[0], pw[1]);
        pa = *reinterpret_cast<const uint32_t*>(&h);
      }
      constexpr uint32_t kOne = kIo == IoType::kF16 ? 0x3C00u : 0x3F80u;
      uint32_t va = 0u;  // visibility (1.0) for the masked-chunk NaN count
      if (masked) {
#pragma unroll
        for (int e = 0; e < 2; ++e)
          if (chunk_start + tb + 2 * c + e <= limit_g) va |= kOne << (16 * e);
      }
      uint4 vw[2][2];  // token 2c + e, units 2g + h (d = 16g + 8h ..)
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        const int t = tb + 2 * c + e;
#pragma unroll
        for (int h = 0; h < 2; ++h)
          vw[e][h] = *reinterpret_cast<const uint4*>(v_tile + t * T::kRowBytes + T::VUnit(2 * g + h, t) * 16);
      }
#pragma unroll
      for (int i = 0; i < 16; ++i) {
        const uint32_t w0 = (&vw[0][i / 8].x)[(i % 8) / 2], w1 = (&vw[1][i / 8].x)[(i % 8) / 2];
        uint32_t b0 = __byte_perm(w0, w1, i % 2 == 0 ? 0x5410 : 0x7632);
        float f4[4] = {0.f, 0.f, 0.f, 0.f};
        if (masked) {
          const uint32_t m0 = NonFiniteMask<kIo == IoType::kBF16>(b0);
          b0 &= ~m0;
          Mma1688<kIo>(f4, va, 0u, m0 & (kOne | (kOne << 16)));
        }
        float d4[4] = {acc[i][0], acc[i][1], 0.f, 0.f};
        Mma1688<kIo>(d4, pa, 0u, b0);
        acc[i][0] = f4[0] > 0.f ? __int_as_float(0x7fffffff) : d4[0];
        acc[i][1] = f4[1] > 0.f ? __int_as_float(0x7fffffff) : d4[1];
      }
    }
  }

  // Merge the 4 warps' softmax states through shared memory (the ring is drained first).
  CpAsyncWait<0>();
  __syncthreads();
  float* red_m = reinterpret_cast<float*>(smem);
  float* red_l = red_m + kWarps * 8;
  float* red_acc = red_l + kWarps * 8;
  constexpr int kRedStride = kHeadDim + 4;
  l += __shfl_xor_sync(0xffffffffu, l, 1);
  l += __shfl_xor_sync(0xffffffffu, l, 2);
  if (c == 0) {
    red_m[warp * 8 + g] = m;
    red_l[warp * 8 + g] = l;
  }
  // Row stride kRedStride and one float of skew per 32 columns: the 32 lanes' stores hit 32 banks.
  float* ra = red_acc + (warp * 8 + g) * kRedStride + 33 * c;
#pragma unroll
  for (int i = 0; i < 16; ++i) {
    ra[i] = acc[i][0] * vref;
    ra[16 + i] = acc[i][1] * vref;
  }
  __syncthreads();

  for (int i = tid; i < kRows * kHeadDim; i += kDecodeThreads) {
    const int r = i / kHeadDim, d = i % kHeadDim, rho = row0 + r, qi = rho / group;
    if (qi >= n_q) continue;
    float mx = kNegInf;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) mx = fmaxf(mx, red_m[w * 8 + r]);
    const float m_use = mx == kNegInf ? 0.f : mx;
    float lsum = 0.f, a = 0.f;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) {
      const float wt = Exp2(red_m[w * 8 + r] - m_use);
      lsum += red_l[w * 8 + r] * wt;
      a += red_acc[(w * 8 + r) * kRedStride + d + (d >> 5)] * wt;
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
