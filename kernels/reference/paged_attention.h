// CPU emulation of sage_paged_decode (kernels/include/sageattn.h "Paged decode"): the same inputs
// as host pointers, attention in double over the stored values: K = code x scale (kInt4KFp8V: the
// channel's 32-channel group scale) and V = fp8(code) x scale exactly for the quantized storages
// (not rounded to 16 bits, unlike DecodeKvTokens), the 16-bit values for k16Bit. The GPU kernel is held to this by tests/cuda/paged_decode_gpu_test.cc (NUMERICS §9a).
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "kernels/reference/attention_problem.h"
#include "kernels/reference/dtype.h"
#include "kernels/reference/kv_pages.h"

namespace sage {

struct PagedDecodeProblem {
  KvStorage storage = KvStorage::k16Bit;
  DType dtype = DType::kF16;              // of q and of 16-bit pages
  const void* q = nullptr;                // [total_q, Hq, D] 16-bit values
  const std::byte* pages = nullptr;       // the pool: page p at pages + p * page_bytes
  uint64_t page_bytes = 0;
  int page_tokens = 0;
  std::span<const int32_t> page_table;    // every sequence's page ids, concatenated
  std::span<const int32_t> cu_pages;      // batch + 1
  std::span<const int32_t> cu_seqlens_q;  // batch + 1; 1 <= n_q <= seqlens_k[b]
  std::span<const int32_t> seqlens_k;     // batch
  int num_q_heads = 0;
  int num_kv_heads = 0;
  int head_dim = 0;
  float softmax_scale = 0.f;
  KvRowOrder rows = KvRowOrder::kHeadMajor;  // of the pages' rows

  int batch() const { return static_cast<int>(seqlens_k.size()); }
  int64_t total_q() const { return cu_seqlens_q.empty() ? 0 : cu_seqlens_q.back(); }
  KvPageLayout layout() const { return {storage, dtype, page_tokens, num_kv_heads, head_dim, rows}; }
};

struct PagedDecodeOutput {
  std::vector<float> o;    // [total_q, Hq, D]
  std::vector<float> lse;  // [total_q, Hq], natural log of the scaled scores
};

// Causal, bottom-right: query row i of n sees tokens [0, len - n + i]. Non-finite stored values or
// scales propagate to the rows that see them.
PagedDecodeOutput PagedDecodeReference(const PagedDecodeProblem& problem);

// A page pool holding a packed varlen K/V ([total_k, Hkv, D] 16-bit, cu_seqlens_k) the way the
// server's pool does: each sequence's tokens in its own pages, page ids handed out in a seeded
// random order (so no sequence's pages are contiguous or ascending). The quantized storages encode
// with EncodeKvTokens and each sequence's per-head K mean as k̄ (kInt4KFp8V: head_dim a multiple of
// 64, CheckKvLayout), rows in `rows` order. Pages are page_bytes apart (>= the
// layout's bytes; any extra bytes are filled with 0xA5 and must never be read).
struct PagedKvPool {
  KvPageLayout layout;
  uint64_t page_bytes = 0;
  std::vector<std::byte> pool;
  std::vector<int32_t> page_table, cu_pages, seqlens_k;
};
PagedKvPool PackPagedKv(KvStorage storage, DType dtype, const void* k, const void* v,
                        std::span<const int32_t> cu_seqlens_k, int kv_heads, int head_dim, int page_tokens,
                        uint64_t page_bytes, uint64_t seed, KvRowOrder rows = KvRowOrder::kHeadMajor);

// The decode problem of `in`'s Q (rows, heads, scale) over `pool` (packed from `in`'s K/V): the
// views point into both, which must outlive it.
PagedDecodeProblem ProblemOver(const PagedKvPool& pool, const AttnInput& in);

// The exact stored value of channel c of token t, head h (K or V) of a sequence's pages, in double.
double PagedKvValue(const PagedDecodeProblem& problem, std::span<const int32_t> seq_pages, int t, int h, int c,
                    bool value_tensor);

}  // namespace sage
