// Element types that cross the wire and the host/device boundary.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string_view>

namespace sage {

enum class DType : uint8_t {
  kF32 = 0,
  kF16 = 1,
  kBF16 = 2,
};

constexpr size_t DTypeSize(DType t) { return t == DType::kF32 ? 4 : 2; }

constexpr std::string_view DTypeName(DType t) {
  switch (t) {
    case DType::kF32: return "fp32";
    case DType::kF16: return "fp16";
    case DType::kBF16: return "bf16";
  }
  return "unknown";
}

// A non-owning view of a packed varlen tensor [tokens, heads, head_dim], row-major, little-endian.
struct TensorView {
  DType dtype = DType::kF32;
  const void* data = nullptr;
  int64_t tokens = 0;
  int32_t heads = 0;
  int32_t head_dim = 0;

  int64_t numel() const { return tokens * heads * head_dim; }
  size_t bytes() const { return static_cast<size_t>(numel()) * DTypeSize(dtype); }
};

}  // namespace sage
