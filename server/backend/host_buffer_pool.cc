#include "server/backend/host_buffer_pool.h"

#include <algorithm>
#include <bit>
#include <cstdint>
#include <iterator>
#include <new>
#include <utility>

#include "absl/strings/str_cat.h"

namespace sage::server {
namespace {

constexpr size_t kBlockAlignment = 256;

// Wraps a leased range in a HostBlock. make_shared moves `release` into the block only once its
// allocation succeeded, so on bad_alloc the range is still ours to give back here.
absl::StatusOr<HostBlockRef> MakeBlock(std::byte* data, size_t size, MemoryKind memory,
                                       absl::AnyInvocable<void()> release) {
  try {
    return std::make_shared<HostBlock>(data, size, memory, std::move(release));
  } catch (const std::bad_alloc&) {
    release();
    return absl::ResourceExhaustedError(
        absl::StrCat("host buffer pool: cannot allocate a block header for ", size, " bytes"));
  }
}

absl::StatusOr<HostBlockRef> HeapBlock(size_t bytes) {
  constexpr std::align_val_t kAlign{kBlockAlignment};
  // The aligned operator new rounds the size up to the alignment, so a size near SIZE_MAX would wrap
  // to a tiny allocation; refuse it. Min 1 byte: data() is never null.
  void* p = bytes <= SIZE_MAX - kBlockAlignment
                ? ::operator new(std::max<size_t>(bytes, 1), kAlign, std::nothrow)
                : nullptr;
  if (p == nullptr) {
    return absl::ResourceExhaustedError(
        absl::StrCat("host buffer pool: cannot allocate ", bytes, " bytes from the heap"));
  }
  return MakeBlock(static_cast<std::byte*>(p), bytes, MemoryKind::kPageable,
                   [p] { ::operator delete(p, kAlign); });
}

class HeapBufferPool final : public HostBufferPool {
 public:
  absl::StatusOr<HostBlockRef> Acquire(size_t bytes) override {
    auto block = HeapBlock(bytes);
    if (block.ok()) {
      absl::MutexLock lock(&mu_);
      ++acquired_;
    }
    return block;
  }

  HostBufferPoolStats Stats() const override {
    absl::MutexLock lock(&mu_);
    return {.memory = MemoryKind::kPageable, .acquired = acquired_};
  }

 private:
  mutable absl::Mutex mu_;
  int64_t acquired_ ABSL_GUARDED_BY(mu_) = 0;
};

// Shared by the pool and every block leased from it, so the region outlives whichever goes last.
struct RegionState {
  RegionState(std::byte* aligned_base, size_t usable, MemoryKind memory_kind,
              absl::AnyInvocable<void()> free_fn)
      : base(aligned_base),
        memory(memory_kind),
        free_region(std::move(free_fn)),
        arena(usable, kBlockAlignment) {}
  ~RegionState() {
    if (free_region) free_region();
  }
  RegionState(const RegionState&) = delete;
  RegionState& operator=(const RegionState&) = delete;

  std::byte* const base;
  const MemoryKind memory;
  absl::AnyInvocable<void()> free_region;
  mutable absl::Mutex mu;
  ArenaAllocator arena ABSL_GUARDED_BY(mu);
  int64_t acquired ABSL_GUARDED_BY(mu) = 0;
  int64_t overflowed ABSL_GUARDED_BY(mu) = 0;
};

class RegionBufferPool final : public HostBufferPool {
 public:
  explicit RegionBufferPool(std::shared_ptr<RegionState> state) : state_(std::move(state)) {}

  absl::StatusOr<HostBlockRef> Acquire(size_t bytes) override {
    std::optional<size_t> offset;
    {
      absl::MutexLock lock(&state_->mu);
      offset = state_->arena.Allocate(bytes);
    }
    if (!offset) {
      // A full region is not an error: the request is served from the heap, just not pinned.
      auto block = HeapBlock(bytes);
      if (block.ok()) {
        absl::MutexLock lock(&state_->mu);
        ++state_->acquired;
        ++state_->overflowed;
      }
      return block;
    }
    auto block = MakeBlock(state_->base + *offset, bytes, state_->memory,
                           [s = state_, off = *offset] {
                             absl::MutexLock lock(&s->mu);
                             s->arena.Free(off);
                           });
    if (block.ok()) {
      absl::MutexLock lock(&state_->mu);
      ++state_->acquired;
    }
    return block;
  }

  HostBufferPoolStats Stats() const override {
    absl::MutexLock lock(&state_->mu);
    return {.memory = state_->memory,
            .capacity_bytes = static_cast<int64_t>(state_->arena.capacity()),
            .in_use_bytes = static_cast<int64_t>(state_->arena.used()),
            .acquired = state_->acquired,
            .overflowed = state_->overflowed};
  }

 private:
  std::shared_ptr<RegionState> state_;
};

}  // namespace

ArenaAllocator::ArenaAllocator(size_t capacity, size_t alignment)
    : alignment_(std::bit_ceil(std::max<size_t>(alignment, 1))) {
  capacity_ = capacity - capacity % alignment_;  // a partial last unit could never be handed out
  if (capacity_ > 0) free_.emplace(0, capacity_);
}

std::optional<size_t> ArenaAllocator::Allocate(size_t bytes) {
  if (bytes > capacity_) return std::nullopt;  // also keeps the rounding below from overflowing
  const size_t rounded = std::max<size_t>((bytes + alignment_ - 1) / alignment_, 1) * alignment_;
  for (auto it = free_.begin(); it != free_.end(); ++it) {
    auto [offset, length] = *it;
    if (length < rounded) continue;
    auto hint = free_.erase(it);
    if (length > rounded) free_.emplace_hint(hint, offset + rounded, length - rounded);
    allocated_.emplace(offset, rounded);
    used_ += rounded;
    return offset;
  }
  return std::nullopt;
}

void ArenaAllocator::Free(size_t offset) {
  auto found = allocated_.find(offset);
  if (found == allocated_.end()) return;  // not ours (or already freed): leave the state intact
  size_t length = found->second;
  allocated_.erase(found);
  used_ -= length;

  // Merge with the free neighbours so free_ stays disjoint and never adjacent.
  auto next = free_.lower_bound(offset);
  if (next != free_.end() && offset + length == next->first) {
    length += next->second;
    next = free_.erase(next);
  }
  if (next != free_.begin()) {
    auto prev = std::prev(next);
    if (prev->first + prev->second == offset) {
      prev->second += length;
      return;
    }
  }
  free_.emplace_hint(next, offset, length);
}

size_t ArenaAllocator::largest_free() const {
  size_t largest = 0;
  for (const auto& [offset, length] : free_) largest = std::max(largest, length);
  return largest;
}

std::unique_ptr<HostBufferPool> MakeHeapBufferPool() { return std::make_unique<HeapBufferPool>(); }

std::unique_ptr<HostBufferPool> MakeRegionBufferPool(std::byte* base, size_t bytes, MemoryKind memory,
                                                     absl::AnyInvocable<void()> free_region) {
  // Only the 256-aligned part of the region is usable.
  const size_t skip = (kBlockAlignment - reinterpret_cast<uintptr_t>(base) % kBlockAlignment) %
                      kBlockAlignment;
  const size_t usable = bytes > skip ? bytes - skip : 0;
  return std::make_unique<RegionBufferPool>(std::make_shared<RegionState>(
      usable > 0 ? base + skip : base, usable, memory, std::move(free_region)));
}

}  // namespace sage::server
