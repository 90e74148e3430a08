// The KV page pool: one KvMemory (host memory, or one GPU's device memory) allocated at start, cut
// into fixed-size pages, handed out and taken back with reference counts (a fork shares its
// parent's pages until either side writes; a launch reading pages in place holds a reference
// until it is done). Nothing on the request path allocates memory for KV. Thread-safe.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <span>
#include <vector>

#include "absl/status/statusor.h"
#include "server/backend/kv_memory.h"

namespace sage::server {

using PageId = int32_t;

struct KvPoolStats {
  int64_t pages_total = 0;
  int64_t pages_free = 0;
  size_t page_bytes = 0;
};

class KvPagePool {
 public:
  // INVALID_ARGUMENT naming the flag unless page_bytes >= 4096 (a multiple of 256, so every page is
  // aligned for vector loads), and for CheckSize unless pool_bytes holds 1 to 2^30 pages. Callable
  // before the memory exists, so a bad size is refused without allocating it.
  static absl::Status CheckPageBytes(size_t page_bytes);
  static absl::Status CheckSize(size_t pool_bytes, size_t page_bytes);
  // CheckSize of the memory's bytes.
  static absl::StatusOr<std::unique_ptr<KvPagePool>> Create(std::unique_ptr<KvMemory> memory, size_t page_bytes);

  // `n` pages with one reference each, all or nothing: RESOURCE_EXHAUSTED naming the pages needed
  // and free.
  absl::StatusOr<std::vector<PageId>> Allocate(int64_t n);
  void AddRef(std::span<const PageId> pages);
  // Drops one reference of each; a page with none left is free again at once.
  void Release(std::span<const PageId> pages);
  int32_t RefCount(PageId page) const;

  size_t offset(PageId page) const { return static_cast<size_t>(page) * page_bytes_; }
  KvMemory& memory() const { return *memory_; }
  size_t page_bytes() const { return page_bytes_; }
  KvPoolStats Stats() const;

 private:
  KvPagePool(std::unique_ptr<KvMemory> memory, size_t page_bytes, int64_t pages);

  const std::unique_ptr<KvMemory> memory_;
  const size_t page_bytes_;
  mutable std::mutex mu_;
  std::vector<int32_t> refs_;  // guarded by mu_
  std::vector<PageId> free_;   // guarded by mu_
};

}  // namespace sage::server
