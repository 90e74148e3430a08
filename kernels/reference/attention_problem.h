// One attention problem over a packed varlen batch, and its validation: the math alone. Where a
// served request's bytes live and where its O goes are the server's (server/backend/engine_io.h).
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "kernels/reference/dtype.h"

namespace sage {

// Causal masks are aligned bottom-right, as in FlashAttention: with q_len < k_len, query i of a
// sequence sees keys j <= i + (k_len - q_len). A query row that sees no key (q_len > k_len) yields
// O = 0 and LSE = -inf.
enum class MaskMode { kNone, kCausal };

enum class LseMode { kNone, kNatural };  // kNatural: fp32 log-sum-exp in natural log, [total_q, Hq].

// Head dims the engines implement; anything else is rejected with INVALID_ARGUMENT.
inline constexpr int kSupportedHeadDims[] = {64, 128};

struct AttnInput {
  TensorView q;  // [total_q, Hq, D]
  TensorView k;  // [total_k, Hkv, D]
  TensorView v;  // [total_k, Hkv, D]
  std::span<const int32_t> cu_seqlens_q;  // batch + 1 entries, cu[0] = 0, cu[batch] = total_q.
  std::span<const int32_t> cu_seqlens_k;  // batch + 1 entries, cu[0] = 0, cu[batch] = total_k.
  MaskMode mask = MaskMode::kNone;
  std::optional<float> softmax_scale;  // default 1/sqrt(D).
  LseMode lse = LseMode::kNone;

  int batch() const { return cu_seqlens_q.empty() ? 0 : static_cast<int>(cu_seqlens_q.size()) - 1; }
  float scale() const;
};

struct AttnOutput {
  std::vector<float> o;    // [total_q, Hq, D]
  std::vector<float> lse;  // [total_q, Hq] when requested, else empty.
};

// Checks shapes, dtypes, head dims, GQA divisibility, cu_seqlens and data pointers. Every error is
// INVALID_ARGUMENT and names the field ("q.head_dim", "cu_seqlens_k[3]", ...).
absl::Status ValidateInput(const AttnInput& in);

}  // namespace sage
