// How a session stores K and V in a page, and how they come back out: the session KV scheme of
// docs/NUMERICS.md ("Session KV storage"). This file is the scheme's CPU definition; every engine
// attends over what DecodeKvTokens returns, so the CPU engine's session results are the emulation
// and a GPU's are held to it by the recipe's tolerance rule.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>

#include "kernels/reference/dtype.h"

namespace sage {

enum class KvStorage {
  k16Bit,      // K and V as sent, in the session's dtype: exact.
  kInt8KFp8V,  // INT8 (K − k̄), FP8 E4M3 V, one fp32 scale per token and head for each.
};

// One page: `page_tokens` tokens of `heads` KV heads, laid out so that a run of tokens is one
// contiguous block per tensor, in the [tokens, heads, head_dim] order engines read:
//   [K codes: T × H × D][V codes: T × H × D][K scales: T × H fp32][V scales: T × H fp32]
// (codes 2 bytes for k16Bit, 1 byte and the scales for kInt8KFp8V).
struct KvPageLayout {
  KvStorage storage = KvStorage::k16Bit;
  DType dtype = DType::kF16;  // of what is sent and given back
  int page_tokens = 0;
  int heads = 0;
  int head_dim = 0;

  size_t code_bytes() const { return storage == KvStorage::k16Bit ? 2 : 1; }
  size_t codes_per_tensor() const { return static_cast<size_t>(page_tokens) * heads * head_dim * code_bytes(); }
  size_t scales_per_tensor() const {
    return storage == KvStorage::k16Bit ? 0 : static_cast<size_t>(page_tokens) * heads * sizeof(float);
  }
  size_t page_bytes() const { return 2 * codes_per_tensor() + 2 * scales_per_tensor(); }
};

// Bytes one token (all KV heads, K and V) takes in a page.
size_t KvTokenBytes(KvStorage storage, int heads, int head_dim);

// Encodes tokens [first, first + n) of `page` from `k` and `v` ([n, H, D] 16-bit values of
// layout.dtype). `k_mean` ([H, D]) is the session's K mean (kInt8KFp8V only). A NaN or Inf in a
// token-head gives it a NaN scale (docs/NUMERICS.md, "Non-finite inputs").
void EncodeKvTokens(const KvPageLayout& layout, std::byte* page, int first, int n, const void* k, const void* v,
                    std::span<const float> k_mean);

// EncodeKvTokens for kInt8KFp8V in two halves, so a device can quantize what the host centred (the
// CUDA backend's pool: kernels/include/sageattn.h, sage_kv_quantize, gives the same bytes):
// CenterKTokens writes `values` K values (16-bit, of `dtype`) as fp32 minus the K mean, whose
// size is one token's row (H x D), to `out`; QuantizeKvTokens encodes tokens [first, first + n) of
// `page` from those and from V ([n, H, D] 16-bit values of layout.dtype).
void CenterKTokens(DType dtype, const void* k, size_t values, std::span<const float> k_mean, float* out);
void QuantizeKvTokens(const KvPageLayout& layout, std::byte* page, int first, int n, const float* k_centered,
                      const void* v);

// Writes tokens [first, first + n) of `page` to `k` and `v` ([n, H, D], 16-bit values of
// layout.dtype): k16Bit the bytes that were sent; kInt8KFp8V code × scale rounded to the dtype (K
// stays mean-subtracted: softmax is unchanged by it).
void DecodeKvTokens(const KvPageLayout& layout, const std::byte* page, int first, int n, void* k, void* v);

}  // namespace sage
