#include "kernels/reference/attention_problem.h"

#include <algorithm>
#include <cmath>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"

namespace sage {
namespace {

absl::Status Invalid(absl::string_view field, absl::string_view what) {
  return absl::InvalidArgumentError(absl::StrCat(field, ": ", what));
}

absl::Status ValidateTensor(absl::string_view name, const TensorView& t) {
  switch (t.dtype) {
    case DType::kF32:
    case DType::kF16:
    case DType::kBF16:
      break;
    default:
      return Invalid(absl::StrCat(name, ".dtype"), "unknown dtype");
  }
  if (t.tokens <= 0) return Invalid(absl::StrCat(name, ".tokens"), absl::StrCat("must be > 0, got ", t.tokens));
  if (t.heads <= 0) return Invalid(absl::StrCat(name, ".heads"), absl::StrCat("must be > 0, got ", t.heads));
  if (t.head_dim <= 0) {
    return Invalid(absl::StrCat(name, ".head_dim"), absl::StrCat("must be > 0, got ", t.head_dim));
  }
  // cu_seqlens are int32, so larger token counts cannot be addressed.
  if (t.tokens > INT32_MAX) return Invalid(absl::StrCat(name, ".tokens"), "exceeds INT32_MAX");
  if (t.data == nullptr) return Invalid(absl::StrCat(name, ".data"), "is null");
  return absl::OkStatus();
}

absl::Status ValidateCuSeqlens(absl::string_view name, std::span<const int32_t> cu, int64_t total) {
  if (cu.size() < 2) {
    return Invalid(name, absl::StrCat("needs batch + 1 >= 2 entries, got ", cu.size()));
  }
  if (cu[0] != 0) return Invalid(absl::StrCat(name, "[0]"), absl::StrCat("must be 0, got ", cu[0]));
  for (size_t i = 1; i < cu.size(); ++i) {
    if (cu[i] < cu[i - 1]) {
      return Invalid(absl::StrCat(name, "[", i, "]"),
                     absl::StrCat("decreases (", cu[i - 1], " -> ", cu[i], ")"));
    }
  }
  if (cu.back() != total) {
    return Invalid(absl::StrCat(name, "[", cu.size() - 1, "]"),
                   absl::StrCat("must equal the token count ", total, ", got ", cu.back()));
  }
  for (size_t i = 1; i < cu.size(); ++i) {
    if (cu[i] == cu[i - 1]) {
      return Invalid(absl::StrCat(name, "[", i, "]"), absl::StrCat("sequence ", i - 1, " is empty"));
    }
  }
  return absl::OkStatus();
}

}  // namespace

float AttnInput::scale() const {
  if (softmax_scale.has_value()) return *softmax_scale;
  return q.head_dim > 0 ? 1.0f / std::sqrt(static_cast<float>(q.head_dim)) : 1.0f;
}

absl::Status ValidateInput(const AttnInput& in) {
  if (absl::Status s = ValidateTensor("q", in.q); !s.ok()) return s;
  if (absl::Status s = ValidateTensor("k", in.k); !s.ok()) return s;
  if (absl::Status s = ValidateTensor("v", in.v); !s.ok()) return s;
  if (std::find(std::begin(kSupportedHeadDims), std::end(kSupportedHeadDims), in.q.head_dim) ==
      std::end(kSupportedHeadDims)) {
    return Invalid("q.head_dim", absl::StrCat(in.q.head_dim, " is not supported (64 or 128)"));
  }
  if (in.k.head_dim != in.q.head_dim) {
    return Invalid("k.head_dim", absl::StrCat(in.k.head_dim, " != q.head_dim ", in.q.head_dim));
  }
  if (in.v.head_dim != in.k.head_dim) {
    return Invalid("v.head_dim", absl::StrCat(in.v.head_dim, " != k.head_dim ", in.k.head_dim));
  }
  if (in.v.tokens != in.k.tokens) {
    return Invalid("v.tokens", absl::StrCat(in.v.tokens, " != k.tokens ", in.k.tokens));
  }
  if (in.v.heads != in.k.heads) {
    return Invalid("v.heads", absl::StrCat(in.v.heads, " != k.heads ", in.k.heads));
  }
  if (in.q.heads % in.k.heads != 0) {
    return Invalid("q.heads", absl::StrCat(in.q.heads, " is not a multiple of k.heads ", in.k.heads));
  }
  if (in.cu_seqlens_q.size() < 2) {
    return Invalid("cu_seqlens_q", absl::StrCat("batch must be >= 1 (got ", in.cu_seqlens_q.size(), " entries)"));
  }
  if (in.cu_seqlens_k.size() != in.cu_seqlens_q.size()) {
    return Invalid("cu_seqlens_k", absl::StrCat("has ", in.cu_seqlens_k.size(), " entries, cu_seqlens_q has ",
                                                in.cu_seqlens_q.size()));
  }
  if (absl::Status s = ValidateCuSeqlens("cu_seqlens_q", in.cu_seqlens_q, in.q.tokens); !s.ok()) return s;
  if (absl::Status s = ValidateCuSeqlens("cu_seqlens_k", in.cu_seqlens_k, in.k.tokens); !s.ok()) return s;
  if (in.softmax_scale.has_value() && (!std::isfinite(*in.softmax_scale) || *in.softmax_scale <= 0.0f)) {
    return Invalid("softmax_scale", absl::StrCat("must be finite and > 0, got ", *in.softmax_scale));
  }
  switch (in.mask) {
    case MaskMode::kNone:
    case MaskMode::kCausal:
      break;
    default:
      return Invalid("mask", "unknown mask mode");
  }
  switch (in.lse) {
    case LseMode::kNone:
    case LseMode::kNatural:
      break;
    default:
      return Invalid("lse", "unknown LSE mode");
  }
  return absl::OkStatus();
}

}  // namespace sage
