// The bulk fp16/bf16 conversions equal the scalar reference bit for bit: all 65536 codes each way,
// and floats chosen to hit every branch (NaN payloads, ±inf, overflow, subnormals, RNE ties), plus
// random bit patterns. Both the dispatched (F16C/AVX2 where present) and the forced-scalar path.
#include <bit>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/reference/numerics.h"

namespace sage {
namespace {

std::vector<uint16_t> AllCodes() {
  std::vector<uint16_t> codes(65536);
  for (uint32_t i = 0; i < 65536; ++i) codes[i] = static_cast<uint16_t>(i);
  return codes;
}

// Edge floats, then every fp16 and bf16 value, their neighbours and the exact midpoints between
// consecutive codes (ties), then random bit patterns. Odd length so the vector tails run too.
std::vector<float> EdgeFloats() {
  std::vector<uint32_t> bits = {
      0x00000000u, 0x80000000u, 0x00000001u, 0x80000001u, 0x007FFFFFu, 0x00800000u,  // zero, f32 subnormals
      0x7F800000u, 0xFF800000u, 0x7F800001u, 0xFF800001u, 0x7FC00000u, 0xFFC00000u,  // inf, sNaN, qNaN
      0x7FBFFFFFu, 0x7FFFFFFFu, 0x7F802000u, 0x7FA0E000u, 0x7F7FFFFFu, 0xFF7FFFFFu,  // payloads, max
      0x477FE000u, 0x477FEFFFu, 0x477FF000u, 0x477FF001u, 0x47800000u,               // fp16 max/overflow
      0x33000000u, 0x33000001u, 0x32FFFFFFu, 0x33C00000u, 0x387FC000u, 0x387FE000u,  // fp16 subnormal ties
      0x38800000u, 0x3F800000u, 0x3F801000u, 0x3F803000u, 0x3F808000u, 0x3F818000u,  // ties at 1.0
  };
  for (uint32_t c = 0; c < 65536; ++c) {
    const float h = DecodeFp16(static_cast<uint16_t>(c));
    const uint32_t hb = std::bit_cast<uint32_t>(h);
    const uint32_t b = c << 16;
    for (uint32_t x : {hb, hb + 1, hb - 1, hb + 0x1000u, hb + 0xFFFu, b, b + 0x8000u, b + 0x7FFFu, b + 0x8001u}) {
      bits.push_back(x);
    }
  }
  std::mt19937 rng(12345);
  for (int i = 0; i < 200001; ++i) bits.push_back(static_cast<uint32_t>(rng()));
  std::normal_distribution<float> nd(0.0f, 3.0f);
  for (int i = 0; i < 10001; ++i) bits.push_back(std::bit_cast<uint32_t>(nd(rng)));
  std::vector<float> out;
  out.reserve(bits.size());
  for (uint32_t b : bits) out.push_back(std::bit_cast<float>(b));
  return out;
}

class BulkTest : public ::testing::TestWithParam<BulkPath> {};

TEST_P(BulkTest, DecodeFp16AllCodes) {
  const std::vector<uint16_t> codes = AllCodes();
  std::vector<float> got(codes.size());
  DecodeFp16Bulk(codes.data(), got.data(), codes.size(), GetParam());
  for (size_t i = 0; i < codes.size(); ++i) {
    ASSERT_EQ(std::bit_cast<uint32_t>(got[i]), std::bit_cast<uint32_t>(DecodeFp16(codes[i]))) << std::hex << i;
  }
}

TEST_P(BulkTest, DecodeBf16AllCodes) {
  const std::vector<uint16_t> codes = AllCodes();
  std::vector<float> got(codes.size());
  DecodeBf16Bulk(codes.data(), got.data(), codes.size(), GetParam());
  for (size_t i = 0; i < codes.size(); ++i) {
    ASSERT_EQ(std::bit_cast<uint32_t>(got[i]), std::bit_cast<uint32_t>(DecodeBf16(codes[i]))) << std::hex << i;
  }
}

TEST_P(BulkTest, EncodeFp16EdgeAndRandomFloats) {
  const std::vector<float> x = EdgeFloats();
  std::vector<uint16_t> got(x.size());
  EncodeFp16Bulk(x.data(), got.data(), x.size(), GetParam());
  for (size_t i = 0; i < x.size(); ++i) {
    ASSERT_EQ(got[i], EncodeFp16(x[i])) << std::hex << std::bit_cast<uint32_t>(x[i]);
  }
}

TEST_P(BulkTest, EncodeBf16EdgeAndRandomFloats) {
  const std::vector<float> x = EdgeFloats();
  std::vector<uint16_t> got(x.size());
  EncodeBf16Bulk(x.data(), got.data(), x.size(), GetParam());
  for (size_t i = 0; i < x.size(); ++i) {
    ASSERT_EQ(got[i], EncodeBf16(x[i])) << std::hex << std::bit_cast<uint32_t>(x[i]);
  }
}

TEST_P(BulkTest, RoundTripsEveryCode) {
  const std::vector<uint16_t> codes = AllCodes();
  std::vector<float> f(codes.size());
  std::vector<uint16_t> back(codes.size());
  DecodeFp16Bulk(codes.data(), f.data(), codes.size(), GetParam());
  EncodeFp16Bulk(f.data(), back.data(), f.size(), GetParam());
  for (size_t i = 0; i < codes.size(); ++i) ASSERT_EQ(back[i], EncodeFp16(DecodeFp16(codes[i]))) << i;
}

INSTANTIATE_TEST_SUITE_P(Paths, BulkTest, ::testing::Values(BulkPath::kAuto, BulkPath::kScalar));

TEST(ConvertBulk, MatchesScalarComposition) {
  const std::vector<uint16_t> codes = AllCodes();
  std::vector<uint16_t> bf(codes.size()), fp(codes.size());
  ConvertBulk(codes.data(), DType::kF16, bf.data(), DType::kBF16, codes.size());
  ConvertBulk(codes.data(), DType::kBF16, fp.data(), DType::kF16, codes.size());
  for (size_t i = 0; i < codes.size(); ++i) {
    ASSERT_EQ(bf[i], EncodeBf16(DecodeFp16(codes[i]))) << i;
    ASSERT_EQ(fp[i], EncodeFp16(DecodeBf16(codes[i]))) << i;
  }
  std::vector<uint16_t> same(codes.size());
  ConvertBulk(codes.data(), DType::kF16, same.data(), DType::kF16, codes.size());
  EXPECT_EQ(same, codes);
}

// Untyped buffers may start at any byte (staging segments packed back to back, a client's shared
// memory at its chosen offset): every conversion at every misalignment of source and destination
// gives the bytes the aligned conversion gives. (UBSan's alignment check caught typed accesses.)
TEST(ConvertBulk, AnyByteOffsetEqualsAligned) {
  const std::vector<uint16_t> codes = AllCodes();
  const size_t n = 3001;  // past one internal block, with vector tails
  std::vector<float> f(n);
  for (size_t i = 0; i < n; ++i) f[i] = DecodeFp16(codes[(i * 40503u) & 0xFFFFu]);
  for (DType from : {DType::kF32, DType::kF16, DType::kBF16}) {
    for (DType to : {DType::kF32, DType::kF16, DType::kBF16}) {
      std::vector<unsigned char> src(n * DTypeSize(from));
      if (from == DType::kF32) {
        std::memcpy(src.data(), f.data(), src.size());
      } else {
        std::memcpy(src.data(), codes.data() + 1000, src.size());
      }
      std::vector<unsigned char> want(n * DTypeSize(to));
      ConvertBulk(src.data(), from, want.data(), to, n);
      for (size_t src_off : {0, 1, 2, 3}) {
        for (size_t dst_off : {0, 1, 2, 3}) {
          std::vector<unsigned char> in(src.size() + 4), out(want.size() + 4, 0xAB);
          std::memcpy(in.data() + src_off, src.data(), src.size());
          ConvertBulk(in.data() + src_off, from, out.data() + dst_off, to, n);
          ASSERT_EQ(0, std::memcmp(out.data() + dst_off, want.data(), want.size()))
              << static_cast<int>(from) << "->" << static_cast<int>(to) << " offsets " << src_off << "," << dst_off;
        }
      }
      if (from != DType::kF32 && to == DType::kF32) {  // the float-side entry point, likewise
        std::vector<float> dec(n);
        std::vector<unsigned char> in(src.size() + 1);
        std::memcpy(in.data() + 1, src.data(), src.size());
        DecodeToFloatBulk(in.data() + 1, from, dec.data(), n);
        ASSERT_EQ(0, std::memcmp(dec.data(), want.data(), want.size())) << "decode " << static_cast<int>(from);
      }
    }
    if (from != DType::kF32) {
      std::vector<unsigned char> aligned(n * 2), odd(n * 2 + 1);
      EncodeFromFloatBulk(f.data(), aligned.data(), n, from);
      EncodeFromFloatBulk(f.data(), odd.data() + 1, n, from);
      ASSERT_EQ(0, std::memcmp(odd.data() + 1, aligned.data(), aligned.size())) << "encode " << static_cast<int>(from);
    }
  }
}

TEST(ConvertBulk, ReportsPath) {
  const HostSimd simd = ActiveHostSimd();
  EXPECT_TRUE(simd == HostSimd::kScalar || simd == HostSimd::kAvx2F16c);
  std::printf("bulk conversions use %s\n", simd == HostSimd::kAvx2F16c ? "AVX2+F16C" : "scalar");
}

}  // namespace
}  // namespace sage
