#include "kernels/reference/paged_attention.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <numeric>
#include <random>

#include "kernels/reference/numerics.h"

namespace sage {
namespace {

double Decode16(uint16_t bits, DType dtype) {
  return dtype == DType::kBF16 ? static_cast<double>(DecodeBf16(bits)) : static_cast<double>(DecodeFp16(bits));
}

// Token t of a sequence lives in page seq_pages[t / page_tokens], slot t % page_tokens.
const std::byte* PageOf(const PagedDecodeProblem& p, std::span<const int32_t> seq_pages, int t) {
  return p.pages + static_cast<uint64_t>(seq_pages[t / p.page_tokens]) * p.page_bytes;
}

}  // namespace

double PagedKvValue(const PagedDecodeProblem& p, std::span<const int32_t> seq_pages, int t, int h, int c,
                    bool value_tensor) {
  const KvPageLayout layout = p.layout();
  const std::byte* page = PageOf(p, seq_pages, t);
  const size_t slot = layout.row(t % p.page_tokens, h);  // the token-head's row in each part
  if (p.storage == KvStorage::k16Bit) {
    uint16_t bits;
    std::memcpy(&bits, page + (value_tensor ? layout.v_codes_offset() : 0) + (slot * p.head_dim + c) * 2, 2);
    return Decode16(bits, p.dtype);
  }
  float scale;
  if (value_tensor) {
    std::memcpy(&scale, page + layout.v_scales_offset() + slot * sizeof(float), sizeof(float));
    const auto code = static_cast<uint8_t>(page[layout.v_codes_offset() + slot * layout.v_code_bytes() + c]);
    return static_cast<double>(DecodeFp8E4M3(code)) * static_cast<double>(scale);
  }
  const size_t groups = layout.k_scales_per_token_head();
  const size_t group = p.storage == KvStorage::kInt4KFp8V ? static_cast<size_t>(c / kInt4GroupChannels) : 0;
  std::memcpy(&scale, page + layout.k_scales_offset() + (slot * groups + group) * sizeof(float), sizeof(float));
  const std::byte* codes = page + slot * layout.k_code_bytes();
  int code;
  if (p.storage == KvStorage::kInt4KFp8V) {  // nibble n in byte n / 2, low bits first, stored as code + 8
    const int n = Int4ChannelNibble(c, p.head_dim);
    code = ((static_cast<int>(codes[n / 2]) >> (4 * (n % 2))) & 0xF) - 8;
  } else {
    code = static_cast<int8_t>(codes[c]);
  }
  return static_cast<double>(code) * static_cast<double>(scale);
}

PagedKvPool PackPagedKv(KvStorage storage, DType dtype, const void* k, const void* v,
                        std::span<const int32_t> cu_seqlens_k, int kv_heads, int head_dim, int page_tokens,
                        uint64_t page_bytes, uint64_t seed, KvRowOrder rows) {
  PagedKvPool out;
  out.layout = {storage, dtype, page_tokens, kv_heads, head_dim, rows};
  out.page_bytes = std::max<uint64_t>(page_bytes, out.layout.page_bytes());
  const int batch = static_cast<int>(cu_seqlens_k.size()) - 1;
  int total_pages = 0;
  for (int b = 0; b < batch; ++b) total_pages += (cu_seqlens_k[b + 1] - cu_seqlens_k[b] + page_tokens - 1) / page_tokens;
  std::vector<int32_t> ids(total_pages);
  std::iota(ids.begin(), ids.end(), 0);
  std::mt19937_64 rng(seed);
  std::shuffle(ids.begin(), ids.end(), rng);
  out.pool.assign(static_cast<size_t>(total_pages) * out.page_bytes, std::byte{0xA5});
  out.cu_pages.push_back(0);
  const size_t row = static_cast<size_t>(kv_heads) * head_dim;
  const auto* k16 = static_cast<const uint16_t*>(k);
  const auto* v16 = static_cast<const uint16_t*>(v);
  std::vector<float> mean(row), kf(row);
  int next = 0;
  for (int b = 0; b < batch; ++b) {
    const int first = cu_seqlens_k[b], len = cu_seqlens_k[b + 1] - first;
    out.seqlens_k.push_back(len);
    std::fill(mean.begin(), mean.end(), 0.f);
    if (HasKMean(storage) && len > 0) {  // the sequence's K mean per (head, channel)
      std::vector<double> sum(row, 0.0);
      for (int t = 0; t < len; ++t) {
        DecodeToFloatBulk(k16 + (static_cast<size_t>(first) + t) * row, dtype, kf.data(), row);
        for (size_t i = 0; i < row; ++i) sum[i] += kf[i];
      }
      for (size_t i = 0; i < row; ++i) mean[i] = static_cast<float>(sum[i] / len);
    }
    for (int t = 0; t < len; t += page_tokens) {
      const int id = ids[next++];
      out.page_table.push_back(id);
      const int n = std::min(page_tokens, len - t);
      const size_t at = (static_cast<size_t>(first) + t) * row;
      EncodeKvTokens(out.layout, out.pool.data() + static_cast<size_t>(id) * out.page_bytes, 0, n, k16 + at, v16 + at,
                     mean);
    }
    out.cu_pages.push_back(static_cast<int32_t>(out.page_table.size()));
  }
  return out;
}

PagedDecodeOutput PagedDecodeReference(const PagedDecodeProblem& p) {
  const int d = p.head_dim, hq = p.num_q_heads, hkv = p.num_kv_heads, group = hq / hkv;
  PagedDecodeOutput out;
  out.o.assign(static_cast<size_t>(p.total_q()) * hq * d, 0.f);
  out.lse.assign(static_cast<size_t>(p.total_q()) * hq, -std::numeric_limits<float>::infinity());
  const auto* q16 = static_cast<const uint16_t*>(p.q);
  std::vector<double> k, v, s, acc(d);
  for (int b = 0; b < p.batch(); ++b) {
    const int len = p.seqlens_k[b], q0 = p.cu_seqlens_q[b], n = p.cu_seqlens_q[b + 1] - q0;
    const auto seq_pages = p.page_table.subspan(p.cu_pages[b], p.cu_pages[b + 1] - p.cu_pages[b]);
    for (int h = 0; h < hkv; ++h) {
      // The head's K and V once, exactly as stored.
      k.resize(static_cast<size_t>(len) * d);
      v.resize(static_cast<size_t>(len) * d);
      for (int t = 0; t < len; ++t) {
        for (int c = 0; c < d; ++c) {
          k[static_cast<size_t>(t) * d + c] = PagedKvValue(p, seq_pages, t, h, c, false);
          v[static_cast<size_t>(t) * d + c] = PagedKvValue(p, seq_pages, t, h, c, true);
        }
      }
      for (int qi = 0; qi < n; ++qi) {
        const int visible = len - n + qi + 1;
        for (int g = 0; g < group; ++g) {
          const size_t row_head = (static_cast<size_t>(q0) + qi) * hq + h * group + g;
          const uint16_t* q = q16 + row_head * d;
          s.assign(visible, 0.0);
          double m = -std::numeric_limits<double>::infinity();
          for (int t = 0; t < visible; ++t) {
            double dot = 0.0;
            for (int c = 0; c < d; ++c) dot += Decode16(q[c], p.dtype) * k[static_cast<size_t>(t) * d + c];
            s[t] = dot * p.softmax_scale;
            if (s[t] > m) m = s[t];  // a NaN score stays out of m and makes its p (and the row) NaN
          }
          double l = 0.0;
          std::fill(acc.begin(), acc.end(), 0.0);
          for (int t = 0; t < visible; ++t) {
            const double pt = std::exp(s[t] - m);
            l += pt;
            for (int c = 0; c < d; ++c) acc[c] += pt * v[static_cast<size_t>(t) * d + c];
          }
          for (int c = 0; c < d; ++c) out.o[row_head * d + c] = static_cast<float>(acc[c] / l);
          out.lse[row_head] = static_cast<float>(m + std::log(l));
        }
      }
    }
  }
  return out;
}

PagedDecodeProblem ProblemOver(const PagedKvPool& pool, const AttnInput& in) {
  PagedDecodeProblem p;
  p.storage = pool.layout.storage;
  p.dtype = pool.layout.dtype;
  p.q = in.q.data;
  p.pages = pool.pool.data();
  p.page_bytes = pool.page_bytes;
  p.page_tokens = pool.layout.page_tokens;
  p.page_table = pool.page_table;
  p.cu_pages = pool.cu_pages;
  p.cu_seqlens_q = in.cu_seqlens_q;
  p.seqlens_k = pool.seqlens_k;
  p.num_q_heads = in.q.heads;
  p.num_kv_heads = pool.layout.heads;
  p.head_dim = pool.layout.head_dim;
  p.softmax_scale = in.scale();
  p.rows = pool.layout.rows;
  return p;
}

}  // namespace sage
