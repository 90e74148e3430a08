// Host memory for request payloads and results. The gRPC layer copies a request's tensor bytes once,
// from gRPC's receive slices into a block leased here, and the response's O goes out of the same
// block without another copy. When the pool is pinned (the CUDA backend's), the device copies read
// and write the block directly: no staging copy on either side. CPU only.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <optional>

#include "absl/base/thread_annotations.h"
#include "absl/functional/any_invocable.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "server/backend/memory_kind.h"

namespace sage::server {

// First-fit allocator over one contiguous range [0, capacity): offsets only, no memory. Free
// neighbours coalesce, so a steady mix of request sizes does not fragment the range. Not thread-safe
// (RegionBufferPool holds a lock around it).
class ArenaAllocator {
 public:
  // `alignment` must be a power of two; every offset handed out is a multiple of it.
  explicit ArenaAllocator(size_t capacity, size_t alignment = 256);

  // The offset of `bytes` (rounded up to the alignment; 0 bytes counts as one unit), or nullopt
  // when no free range is large enough.
  std::optional<size_t> Allocate(size_t bytes);
  // `offset` must come from Allocate and not have been freed since.
  void Free(size_t offset);

  size_t capacity() const { return capacity_; }
  size_t used() const { return used_; }  // rounded bytes currently allocated
  size_t largest_free() const;
  size_t free_ranges() const { return free_.size(); }

 private:
  size_t capacity_;
  size_t alignment_;
  size_t used_ = 0;
  std::map<size_t, size_t> free_;       // offset -> length, disjoint and never adjacent
  std::map<size_t, size_t> allocated_;  // offset -> rounded length
};

// One leased block. The bytes stay valid until the last HostBlockRef to it is gone, even if the
// pool that made it was destroyed first (responses still in gRPC's hands hold blocks).
class HostBlock {
 public:
  HostBlock(std::byte* data, size_t size, MemoryKind memory, absl::AnyInvocable<void()> release)
      : data_(data), size_(size), memory_(memory), release_(std::move(release)) {}
  ~HostBlock() {
    if (release_) release_();
  }
  HostBlock(const HostBlock&) = delete;
  HostBlock& operator=(const HostBlock&) = delete;

  std::byte* data() const { return data_; }
  size_t size() const { return size_; }
  MemoryKind memory() const { return memory_; }

 private:
  std::byte* data_;
  size_t size_;
  MemoryKind memory_;
  absl::AnyInvocable<void()> release_;
};
using HostBlockRef = std::shared_ptr<HostBlock>;

struct HostBufferPoolStats {
  MemoryKind memory = MemoryKind::kPageable;  // what the pool's own region is
  int64_t capacity_bytes = 0;                 // the region (0 for the heap pool)
  int64_t in_use_bytes = 0;                   // gauge: leased from the region now
  int64_t acquired = 0;                       // counter: blocks handed out
  int64_t overflowed = 0;  // counter: blocks that did not fit the region and came from the heap
};

class HostBufferPool {
 public:
  virtual ~HostBufferPool() = default;
  // A block of at least `bytes`, 256-byte aligned. RESOURCE_EXHAUSTED only when the heap itself
  // cannot supply it; a full region is not an error (the block comes from the heap, pageable).
  virtual absl::StatusOr<HostBlockRef> Acquire(size_t bytes) = 0;
  virtual HostBufferPoolStats Stats() const = 0;
};

// Every block from the heap (the CPU backend, tests).
std::unique_ptr<HostBufferPool> MakeHeapBufferPool();

// Blocks carved out of one caller-provided region (the CUDA backend's pinned memory, allocated once at
// start); requests the region cannot hold come from the heap and count as overflowed. `free_region`
// runs once, when the pool and every block from it are gone.
std::unique_ptr<HostBufferPool> MakeRegionBufferPool(std::byte* base, size_t bytes, MemoryKind memory,
                                                     absl::AnyInvocable<void()> free_region);

}  // namespace sage::server
