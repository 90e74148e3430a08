#include "server/backend/paged_kv.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "kernels/reference/attention_problem.h"

namespace sage::server {

absl::Status ValidatePagedKv(const AttnInput& in, const PagedKv& paged) {
  const auto bad = [](const std::string& what) { return absl::InvalidArgumentError(absl::StrCat("paged kv: ", what)); };
  const KvPageLayout& l = paged.layout;
  if (l.heads != in.k.heads || l.head_dim != in.k.head_dim || l.dtype != in.k.dtype || in.v.heads != in.k.heads ||
      in.v.dtype != in.k.dtype || in.v.tokens != in.k.tokens) {
    return bad("the page layout does not match k/v's heads, head_dim or dtype");
  }
  if (l.page_tokens < 16 || l.page_tokens % 16 != 0 || paged.page_bytes < l.page_bytes() || paged.pool == nullptr) {
    return bad(absl::StrCat("page of ", l.page_tokens, " tokens in ", paged.page_bytes, " bytes"));
  }
  const int batch = in.batch();
  if (paged.cu_pages.size() != static_cast<size_t>(batch) + 1 || paged.cu_pages[0] != 0 ||
      paged.cu_pages.back() != static_cast<int32_t>(paged.page_table.size())) {
    return bad("cu_pages must hold batch + 1 offsets from 0 to the page table's size");
  }
  for (int s = 0; s < batch; ++s) {
    const int64_t len = in.cu_seqlens_k[s + 1] - in.cu_seqlens_k[s];
    const int64_t have = int64_t{paged.cu_pages[s + 1]} - paged.cu_pages[s];
    if (have < (len + l.page_tokens - 1) / l.page_tokens) {
      return bad(absl::StrCat("sequence ", s, " has ", have, " pages for ", len, " tokens"));
    }
  }
  for (int32_t p : paged.page_table) {
    if (p < 0 || p >= paged.pool_pages) return bad(absl::StrCat("page ", p, " outside the pool's ", paged.pool_pages));
  }
  return absl::OkStatus();
}

void GatherPagedKv(const AttnInput& in, const PagedKv& paged, std::byte* k, std::byte* v) {
  const KvPageLayout& l = paged.layout;
  const size_t row = static_cast<size_t>(l.heads) * l.head_dim * 2;
  for (int s = 0; s < in.batch(); ++s) {
    const int64_t k0 = in.cu_seqlens_k[s], len = in.cu_seqlens_k[s + 1] - k0;
    for (int64_t t = 0; t < len; t += l.page_tokens) {
      const int32_t page = paged.page_table[static_cast<size_t>(paged.cu_pages[s] + t / l.page_tokens)];
      const int n = static_cast<int>(std::min<int64_t>(l.page_tokens, len - t));
      const size_t at = static_cast<size_t>(k0 + t) * row;
      DecodeKvTokens(l, paged.pool + static_cast<size_t>(page) * paged.page_bytes, 0, n, k + at, v + at);
    }
  }
}

}  // namespace sage::server
