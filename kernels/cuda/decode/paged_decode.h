// Paged decode (sage_paged_decode): host/device boundary of the kernels in paged_decode.cu (CUDA
// cores for D = 64, paged_decode_kernel.cuh; tensor cores for D = 128, paged_decode_mma.cuh).
// The C API (api/paged_decode_api.cu) validates sage_paged_decode_params_t, plans the grid with
// PlanPagedDecode and launches through LaunchPagedDecode.
#pragma once

#include <cuda.h>  // CUtensorMap
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "kernels/cuda/decode/int4_nibbles.cuh"
#include "kernels/cuda/decode/page_parts.h"
#include "sageattn.h"

namespace sage::cuda {

enum class KvCodes { k16Bit, kInt8KFp8V, kInt4KFp8V };

inline KvCodes CodesOf(sage_kv_storage_t storage) {
  return storage == SAGE_KV_16BIT ? KvCodes::k16Bit
         : storage == SAGE_KV_INT4K_FP8V ? KvCodes::kInt4KFp8V
                                         : KvCodes::kInt8KFp8V;
}
enum class IoType { kF16, kBF16 };

inline constexpr int kDecodeThreads = 128;       // 4 warps: 4 lanes per token of a chunk
inline constexpr int kDecodeSplitQuantum = 64;   // splits are whole multiples of every storage's chunk
inline constexpr int kDecodeMinQuantaPerSplit = 2;  // a split reads >= 128 tokens (prologue amortized)

// n / d and n % d for 0 <= n < 2^31 by one wide multiply and a shift (Granlund-Montgomery), for a
// divisor fixed per launch: a token's page and its slot in it, per token and chunk, without the
// ~20-instruction integer division. m = ceil(2^(31 + l) / d) with l = ceil(log2 d) is exact there.
struct FastDivmod {
  int divisor = 1;
  int shift = 31;
  uint64_t multiplier = uint64_t{1} << 31;

  static FastDivmod For(int d) {  // d >= 1
    FastDivmod f;
    int l = 0;
    while ((int64_t{1} << l) < d) ++l;
    f.divisor = d;
    f.shift = 31 + l;
    f.multiplier = ((uint64_t{1} << f.shift) + static_cast<uint64_t>(d) - 1) / static_cast<uint64_t>(d);
    return f;
  }
  __host__ __device__ int Div(int n) const {
    return static_cast<int>((static_cast<uint64_t>(static_cast<uint32_t>(n)) * multiplier) >> shift);
  }
  __host__ __device__ int Mod(int n) const { return n - Div(n) * divisor; }
};

// How one call is cut into CTAs; a function of the params and the current device (SM count, CTAs
// of the chosen kernel resident per SM), so the workspace size and the launch agree.
struct PagedDecodePlan {
  bool tma = false;       // ReadsWithTma
  int rows_per_cta = 1;   // query rows (n_q x G) one CTA computes: 1, 2, 4 or 8
  int row_passes = 1;     // CTAs along the row axis per (sequence, KV head)
  int splits = 1;         // CTAs along the KV axis per (sequence, KV head, row pass)
  int split_tokens = 0;   // tokens per split, a multiple of kDecodeSplitQuantum
  size_t workspace_bytes = 0;  // partial O [splits][total_q][Hq][D] + LSE [splits][total_q][Hq], fp32
};

// Whether a launch reads its pages with the tensor memory accelerator (TMA) instead of cp.async:
// 8-bit pages at D = 128 with head-major rows, whose 16-token blocks of one head's K or V codes are
// then contiguous 2 KiB runs, page_bytes and the pool 128-byte aligned (the pool is addressed as
// rows of 128 bytes), on an sm_90 device. Off by default (build knob SAGE_DECODE_TMA=1 turns it on)
// until it has passed the GPU tests on a device: written 2026-12-08 when no GPU could be had
// (scripts/device-decode-tma.sh is the run that decides).
#ifndef SAGE_DECODE_TMA
#define SAGE_DECODE_TMA 0
#endif
bool ReadsWithTma(const sage_paged_decode_params_t& p, int device_major);

// Validated params only. Queries the current device (CUDA errors are returned).
sage_status_t PlanPagedDecode(const sage_paged_decode_params_t& p, PagedDecodePlan* plan);

// Everything the kernels read; built once on the host from the validated C params.
struct PagedDecodeParams {
  KvCodes codes = KvCodes::k16Bit;
  IoType io = IoType::kF16;
  const void* q = nullptr;
  void* o = nullptr;
  float* lse = nullptr;  // natural log, or null
  const unsigned char* pages = nullptr;
  uint64_t page_bytes = 0;
  int page_tokens = 0;
  FastDivmod page_div;  // by page_tokens
  const int32_t* page_table = nullptr;
  const int32_t* cu_pages = nullptr;
  const int32_t* cu_seqlens_q = nullptr;
  const int32_t* seqlens_k = nullptr;
  int batch = 0;
  int64_t total_q = 0;
  int num_q_heads = 0;
  int num_kv_heads = 0;
  int head_dim = 0;
  float scale_log2 = 0.f;  // softmax_scale x log2(e): scores live in the exp2 domain
  RowStrides rows;  // of (token t of a page, KV head h) inside each part of a page
  // Byte offsets inside a page (the kv_pages.h layout).
  uint64_t v_codes_offset = 0;
  uint64_t k_scales_offset = 0;
  uint64_t v_scales_offset = 0;
  // plan.tma: the pool as a 2-D tensor of 128-byte rows (row = byte offset / 128), a box of 16 rows
  // with the 128-byte swizzle; a page holds page_rows of them, and its V codes start v_codes_rows in.
  CUtensorMap codes_map;
  int64_t page_rows = 0;
  int v_codes_rows = 0;
  PagedDecodePlan plan;
  float* partial_o = nullptr;    // splits > 1: fp32 [splits][total_q][Hq][D]
  float* partial_lse = nullptr;  // splits > 1: fp32 [splits][total_q][Hq], log2 domain
};

// Fills p.codes_map for plan.tma launches (cuTensorMapEncodeTiled through the runtime's driver
// entry point).
sage_status_t EncodeCodesMap(PagedDecodeParams& p);

// Launches the split kernel (and the merge when plan.splits > 1) on `stream`.
sage_status_t LaunchPagedDecode(const PagedDecodeParams& p, cudaStream_t stream);

}  // namespace sage::cuda
