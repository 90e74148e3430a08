// sage_kv_quantize against the session scheme's CPU encode (INT8 and INT4 K): tokens with outliers, a channel bias,
// zero, subnormal, huge, infinite and NaN token-heads, written to shuffled slots of a few pages
// (the pool poisoned first, so every byte the CPU leaves alone must stay poisoned), give the bytes
// QuantizeKvTokens gives; NaN scales compare as NaN, and an E4M3 NaN code as NaN whatever its sign.
// Both dtypes, D 64 and 128; K centred on the host with the tables in device memory or in pinned
// host memory, and the rows form (16-bit K and V rows found by pointer, in reverse order, each
// token's own session mean, centred on the GPU). Bad params get INVALID_ARGUMENT.
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstring>
#include <limits>
#include <numeric>
#include <random>
#include <span>
#include <string>
#include <vector>

#include "kernels/include/sageattn.h"
#include "kernels/reference/kv_pages.h"
#include "kernels/reference/numerics.h"
#include "tests/cuda/gpu_test_util.h"

namespace sage {
namespace {

using gputest::DeviceBuffer;
using gputest::Stream;

constexpr int kHeads = 8, kPageTokens = 16, kPages = 4, kTokens = 40;

uint16_t To16(float x, DType dtype) { return dtype == DType::kBF16 ? EncodeBf16(x) : EncodeFp16(x); }

// [kTokens, kHeads, d] 16-bit values: normal with a per-channel bias and outliers, and some
// token-heads special (all zero, subnormal, huge, one inf, one NaN).
std::vector<uint16_t> Values(int d, DType dtype, uint32_t seed, float bias) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> nd;
  std::vector<uint16_t> out(static_cast<size_t>(kTokens) * kHeads * d);
  for (int t = 0; t < kTokens; ++t) {
    for (int h = 0; h < kHeads; ++h) {
      for (int c = 0; c < d; ++c) {
        float x = nd(rng) + bias * std::sin(static_cast<float>(c));
        if (rng() % 97 == 0) x *= 40.0f;
        switch ((t * kHeads + h) % 23) {
          case 3: x = 0.0f; break;
          case 5: x *= 1e-6f; break;  // fp16 subnormals
          case 7: x *= 3000.0f; break;
          case 11: if (c == 5) x = std::numeric_limits<float>::infinity(); break;
          case 13: if (c == 9) x = std::numeric_limits<float>::quiet_NaN(); break;
          default: break;
        }
        out[(static_cast<size_t>(t) * kHeads + h) * d + c] = To16(x, dtype);
      }
    }
  }
  return out;
}

TEST(KvQuantizeGpu, WritesTheSchemesBytes) {
  SAGE_SKIP_WITHOUT_GPU();
  for (KvStorage storage : kAllKvStorages) {
  for (KvRowOrder order : {KvRowOrder::kHeadMajor, KvRowOrder::kTokenMajor}) {
  for (DType dtype : {DType::kF16, DType::kBF16}) {
    for (int d : {64, 128}) {
      // Centred with device tables, centred pinned, rows, rows at odd 2-byte addresses (16-bit
      // pages take only the rows forms).
      for (int form = storage == KvStorage::k16Bit ? 2 : 0; form < 4; ++form) {
        const bool host_tables = form == 1, rows = form >= 2, odd = form == 3;
        SCOPED_TRACE(std::string(KvStorageName(storage)) + (order == KvRowOrder::kHeadMajor ? " head-major" : " token-major") +
                     (dtype == DType::kBF16 ? " bf16 " : " fp16 ") + std::to_string(d) + " form " + std::to_string(form));
        const KvPageLayout layout{storage, dtype, kPageTokens, kHeads, d, order};
        const size_t page_bytes = layout.page_bytes() + 64;  // a padded stride
        const size_t row = static_cast<size_t>(kHeads) * d;
        const std::vector<uint16_t> k = Values(d, dtype, 1, 3.0f), v = Values(d, dtype, 2, 0.0f);
        // Two sessions' K means: odd tokens take the second.
        std::vector<float> means(2 * row);
        for (size_t i = 0; i < row; ++i) {
          means[i] = 0.25f * static_cast<float>(i % 7) - 0.5f;
          means[row + i] = 1.5f - 0.125f * static_cast<float>(i % 5);
        }
        std::vector<float> centered(k.size());
        for (int t = 0; t < kTokens; ++t) {
          CenterKTokens(dtype, k.data() + t * row, row, std::span<const float>(means.data() + (t % 2) * row, row),
                        centered.data() + t * row);
        }
        // Shuffled distinct (page, slot) places for the tokens.
        std::vector<int> places(kPages * kPageTokens);
        std::iota(places.begin(), places.end(), 0);
        std::shuffle(places.begin(), places.end(), std::mt19937(d));
        std::vector<uint64_t> offsets(kTokens);
        std::vector<int32_t> slots(kTokens);
        std::vector<std::byte> want(page_bytes * kPages, std::byte{0xFF});
        for (int t = 0; t < kTokens; ++t) {
          offsets[t] = static_cast<uint64_t>(places[t] / kPageTokens) * page_bytes;
          slots[t] = places[t] % kPageTokens;
          EncodeKvTokens(layout, want.data() + offsets[t], slots[t], 1, k.data() + t * row, v.data() + t * row,
                         std::span<const float>(means.data() + (t % 2) * row, HasKMean(storage) ? row : 0));
        }

        Stream stream;
        DeviceBuffer pool(want.size());
        ASSERT_TRUE(pool.Poison(stream.get()).ok());
        DeviceBuffer dk, dv, doff, dslot, dmeans, dk_rows, dv_rows, dmean_of;
        void* pinned = nullptr;
        sage_kv_quantize_params_t p{};
        p.storage = storage == KvStorage::kInt4KFp8V   ? SAGE_KV_INT4K_FP8V
                    : storage == KvStorage::kInt8KFp8V ? SAGE_KV_INT8K_FP8V
                                                       : SAGE_KV_16BIT;
        p.layout = order == KvRowOrder::kHeadMajor ? SAGE_KV_HEAD_MAJOR : SAGE_KV_TOKEN_MAJOR;
        p.dtype = dtype == DType::kBF16 ? SAGE_DTYPE_BF16 : SAGE_DTYPE_F16;
        p.pages = pool.get();
        p.page_tokens = kPageTokens;
        p.num_kv_heads = kHeads;
        p.head_dim = d;
        p.count = kTokens;
        if (host_tables) {
          const size_t bytes = centered.size() * 4 + v.size() * 2 + offsets.size() * 8 + slots.size() * 4;
          ASSERT_EQ(cudaHostAlloc(&pinned, bytes, cudaHostAllocPortable), cudaSuccess);
          auto* at = static_cast<std::byte*>(pinned);
          const auto put = [&](const void* src, size_t n) { std::memcpy(at, src, n); const void* r = at; at += n; return r; };
          p.k_centered = static_cast<const float*>(put(centered.data(), centered.size() * 4));
          p.page_offsets = static_cast<const uint64_t*>(put(offsets.data(), offsets.size() * 8));
          p.v = put(v.data(), v.size() * 2);
          p.slots = static_cast<const int32_t*>(put(slots.data(), slots.size() * 4));
        } else if (rows) {  // token t's rows at place kTokens - 1 - t of the buffers (one value later if odd)
          const size_t shift = odd ? 1 : 0;
          std::vector<uint16_t> k_rev(k.size() + shift), v_rev(v.size() + shift);
          for (int t = 0; t < kTokens; ++t) {
            std::copy_n(k.begin() + t * row, row, k_rev.begin() + shift + (kTokens - 1 - t) * row);
            std::copy_n(v.begin() + t * row, row, v_rev.begin() + shift + (kTokens - 1 - t) * row);
          }
          ASSERT_TRUE(dk.Upload(k_rev, stream.get()).ok());
          ASSERT_TRUE(dv.Upload(v_rev, stream.get()).ok());
          ASSERT_TRUE(dmeans.Upload(means, stream.get()).ok());
          std::vector<const void*> k_at(kTokens), v_at(kTokens);
          std::vector<const float*> mean_at(kTokens);
          for (int t = 0; t < kTokens; ++t) {
            k_at[t] = dk.as<uint16_t>() + shift + (kTokens - 1 - t) * row;
            v_at[t] = dv.as<uint16_t>() + shift + (kTokens - 1 - t) * row;
            mean_at[t] = dmeans.as<float>() + (t % 2) * row;
          }
          ASSERT_TRUE(dk_rows.Upload(k_at, stream.get()).ok());
          ASSERT_TRUE(dv_rows.Upload(v_at, stream.get()).ok());
          ASSERT_TRUE(dmean_of.Upload(mean_at, stream.get()).ok());
          ASSERT_TRUE(doff.Upload(offsets, stream.get()).ok());
          ASSERT_TRUE(dslot.Upload(slots, stream.get()).ok());
          p.k_rows = dk_rows.as<const void*>();
          p.v_rows = dv_rows.as<const void*>();
          p.k_means = dmean_of.as<const float*>();
          p.page_offsets = doff.as<uint64_t>();
          p.slots = dslot.as<int32_t>();
        } else {
          ASSERT_TRUE(dk.Upload(centered, stream.get()).ok());
          ASSERT_TRUE(dv.Upload(v, stream.get()).ok());
          ASSERT_TRUE(doff.Upload(offsets, stream.get()).ok());
          ASSERT_TRUE(dslot.Upload(slots, stream.get()).ok());
          p.k_centered = dk.as<float>();
          p.v = dv.get();
          p.page_offsets = doff.as<uint64_t>();
          p.slots = dslot.as<int32_t>();
        }
        ASSERT_EQ(sage_kv_quantize(&p, reinterpret_cast<sage_stream_t>(stream.get())), SAGE_OK) << sage_last_error();
        std::vector<std::byte> got;
        ASSERT_TRUE(pool.Download(&got, stream.get()).ok());
        if (pinned != nullptr) (void)cudaFreeHost(pinned);
        ASSERT_EQ(got.size(), want.size());
        // Byte for byte, except that two NaN scales match whatever their payloads.
        int mismatches = 0;
        for (int pg = 0; pg < kPages; ++pg) {
          const std::byte* w = want.data() + pg * page_bytes;
          const std::byte* g = got.data() + pg * page_bytes;
          const size_t scales_at = layout.k_scales_offset();
          for (size_t i = 0; i < page_bytes; ++i) {
            if (i >= scales_at && i < layout.page_bytes()) {
              if (i % 4 != 0) continue;
              float a, b;
              std::memcpy(&a, w + (i - i % 4), 4);
              std::memcpy(&b, g + (i - i % 4), 4);
              const bool same = (a != a && b != b) || std::bit_cast<uint32_t>(a) == std::bit_cast<uint32_t>(b);
              if (!same && mismatches++ < 5) ADD_FAILURE() << "page " << pg << " scale byte " << i << ": " << b << " vs " << a;
              continue;
            }
            // V codes: an E4M3 NaN either sign (0x7F / 0xFF): x86 makes inf/inf a negative NaN,
            // the GPU a positive one; both decode to NaN.
            const bool v_code = i >= layout.v_codes_offset() && i < scales_at;
            if (v_code && (static_cast<int>(w[i]) & 0x7F) == 0x7F && (static_cast<int>(g[i]) & 0x7F) == 0x7F) continue;
            if (w[i] != g[i] && mismatches++ < 5) {
              ADD_FAILURE() << "page " << pg << " byte " << i << ": " << static_cast<int>(g[i]) << " vs " << static_cast<int>(w[i]);
            }
          }
        }
        EXPECT_EQ(mismatches, 0);
      }
    }
  }
  }
  }
}

TEST(KvQuantizeGpu, BadParamsAreRefused) {
  SAGE_SKIP_WITHOUT_GPU();
  Stream stream;
  const auto st = reinterpret_cast<sage_stream_t>(stream.get());
  DeviceBuffer buf(1 << 16);
  sage_kv_quantize_params_t p{};
  p.storage = SAGE_KV_INT8K_FP8V;
  p.dtype = SAGE_DTYPE_F16;
  p.pages = buf.get();
  p.page_tokens = 16;
  p.num_kv_heads = 2;
  p.head_dim = 128;
  p.count = 1;
  p.page_offsets = buf.as<uint64_t>();
  p.slots = buf.as<int32_t>();
  p.k_centered = buf.as<float>();
  p.v = buf.get();
  EXPECT_EQ(sage_kv_quantize(nullptr, st), SAGE_ERR_INVALID_ARGUMENT);
  sage_kv_quantize_params_t bad = p;
  bad.storage = SAGE_KV_16BIT;  // copied from rows, not from centred K
  EXPECT_EQ(sage_kv_quantize(&bad, st), SAGE_ERR_INVALID_ARGUMENT);
  EXPECT_NE(std::string(sage_last_error()).find("16BIT storage takes the rows form"), std::string::npos) << sage_last_error();
  bad = p;
  bad.storage = static_cast<sage_kv_storage_t>(3);
  EXPECT_EQ(sage_kv_quantize(&bad, st), SAGE_ERR_INVALID_ARGUMENT);
  EXPECT_NE(std::string(sage_last_error()).find("storage 3 unknown"), std::string::npos) << sage_last_error();
  bad = p;
  bad.layout = static_cast<sage_kv_layout_t>(2);
  EXPECT_EQ(sage_kv_quantize(&bad, st), SAGE_ERR_INVALID_ARGUMENT);
  EXPECT_NE(std::string(sage_last_error()).find("layout 2"), std::string::npos) << sage_last_error();
  bad = p;
  bad.head_dim = 80;
  EXPECT_EQ(sage_kv_quantize(&bad, st), SAGE_ERR_INVALID_ARGUMENT);
  EXPECT_NE(std::string(sage_last_error()).find("head_dim"), std::string::npos) << sage_last_error();
  bad = p;
  bad.storage = SAGE_KV_INT4K_FP8V;
  bad.head_dim = 96;  // a multiple of 32, but INT4's nibble order needs 64
  EXPECT_EQ(sage_kv_quantize(&bad, st), SAGE_ERR_INVALID_ARGUMENT);
  EXPECT_NE(std::string(sage_last_error()).find("head_dim 96 with INT4K_FP8V"), std::string::npos) << sage_last_error();
  bad = p;
  bad.k_centered = nullptr;  // v alone: neither form
  EXPECT_EQ(sage_kv_quantize(&bad, st), SAGE_ERR_INVALID_ARGUMENT);
  bad.v = nullptr;  // the rows form without its tables
  bad.k_rows = reinterpret_cast<const void* const*>(buf.get());
  bad.v_rows = bad.k_rows;
  EXPECT_EQ(sage_kv_quantize(&bad, st), SAGE_ERR_INVALID_ARGUMENT);
  EXPECT_EQ(sage_kv_quantize(&p, nullptr), SAGE_ERR_INVALID_ARGUMENT);
  bad = p;
  bad.count = 0;
  EXPECT_EQ(sage_kv_quantize(&bad, st), SAGE_OK);
}

}  // namespace
}  // namespace sage
