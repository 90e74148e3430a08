#include "kernels/reference/numerics.h"

#include <array>
#include <bit>
#include <cmath>
#include <cstring>
#include <limits>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace sage {
namespace {

constexpr uint32_t kF32ExpMask = 0x7F800000u;
constexpr uint32_t kF32AbsMask = 0x7FFFFFFFu;

std::array<float, 256> BuildE4M3Table() {
  std::array<float, 256> table{};
  for (int code = 0; code < 256; ++code) {
    const int exponent = (code >> 3) & 0xF;
    const int mantissa = code & 0x7;
    float magnitude;
    if (exponent == 0xF && mantissa == 0x7) {
      magnitude = std::numeric_limits<float>::quiet_NaN();
    } else if (exponent == 0) {
      magnitude = std::ldexp(static_cast<float>(mantissa), -9);  // subnormal: m · 2^-9
    } else {
      magnitude = std::ldexp(1.0f + static_cast<float>(mantissa) / 8.0f, exponent - 7);
    }
    table[code] = (code & 0x80) ? -magnitude : magnitude;
  }
  return table;
}

const std::array<float, 256>& E4M3Table() {
  static const std::array<float, 256> table = BuildE4M3Table();
  return table;
}

}  // namespace

float DecodeFp8E4M3(uint8_t code) { return E4M3Table()[code]; }

uint16_t EncodeFp16(float x) {
  const uint32_t bits = std::bit_cast<uint32_t>(x);
  const auto sign = static_cast<uint16_t>((bits >> 16) & 0x8000u);
  const uint32_t a = bits & kF32AbsMask;
  if (a >= kF32ExpMask) {
    if (a > kF32ExpMask) return static_cast<uint16_t>(sign | 0x7E00u | ((a >> 13) & 0x3FFu));
    return static_cast<uint16_t>(sign | 0x7C00u);
  }
  constexpr uint32_t kOverflowBits = 0x477FF000u;  // 65520: halfway above 65504, rounds to inf
  if (a >= kOverflowBits) return static_cast<uint16_t>(sign | 0x7C00u);
  constexpr uint32_t kMinNormalBits = 0x38800000u;  // 2^-14
  if (a >= kMinNormalBits) {
    const uint32_t rounded = a + 0xFFFu + ((a >> 13) & 1u);
    return static_cast<uint16_t>(sign | ((rounded >> 13) - ((127u - 15u) << 10)));
  }
  const float steps = std::bit_cast<float>(a) * 16777216.0f;  // units of 2^-24, exact
  return static_cast<uint16_t>(sign | static_cast<uint16_t>(RoundHalfEven(steps)));
}

float DecodeFp16(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t exponent = (h >> 10) & 0x1Fu;
  const uint32_t mantissa = h & 0x3FFu;
  if (exponent == 0) {
    const float magnitude = static_cast<float>(mantissa) * 5.9604644775390625e-08f;  // 2^-24
    return std::bit_cast<float>(std::bit_cast<uint32_t>(magnitude) | sign);
  }
  if (exponent == 0x1F) return std::bit_cast<float>(sign | kF32ExpMask | (mantissa << 13));
  return std::bit_cast<float>(sign | ((exponent + 112u) << 23) | (mantissa << 13));
}

float RoundToFp16(float x) { return DecodeFp16(EncodeFp16(x)); }

uint16_t EncodeBf16(float x) {
  const uint32_t bits = std::bit_cast<uint32_t>(x);
  if ((bits & kF32AbsMask) > kF32ExpMask) return static_cast<uint16_t>((bits >> 16) | 0x40u);
  return static_cast<uint16_t>((bits + 0x7FFFu + ((bits >> 16) & 1u)) >> 16);
}

float DecodeBf16(uint16_t bits) { return std::bit_cast<float>(static_cast<uint32_t>(bits) << 16); }

float RoundToBf16(float x) { return DecodeBf16(EncodeBf16(x)); }

float RoundTo16Bit(float x, DType t) {
  switch (t) {
    case DType::kF16: return RoundToFp16(x);
    case DType::kBF16: return RoundToBf16(x);
    case DType::kF32: return x;
  }
  return x;
}

absl::StatusOr<std::vector<uint8_t>> PackInt4(std::span<const int8_t> values) {
  std::vector<uint8_t> packed((values.size() + 1) / 2, 0);
  for (size_t i = 0; i < values.size(); ++i) {
    const int8_t v = values[i];
    if (v < -8 || v > 7) {
      return absl::InvalidArgumentError(absl::StrCat("values[", i, "] = ", v, " is outside INT4 [-8, 7]"));
    }
    const auto nibble = static_cast<uint8_t>(static_cast<uint8_t>(v) & 0x0Fu);
    packed[i / 2] |= static_cast<uint8_t>((i % 2 == 0) ? nibble : nibble << 4);
  }
  return packed;
}

std::vector<int8_t> UnpackInt4(std::span<const uint8_t> packed, size_t count) {
  std::vector<int8_t> values(count);
  for (size_t i = 0; i < count && i / 2 < packed.size(); ++i) {
    const uint8_t nibble = (i % 2 == 0) ? (packed[i / 2] & 0x0Fu) : (packed[i / 2] >> 4);
    values[i] = static_cast<int8_t>(nibble >= 8 ? static_cast<int>(nibble) - 16 : static_cast<int>(nibble));
  }
  return values;
}

uint32_t PackInt4Register(std::span<const int8_t, 8> values) {
  uint32_t reg = 0;
  for (int i = 0; i < 8; ++i) {
    reg |= (static_cast<uint32_t>(static_cast<uint8_t>(values[i])) & 0xFu) << (4 * i);
  }
  return reg;
}

std::vector<float> ToFloatVector(const TensorView& t) {
  const auto n = static_cast<size_t>(t.numel() > 0 ? t.numel() : 0);
  std::vector<float> out(n);
  if (t.data == nullptr || n == 0) return out;
  DecodeToFloatBulk(t.data, t.dtype, out.data(), n);
  return out;
}

}  // namespace sage
