// Bit-exact scalar formats used by the SageAttention2 recipes: FP8 E4M3 (OCP e4m3fn), FP16, BF16,
// packed INT4 in PTX mma order, and the truncating FP8-MMA accumulator ("FP22").
#pragma once

#include <bit>
#include <cstdint>
#include <span>
#include <vector>

#include "absl/status/statusor.h"
#include "kernels/reference/dtype.h"

namespace sage {

inline constexpr float kFp8E4M3Max = 448.0f;           // largest finite e4m3fn value (S.1111.110).
inline constexpr uint8_t kFp8E4M3NaN = 0x7F;            // canonical NaN code (sign bit kept on encode).
inline constexpr int kFp22MantissaBits = 13;            // mantissa bits an FP8 MMA accumulator keeps.

// Rounds |q| < 2^22 to an integer, half to even, as `cvt.rni` does. Adding 1.5·2^23 puts every such
// value where the float spacing is exactly 1 (valid because the project never uses -ffast-math).
inline float RoundHalfEven(float q) {
  constexpr float kMagic = 12582912.0f;  // 1.5 · 2^23
  return (q + kMagic) - kMagic;
}

// max() that keeps a NaN from either side (std::max drops one on its right): a quantization group
// holding a NaN gets a NaN scale, so the NaN reaches O (docs/NUMERICS.md, "Non-finite inputs").
inline float NanMax(float a, float b) { return (a > b || a != a) ? a : b; }

// float -> e4m3fn with round-to-nearest-even and satfinite saturation (|x| > 448 and ±inf -> ±448),
// as `cvt.rn.satfinite.e4m3x2.f32` does. NaN -> 0x7F | sign. Branch-free and inline: the session
// KV scheme encodes every appended V value on the host with it, so its loops must vectorize.
inline uint8_t EncodeFp8E4M3(float x) {
  // mask ? a : b without a branch (GCC keeps ternaries on integers as control flow here).
  const auto pick = [](bool mask, uint32_t a, uint32_t b) {
    const uint32_t m = 0u - static_cast<uint32_t>(mask);
    return (a & m) | (b & ~m);
  };
  const uint32_t bits = std::bit_cast<uint32_t>(x);
  const uint32_t sign = (bits >> 24) & 0x80u;
  const uint32_t a = bits & 0x7FFFFFFFu;
  // Normal range (a >= 2^-6): round the mantissa to 3 bits, half to even; a carry moves into the
  // exponent. Bits 20..30 are then exponent:mantissa, rebased from bias 127 to 7.
  const uint32_t rounded = a + 0x7FFFFu + ((a >> 20) & 1u);
  const uint32_t normal = ((rounded >> 20) - ((127u - 7u) << 3)) & 0x7Fu;
  // Subnormal range: value = m · 2^-9, m in [0, 8] (8 is the smallest normal, code 0x08). Other
  // inputs convert 0 here (their code comes from the other branches), so the conversion is defined.
  const float steps = std::bit_cast<float>(pick(a < 0x3C800000u, a, 0u)) * 512.0f;
  const auto sub = static_cast<uint32_t>(static_cast<int32_t>(RoundHalfEven(steps)));
  uint32_t code = pick(a >= 0x3C800000u, normal, sub);
  code = pick(a > 0x43E00000u, 0x7Eu, code);  // above 448 (and inf): satfinite
  code = pick(a > 0x7F800000u, kFp8E4M3NaN, code);
  return static_cast<uint8_t>(sign | code);
}
// Any of the 256 codes; 0x7F and 0xFF decode to NaN.
float DecodeFp8E4M3(uint8_t code);
// DecodeFp8E4M3(EncodeFp8E4M3(x)) as a float (any NaN stays NaN), branch-free so loops vectorize.
inline float RoundToFp8E4M3(float x) {
  const uint32_t bits = std::bit_cast<uint32_t>(x);
  const uint32_t sign = bits & 0x80000000u;
  const uint32_t a = bits & 0x7FFFFFFFu;
  // Normal range: round the mantissa to 3 bits, half to even (a carry bumps the exponent).
  const uint32_t normal = (a + 0x7FFFFu + ((a >> 20) & 1u)) & 0xFFF00000u;
  // Subnormal range: multiples of 2^-9.
  const float sub = RoundHalfEven(std::bit_cast<float>(a) * 512.0f) * (1.0f / 512.0f);
  uint32_t mag = a >= 0x3C800000u ? normal : std::bit_cast<uint32_t>(sub);  // 2^-6: smallest normal
  mag = a > 0x43E00000u ? 0x43E00000u : mag;                               // satfinite at 448
  return a > 0x7F800000u ? x : std::bit_cast<float>(mag | sign);
}

// IEEE binary16 with RNE, overflow to ±inf, subnormals, NaN kept quiet.
uint16_t EncodeFp16(float x);
float DecodeFp16(uint16_t bits);
float RoundToFp16(float x);

// bfloat16 with RNE, NaN kept quiet (never rounded into inf).
uint16_t EncodeBf16(float x);
float DecodeBf16(uint16_t bits);
float RoundToBf16(float x);

// Rounds to the 16-bit type `t` (kF16 or kBF16); kF32 returns x unchanged.
float RoundTo16Bit(float x, DType t);

// Keeps sign, exponent and the top `mantissa_bits` mantissa bits; the rest are dropped (toward zero).
// Models the FP8 tensor-core accumulator with mantissa_bits = kFp22MantissaBits. NaN/inf pass through.
inline float TruncateMantissa(float x, int mantissa_bits) {
  const uint32_t bits = std::bit_cast<uint32_t>(x);
  if ((bits & 0x7F800000u) == 0x7F800000u || mantissa_bits >= 23) return x;
  return std::bit_cast<float>(bits & ~((1u << (23 - mantissa_bits)) - 1u));
}

// Signed INT4 in [-8, 7], two per byte: element 2i in the low nibble of byte i, 2i+1 in the high
// nibble, so a little-endian 32-bit register holds elements 0..7 from bit 0 upward (PTX s4 order).
absl::StatusOr<std::vector<uint8_t>> PackInt4(std::span<const int8_t> values);
// Inverse of PackInt4; `count` elements (the last byte's high nibble is ignored when count is odd).
std::vector<int8_t> UnpackInt4(std::span<const uint8_t> packed, size_t count);
// Eight INT4 values into one mma operand register.
uint32_t PackInt4Register(std::span<const int8_t, 8> values);

// Converts a tensor of any supported dtype to float (exact for fp16/bf16). Uses the bulk routines.
std::vector<float> ToFloatVector(const TensorView& t);

// Bulk conversions (numerics_bulk.cc), bit-identical to the scalar Encode*/Decode* above for every
// input (all 65536 16-bit codes, every float: NaN payloads, ±inf, subnormals, RNE ties). fp16 uses
// F16C (8 per instruction) when the CPU has it (checked once with __builtin_cpu_supports), else the
// scalar routines; bf16 is integer RNE written to auto-vectorize (AVX2 when the CPU has it). `src`
// and `dst` must not overlap.
enum class HostSimd { kScalar, kAvx2F16c };
HostSimd ActiveHostSimd();               // what the bulk routines below use on this CPU
enum class BulkPath { kAuto, kScalar };  // kScalar: force the portable loop (tests, benchmarks)

void EncodeFp16Bulk(const float* src, uint16_t* dst, size_t n, BulkPath path = BulkPath::kAuto);
void DecodeFp16Bulk(const uint16_t* src, float* dst, size_t n, BulkPath path = BulkPath::kAuto);
void EncodeBf16Bulk(const float* src, uint16_t* dst, size_t n, BulkPath path = BulkPath::kAuto);
void DecodeBf16Bulk(const uint16_t* src, float* dst, size_t n, BulkPath path = BulkPath::kAuto);
// float -> `to` (kF16, kBF16: rounded as above; kF32: copied); dst holds n elements of `to`.
void EncodeFromFloatBulk(const float* src, void* dst, size_t n, DType to);
// `from` (any dtype) -> float.
void DecodeToFloatBulk(const void* src, DType from, float* dst, size_t n);
// Any dtype -> any dtype, exactly as decode-to-float then encode (copies when the types match).
void ConvertBulk(const void* src, DType from, void* dst, DType to, size_t n);

}  // namespace sage
