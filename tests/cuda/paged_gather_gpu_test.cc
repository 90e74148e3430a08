// sage_paged_gather against the session scheme's CPU decode: a ragged batch's pages (shuffled page
// order, padded page stride) gathered into contiguous 16-bit K/V equal DecodeKvTokens bit for bit,
// for both storages, both dtypes and D 64/128, with every output byte poisoned first. Bad params get
// INVALID_ARGUMENT with a message.
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <cstring>
#include <string>
#include <vector>

#include "kernels/include/sageattn.h"
#include "kernels/reference/kv_pages.h"
#include "kernels/reference/paged_attention.h"
#include "kernels/reference/synthetic_data.h"
#include "tests/cuda/gpu_test_util.h"

namespace sage {
namespace {

using gputest::DeviceBuffer;
using gputest::Stream;

TEST(PagedGatherGpu, EqualsTheSchemesDecodeBitForBit) {
  SAGE_SKIP_WITHOUT_GPU();
  for (KvStorage storage : {KvStorage::kInt8KFp8V, KvStorage::k16Bit, KvStorage::kInt4KFp8V}) {
    for (DType dtype : {DType::kF16, DType::kBF16}) {
      for (int d : {64, 128}) {
        SCOPED_TRACE(std::string(KvStorageName(storage)) + (dtype == DType::kBF16 ? " bf16 " : " fp16 ") +
                     std::to_string(d));
        ProblemSpec spec;
        spec.q_lens = {1, 1, 1, 1};
        spec.k_lens = {1, 47, 256, 3001};
        spec.q_heads = 8;
        spec.kv_heads = 2;
        spec.head_dim = d;
        spec.dtype = dtype;
        spec.distribution = Distribution::kLlmLike;
        spec.seed = 7;
        SyntheticProblem data(spec);
        const AttnInput& in = data.input();
        const int page_tokens = 64;
        for (KvRowOrder order : {KvRowOrder::kHeadMajor, KvRowOrder::kTokenMajor}) {
        SCOPED_TRACE(order == KvRowOrder::kHeadMajor ? "head-major" : "token-major");
        const KvPageLayout layout{storage, dtype, page_tokens, 2, d, order};
        PagedKvPool pool = PackPagedKv(storage, dtype, in.k.data, in.v.data, in.cu_seqlens_k, 2, d, page_tokens,
                                       layout.page_bytes() + 256, 11, order);
        // The CPU decode of every sequence's tokens, page by page.
        const size_t row = static_cast<size_t>(2) * d;
        const int64_t total_k = in.k.tokens;
        std::vector<uint16_t> want_k(static_cast<size_t>(total_k) * row), want_v(want_k.size());
        for (size_t s = 0; s + 1 < in.cu_seqlens_k.size(); ++s) {
          const int64_t k0 = in.cu_seqlens_k[s], len = in.cu_seqlens_k[s + 1] - k0;
          for (int64_t t = 0; t < len; t += page_tokens) {
            const int32_t page = pool.page_table[static_cast<size_t>(pool.cu_pages[s] + t / page_tokens)];
            const int n = static_cast<int>(std::min<int64_t>(page_tokens, len - t));
            DecodeKvTokens(layout, pool.pool.data() + static_cast<size_t>(page) * pool.page_bytes, 0, n,
                           want_k.data() + static_cast<size_t>(k0 + t) * row, want_v.data() + static_cast<size_t>(k0 + t) * row);
          }
        }
        Stream stream;
        DeviceBuffer pages, table, cu_pages, cu_k, k_out(want_k.size() * 2), v_out(want_k.size() * 2);
        std::vector<int32_t> cu(in.cu_seqlens_k.begin(), in.cu_seqlens_k.end());
        ASSERT_TRUE(pages.Upload(pool.pool, stream.get()).ok());
        ASSERT_TRUE(table.Upload(pool.page_table, stream.get()).ok());
        ASSERT_TRUE(cu_pages.Upload(pool.cu_pages, stream.get()).ok());
        ASSERT_TRUE(cu_k.Upload(cu, stream.get()).ok());
        ASSERT_TRUE(k_out.Poison(stream.get()).ok());
        ASSERT_TRUE(v_out.Poison(stream.get()).ok());
        sage_paged_gather_params_t p{};
        p.storage = storage == KvStorage::k16Bit      ? SAGE_KV_16BIT
                    : storage == KvStorage::kInt8KFp8V ? SAGE_KV_INT8K_FP8V
                                                       : SAGE_KV_INT4K_FP8V;
        p.dtype = dtype == DType::kBF16 ? SAGE_DTYPE_BF16 : SAGE_DTYPE_F16;
        p.pages = pages.get();
        p.page_bytes = pool.page_bytes;
        p.page_tokens = page_tokens;
        p.page_table = table.as<int32_t>();
        p.cu_pages = cu_pages.as<int32_t>();
        p.cu_seqlens_k = cu_k.as<int32_t>();
        p.batch = static_cast<int32_t>(cu.size() - 1);
        p.max_seqlen_k = 3001;
        p.total_k = total_k;
        p.num_kv_heads = 2;
        p.head_dim = d;
        p.k_out = k_out.get();
        p.v_out = v_out.get();
        p.layout = order == KvRowOrder::kHeadMajor ? SAGE_KV_HEAD_MAJOR : SAGE_KV_TOKEN_MAJOR;
        ASSERT_EQ(sage_paged_gather(&p, stream.sage()), SAGE_OK) << sage_last_error();
        std::vector<uint16_t> got_k, got_v;
        ASSERT_TRUE(k_out.Download(&got_k, stream.get()).ok());
        ASSERT_TRUE(v_out.Download(&got_v, stream.get()).ok());
        ASSERT_EQ(got_k.size(), want_k.size());
        size_t k_diff = 0, v_diff = 0;
        for (size_t i = 0; i < want_k.size(); ++i) {
          k_diff += got_k[i] != want_k[i];
          v_diff += got_v[i] != want_v[i];
        }
        EXPECT_EQ(k_diff, 0u) << "K values that differ from DecodeKvTokens, of " << want_k.size();
        EXPECT_EQ(v_diff, 0u) << "V values that differ from DecodeKvTokens, of " << want_v.size();

        // A page size that is not a multiple of 16, and an undersized page stride, are refused.
        sage_paged_gather_params_t bad = p;
        bad.page_tokens = 40;
        EXPECT_EQ(sage_paged_gather(&bad, stream.sage()), SAGE_ERR_INVALID_ARGUMENT);
        EXPECT_NE(std::string(sage_last_error()).find("page_tokens"), std::string::npos) << sage_last_error();
        bad = p;
        bad.page_bytes = layout.page_bytes() - 16;
        EXPECT_EQ(sage_paged_gather(&bad, stream.sage()), SAGE_ERR_INVALID_ARGUMENT);
        EXPECT_NE(std::string(sage_last_error()).find("page_bytes"), std::string::npos) << sage_last_error();
        bad = p;
        bad.layout = static_cast<sage_kv_layout_t>(2);
        EXPECT_EQ(sage_paged_gather(&bad, stream.sage()), SAGE_ERR_INVALID_ARGUMENT);
        EXPECT_NE(std::string(sage_last_error()).find("layout 2"), std::string::npos) << sage_last_error();
        }
      }
    }
  }
}

}  // namespace
}  // namespace sage
