#include "kernels/reference/numerics.h"

#include <bit>
#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <vector>

#include "gtest/gtest.h"

namespace sage {
namespace {

// Independent e4m3fn decode from the format definition (bias 7, 3 mantissa bits, S.1111.111 = NaN).
double E4M3Value(int code) {
  const int e = (code >> 3) & 0xF;
  const int m = code & 7;
  const double mag = e == 0 ? m * std::ldexp(1.0, -9) : (1.0 + m / 8.0) * std::ldexp(1.0, e - 7);
  return (code & 0x80) ? -mag : mag;
}
bool IsNaNCode(int code) { return (code & 0x7F) == 0x7F; }

TEST(Fp8E4M3, DecodesAll256Codes) {
  for (int code = 0; code < 256; ++code) {
    const float x = DecodeFp8E4M3(static_cast<uint8_t>(code));
    if (IsNaNCode(code)) {
      EXPECT_TRUE(std::isnan(x)) << code;
      continue;
    }
    EXPECT_EQ(static_cast<double>(x), E4M3Value(code)) << code;
    EXPECT_EQ(std::signbit(x), (code & 0x80) != 0) << code;
  }
  EXPECT_EQ(DecodeFp8E4M3(0x7E), 448.0f);
  EXPECT_EQ(DecodeFp8E4M3(0x01), std::ldexp(1.0f, -9));
  EXPECT_EQ(DecodeFp8E4M3(0x08), std::ldexp(1.0f, -6));
}

TEST(Fp8E4M3, EveryFiniteCodeRoundTrips) {
  for (int code = 0; code < 256; ++code) {
    if (IsNaNCode(code)) continue;
    const float x = DecodeFp8E4M3(static_cast<uint8_t>(code));
    EXPECT_EQ(EncodeFp8E4M3(x), code) << code;
    EXPECT_EQ(RoundToFp8E4M3(x), x) << code;
  }
}

// Around each pair of adjacent magnitudes: the midpoint goes to the even code, one float step either
// side goes to the nearer code.
TEST(Fp8E4M3, RoundsToNearestEvenAtEveryBoundary) {
  for (int code = 0; code < 0x7E; ++code) {
    const float lo = DecodeFp8E4M3(static_cast<uint8_t>(code));
    const float hi = DecodeFp8E4M3(static_cast<uint8_t>(code + 1));
    const float mid = static_cast<float>((static_cast<double>(lo) + hi) / 2.0);
    ASSERT_EQ(static_cast<double>(mid), (static_cast<double>(lo) + hi) / 2.0) << "midpoint not exact";
    const int even = (code % 2 == 0) ? code : code + 1;
    for (float sign : {1.0f, -1.0f}) {
      const int sbit = sign < 0 ? 0x80 : 0;
      EXPECT_EQ(EncodeFp8E4M3(sign * mid), even | sbit) << code;
      EXPECT_EQ(EncodeFp8E4M3(sign * std::nextafter(mid, 0.0f)), code | sbit) << code;
      EXPECT_EQ(EncodeFp8E4M3(sign * std::nextafter(mid, 1e9f)), (code + 1) | sbit) << code;
    }
  }
}

// The encoder against the independent float-to-float rounding, over every 61st float bit pattern
// (70M, every exponent and sign, NaNs and infinities included): same value, same sign.
TEST(Fp8E4M3, EncodeAgreesWithRoundToOverTheFloatRange) {
  int64_t mismatches = 0;
  for (uint64_t b = 0; b <= 0xFFFFFFFFull; b += 61) {
    const float x = std::bit_cast<float>(static_cast<uint32_t>(b));
    const float got = DecodeFp8E4M3(EncodeFp8E4M3(x)), want = RoundToFp8E4M3(x);
    const bool same = (got != got && want != want) || std::bit_cast<uint32_t>(got) == std::bit_cast<uint32_t>(want);
    if (!same && mismatches++ < 5) ADD_FAILURE() << std::hex << "bits 0x" << b << ": " << got << " vs " << want;
  }
  EXPECT_EQ(mismatches, 0);
}

TEST(Fp8E4M3, SaturatesAndKeepsNaN) {
  EXPECT_EQ(EncodeFp8E4M3(448.0f), 0x7E);
  EXPECT_EQ(EncodeFp8E4M3(std::nextafter(448.0f, 1e9f)), 0x7E);
  EXPECT_EQ(EncodeFp8E4M3(464.0f), 0x7E);  // would round up past the max: satfinite clamps
  EXPECT_EQ(EncodeFp8E4M3(1e30f), 0x7E);
  EXPECT_EQ(EncodeFp8E4M3(-1e30f), 0xFE);
  EXPECT_EQ(EncodeFp8E4M3(std::numeric_limits<float>::infinity()), 0x7E);
  EXPECT_EQ(EncodeFp8E4M3(-std::numeric_limits<float>::infinity()), 0xFE);
  EXPECT_EQ(EncodeFp8E4M3(std::numeric_limits<float>::quiet_NaN()), 0x7F);
  EXPECT_EQ(EncodeFp8E4M3(-std::numeric_limits<float>::quiet_NaN()), 0xFF);
  EXPECT_EQ(EncodeFp8E4M3(0.0f), 0x00);
  EXPECT_EQ(EncodeFp8E4M3(-0.0f), 0x80);
  // Below half the smallest subnormal (2^-10) rounds to zero; exactly half rounds to even (zero).
  EXPECT_EQ(EncodeFp8E4M3(std::ldexp(1.0f, -10)), 0x00);
  EXPECT_EQ(EncodeFp8E4M3(std::nextafter(std::ldexp(1.0f, -10), 1.0f)), 0x01);
  EXPECT_EQ(EncodeFp8E4M3(1e-30f), 0x00);
  EXPECT_EQ(RoundToFp8E4M3(1e30f), 448.0f);
  EXPECT_EQ(RoundToFp8E4M3(-std::numeric_limits<float>::infinity()), -448.0f);
  EXPECT_TRUE(std::isnan(RoundToFp8E4M3(std::numeric_limits<float>::quiet_NaN())));
  EXPECT_EQ(std::bit_cast<uint32_t>(RoundToFp8E4M3(-0.0f)), 0x80000000u);
}

TEST(Fp8E4M3, MatchesBruteForceNearestOnRandomFloats) {
  std::mt19937 rng(7);
  std::uniform_real_distribution<float> exponent(-14.0f, 9.5f);
  for (int i = 0; i < 200000; ++i) {
    const float x = std::exp2(exponent(rng)) * ((i & 1) ? -1.0f : 1.0f);
    // Brute force: nearest finite code, ties to even mantissa; saturate at 448.
    int best = -1;
    double best_err = 1e300;
    for (int code = 0; code < 0x7F; ++code) {
      const double err = std::fabs(std::fabs(static_cast<double>(x)) - E4M3Value(code));
      if (err < best_err || (err == best_err && code % 2 == 0)) {
        best_err = err;
        best = code;
      }
    }
    if (std::fabs(x) > 448.0f) best = 0x7E;
    ASSERT_EQ(EncodeFp8E4M3(x), best | (x < 0 ? 0x80 : 0)) << x;
    // The branch-free float path used in the P̃ loop agrees with encode-then-decode.
    ASSERT_EQ(std::bit_cast<uint32_t>(RoundToFp8E4M3(x)), std::bit_cast<uint32_t>(DecodeFp8E4M3(EncodeFp8E4M3(x)))) << x;
  }
}

TEST(Fp16, RoundTripsAllFiniteCodes) {
  for (uint32_t h = 0; h < 0x10000; ++h) {
    const float x = DecodeFp16(static_cast<uint16_t>(h));
    if (std::isnan(x)) {
      EXPECT_TRUE(std::isnan(RoundToFp16(x)));
      EXPECT_EQ((h & 0x7C00), 0x7C00u);
      continue;
    }
    ASSERT_EQ(EncodeFp16(x), h) << h;
  }
  EXPECT_EQ(DecodeFp16(0x3C00), 1.0f);
  EXPECT_EQ(DecodeFp16(0x0001), std::ldexp(1.0f, -24));
  EXPECT_EQ(DecodeFp16(0x7BFF), 65504.0f);
}

TEST(Fp16, RoundsToNearestEvenAndOverflows) {
  // Midpoints between adjacent positive codes, normal and subnormal, go to the even code.
  for (uint32_t h = 0; h < 0x7BFF; h += 37) {
    const double lo = DecodeFp16(static_cast<uint16_t>(h));
    const double hi = DecodeFp16(static_cast<uint16_t>(h + 1));
    const auto mid = static_cast<float>((lo + hi) / 2);
    const uint32_t even = (h % 2 == 0) ? h : h + 1;
    EXPECT_EQ(EncodeFp16(mid), even) << h;
    EXPECT_EQ(EncodeFp16(std::nextafter(mid, 0.0f)), h) << h;
    EXPECT_EQ(EncodeFp16(std::nextafter(mid, 1e9f)), h + 1) << h;
  }
  EXPECT_EQ(EncodeFp16(65519.0f), 0x7BFF);
  EXPECT_EQ(EncodeFp16(65520.0f), 0x7C00);  // tie with the (virtual) next value rounds to inf
  EXPECT_EQ(EncodeFp16(-1e6f), 0xFC00);
  EXPECT_EQ(EncodeFp16(std::numeric_limits<float>::infinity()), 0x7C00);
  EXPECT_TRUE(std::isnan(DecodeFp16(EncodeFp16(std::numeric_limits<float>::quiet_NaN()))));
  EXPECT_EQ(EncodeFp16(std::ldexp(1.0f, -25)), 0x0000);  // half of the smallest subnormal: even
  EXPECT_EQ(EncodeFp16(std::ldexp(1.5f, -25)), 0x0001);
}

TEST(Bf16, RoundTripsAndRoundsToNearestEven) {
  for (uint32_t h = 0; h < 0x10000; ++h) {
    const float x = DecodeBf16(static_cast<uint16_t>(h));
    if (std::isnan(x)) continue;
    ASSERT_EQ(EncodeBf16(x), h) << h;
  }
  for (uint32_t h = 0x0001; h < 0x7F7F; h += 53) {
    const uint32_t lo = h << 16;
    const float mid = std::bit_cast<float>(lo | 0x8000u);  // exact midpoint to the next code
    const uint32_t even = (h % 2 == 0) ? h : h + 1;
    EXPECT_EQ(EncodeBf16(mid), even) << h;
    EXPECT_EQ(EncodeBf16(std::bit_cast<float>(lo | 0x7FFFu)), h) << h;
    EXPECT_EQ(EncodeBf16(std::bit_cast<float>(lo | 0x8001u)), h + 1) << h;
  }
  const float nan_low_payload = std::bit_cast<float>(0x7F800001u);  // must not round to inf
  EXPECT_TRUE(std::isnan(RoundToBf16(nan_low_payload)));
  EXPECT_EQ(EncodeBf16(std::numeric_limits<float>::infinity()), 0x7F80);
}

TEST(Int4, PacksInPtxOrderAndRoundTrips) {
  const std::vector<int8_t> values = {1, -2, 3, -4, 5, -6, 7, -8, 0, -1, 2};
  auto packed = PackInt4(values);
  ASSERT_TRUE(packed.ok());
  ASSERT_EQ(packed->size(), 6u);
  EXPECT_EQ((*packed)[0], 0xE1);  // element 0 (1) low nibble, element 1 (-2 = 0xE) high nibble
  EXPECT_EQ((*packed)[3], 0x87);
  EXPECT_EQ(UnpackInt4(*packed, values.size()), values);
  const int8_t reg_values[8] = {1, 2, 3, 4, 5, 6, 7, -1};
  EXPECT_EQ(PackInt4Register(std::span<const int8_t, 8>(reg_values)), 0xF7654321u);
  // The register equals the first four packed bytes read little-endian.
  auto reg_bytes = PackInt4(std::span<const int8_t>(reg_values, 8));
  ASSERT_TRUE(reg_bytes.ok());
  uint32_t le = 0;
  for (int i = 0; i < 4; ++i) le |= static_cast<uint32_t>((*reg_bytes)[i]) << (8 * i);
  EXPECT_EQ(le, 0xF7654321u);
  std::vector<int8_t> all;
  for (int v = -8; v <= 7; ++v) all.push_back(static_cast<int8_t>(v));
  EXPECT_EQ(UnpackInt4(*PackInt4(all), all.size()), all);
  const int8_t bad[] = {8};
  EXPECT_EQ(PackInt4(bad).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(TruncateMantissa, KeepsTopThirteenBits) {
  const float x = std::bit_cast<float>(0x3FFFFFFFu);  // mantissa all ones
  EXPECT_EQ(std::bit_cast<uint32_t>(TruncateMantissa(x, 13)), 0x3FFFFC00u);
  EXPECT_EQ(std::bit_cast<uint32_t>(TruncateMantissa(-x, 13)), 0xBFFFFC00u);  // toward zero
  EXPECT_EQ(TruncateMantissa(1.0f, 13), 1.0f);
  EXPECT_TRUE(std::isnan(TruncateMantissa(std::bit_cast<float>(0x7F800001u), 13)));
  EXPECT_EQ(TruncateMantissa(std::numeric_limits<float>::infinity(), 13),
            std::numeric_limits<float>::infinity());
  const float y = 1.0f + std::ldexp(1.0f, -13) + std::ldexp(1.0f, -14);
  EXPECT_EQ(TruncateMantissa(y, 13), 1.0f + std::ldexp(1.0f, -13));
}

TEST(ToFloatVector, ConvertsEachDtype) {
  const uint16_t h[] = {EncodeFp16(1.5f), EncodeFp16(-2.25f)};
  const uint16_t bf[] = {EncodeBf16(3.0f), EncodeBf16(-0.5f)};
  const float f[] = {7.0f, -8.0f};
  EXPECT_EQ(ToFloatVector(TensorView{DType::kF16, h, 1, 1, 2}), (std::vector<float>{1.5f, -2.25f}));
  EXPECT_EQ(ToFloatVector(TensorView{DType::kBF16, bf, 1, 1, 2}), (std::vector<float>{3.0f, -0.5f}));
  EXPECT_EQ(ToFloatVector(TensorView{DType::kF32, f, 2, 1, 1}), (std::vector<float>{7.0f, -8.0f}));
}

}  // namespace
}  // namespace sage
