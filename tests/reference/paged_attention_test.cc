// PagedDecodeReference: the CPU emulation the paged decode kernel is tied to.
#include "kernels/reference/paged_attention.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/reference/metrics.h"
#include "kernels/reference/numerics.h"
#include "kernels/reference/oracle.h"
#include "kernels/reference/synthetic_data.h"

namespace sage {
namespace {

// INT4 K against the oracle over the original K/V, llm-like data: measured 0.99973 (D 64) and
// 0.99965 (D 128).
constexpr double kInt4CosineFloor = 0.999;

struct Case {
  SyntheticProblem data;
  PagedKvPool pool;
  PagedDecodeProblem problem;
};

// Decode rows (q_lens) over cached tokens (k_lens), llm-like data, pages in shuffled order.
Case MakeCase(KvStorage storage, DType dtype, std::vector<int> q_lens, std::vector<int> k_lens, int hq, int hkv,
              int d, int page_tokens, uint64_t page_seed) {
  ProblemSpec spec;
  spec.q_lens = std::move(q_lens);
  spec.k_lens = std::move(k_lens);
  spec.q_heads = hq;
  spec.kv_heads = hkv;
  spec.head_dim = d;
  spec.mask = MaskMode::kCausal;
  spec.lse = LseMode::kNatural;
  spec.dtype = dtype;
  spec.distribution = Distribution::kLlmLike;
  spec.seed = 7;
  Case c{SyntheticProblem(spec), {}, {}};
  const AttnInput& in = c.data.input();
  c.pool = PackPagedKv(storage, dtype, in.k.data, in.v.data, in.cu_seqlens_k, hkv, d, page_tokens,
                       /*page_bytes=*/0, page_seed);
  c.problem = ProblemOver(c.pool, in);
  return c;
}

// 16-bit pages hold the values as sent: the emulation is the double oracle over the same K/V.
TEST(PagedDecodeReference, SixteenBitEqualsTheOracle) {
  for (DType dtype : {DType::kF16, DType::kBF16}) {
    Case c = MakeCase(KvStorage::k16Bit, dtype, {1, 5, 16}, {1, 77, 300}, 8, 2, 64, 16, 3);
    const PagedDecodeOutput got = PagedDecodeReference(c.problem);
    const auto exact = AttendExact(c.data.input());
    ASSERT_TRUE(exact.ok()) << exact.status();
    ASSERT_EQ(got.o.size(), exact->o.size());
    for (size_t i = 0; i < got.o.size(); ++i)
      ASSERT_NEAR(got.o[i], exact->o[i], 1e-6 * (1.0 + std::fabs(exact->o[i]))) << "o[" << i << "]";
    for (size_t i = 0; i < got.lse.size(); ++i) ASSERT_NEAR(got.lse[i], exact->lse[i], 1e-5) << "lse[" << i << "]";
  }
}

// Where the pages sit in the pool changes nothing, bit for bit; nor do page sizes.
TEST(PagedDecodeReference, PageOrderAndSizeDoNotMatter) {
  for (KvStorage storage : kAllKvStorages) {
    Case a = MakeCase(storage, DType::kF16, {3, 1}, {200, 45}, 4, 1, 128, 16, 1);
    Case b = MakeCase(storage, DType::kF16, {3, 1}, {200, 45}, 4, 1, 128, 16, 99);
    Case c = MakeCase(storage, DType::kF16, {3, 1}, {200, 45}, 4, 1, 128, 64, 5);
    ASSERT_NE(a.pool.page_table, b.pool.page_table);
    const PagedDecodeOutput ra = PagedDecodeReference(a.problem), rb = PagedDecodeReference(b.problem),
                            rc = PagedDecodeReference(c.problem);
    EXPECT_EQ(0, std::memcmp(ra.o.data(), rb.o.data(), ra.o.size() * 4));
    EXPECT_EQ(0, std::memcmp(ra.o.data(), rc.o.data(), ra.o.size() * 4));
    EXPECT_EQ(0, std::memcmp(ra.lse.data(), rc.lse.data(), ra.lse.size() * 4));
  }
}

// Row i of n sees tokens [0, len - n + i]: a change to the last token moves only the last row, and a
// NaN V scale there makes only that row NaN.
TEST(PagedDecodeReference, CausalRowVisibility) {
  Case c = MakeCase(KvStorage::kInt8KFp8V, DType::kBF16, {4}, {50}, 2, 1, 64, 16, 2);
  const PagedDecodeOutput before = PagedDecodeReference(c.problem);
  const int last = 49, hkv = 1;
  std::byte* page = c.pool.pool.data() + static_cast<size_t>(c.pool.page_table[last / 16]) * c.pool.page_bytes;
  const KvPageLayout layout = c.pool.layout;
  float* v_scale = reinterpret_cast<float*>(page + layout.v_scales_offset()) + layout.row(last % 16, hkv - 1);
  *v_scale *= 2.0f;
  const PagedDecodeOutput doubled = PagedDecodeReference(c.problem);
  *v_scale = std::nanf("");
  const PagedDecodeOutput poisoned = PagedDecodeReference(c.problem);
  const int d = 64, hq = 2;
  for (int row = 0; row < 4; ++row) {
    for (int h = 0; h < hq; ++h) {
      const size_t at = (static_cast<size_t>(row) * hq + h) * d;
      const bool sees = row == 3;
      EXPECT_EQ(sees, std::memcmp(&before.o[at], &doubled.o[at], d * 4) != 0) << "row " << row;
      EXPECT_EQ(sees, std::isnan(poisoned.o[at])) << "row " << row;
      EXPECT_EQ(before.lse[row * hq + h], doubled.lse[row * hq + h]);  // V does not enter the LSE
    }
  }
}

double Cosine(const std::vector<float>& got, const std::vector<double>& want) {
  double dot = 0, n1 = 0, n2 = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    dot += got[i] * want[i];
    n1 += static_cast<double>(got[i]) * got[i];
    n2 += want[i] * want[i];
  }
  return dot / std::sqrt(n1 * n2);
}

// 8-bit pages stay close to the oracle over the original K/V (the storage's accuracy, NUMERICS §8b).
TEST(PagedDecodeReference, EightBitIsCloseToTheOracle) {
  Case c = MakeCase(KvStorage::kInt8KFp8V, DType::kF16, {1, 16}, {1000, 333}, 8, 2, 128, 32, 4);
  const PagedDecodeOutput got = PagedDecodeReference(c.problem);
  const auto exact = AttendExact(c.data.input());
  ASSERT_TRUE(exact.ok()) << exact.status();
  EXPECT_GT(Cosine(got.o, exact->o), 0.999);
}

// INT4 K pages too, less closely (NUMERICS §8b).
TEST(PagedDecodeReference, FourBitKIsCloseToTheOracle) {
  for (int d : {64, 128}) {
    Case c = MakeCase(KvStorage::kInt4KFp8V, DType::kF16, {1, 16}, {1000, 333}, 8, 2, d, 32, 4);
    const PagedDecodeOutput got = PagedDecodeReference(c.problem);
    const auto exact = AttendExact(c.data.input());
    ASSERT_TRUE(exact.ok()) << exact.status();
    const double cos = Cosine(got.o, exact->o);
    std::printf("INT4 K pages, D %d: cos %.6f against the oracle\n", d, cos);
    EXPECT_GT(cos, kInt4CosineFloor) << "D " << d;
  }
}

// INT4 K pages: the emulation is fp64 attention over the stored values. Those are, within the
// 16-bit rounding DecodeKvTokens adds, what DecodeKvTokens gives (every value checked), so the
// oracle over the decoded K/V is the emulation within that rounding's effect.
TEST(PagedDecodeReference, FourBitKIsAttentionOverTheDecodedValues) {
  for (DType dtype : {DType::kF16, DType::kBF16}) {
    for (int d : {64, 128}) {
      Case c = MakeCase(KvStorage::kInt4KFp8V, dtype, {1, 5, 16}, {1, 77, 300}, 8, 2, d, 16, 6);
      const AttnInput& in = c.data.input();
      const int hkv = 2;
      const size_t row = static_cast<size_t>(hkv) * d;
      std::vector<uint16_t> k(static_cast<size_t>(in.k.tokens) * row), v(k.size());
      for (int b = 0; b < c.problem.batch(); ++b) {
        const auto seq_pages = c.problem.page_table.subspan(c.problem.cu_pages[b], c.problem.cu_pages[b + 1] - c.problem.cu_pages[b]);
        const int len = c.problem.seqlens_k[b], k0 = in.cu_seqlens_k[b];
        for (int t = 0; t < len; t += 16) {
          const std::byte* page = c.pool.pool.data() + static_cast<size_t>(seq_pages[t / 16]) * c.pool.page_bytes;
          const size_t at = (static_cast<size_t>(k0) + t) * row;
          DecodeKvTokens(c.pool.layout, page, 0, std::min(16, len - t), k.data() + at, v.data() + at);
        }
        for (int t = 0; t < len; ++t) {
          for (int h = 0; h < hkv; ++h) {
            for (int ch = 0; ch < d; ++ch) {
              const size_t at = (static_cast<size_t>(k0) + t) * row + static_cast<size_t>(h) * d + ch;
              for (bool value : {false, true}) {
                const double stored = PagedKvValue(c.problem, seq_pages, t, h, ch, value);
                const uint16_t bits = value ? v[at] : k[at];
                const double decoded = dtype == DType::kF16 ? DecodeFp16(bits) : DecodeBf16(bits);
                const double half_ulp = std::ldexp(std::fabs(stored), dtype == DType::kF16 ? -11 : -8);
                ASSERT_LE(std::fabs(decoded - stored), half_ulp + 1e-7) << "seq " << b << " t " << t << " c " << ch;
              }
            }
          }
        }
      }
      AttnInput over = in;
      over.k.data = k.data();
      over.v.data = v.data();
      const auto exact = AttendExact(over);
      ASSERT_TRUE(exact.ok()) << exact.status();
      const PagedDecodeOutput got = PagedDecodeReference(c.problem);
      const ErrorMetrics m = CompareToReference(got.o, exact->o);
      std::printf("INT4 K pages %s D %d: emulation vs oracle over the decoded values: rel L1 %.2e, max %.2e\n",
                  std::string(DTypeName(dtype)).c_str(), d, m.relative_l1, m.max_abs);
      // Measured: 1.1e-4 (fp16), 9e-4 (bf16): the 16-bit rounding of K and V.
      EXPECT_LE(m.relative_l1, dtype == DType::kF16 ? 4e-4 : 3e-3) << DTypeName(dtype) << " D " << d;
      double lse_err = 0;  // relative to max(1, |LSE|)
      for (size_t i = 0; i < got.lse.size(); ++i) {
        lse_err = std::max(lse_err, std::fabs(got.lse[i] - exact->lse[i]) / std::max(1.0, std::fabs(exact->lse[i])));
      }
      std::printf("  LSE: max relative error %.2e\n", lse_err);
      EXPECT_LE(lse_err, dtype == DType::kF16 ? 1e-3 : 4e-3);
    }
  }
}

}  // namespace
}  // namespace sage
