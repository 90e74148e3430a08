// How a session stores K and V in a page, and how they come back out: the session KV scheme of
// docs/NUMERICS.md ("Session KV storage"). This file is the scheme's CPU definition; every engine
// attends over what DecodeKvTokens returns, so the CPU engine's session results are the emulation
// and a GPU's are held to it by the recipe's tolerance rule.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string_view>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "kernels/reference/dtype.h"

namespace sage {

enum class KvStorage {
  k16Bit,      // K and V as sent, in the session's dtype: exact.
  kInt8KFp8V,  // INT8 (K − k̄), FP8 E4M3 V, one fp32 scale per token and head for each.
  kInt4KFp8V,  // INT4 (K − k̄) with one fp32 scale per 32 channels of a token-head; V as kInt8KFp8V.
};
inline constexpr KvStorage kAllKvStorages[] = {KvStorage::k16Bit, KvStorage::kInt8KFp8V, KvStorage::kInt4KFp8V};

// The wire's name (KV_STORAGE_16BIT, ...), for errors and logs.
std::string_view KvStorageName(KvStorage storage);
// The storage of a KvStorageName; INVALID_ARGUMENT listing the names.
absl::StatusOr<KvStorage> ParseKvStorage(std::string_view name);

// Whether K is stored centred on the session's per-layer K mean k̄ (every quantized storage).
inline bool HasKMean(KvStorage storage) { return storage != KvStorage::k16Bit; }

// INT4 K: each token-head's channels in groups of kInt4GroupChannels, one fp32 scale per group.
inline constexpr int kInt4GroupChannels = 32;

// INVALID_ARGUMENT unless `storage` can lay out heads of `head_dim` channels: INT4 K needs a
// multiple of 64 (whole 32-channel scale groups, and Int4NibbleChannel is a permutation only
// then). Checked where a session's layout is made.
absl::Status CheckKvLayout(KvStorage storage, int head_dim);

// The INT4 K nibble order: nibble n (0..D-1) of a token-head's D/2 code bytes (byte n/2, low 4
// bits for even n) holds channel Int4NibbleChannel(n, D). The order is the one a tensor-core
// kernel's MMA fragments want, so it unpacks a 32-bit load straight into its registers
// (docs/NUMERICS.md §8b gives the formula). Int4ChannelNibble is its inverse. D % 64 == 0.
int Int4NibbleChannel(int n, int head_dim);
int Int4ChannelNibble(int channel, int head_dim);

// The order of a page's (token, head) rows inside each of its four parts. Head-major keeps one
// head's tokens of a page contiguous (codes and scales), which is how the pool stores them: a
// decode CTA, which owns one KV head, then reads whole sectors of its own rows (docs/NUMERICS.md,
// "Session KV storage"; docs/BENCHMARKS.md measured token-major 2-14 points slower).
enum class KvRowOrder {
  kTokenMajor,  // row t * H + h
  kHeadMajor,   // row h * T + t
};

// One page: `page_tokens` (T) tokens of `heads` (H) KV heads, in four parts of T x H rows each
// (a row: one token-head's bytes of that part), in the `rows` order:
//   [K codes: T x H x k_code_bytes][V codes: T x H x v_code_bytes]
//   [K scales: T x H x k_scales_per_token_head fp32][V scales: T x H x v_scales_per_token_head fp32]
// k16Bit: 2·D-byte codes (the values), no scales. kInt8KFp8V: D bytes each, one scale each.
// kInt4KFp8V: D/2 bytes of K nibbles with D/32 K scales, V as kInt8KFp8V.
struct KvPageLayout {
  KvStorage storage = KvStorage::k16Bit;
  DType dtype = DType::kF16;  // of what is sent and given back
  int page_tokens = 0;
  int heads = 0;
  int head_dim = 0;
  KvRowOrder rows = KvRowOrder::kHeadMajor;

