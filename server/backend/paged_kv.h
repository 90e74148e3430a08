// K and V read in place from KV pages (a session's cache in the server's page pool) rather than
// from tensors the request carried: the description an engine gets, its checks, and the host-side
// gather that engines without a paged kernel (the CPU engine) attend over.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>

#include "absl/status/status.h"
#include "kernels/reference/attention_problem.h"
#include "kernels/reference/kv_pages.h"
#include "server/backend/kv_memory.h"
#include "server/backend/memory_kind.h"

namespace sage::server {

// With EngineInput::paged set, the problem's k and v views give shapes only (tokens, heads,
// head_dim, dtype) and their data is the pool's base; sequence s reads its
// cu_seqlens_k[s+1] - cu_seqlens_k[s] tokens from pages page_table[cu_pages[s] ..] of the pool.
struct PagedKv {
  KvPageLayout layout;
  const std::byte* pool = nullptr;  // the pool's base: host memory, or device memory of `device`
  size_t page_bytes = 0;            // stride between pages
  int64_t pool_pages = 0;
  MemoryKind memory = MemoryKind::kPageable;
  int device = -1;
  std::span<const int32_t> page_table;
  std::span<const int32_t> cu_pages;  // batch + 1
  // The pool's memory, when its writes may still be in flight (a device pool): a launch orders
  // itself after them (KvMemory::OrderAfterWrites) before it reads a page.
  const KvMemory* writes = nullptr;
};

// INVALID_ARGUMENT unless `paged` describes `in`'s K/V: the layout matches k/v's heads, head_dim
// and dtype, cu_pages chains batch + 1 entries over page_table, every sequence has the pages its
// length needs, and every page id lies in the pool.
absl::Status ValidatePagedKv(const AttnInput& in, const PagedKv& paged);

// Decodes every sequence's tokens (host pages only) into `k` and `v`, [total_k, Hkv, D] 16-bit
// values of the layout's dtype, as DecodeKvTokens gives them.
void GatherPagedKv(const AttnInput& in, const PagedKv& paged, std::byte* k, std::byte* v);

}  // namespace sage::server
