// PagedDecodeReference: the CPU emulation the paged decode kernel is tied to.
#include "kernels/reference/paged_attention.h"

#include <cmath>
#include <cstring>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/reference/oracle.h"
#include "kernels/reference/synthetic_data.h"

namespace sage {
namespace {

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
  for (KvStorage storage : {KvStorage::k16Bit, KvStorage::kInt8KFp8V}) {
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
  float* v_scale = reinterpret_cast<float*>(page + 2 * layout.codes_per_tensor() + layout.scales_per_tensor()) +
                   (last % 16) * hkv;
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

// 8-bit pages stay close to the oracle over the original K/V (the storage's accuracy, NUMERICS §8b).
TEST(PagedDecodeReference, EightBitIsCloseToTheOracle) {
  Case c = MakeCase(KvStorage::kInt8KFp8V, DType::kF16, {1, 16}, {1000, 333}, 8, 2, 128, 32, 4);
  const PagedDecodeOutput got = PagedDecodeReference(c.problem);
  const auto exact = AttendExact(c.data.input());
  ASSERT_TRUE(exact.ok()) << exact.status();
  double dot = 0, n1 = 0, n2 = 0;
  for (size_t i = 0; i < got.o.size(); ++i) {
    dot += got.o[i] * exact->o[i];
    n1 += static_cast<double>(got.o[i]) * got.o[i];
    n2 += exact->o[i] * exact->o[i];
  }
  EXPECT_GT(dot / std::sqrt(n1 * n2), 0.999);
}

}  // namespace
}  // namespace sage