  bool operator==(const KvPageLayout&) const = default;

  // The row of token t (0..T-1) of head h in every part.
  size_t row(int t, int h) const {
    return rows == KvRowOrder::kHeadMajor ? static_cast<size_t>(h) * page_tokens + t : static_cast<size_t>(t) * heads + h;
  }

  // One token-head (row) of each part.
  size_t k_code_bytes() const {
    const size_t d = static_cast<size_t>(head_dim);
    return storage == KvStorage::k16Bit ? 2 * d : storage == KvStorage::kInt8KFp8V ? d : d / 2;
  }
  size_t v_code_bytes() const { return static_cast<size_t>(head_dim) * (storage == KvStorage::k16Bit ? 2 : 1); }
  size_t k_scales_per_token_head() const {
    return storage == KvStorage::k16Bit       ? 0
           : storage == KvStorage::kInt8KFp8V ? 1
                                              : static_cast<size_t>(head_dim / kInt4GroupChannels);
  }
  size_t v_scales_per_token_head() const { return storage == KvStorage::k16Bit ? 0 : 1; }

  // One page: each part's bytes, then where each part starts (K codes start at 0).
  size_t token_heads() const { return static_cast<size_t>(page_tokens) * heads; }
  size_t k_codes_bytes() const { return token_heads() * k_code_bytes(); }
  size_t v_codes_bytes() const { return token_heads() * v_code_bytes(); }
  size_t k_scales_bytes() const { return token_heads() * k_scales_per_token_head() * sizeof(float); }
  size_t v_scales_bytes() const { return token_heads() * v_scales_per_token_head() * sizeof(float); }
  size_t v_codes_offset() const { return k_codes_bytes(); }
  size_t k_scales_offset() const { return v_codes_offset() + v_codes_bytes(); }
  size_t v_scales_offset() const { return k_scales_offset() + k_scales_bytes(); }
  size_t page_bytes() const { return v_scales_offset() + v_scales_bytes(); }
};

// Bytes one token (all KV heads, K and V) takes in a page.
size_t KvTokenBytes(KvStorage storage, int heads, int head_dim);

// Encodes tokens [first, first + n) of `page` from `k` and `v` ([n, H, D] 16-bit values of
// layout.dtype). `k_mean` ([H, D]) is the session's K mean (HasKMean storages only). A NaN or Inf
// in a token-head (for INT4 K: in a 32-channel group) gives it a NaN scale (docs/NUMERICS.md,
// "Non-finite inputs").
void EncodeKvTokens(const KvPageLayout& layout, std::byte* page, int first, int n, const void* k, const void* v,
                    std::span<const float> k_mean);

// EncodeKvTokens for the quantized storages in two halves, so a device can quantize what the host
// centred (the CUDA backend's pool: kernels/include/sageattn.h, sage_kv_quantize, gives the same
// bytes for kInt8KFp8V; kInt4KFp8V has no device quantizer yet):
// CenterKTokens writes `values` K values (16-bit, of `dtype`) as fp32 minus the K mean, whose
// size is one token's row (H x D), to `out`; QuantizeKvTokens encodes tokens [first, first + n) of
// `page` from those and from V ([n, H, D] 16-bit values of layout.dtype).
void CenterKTokens(DType dtype, const void* k, size_t values, std::span<const float> k_mean, float* out);
void QuantizeKvTokens(const KvPageLayout& layout, std::byte* page, int first, int n, const float* k_centered,
                      const void* v);

// Writes tokens [first, first + n) of `page` to `k` and `v` ([n, H, D], 16-bit values of
// layout.dtype): k16Bit the bytes that were sent; the quantized storages code × scale (INT4 K: the
// channel's group scale) rounded to the dtype (K stays mean-subtracted: softmax is unchanged by it).
void DecodeKvTokens(const KvPageLayout& layout, const std::byte* page, int first, int n, void* k, void* v);

}  // namespace sage
