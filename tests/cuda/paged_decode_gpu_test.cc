// sage_paged_decode against its CPU emulation (PagedDecodeReference, kernels/reference/paged_attention.h).
//
// Tolerance rule (docs/NUMERICS.md §9a), per query row and head, with M = max_d |o_ref|:
//   max_d |o_gpu - o_ref| <= 2 ulp_dtype(M) + 1e-4 M      (output rounding + fp32 accumulation, ex2.approx)
//   |lse_gpu - lse_ref|   <= 1e-4 max(1, |lse_ref|)
// and NaN exactly in the rows whose visible tokens hold a NaN.
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "kernels/include/sageattn.h"
#include "kernels/reference/numerics.h"
#include "kernels/reference/paged_attention.h"
#include "kernels/reference/synthetic_data.h"
#include "tests/cuda/gpu_test_util.h"

namespace sage {
namespace {

using gputest::DeviceBuffer;
using gputest::Stream;

struct Prepared {
  SyntheticProblem data;
  PagedKvPool pool;
  PagedDecodeProblem problem;
  int max_q = 0, max_k = 0;
  std::vector<std::byte> device_pool;  // uploaded instead of pool.pool when set (in device_rows order)
  KvRowOrder device_rows = KvRowOrder::kHeadMajor;
};

sage_kv_layout_t SageLayout(KvRowOrder rows) { return rows == KvRowOrder::kHeadMajor ? SAGE_KV_HEAD_MAJOR : SAGE_KV_TOKEN_MAJOR; }

Prepared Prepare(KvStorage storage, DType dtype, int d, int hkv, int group, const std::vector<int>& q_lens,
                 const std::vector<int>& k_lens, int page_tokens, uint64_t page_pad, uint64_t seed) {
  sage::ProblemSpec spec;
  spec.q_lens = q_lens;
  spec.k_lens = k_lens;
  spec.q_heads = hkv * group;
  spec.kv_heads = hkv;
  spec.head_dim = d;
  spec.mask = MaskMode::kCausal;
  spec.dtype = dtype;
  spec.distribution = Distribution::kLlmLike;  // K channel bias, Q outlier channels, V offset
  spec.seed = seed;
  Prepared c{SyntheticProblem(spec), {}, {}, 0, 0, {}};
  const AttnInput& in = c.data.input();
  const KvPageLayout layout{storage, dtype, page_tokens, hkv, d};
  c.pool = PackPagedKv(storage, dtype, in.k.data, in.v.data, in.cu_seqlens_k, hkv, d, page_tokens,
                       layout.page_bytes() + page_pad, seed * 31 + 1);
  c.problem = ProblemOver(c.pool, in);
  for (int x : q_lens) c.max_q = std::max(c.max_q, x);
  for (int x : k_lens) c.max_k = std::max(c.max_k, x);
  return c;
}

// Device copies of one problem and the params that point at them (o and lse poisoned with NaN).
struct DeviceCase {
  DeviceBuffer q, o, lse, pool, page_table, cu_pages, cu_q, seqlens_k, workspace;
  sage_paged_decode_params_t params{};
};

absl::Status Upload(const Prepared& c, cudaStream_t s, DeviceCase* dc) {
  const PagedDecodeProblem& p = c.problem;
  const size_t q_bytes = static_cast<size_t>(p.total_q()) * p.num_q_heads * p.head_dim * 2;
  std::vector<int32_t> cu_q(p.cu_seqlens_q.begin(), p.cu_seqlens_q.end());
  if (auto st = dc->q.Allocate(q_bytes); !st.ok()) return st;
  if (auto st = dc->q.Upload(p.q, q_bytes, s); !st.ok()) return st;
  if (auto st = dc->pool.Upload(c.device_pool.empty() ? c.pool.pool : c.device_pool, s); !st.ok()) return st;
  if (auto st = dc->page_table.Upload(c.pool.page_table, s); !st.ok()) return st;
  if (auto st = dc->cu_pages.Upload(c.pool.cu_pages, s); !st.ok()) return st;
  if (auto st = dc->cu_q.Upload(cu_q, s); !st.ok()) return st;
  if (auto st = dc->seqlens_k.Upload(c.pool.seqlens_k, s); !st.ok()) return st;
  if (auto st = dc->o.Allocate(q_bytes); !st.ok()) return st;
  if (auto st = dc->lse.Allocate(static_cast<size_t>(p.total_q()) * p.num_q_heads * 4); !st.ok()) return st;
  if (auto st = dc->o.Poison(s); !st.ok()) return st;
  if (auto st = dc->lse.Poison(s); !st.ok()) return st;
  sage_paged_decode_params_t& k = dc->params;
  k.storage = p.storage == KvStorage::k16Bit      ? SAGE_KV_16BIT
              : p.storage == KvStorage::kInt8KFp8V ? SAGE_KV_INT8K_FP8V
                                                   : SAGE_KV_INT4K_FP8V;
  k.dtype = p.dtype == DType::kBF16 ? SAGE_DTYPE_BF16 : SAGE_DTYPE_F16;
  k.q = dc->q.get();
  k.o = dc->o.get();
  k.lse = dc->lse.as<float>();
  k.pages = dc->pool.get();
  k.page_bytes = c.pool.page_bytes;
  k.page_tokens = p.page_tokens;
  k.page_table = dc->page_table.as<int32_t>();
  k.cu_pages = dc->cu_pages.as<int32_t>();
  k.cu_seqlens_q = dc->cu_q.as<int32_t>();
  k.seqlens_k = dc->seqlens_k.as<int32_t>();
  k.batch = p.batch();
  k.max_seqlen_q = c.max_q;
  k.max_seqlen_k = c.max_k;
  k.total_q = p.total_q();
  k.num_q_heads = p.num_q_heads;
  k.num_kv_heads = p.num_kv_heads;
  k.head_dim = p.head_dim;
  k.softmax_scale = p.softmax_scale;
  size_t ws = 0;
  if (auto st = gputest::SageStatus(sage_paged_decode_workspace_size(&k, &ws), "workspace_size"); !st.ok()) return st;
  if (auto st = dc->workspace.Allocate(ws); !st.ok()) return st;
  k.workspace = dc->workspace.get();
  k.workspace_bytes = ws;
  return absl::OkStatus();
}

double Ulp(double x, DType t) {
  const int mantissa = t == DType::kBF16 ? 7 : 10;
  return x > 0 ? std::ldexp(1.0, std::ilogb(x) - mantissa) : 0.0;
}

// Runs the kernel and checks it against the emulation with the rule at the top of this file.
// The emulation reads the pool as packed (head-major rows); the device may hold the same pages in
// the other order (Prepared::device_pool, ReorderedPool).
void RunAndCompare(const Prepared& c, const std::string& what) {
  SCOPED_TRACE(what);
  Stream stream;
  ASSERT_NE(stream.get(), nullptr);
  DeviceCase dc;
  ASSERT_TRUE(Upload(c, stream.get(), &dc).ok());
  dc.params.layout = SageLayout(c.device_pool.empty() ? c.pool.layout.rows : c.device_rows);
  ASSERT_EQ(sage_paged_decode(&dc.params, stream.sage()), SAGE_OK) << sage_last_error();
  std::vector<uint16_t> o;
  std::vector<float> lse;
  ASSERT_TRUE(dc.o.Download(&o, stream.get()).ok());
  ASSERT_TRUE(dc.lse.Download(&lse, stream.get()).ok());
  const PagedDecodeOutput ref = PagedDecodeReference(c.problem);
  const PagedDecodeProblem& p = c.problem;
  const int d = p.head_dim;
  int bad = 0;
  for (size_t rh = 0; rh < ref.lse.size() && bad < 5; ++rh) {
    double m = 0, err = 0;
    bool ref_nan = false, gpu_nan = false;
    for (int j = 0; j < d; ++j) {
      const double r = ref.o[rh * d + j], g = gputest::Decode16(o[rh * d + j], p.dtype);
      ref_nan |= std::isnan(r);
      gpu_nan |= std::isnan(g);
      m = std::max(m, std::fabs(r));
      err = std::max(err, std::fabs(g - r));
    }
    if (ref_nan || gpu_nan) {
      if (ref_nan != gpu_nan) {
        ADD_FAILURE() << "row-head " << rh << ": NaN in " << (ref_nan ? "reference" : "gpu") << " only";
        ++bad;
      }
      continue;
    }
    const double tol = 2 * Ulp(m, p.dtype) + 1e-4 * m;
    const double lse_tol = 1e-4 * std::max(1.0, std::fabs(static_cast<double>(ref.lse[rh])));
    if (!(err <= tol) || !(std::fabs(lse[rh] - ref.lse[rh]) <= lse_tol)) {
      ADD_FAILURE() << "row-head " << rh << ": max |o err| " << err << " (tol " << tol << ", max|o| " << m
                    << "), lse " << lse[rh] << " vs " << ref.lse[rh];
      ++bad;
    }
  }
}

std::string Name(KvStorage s, DType t, int d, int g) {
  return absl::StrCat(std::string(KvStorageName(s)), "/", std::string(DTypeName(t)), "/D", d, "/G", g);
}

// Ragged batches over every storage x dtype x head_dim x GQA group, page sizes 16 and 64, padded
// page strides, and a 40k-token sequence cut into many splits. INT4-K pages: head_dim 128 only.
TEST(PagedDecodeGpu, MatchesTheEmulation) {
  SAGE_SKIP_WITHOUT_GPU();
  int index = 0;
  for (KvStorage storage : kAllKvStorages) {
    for (DType dtype : {DType::kF16, DType::kBF16}) {
      for (int d : {64, 128}) {
        if (storage == KvStorage::kInt4KFp8V && d != 128) continue;
        for (int g : {1, 4, 8}) {
          const int page_tokens = index % 2 ? 64 : 16;
          const uint64_t pad = index % 3 == 0 ? 48 : 0;
          const std::string name = Name(storage, dtype, d, g);
          // Mixed rows (n_q up to 16: several row passes), lengths not multiples of a page.
          RunAndCompare(Prepare(storage, dtype, d, 2, g, {1, 16, 1, 3, 16}, {1, 37, 1013, 4101, 300}, page_tokens,
                                pad, 10 + index),
                        name + " ragged");
          // Single decode rows: 1, 2, 4 or 8 rows per CTA.
          const std::vector<int> q1 = g == 1 ? std::vector<int>{2, 1, 2} : std::vector<int>{1, 1, 1};
          RunAndCompare(Prepare(storage, dtype, d, 2, g, q1, {5, 129, 2000}, page_tokens, pad, 20 + index),
                        name + " decode");
          // One long sequence: many KV splits merged by LSE.
          RunAndCompare(Prepare(storage, dtype, d, 1, g, {g == 1 ? 1 : 2}, {40000}, 64, pad, 30 + index),
                        name + " split");
          ++index;
        }
      }
    }
  }
}

// A sequence's last page past its end holds whatever was there (the pool does not clear it; the
// TMA reads of 8-bit pages fetch whole 16-token blocks): hostile bytes there (NaN codes and
// scales, a huge V scale) change nothing, with one and several rows per sequence, with splits.
TEST(PagedDecodeGpu, SlotsPastTheEndAreNeverSeen) {
  SAGE_SKIP_WITHOUT_GPU();
  int index = 0;
  for (KvStorage storage : kAllKvStorages) {
    for (int page_tokens : {16, 64}) {
      Prepared c = Prepare(storage, DType::kF16, 128, 2, 4, {1, 3, 16, 1}, {5, 37, 1013, 9001}, page_tokens, 0, 70 + index);
      const KvPageLayout& l = c.pool.layout;
      for (int b = 0; b < c.problem.batch(); ++b) {
        const int len = c.pool.seqlens_k[b];
        std::byte* page = c.pool.pool.data() +
                          static_cast<size_t>(c.pool.page_table[static_cast<size_t>(c.pool.cu_pages[b + 1] - 1)]) * c.pool.page_bytes;
        for (int t = (len - 1) % page_tokens + 1; t < page_tokens; ++t) {
          for (int h = 0; h < l.heads; ++h) {
            const size_t r = l.row(t, h);
            std::memset(page + r * l.k_code_bytes(), 0x7F, l.k_code_bytes());  // 16-bit: NaN halves
            std::memset(page + l.v_codes_offset() + r * l.v_code_bytes(), 0x7F, l.v_code_bytes());  // E4M3 NaN
            if (l.k_scales_per_token_head() > 0) {
              for (size_t g = 0; g < l.k_scales_per_token_head(); ++g) {
                const float nan = std::nanf("");
                std::memcpy(page + l.k_scales_offset() + (r * l.k_scales_per_token_head() + g) * 4, &nan, 4);
              }
              const float huge = 1e30f;
              std::memcpy(page + l.v_scales_offset() + r * 4, &huge, 4);
            }
          }
        }
      }
      RunAndCompare(c, absl::StrCat(Name(storage, DType::kF16, 128, 4), "/P", page_tokens, " hostile tail"));
      ++index;
    }
  }
}

// The pool's pages with their rows in order `to` (sageattn.h, sage_kv_layout_t): each of a page's
// four parts has its (token, head) rows moved from the pool's order to `to`.
std::vector<std::byte> ReorderedPool(const PagedKvPool& pool, KvRowOrder to) {
  const KvPageLayout& from = pool.layout;
  KvPageLayout dst_layout = from;
  dst_layout.rows = to;
  std::vector<std::byte> out = pool.pool;
  struct Part {
    size_t offset, row_bytes;  // row: one token-head's bytes of the part
  };
  std::vector<Part> parts = {{0, from.k_code_bytes()}, {from.v_codes_offset(), from.v_code_bytes()}};
  if (from.k_scales_per_token_head() > 0) {
    parts.push_back({from.k_scales_offset(), from.k_scales_per_token_head() * sizeof(float)});
    parts.push_back({from.v_scales_offset(), from.v_scales_per_token_head() * sizeof(float)});
  }
  for (size_t page = 0; page < pool.pool.size() / pool.page_bytes; ++page) {
    const std::byte* src = pool.pool.data() + page * pool.page_bytes;
    std::byte* dst = out.data() + page * pool.page_bytes;
    for (const Part& part : parts) {
      for (int t = 0; t < from.page_tokens; ++t) {
        for (int h = 0; h < from.heads; ++h) {
          std::memcpy(dst + part.offset + dst_layout.row(t, h) * part.row_bytes,
                      src + part.offset + from.row(t, h) * part.row_bytes, part.row_bytes);
        }
      }
    }
  }
  return out;
}

// The same problems with token-major pages give the same results, through both kernels (D 64 on
// CUDA cores, D 128 on tensor cores), with and without splits, page sizes 16 and 64.
TEST(PagedDecodeGpu, TokenMajorPagesMatchTheEmulation) {
  SAGE_SKIP_WITHOUT_GPU();
  int index = 0;
  for (KvStorage storage : kAllKvStorages) {
    for (int d : {64, 128}) {
      if (storage == KvStorage::kInt4KFp8V && d != 128) continue;
      for (int page_tokens : {16, 64}) {
        Prepared c = Prepare(storage, DType::kF16, d, 4, 4, {1, 3, 1, 16}, {7, 999, 20000, 300}, page_tokens,
                             index % 2 ? 32 : 0, 50 + index);
        c.device_pool = ReorderedPool(c.pool, KvRowOrder::kTokenMajor);
        c.device_rows = KvRowOrder::kTokenMajor;
        RunAndCompare(c, absl::StrCat(Name(storage, DType::kF16, d, 4), "/P", page_tokens, " token-major"));
        ++index;
      }
    }
  }
}

// Enough (sequence, head) CTAs that the plan takes one split: O is written by the split kernel.
TEST(PagedDecodeGpu, SingleSplitPath) {
  SAGE_SKIP_WITHOUT_GPU();
  std::mt19937 rng(5);
  std::vector<int> q_lens, k_lens;
  for (int b = 0; b < 48; ++b) {
    k_lens.push_back(1 + static_cast<int>(rng() % 120));
    q_lens.push_back(1 + static_cast<int>(rng() % std::min(4, k_lens.back())));
  }
  for (KvStorage storage : kAllKvStorages) {
    RunAndCompare(Prepare(storage, DType::kF16, 128, 4, 4, q_lens, k_lens, 16, 0, 3), "single split");
  }
}

// A NaN in one token's V (8-bit: its V or K scale; 16-bit: a value) makes exactly the rows that see
// that token NaN, with and without splits.
TEST(PagedDecodeGpu, NanReachesOnlyTheRowsThatSeeIt) {
  SAGE_SKIP_WITHOUT_GPU();
  for (KvStorage storage : kAllKvStorages) {
    for (int d : {64, 128}) { // 64: CUDA cores; 128: tensor cores (NaN V values
                              // counted by a second MMA)
      if (storage == KvStorage::kInt4KFp8V && d != 128) continue;
      for (int len : {100, 9000}) {
        for (int which : {0, 1}) { // 0: V, 1: K
          Prepared c =
              Prepare(storage, DType::kBF16, d, 1, 4, {16}, {len}, 16, 0, 41);
          const int token =
              len - 10 + which * 5; // seen by rows 6.. (V) or 11.. (K) of 16
          const KvPageLayout &layout = c.pool.layout;
          std::byte *page = c.pool.pool.data() +
                            static_cast<size_t>(c.pool.page_table[token / 16]) *
                                c.pool.page_bytes;
          const int slot = token % 16; // one KV head
          if (storage != KvStorage::k16Bit) {  // INT4: the K scale of the token's last group
            float *scale = reinterpret_cast<float *>(
                               page + (which == 0 ? layout.v_scales_offset()
                                                  : layout.k_scales_offset())) +
                           slot * (which == 0 ? 1 : layout.k_scales_per_token_head()) +
                           (which == 0 ? 0 : layout.k_scales_per_token_head() - 1);
            *scale = std::nanf("");
          } else {
            const uint16_t nan16 = 0x7FFF;
            std::memcpy(page + (which == 0 ? layout.v_codes_offset() : 0) +
                            (static_cast<size_t>(slot) * d + 3) * 2,
                        &nan16, 2);
          }
          const PagedDecodeOutput ref = PagedDecodeReference(c.problem);
          auto row_has_nan =
              [&](int row) { // head 0; a NaN V value poisons its channel only
                return std::any_of(ref.o.begin() + row * 4 * d,
                                   ref.o.begin() + (row * 4 + 1) * d,
                                   [](float x) { return std::isnan(x); });
              };
          ASSERT_TRUE(row_has_nan(15)) << "the last row sees the token";
          ASSERT_FALSE(row_has_nan(0)) << "the first row does not";
          RunAndCompare(
              c, absl::StrCat(std::string(KvStorageName(storage)),
                              " D", d, " len ", len, which == 0 ? " V" : " K"));
        }
      }
    }
  }
}

TEST(PagedDecodeGpu, InvalidParamsAreRejectedWithAMessage) {
  SAGE_SKIP_WITHOUT_GPU();
  Stream stream;
  Prepared c = Prepare(KvStorage::kInt8KFp8V, DType::kF16, 128, 1, 4, {1}, {5000}, 16, 0, 2);
  DeviceCase dc;
  ASSERT_TRUE(Upload(c, stream.get(), &dc).ok());
  ASSERT_GT(dc.params.workspace_bytes, 0u) << "this case splits";
  struct Bad {
    const char* what;
    void (*edit)(sage_paged_decode_params_t*);
    sage_status_t want;
  };
  const Bad cases[] = {
      {"q", [](sage_paged_decode_params_t* p) { p->q = nullptr; }, SAGE_ERR_INVALID_ARGUMENT},
      {"q", [](sage_paged_decode_params_t* p) { p->q = static_cast<const char*>(p->q) + 2; }, SAGE_ERR_INVALID_ARGUMENT},
      {"o", [](sage_paged_decode_params_t* p) { p->o = static_cast<char*>(p->o) + 8; }, SAGE_ERR_INVALID_ARGUMENT},
      {"pages", [](sage_paged_decode_params_t* p) { p->pages = nullptr; }, SAGE_ERR_INVALID_ARGUMENT},
      {"page_table", [](sage_paged_decode_params_t* p) { p->page_table = nullptr; }, SAGE_ERR_INVALID_ARGUMENT},
      {"head_dim", [](sage_paged_decode_params_t* p) { p->head_dim = 80; }, SAGE_ERR_UNSUPPORTED},
      {"storage", [](sage_paged_decode_params_t* p) { p->storage = static_cast<sage_kv_storage_t>(7); },
       SAGE_ERR_INVALID_ARGUMENT},
      {"max_seqlen_q", [](sage_paged_decode_params_t* p) { p->max_seqlen_q = 17; }, SAGE_ERR_INVALID_ARGUMENT},
      {"max_seqlen_q", [](sage_paged_decode_params_t* p) { p->max_seqlen_q = 0; }, SAGE_ERR_INVALID_ARGUMENT},
      {"page_tokens", [](sage_paged_decode_params_t* p) { p->page_tokens = 24; }, SAGE_ERR_INVALID_ARGUMENT},
      {"page_bytes", [](sage_paged_decode_params_t* p) { p->page_bytes -= 16; }, SAGE_ERR_INVALID_ARGUMENT},
      {"page_bytes", [](sage_paged_decode_params_t* p) { p->page_bytes += 8; }, SAGE_ERR_INVALID_ARGUMENT},
      {"workspace_bytes", [](sage_paged_decode_params_t* p) { p->workspace_bytes -= 4; }, SAGE_ERR_INVALID_ARGUMENT},
      {"num_q_heads", [](sage_paged_decode_params_t* p) { p->num_q_heads = 6; p->num_kv_heads = 4; },
       SAGE_ERR_INVALID_ARGUMENT},
      {"softmax_scale", [](sage_paged_decode_params_t* p) { p->softmax_scale = 0.f; }, SAGE_ERR_INVALID_ARGUMENT},
      {"layout", [](sage_paged_decode_params_t* p) { p->layout = static_cast<sage_kv_layout_t>(2); },
       SAGE_ERR_INVALID_ARGUMENT},
      {"head_dim", [](sage_paged_decode_params_t* p) { p->storage = SAGE_KV_INT4K_FP8V; p->head_dim = 64; },
       SAGE_ERR_UNSUPPORTED},
  };
  for (const Bad& b : cases) {
    sage_paged_decode_params_t p = dc.params;
    b.edit(&p);
    EXPECT_EQ(sage_paged_decode(&p, stream.sage()), b.want) << b.what;
    EXPECT_NE(std::string(sage_last_error()).find(b.what), std::string::npos)
        << b.what << ": message \"" << sage_last_error() << "\"";
  }
  EXPECT_EQ(sage_paged_decode(&dc.params, nullptr), SAGE_ERR_INVALID_ARGUMENT);
  EXPECT_EQ(sage_paged_decode(&dc.params, stream.sage()), SAGE_OK) << sage_last_error();
  EXPECT_EQ(cudaStreamSynchronize(stream.get()), cudaSuccess);
}

}  // namespace
}  // namespace sage
