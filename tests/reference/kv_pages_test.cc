// The INT4 K / FP8 V session storage (kInt4KFp8V, docs/NUMERICS.md §8b): the nibble order, the page
// layout byte for byte, per-group scales (round trip bounds, zero groups, outliers and NaN kept to
// their group), and the layout accessors of every storage.
#include "kernels/reference/kv_pages.h"

#include <cmath>
#include <cstring>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/reference/numerics.h"

namespace sage {
namespace {

constexpr int kGroup = kInt4GroupChannels;

// The formula's intermediate `group` for nibble n (docs/NUMERICS.md §8b), written out again.
int FormulaGroup(int n, int d) {
  const int r = n % (d / 4), w = r / 8, m = r % 8 % 4;
  const int ks = 2 * w + m / 2;
  return 2 * (ks / 4) + m % 2;
}

// The stored nibble (code + 8) of channel c of one token-head's K codes.
int Nibble(const std::byte* codes, int c, int d) {
  const int n = Int4ChannelNibble(c, d);
  return (static_cast<int>(codes[n / 2]) >> (n % 2 == 0 ? 0 : 4)) & 0xF;
}

float Float(const std::byte* at) {
  float f;
  std::memcpy(&f, at, 4);
  return f;
}

TEST(Int4NibbleOrder, IsAPermutationKeepingEachChannelInItsGroup) {
  for (int d : {64, 128, 192, 256}) {
    std::set<int> seen;
    for (int n = 0; n < d; ++n) {
      const int c = Int4NibbleChannel(n, d);
      ASSERT_GE(c, 0) << "D " << d << " n " << n;
      ASSERT_LT(c, d) << "D " << d << " n " << n;
      seen.insert(c);
      EXPECT_EQ(c / kGroup, FormulaGroup(n, d)) << "D " << d << " n " << n;
      EXPECT_EQ(Int4ChannelNibble(c, d), n) << "D " << d << " n " << n;
    }
    EXPECT_EQ(static_cast<int>(seen.size()), d) << "D " << d;
  }
}

TEST(Int4NibbleOrder, HandCheckedValues) {
  // D = 128: a lane's 32 nibbles are 4 words of 8; word 0 holds k-steps 0 and 1 of groups 0 and 1.
  EXPECT_EQ(Int4NibbleChannel(0, 128), 0);
  EXPECT_EQ(Int4NibbleChannel(1, 128), 32);   // the second operand: group 1
  EXPECT_EQ(Int4NibbleChannel(2, 128), 8);    // k-step 1
  EXPECT_EQ(Int4NibbleChannel(3, 128), 40);
  EXPECT_EQ(Int4NibbleChannel(4, 128), 1);    // the neighbouring channel (e = 1)
  EXPECT_EQ(Int4NibbleChannel(8, 128), 16);   // word 1: k-steps 2 and 3
  EXPECT_EQ(Int4NibbleChannel(16, 128), 64);  // word 2: k-step 4, groups 2 and 3
  EXPECT_EQ(Int4NibbleChannel(17, 128), 96);
  EXPECT_EQ(Int4NibbleChannel(32, 128), 2);   // lane 1
  EXPECT_EQ(Int4NibbleChannel(127, 128), 127);
  // D = 64: a lane holds 16 nibbles, two words; groups 0 and 1 only.
  EXPECT_EQ(Int4NibbleChannel(1, 64), 32);
  EXPECT_EQ(Int4NibbleChannel(16, 64), 2);
  EXPECT_EQ(Int4NibbleChannel(63, 64), 63);
}

// The formula covers 0..D-1 only for D a multiple of 64; INT4 K refuses other head dims.
TEST(Int4NibbleOrder, OtherHeadDimsAreRefused) {
  for (int d : {64, 128, 256}) EXPECT_TRUE(CheckKvLayout(KvStorage::kInt4KFp8V, d).ok()) << d;
  for (int d : {32, 80, 96, 160}) {
    const absl::Status st = CheckKvLayout(KvStorage::kInt4KFp8V, d);
    EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument) << d;
    EXPECT_NE(st.message().find("head_dim"), std::string::npos) << st;
    EXPECT_NE(st.message().find("KV_STORAGE_INT4_K_FP8_V"), std::string::npos) << st;
    EXPECT_TRUE(CheckKvLayout(KvStorage::kInt8KFp8V, d).ok()) << d;
  }
  std::set<int> seen;
  for (int n = 0; n < 96; ++n) seen.insert(Int4NibbleChannel(n, 96));
  EXPECT_TRUE(seen.size() != 96 || *seen.rbegin() != 95) << "96 would need no refusal";
}

TEST(KvPageLayout, PartsAndOffsets) {
  const KvPageLayout b16{KvStorage::k16Bit, DType::kF16, 16, 2, 128};
  EXPECT_EQ(b16.k_code_bytes(), 256u);
  EXPECT_EQ(b16.v_codes_offset(), 8192u);
  EXPECT_EQ(b16.k_scales_bytes() + b16.v_scales_bytes(), 0u);
  EXPECT_EQ(b16.page_bytes(), 16384u);

  const KvPageLayout i8{KvStorage::kInt8KFp8V, DType::kF16, 16, 2, 128};
  EXPECT_EQ(i8.k_code_bytes(), 128u);
  EXPECT_EQ(i8.v_code_bytes(), 128u);
  EXPECT_EQ(i8.k_scales_per_token_head(), 1u);
  EXPECT_EQ(i8.v_codes_offset(), 4096u);
  EXPECT_EQ(i8.k_scales_offset(), 8192u);
  EXPECT_EQ(i8.v_scales_offset(), 8192u + 128);
  EXPECT_EQ(i8.page_bytes(), 8192u + 256);

  const KvPageLayout i4{KvStorage::kInt4KFp8V, DType::kF16, 16, 2, 128};
  EXPECT_EQ(i4.k_code_bytes(), 64u);
  EXPECT_EQ(i4.v_code_bytes(), 128u);
  EXPECT_EQ(i4.k_scales_per_token_head(), 4u);
  EXPECT_EQ(i4.v_scales_per_token_head(), 1u);
  EXPECT_EQ(i4.k_codes_bytes(), 2048u);
  EXPECT_EQ(i4.v_codes_offset(), 2048u);
  EXPECT_EQ(i4.v_codes_bytes(), 4096u);
  EXPECT_EQ(i4.k_scales_offset(), 6144u);
  EXPECT_EQ(i4.k_scales_bytes(), 512u);
  EXPECT_EQ(i4.v_scales_offset(), 6656u);
  EXPECT_EQ(i4.page_bytes(), 6784u);
  EXPECT_EQ(KvPageLayout({KvStorage::kInt4KFp8V, DType::kF16, 16, 2, 64}).k_scales_per_token_head(), 2u);

  EXPECT_EQ(KvTokenBytes(KvStorage::k16Bit, 8, 128), 8u * 512);
  EXPECT_EQ(KvTokenBytes(KvStorage::kInt8KFp8V, 8, 128), 8u * 264);
  EXPECT_EQ(KvTokenBytes(KvStorage::kInt4KFp8V, 8, 128), 8u * 212);  // 2.4x fewer than 16-bit
}

// Rows are head-major unless asked otherwise: a head's tokens of a page are contiguous in every
// part. Both orders hold the same rows, so a run encoded either way decodes to the same values.
TEST(KvPageLayout, RowOrders) {
  KvPageLayout l{KvStorage::kInt8KFp8V, DType::kF16, 16, 4, 64};
  EXPECT_EQ(l.rows, KvRowOrder::kHeadMajor);
  EXPECT_EQ(l.row(5, 0), 5u);
  EXPECT_EQ(l.row(5, 3), 3u * 16 + 5);
  l.rows = KvRowOrder::kTokenMajor;
  EXPECT_EQ(l.row(5, 3), 5u * 4 + 3);
  std::mt19937 rng(11);
  std::normal_distribution<float> normal(0.0f, 2.0f);
  for (KvStorage storage : kAllKvStorages) {
    const int n = 7, first = 6;
    std::vector<uint16_t> k(static_cast<size_t>(n) * 4 * 64), v(k.size());
    for (size_t i = 0; i < k.size(); ++i) k[i] = EncodeFp16(normal(rng)), v[i] = EncodeFp16(normal(rng));
    std::vector<float> mean(4 * 64);
    for (float& m : mean) m = normal(rng);
    std::vector<uint16_t> out[2][2];
    for (KvRowOrder rows : {KvRowOrder::kHeadMajor, KvRowOrder::kTokenMajor}) {
      const KvPageLayout layout{storage, DType::kF16, 16, 4, 64, rows};
      std::vector<std::byte> page(layout.page_bytes(), std::byte{0});
      EncodeKvTokens(layout, page.data(), first, n, k.data(), v.data(), mean);
      auto& o = out[rows == KvRowOrder::kHeadMajor ? 0 : 1];
      o[0].resize(k.size());
      o[1].resize(k.size());
      DecodeKvTokens(layout, page.data(), first, n, o[0].data(), o[1].data());
      if (storage == KvStorage::k16Bit) {  // and exactly where the order says
        EXPECT_EQ(std::memcmp(page.data() + layout.row(first + 2, 3) * 128, k.data() + (2 * 4 + 3) * 64, 128), 0);
      }
    }
    EXPECT_EQ(out[0][0], out[1][0]) << std::string(KvStorageName(storage));
    EXPECT_EQ(out[0][1], out[1][1]) << std::string(KvStorageName(storage));
  }
}

// Known K codes (every group's amax 7 · 0.25, so each group's scale is exactly 0.25) written to
// tokens 1 and 2 of a 4-token page: each nibble, each scale and V at the offsets of the layout,
// and nothing outside those two tokens' bytes touched.
TEST(Int4KPages, ByteLayout) {
  constexpr int kT = 4, kH = 2, kD = 64;
  const KvPageLayout layout{KvStorage::kInt4KFp8V, DType::kF16, kT, kH, kD};
  // code(token, head, c) in [-7, 7]: 32 consecutive channels take every value, so ±7 is in each group.
  const auto code = [](int t, int h, int c) { return (c + t * 5 + h * 2) % 15 - 7; };
  std::vector<uint16_t> k(2 * kH * kD), v(k.size());
  for (int t = 0; t < 2; ++t) {
    for (int h = 0; h < kH; ++h) {
      for (int c = 0; c < kD; ++c) {
        const size_t at = (static_cast<size_t>(t) * kH + h) * kD + c;
        k[at] = EncodeFp16(0.25f * static_cast<float>(code(t, h, c)));
        v[at] = EncodeFp16(c == 5 ? 448.0f * (h + 1) : 1.0f);  // V amax 448·(h + 1): scale h + 1
      }
    }
  }
  std::vector<std::byte> page(layout.page_bytes(), std::byte{0xA5});
  const std::vector<float> zero_mean(kH * kD, 0.0f);
  EncodeKvTokens(layout, page.data(), 1, 2, k.data(), v.data(), zero_mean);

  // Slot 1 (the first token sent), head 0: byte 0 holds channels 0 (low nibble) and 32 (high),
  // byte 1 channels 8 and 40. Codes c % 15 - 7: -7, -5, 1, 3, stored + 8: 1, 3, 9, 11.
  const std::byte* k_codes = page.data();
  const size_t th1 = layout.row(1, 0);  // token-head (slot 1, head 0): row 1 of head-major rows
  EXPECT_EQ(th1, 1u);
  EXPECT_EQ(static_cast<int>(k_codes[th1 * kD / 2 + 0]), 0x31);
  EXPECT_EQ(static_cast<int>(k_codes[th1 * kD / 2 + 1]), 0xB9);
  for (int t = 0; t < 2; ++t) {
    for (int h = 0; h < kH; ++h) {
      const size_t th = layout.row(t + 1, h);
      for (int c = 0; c < kD; ++c) {
        ASSERT_EQ(Nibble(k_codes + th * kD / 2, c, kD), code(t, h, c) + 8) << "t " << t << " h " << h << " c " << c;
      }
      for (int g = 0; g < kD / kGroup; ++g) {
        EXPECT_EQ(Float(page.data() + layout.k_scales_offset() + (th * 2 + g) * 4), 0.25f) << th << " " << g;
      }
      EXPECT_EQ(Float(page.data() + layout.v_scales_offset() + th * 4), static_cast<float>(h + 1));
      EXPECT_EQ(static_cast<uint8_t>(page[layout.v_codes_offset() + th * kD + 5]), EncodeFp8E4M3(448.0f));
      EXPECT_EQ(static_cast<uint8_t>(page[layout.v_codes_offset() + th * kD + 6]), EncodeFp8E4M3(1.0f / (h + 1)));
    }
  }
  // Slots 0 and 3 of every part are untouched.
  const struct {
    size_t offset, per_token_head;
  } parts[] = {{0, kD / 2}, {layout.v_codes_offset(), kD}, {layout.k_scales_offset(), 8}, {layout.v_scales_offset(), 4}};
  for (const auto& part : parts) {
    for (int slot : {0, 3}) {
      for (int h = 0; h < kH; ++h) {
        for (size_t b = 0; b < part.per_token_head; ++b) {
          ASSERT_EQ(page[part.offset + layout.row(slot, h) * part.per_token_head + b], std::byte{0xA5})
              << part.offset << " slot " << slot << " head " << h;
        }
      }
    }
  }
  EXPECT_EQ(layout.v_scales_offset() + kT * kH * 4, page.size());
}

struct Encoded {
  std::vector<std::byte> page;
  std::vector<float> scales;  // [D / 32]
  std::vector<int> codes;     // [D], by channel
  std::vector<float> decoded; // [D], DecodeKvTokens's K
};

// One token, one head of K (fp16 values, K mean 0) through a one-token page.
Encoded EncodeOne(const std::vector<float>& x) {
  const int d = static_cast<int>(x.size());
  const KvPageLayout layout{KvStorage::kInt4KFp8V, DType::kF16, 1, 1, d};
  std::vector<uint16_t> k(d), v(d, EncodeFp16(1.0f)), k_out(d), v_out(d);
  for (int c = 0; c < d; ++c) k[c] = EncodeFp16(x[c]);
  Encoded e;
  e.page.assign(layout.page_bytes(), std::byte{0});
  const std::vector<float> mean(d, 0.0f);
  EncodeKvTokens(layout, e.page.data(), 0, 1, k.data(), v.data(), mean);
  for (int g = 0; g < d / kGroup; ++g) e.scales.push_back(Float(e.page.data() + layout.k_scales_offset() + g * 4));
  for (int c = 0; c < d; ++c) e.codes.push_back(Nibble(e.page.data(), c, d) - 8);
  DecodeKvTokens(layout, e.page.data(), 0, 1, k_out.data(), v_out.data());
  for (int c = 0; c < d; ++c) e.decoded.push_back(DecodeFp16(k_out[c]));
  return e;
}

// Each group's scale is its amax / 7 (fp32), codes are within ±7 with the amax channel at ±7,
// code × scale is within half a step of the value, and the decode is that product in fp16.
TEST(Int4KPages, RoundTripWithinHalfAStepPerGroup) {
  std::mt19937 rng(3);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  for (int d : {64, 128}) {
    for (int trial = 0; trial < 50; ++trial) {
      std::vector<float> x(d);
      for (int c = 0; c < d; ++c) x[c] = DecodeFp16(EncodeFp16(normal(rng) * (1.0f + static_cast<float>(c / kGroup) * 3.0f)));
      const Encoded e = EncodeOne(x);
      std::vector<float> amax(d / kGroup, 0.0f);
      for (int c = 0; c < d; ++c) amax[c / kGroup] = std::max(amax[c / kGroup], std::fabs(x[c]));
      for (int g = 0; g < d / kGroup; ++g) ASSERT_EQ(e.scales[g], amax[g] / 7.0f) << "group " << g;
      for (int c = 0; c < d; ++c) {
        const float scale = e.scales[c / kGroup];
        ASSERT_LE(std::abs(e.codes[c]), 7);
        const double stored = static_cast<double>(e.codes[c]) * scale;
        ASSERT_LE(std::fabs(stored - x[c]), 0.5 * scale * (1 + 1e-6)) << "D " << d << " c " << c;
        ASSERT_EQ(e.decoded[c], DecodeFp16(EncodeFp16(static_cast<float>(e.codes[c]) * scale))) << c;
        if (std::fabs(x[c]) == amax[c / kGroup]) {
          ASSERT_EQ(std::abs(e.codes[c]), 7) << c;
        }
      }
    }
  }
}

// A group of zeros gets scale 1 and codes 0 (nibble 8); an outlier in one group sets only that
// group's scale.
TEST(Int4KPages, GroupsAreIndependent) {
  std::vector<float> x(128);
  for (int c = 0; c < 128; ++c) x[c] = c < 32 ? 0.0f : static_cast<float>(c % 7) - 3.0f;
  const Encoded base = EncodeOne(x);
  EXPECT_EQ(base.scales[0], 1.0f);
  for (int c = 0; c < 32; ++c) {
    EXPECT_EQ(base.codes[c], 0);
    EXPECT_EQ(base.decoded[c], 0.0f);
  }
  x[70] = 1000.0f;  // group 2
  const Encoded spiked = EncodeOne(x);
  EXPECT_EQ(spiked.scales[2], 1000.0f / 7.0f);
  EXPECT_EQ(spiked.codes[70], 7);
  for (int g : {0, 1, 3}) EXPECT_EQ(spiked.scales[g], base.scales[g]) << g;
  for (int c = 0; c < 128; ++c) {
    if (c / kGroup != 2) {
      EXPECT_EQ(spiked.codes[c], base.codes[c]) << c;
    }
  }
}

// A NaN (or Inf) in one channel: its group's scale is NaN (Inf) and its codes 0, so the group
// decodes to NaN; the other groups are as without it.
TEST(Int4KPages, NonFiniteStaysInItsGroup) {
  std::vector<float> x(128);
  for (int c = 0; c < 128; ++c) x[c] = static_cast<float>(c % 11) * 0.5f - 2.0f;
  const Encoded clean = EncodeOne(x);
  for (float bad : {std::nanf(""), INFINITY}) {
    x[45] = bad;  // group 1
    const Encoded e = EncodeOne(x);
    EXPECT_EQ(std::isnan(e.scales[1]), std::isnan(bad));
    EXPECT_FALSE(std::isfinite(e.scales[1]));
    for (int c = 32; c < 64; ++c) {
      EXPECT_EQ(e.codes[c], 0) << c;
      EXPECT_TRUE(std::isnan(e.decoded[c])) << c;
    }
    for (int g : {0, 2, 3}) {
      EXPECT_EQ(e.scales[g], clean.scales[g]);
      for (int c = g * kGroup; c < (g + 1) * kGroup; ++c) {
        EXPECT_EQ(e.codes[c], clean.codes[c]);
        EXPECT_EQ(e.decoded[c], clean.decoded[c]);
      }
    }
    x[45] = 0.0f;
  }
}

// The K mean is subtracted before the groups are formed: a constant channel bias costs nothing.
TEST(Int4KPages, KIsCentredOnTheMean) {
  constexpr int kD = 64;
  const KvPageLayout layout{KvStorage::kInt4KFp8V, DType::kBF16, 1, 1, kD};
  std::vector<float> mean(kD);
  std::vector<uint16_t> k(kD), v(kD, EncodeBf16(0.5f)), k_out(kD), v_out(kD);
  for (int c = 0; c < kD; ++c) {
    mean[c] = 100.0f + static_cast<float>(c);
    k[c] = EncodeBf16(mean[c] + (c == 9 ? 7.0f : c % 2 == 0 ? 1.0f : -1.0f));
  }
  std::vector<std::byte> page(layout.page_bytes());
  EncodeKvTokens(layout, page.data(), 0, 1, k.data(), v.data(), mean);
  EXPECT_EQ(Float(page.data() + layout.k_scales_offset()), 1.0f);      // group 0: amax 7
  EXPECT_EQ(Float(page.data() + layout.k_scales_offset() + 4), 1.0f / 7);  // group 1: amax 1
  DecodeKvTokens(layout, page.data(), 0, 1, k_out.data(), v_out.data());
  for (int c = 0; c < kD; ++c) {
    EXPECT_EQ(DecodeBf16(k_out[c]), c == 9 ? 7.0f : c < 32 ? (c % 2 == 0 ? 1.0f : -1.0f)
                                                           : DecodeBf16(EncodeBf16((c % 2 == 0 ? 7.0f : -7.0f) * (1.0f / 7))))
        << c;
    EXPECT_EQ(DecodeBf16(v_out[c]), 0.5f);
  }
}

}  // namespace
}  // namespace sage
