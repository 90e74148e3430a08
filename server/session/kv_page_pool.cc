#include "server/session/kv_page_pool.h"

#include <string>

#include "absl/strings/str_cat.h"

namespace sage::server {

absl::Status KvPagePool::CheckPageBytes(size_t page_bytes) {
  if (page_bytes < 4096 || page_bytes % 256 != 0) {
    return absl::InvalidArgumentError(absl::StrCat("kv_page_bytes: ", page_bytes, " (at least 4096, a multiple of 256)"));
  }
  return absl::OkStatus();
}

absl::Status KvPagePool::CheckSize(size_t pool_bytes, size_t page_bytes) {
  if (absl::Status s = CheckPageBytes(page_bytes); !s.ok()) return s;
  const size_t pages = pool_bytes / page_bytes;
  if (pages < 1 || pages > (size_t{1} << 30)) {
    return absl::InvalidArgumentError(
        absl::StrCat("kv_pool_bytes: ", pool_bytes, " holds ", pages, " pages of ", page_bytes, " bytes (1 to 2^30)"));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<KvPagePool>> KvPagePool::Create(std::unique_ptr<KvMemory> memory, size_t page_bytes) {
  if (absl::Status s = CheckSize(memory->bytes(), page_bytes); !s.ok()) return s;
  const int64_t pages = static_cast<int64_t>(memory->bytes() / page_bytes);
  return std::unique_ptr<KvPagePool>(new KvPagePool(std::move(memory), page_bytes, pages));
}

KvPagePool::KvPagePool(std::unique_ptr<KvMemory> memory, size_t page_bytes, int64_t pages)
    : memory_(std::move(memory)), page_bytes_(page_bytes), refs_(static_cast<size_t>(pages), 0) {
  free_.reserve(static_cast<size_t>(pages));
  // Highest first, so pages are handed out from the start of the pool.
  for (int64_t p = pages - 1; p >= 0; --p) free_.push_back(static_cast<PageId>(p));
}

absl::StatusOr<std::vector<PageId>> KvPagePool::Allocate(int64_t n) {
  std::vector<PageId> out;
  if (n <= 0) return out;
  std::lock_guard<std::mutex> lock(mu_);
  if (static_cast<size_t>(n) > free_.size()) {
    return absl::ResourceExhaustedError(absl::StrCat("kv pool: ", n, " pages needed, ", free_.size(), " free of ",
                                                     refs_.size(), " (close sessions, or start with a larger --kv_pool_bytes)"));
  }
  out.assign(free_.end() - n, free_.end());
  free_.resize(free_.size() - static_cast<size_t>(n));
  for (PageId p : out) refs_[static_cast<size_t>(p)] = 1;
  return out;
}

void KvPagePool::AddRef(std::span<const PageId> pages) {
  std::lock_guard<std::mutex> lock(mu_);
  for (PageId p : pages) ++refs_[static_cast<size_t>(p)];
}

void KvPagePool::Release(std::span<const PageId> pages) {
  std::lock_guard<std::mutex> lock(mu_);
  for (PageId p : pages) {
    if (--refs_[static_cast<size_t>(p)] == 0) free_.push_back(p);
  }
}

int32_t KvPagePool::RefCount(PageId page) const {
  std::lock_guard<std::mutex> lock(mu_);
  return refs_[static_cast<size_t>(page)];
}

KvPoolStats KvPagePool::Stats() const {
  std::lock_guard<std::mutex> lock(mu_);
  return KvPoolStats{static_cast<int64_t>(refs_.size()), static_cast<int64_t>(free_.size()), page_bytes_};
}

}  // namespace sage::server
