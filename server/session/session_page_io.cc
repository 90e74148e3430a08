// SessionStore's page I/O: an append's tokens encoded into the layer's pages (through KvMemory for
// a GPU's pool), a cache decoded back out, and pages pinned for a launch that reads them in place.
#include <algorithm>
#include <cstring>
#include <vector>

#include "absl/strings/str_cat.h"
#include "kernels/reference/numerics.h"
#include "server/session/session_state.h"
#include "server/session/session_store.h"

namespace sage::server {

// Appends the step's tokens to the layer's pages (which the caller checked it may write): pages
// allocated first (a shared page about to be written copied), then the tokens encoded on the host
// in place, or for a device pool listed in `batch` for the caller's one write.
absl::Status SessionStore::WriteTokens(Session& s, int layer, const AppendStep& step, WriteBatch& batch) {
  Session::Layer& l = s.layers[static_cast<size_t>(layer)];
  const SessionShape& shape = s.shape;
  KvPagePool& pool = PoolOf(s);
  KvMemory& memory = pool.memory();
  const int64_t end = step.position + step.n_new;
  const int64_t T = l.layout.page_tokens;
  const int64_t pages_needed = (end + T - 1) / T;
  const int64_t have = static_cast<int64_t>(l.pages.size());
  const int64_t first = step.position / T;
  const bool copy_first = first < have && pool.RefCount(l.pages[static_cast<size_t>(first)]) > 1;
  const int64_t more = std::max<int64_t>(0, pages_needed - have) + (copy_first ? 1 : 0);
  absl::StatusOr<std::vector<PageId>> fresh = pool.Allocate(more);
  if (!fresh.ok()) return fresh.status();
  size_t next = 0;
  if (copy_first) {
    const PageId old = l.pages[static_cast<size_t>(first)];
    const PageId mine = (*fresh)[next++];
    if (absl::Status c = memory.Copy(pool.offset(mine), pool.offset(old), pool.page_bytes()); !c.ok()) {
      pool.Release(*fresh);
      return c;
    }
    l.pages[static_cast<size_t>(first)] = mine;
    pool.Release(std::span<const PageId>(&old, 1));
  }
  while (next < fresh->size()) l.pages.push_back((*fresh)[next++]);

  const size_t row = static_cast<size_t>(shape.heads_kv) * shape.head_dim;  // values per token
  const auto* k = static_cast<const uint16_t*>(step.k);
  const auto* v = static_cast<const uint16_t*>(step.v);
  const bool in_place = memory.memory() != MemoryKind::kDevice;
  const bool kv_on_device = step.kv_memory == MemoryKind::kDevice;
  if (kv_on_device && (in_place || !s.KvMayStayOnDevice(layer))) {
    // SessionStore::TakesDeviceKv said no to such a step: its K/V should have come from the host.
    return absl::InternalError(
        "session append: K/V in device memory for a pool or a first append that needs them on the host");
  }
  if (HasKMean(l.layout.storage) && l.k_mean.empty()) {
    // The session's K mean for this layer: the channel means of its first append.
    l.k_mean.assign(row, 0.0f);
    std::vector<float> f(row);
    for (int64_t t = 0; t < step.n_new; ++t) {
      DecodeToFloatBulk(k + t * row, shape.dtype, f.data(), row);
      for (size_t i = 0; i < row; ++i) l.k_mean[i] += f[i];
    }
    for (float& m : l.k_mean) m /= static_cast<float>(step.n_new);
  }
  const KvPageLayout& layout = l.layout;
  if (in_place) {  // host memory: each run of tokens that lands in one page encoded there
    for (int64_t t = 0; t < step.n_new;) {
      const int64_t token_at = step.position + t;
      const int in_page = static_cast<int>(token_at % T);
      const int n = static_cast<int>(std::min<int64_t>(T - in_page, step.n_new - t));
      std::byte* const page = memory.base() + pool.offset(l.pages[static_cast<size_t>(token_at / T)]);
      EncodeKvTokens(layout, page, in_page, n, k + static_cast<size_t>(t) * row, v + static_cast<size_t>(t) * row, l.k_mean);
      t += n;
    }
    return absl::OkStatus();
  }
  // Device memory: each token encoded where its page is (KvMemory::WriteTokens: sage_kv_quantize on
  // a GPU, which copies 16-bit rows into their head-major slots and quantizes the others, K centred
  // there on the session's mean), in the caller's batch, one group per layout.
  auto group = std::find_if(batch.groups.begin(), batch.groups.end(), [&layout](const TokenGroup& g) { return g.layout == layout; });
  if (group == batch.groups.end()) group = batch.groups.insert(batch.groups.end(), TokenGroup{layout, {}});
  const float* const mean = HasKMean(layout.storage) ? l.k_mean.data() : nullptr;
  for (int64_t t = 0; t < step.n_new; ++t) {
    const int64_t token = step.position + t;
    group->tokens.push_back(KvTokenWrite{pool.offset(l.pages[static_cast<size_t>(token / T)]), static_cast<int>(token % T),
                                         k + static_cast<size_t>(t) * row, v + static_cast<size_t>(t) * row, mean,
                                         step.kv_memory});
  }
  return absl::OkStatus();  // the caller writes the batch
}

absl::Status SessionStore::CheckReadable(const Session& s, int layer, int64_t end) {
  if (s.closed) return absl::NotFoundError(absl::StrCat("session '", s.id, "' was closed"));
  if (layer < 0 || layer >= s.shape.layers) return absl::OutOfRangeError("layer: outside the session");
  const Session::Layer& l = s.layers[static_cast<size_t>(layer)];
  if (end > l.length) {
    return absl::FailedPreconditionError(
        absl::StrCat("session '", s.id, "' layer ", layer, " was truncated to ", l.length, " tokens during the step"));
  }
  return absl::OkStatus();
}

absl::Status SessionStore::Gather(const SessionCaller& caller, std::string_view id, int layer, int64_t end,
                                  std::span<std::byte> k, std::span<std::byte> v) const {
  absl::StatusOr<Ref> found = Lookup(caller, id);
  if (!found.ok()) return found.status();
  Session& s = *found->s_;
  std::lock_guard<std::mutex> lock(s.mu);
  if (absl::Status readable = CheckReadable(s, layer, end); !readable.ok()) return readable;
  const Session::Layer& l = s.layers[static_cast<size_t>(layer)];
  const size_t row_bytes = static_cast<size_t>(s.shape.heads_kv) * s.shape.head_dim * 2;
  if (k.size() < static_cast<size_t>(end) * row_bytes || v.size() < static_cast<size_t>(end) * row_bytes) {
    return absl::InternalError("session gather: output buffers too small");
  }
  const KvPagePool& pool = PoolOf(s);
  const KvMemory& memory = pool.memory();
  const bool in_place = memory.memory() != MemoryKind::kDevice;
  thread_local std::vector<std::byte> image;
  if (!in_place && image.size() < pool.page_bytes()) image.resize(pool.page_bytes());
  const int64_t T = l.layout.page_tokens;
  for (int64_t t = 0; t < end;) {
    const int n = static_cast<int>(std::min<int64_t>(T, end - t));
    const size_t page_at = pool.offset(l.pages[static_cast<size_t>(t / T)]);
    const std::byte* page = memory.base() + page_at;
    if (!in_place) {  // the whole page: its scales sit after every token's codes
      if (absl::Status r = memory.Read(page_at, image.data(), l.layout.page_bytes()); !r.ok()) return r;
      page = image.data();
    }
    DecodeKvTokens(l.layout, page, 0, n, k.data() + static_cast<size_t>(t) * row_bytes, v.data() + static_cast<size_t>(t) * row_bytes);
    t += n;
  }
  return absl::OkStatus();
}

PinnedPages SessionStore::PagesUpTo(const Session& s, int layer, int64_t end) {
  const Session::Layer& l = s.layers[static_cast<size_t>(layer)];
  PinnedPages pages;
  pages.pool = s.pool;
  pages.layout = l.layout;
  const size_t n = static_cast<size_t>((end + l.layout.page_tokens - 1) / l.layout.page_tokens);
  pages.pages.assign(l.pages.begin(), l.pages.begin() + static_cast<std::ptrdiff_t>(n));
  return pages;
}

absl::StatusOr<PinnedPages> SessionStore::Pin(const SessionCaller& caller, std::string_view id, int layer,
                                              int64_t end) const {
  absl::StatusOr<Ref> found = Lookup(caller, id);
  if (!found.ok()) return found.status();
  Session& s = *found->s_;
  std::lock_guard<std::mutex> lock(s.mu);
  if (absl::Status readable = CheckReadable(s, layer, end); !readable.ok()) return readable;
  PinnedPages pinned = PagesUpTo(s, layer, end);
  PoolOf(s).AddRef(pinned.pages);
  return pinned;
}

void SessionStore::Unpin(const PinnedPages& pinned) const {
  pools_[static_cast<size_t>(pinned.pool)].pool->Release(pinned.pages);
}

}  // namespace sage::server
