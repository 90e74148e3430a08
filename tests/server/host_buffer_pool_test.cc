#include "server/backend/host_buffer_pool.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <iterator>
#include <map>
#include <new>
#include <optional>
#include <random>
#include <string>
#include <thread>
#include <vector>

namespace sage::server {
namespace {

constexpr size_t kUnit = 256;

uintptr_t Addr(const std::byte* p) { return reinterpret_cast<uintptr_t>(p); }

// ---------------------------------------------------------------------------------------------
// ArenaAllocator

TEST(ArenaAllocator, CapacityRoundsDownAndAlignmentUpToPowerOfTwo) {
  ArenaAllocator a(1000, 100);  // alignment becomes 128, capacity 896 (7 units)
  EXPECT_EQ(a.capacity(), 896u);
  EXPECT_EQ(a.largest_free(), 896u);
  EXPECT_EQ(a.free_ranges(), 1u);
  EXPECT_EQ(a.Allocate(1), 0u);
  EXPECT_EQ(a.Allocate(1), 128u);
  EXPECT_EQ(a.used(), 256u);

  ArenaAllocator b(1000);  // default alignment 256
  EXPECT_EQ(b.capacity(), 768u);
  EXPECT_EQ(b.Allocate(768), 0u);
  EXPECT_EQ(b.Allocate(1), std::nullopt);
}

TEST(ArenaAllocator, ZeroCapacityHandsOutNothing) {
  ArenaAllocator a(255);
  EXPECT_EQ(a.capacity(), 0u);
  EXPECT_EQ(a.free_ranges(), 0u);
  EXPECT_EQ(a.largest_free(), 0u);
  EXPECT_EQ(a.Allocate(0), std::nullopt);
  EXPECT_EQ(a.Allocate(1), std::nullopt);
}

TEST(ArenaAllocator, SizesRoundUpAndZeroTakesOneUnit) {
  ArenaAllocator a(16 * kUnit);
  EXPECT_EQ(a.Allocate(0), 0u);
  EXPECT_EQ(a.used(), kUnit);
  EXPECT_EQ(a.Allocate(1), kUnit);
  EXPECT_EQ(a.used(), 2 * kUnit);
  EXPECT_EQ(a.Allocate(kUnit + 1), 2 * kUnit);  // two units
  EXPECT_EQ(a.used(), 4 * kUnit);
  EXPECT_EQ(a.Allocate(kUnit), 4 * kUnit);
  EXPECT_EQ(a.used(), 5 * kUnit);
  EXPECT_EQ(a.largest_free(), 11 * kUnit);
}

TEST(ArenaAllocator, EveryOffsetIsAligned) {
  for (size_t alignment : {size_t{1}, size_t{8}, size_t{64}, size_t{256}, size_t{4096}}) {
    ArenaAllocator a(1 << 20, alignment);
    std::mt19937 rng(7);
    std::uniform_int_distribution<size_t> size(0, 3 * alignment + 5);
    for (int i = 0; i < 100'000; ++i) {  // bounded: a broken allocator must fail, not hang
      auto offset = a.Allocate(size(rng));
      if (!offset) break;
      EXPECT_EQ(*offset % alignment, 0u) << "alignment " << alignment;
    }
    EXPECT_EQ(a.Allocate(a.capacity() - a.used() + 1), std::nullopt);
    EXPECT_EQ(a.used() % alignment, 0u);
  }
}

TEST(ArenaAllocator, FirstFitTakesTheLowestRangeThatFits) {
  ArenaAllocator a(10 * kUnit);
  const auto a0 = a.Allocate(1 * kUnit);  // [0,1)
  const auto b = a.Allocate(3 * kUnit);   // [1,4)
  const auto c = a.Allocate(1 * kUnit);   // [4,5)
  const auto d = a.Allocate(2 * kUnit);   // [5,7)
  const auto e = a.Allocate(3 * kUnit);   // [7,10)
  ASSERT_TRUE(a0 && b && c && d && e);
  EXPECT_EQ(*e, 7 * kUnit);
  EXPECT_EQ(a.used(), a.capacity());
  EXPECT_EQ(a.free_ranges(), 0u);
  EXPECT_EQ(a.Allocate(0), std::nullopt);

  a.Free(*b);  // free [1,4)
  a.Free(*d);  // free [5,7)
  EXPECT_EQ(a.free_ranges(), 2u);
  // Best fit would pick the exact 2-unit range at 5; first fit splits the lower one at 1.
  EXPECT_EQ(a.Allocate(2 * kUnit), 1 * kUnit);
  EXPECT_EQ(a.free_ranges(), 2u);  // [3,4) and [5,7)
  // The 1-unit remainder at 3 is too small; the exact fit at 5 is consumed whole.
  EXPECT_EQ(a.Allocate(2 * kUnit), 5 * kUnit);
  EXPECT_EQ(a.free_ranges(), 1u);
  EXPECT_EQ(a.largest_free(), kUnit);
  EXPECT_EQ(a.Allocate(kUnit + 1), std::nullopt);
  EXPECT_EQ(a.Allocate(kUnit), 3 * kUnit);
  EXPECT_EQ(a.used(), a.capacity());
  EXPECT_EQ(a.free_ranges(), 0u);
  EXPECT_EQ(a.largest_free(), 0u);
}

TEST(ArenaAllocator, NulloptWhenNothingFitsLeavesStateAlone) {
  ArenaAllocator a(4 * kUnit);
  EXPECT_EQ(a.Allocate(4 * kUnit + 1), std::nullopt);
  EXPECT_EQ(a.Allocate(SIZE_MAX), std::nullopt);
  EXPECT_EQ(a.Allocate(SIZE_MAX - 10), std::nullopt);
  EXPECT_EQ(a.used(), 0u);
  EXPECT_EQ(a.Allocate(3 * kUnit), 0u);
  EXPECT_EQ(a.Allocate(2 * kUnit), std::nullopt);
  EXPECT_EQ(a.used(), 3 * kUnit);
  EXPECT_EQ(a.free_ranges(), 1u);
  EXPECT_EQ(a.Allocate(kUnit), 3 * kUnit);
  EXPECT_EQ(a.Allocate(0), std::nullopt);
}

TEST(ArenaAllocator, FreeCoalescesWithBothNeighbours) {
  ArenaAllocator a(4 * kUnit);
  const size_t x = *a.Allocate(kUnit), y = *a.Allocate(kUnit), z = *a.Allocate(kUnit);
  // [x][y][z][free]
  a.Free(x);  // no free neighbour to the left, allocated y to the right
  EXPECT_EQ(a.free_ranges(), 2u);
  a.Free(z);  // merges with the free tail on the right
  EXPECT_EQ(a.free_ranges(), 2u);
  EXPECT_EQ(a.largest_free(), 2 * kUnit);
  a.Free(y);  // bridges both neighbours
  EXPECT_EQ(a.free_ranges(), 1u);
  EXPECT_EQ(a.largest_free(), a.capacity());
  EXPECT_EQ(a.used(), 0u);
  EXPECT_EQ(a.Allocate(a.capacity()), 0u);

  ArenaAllocator b(3 * kUnit);
  const size_t p = *b.Allocate(kUnit), q = *b.Allocate(kUnit), r = *b.Allocate(kUnit);
  b.Free(q);
  b.Free(p);  // merges with the free range on its right only
  EXPECT_EQ(b.free_ranges(), 1u);
  EXPECT_EQ(b.largest_free(), 2 * kUnit);
  b.Free(r);  // merges with the free range on its left only
  EXPECT_EQ(b.free_ranges(), 1u);
  EXPECT_EQ(b.largest_free(), b.capacity());
}

TEST(ArenaAllocator, FreeingEverythingInRandomOrderLeavesOneRange) {
  std::mt19937 rng(1234);
  for (int round = 0; round < 20; ++round) {
    ArenaAllocator a(64 * 1024);
    std::uniform_int_distribution<size_t> size(0, 2000);
    std::vector<size_t> offsets;
    for (auto offset = a.Allocate(size(rng)); offset && offsets.size() < 1000;
         offset = a.Allocate(size(rng))) {
      offsets.push_back(*offset);
    }
    // Fill the last holes one unit at a time (bounded: 0 bytes must still take a unit).
    for (auto offset = a.Allocate(0); offset && offsets.size() < 1000; offset = a.Allocate(0)) {
      offsets.push_back(*offset);
    }
    ASSERT_EQ(a.used(), a.capacity());
    std::shuffle(offsets.begin(), offsets.end(), rng);
    for (size_t offset : offsets) a.Free(offset);
    EXPECT_EQ(a.used(), 0u);
    EXPECT_EQ(a.free_ranges(), 1u);
    EXPECT_EQ(a.largest_free(), a.capacity());
    EXPECT_EQ(a.Allocate(a.capacity()), 0u);
  }
}

TEST(ArenaAllocator, FreeingAnUnknownOffsetIsHarmless) {
  ArenaAllocator a(8 * kUnit);
  const size_t x = *a.Allocate(kUnit);
  const size_t y = *a.Allocate(2 * kUnit);
  a.Free(x + 1);          // inside a live block
  a.Free(y + kUnit);      // inside a live block, on an aligned offset
  a.Free(3 * kUnit);      // the start of the free range
  a.Free(100 * kUnit);    // past the end
  a.Free(SIZE_MAX);
  EXPECT_EQ(a.used(), 3 * kUnit);
  EXPECT_EQ(a.free_ranges(), 1u);
  EXPECT_EQ(a.largest_free(), 5 * kUnit);

  a.Free(x);
  a.Free(x);  // double free: already gone, ignored
  EXPECT_EQ(a.used(), 2 * kUnit);
  EXPECT_EQ(a.free_ranges(), 2u);
  // y is still live: nothing handed out may overlap [1,3).
  EXPECT_EQ(a.Allocate(2 * kUnit), 3 * kUnit);
  EXPECT_EQ(a.Allocate(kUnit), 0u);
  EXPECT_EQ(a.Allocate(3 * kUnit), 5 * kUnit);
  EXPECT_EQ(a.Allocate(0), std::nullopt);
  EXPECT_EQ(a.used(), a.capacity());
}

// Against a model: the live blocks by offset. Since first fit is deterministic, the model predicts the
// exact offset of every allocation, whether it fails, and the free-range shape.
TEST(ArenaAllocator, RandomizedAgainstModel) {
  constexpr size_t kCapacity = 64 * 1024;
  ArenaAllocator a(kCapacity);
  std::map<size_t, size_t> live;  // offset -> rounded size
  std::mt19937 rng(20240531);
  std::uniform_int_distribution<size_t> size(0, 5000);

  // The model's free ranges: (offset, length), nonempty, in order.
  auto gaps = [&] {
    std::vector<std::pair<size_t, size_t>> g;
    size_t cursor = 0;
    for (const auto& [offset, length] : live) {
      if (offset > cursor) g.emplace_back(cursor, offset - cursor);
      cursor = offset + length;
    }
    if (kCapacity > cursor) g.emplace_back(cursor, kCapacity - cursor);
    return g;
  };

  int allocs = 0, fails = 0, frees = 0;
  for (int op = 0; op < 5000; ++op) {
    const bool allocate = live.empty() || rng() % 100 < 55;
    if (allocate) {
      const size_t bytes = size(rng);
      const size_t rounded = std::max<size_t>((bytes + kUnit - 1) / kUnit, 1) * kUnit;
      std::optional<size_t> expected;
      for (const auto& [offset, length] : gaps()) {
        if (length >= rounded) {
          expected = offset;
          break;
        }
      }
      const auto got = a.Allocate(bytes);
      ASSERT_EQ(got, expected) << "op " << op << " bytes " << bytes;
      if (!got) {
        ++fails;
        continue;
      }
      ++allocs;
      ASSERT_EQ(*got % kUnit, 0u);
      ASSERT_LE(*got + rounded, kCapacity);
      // No overlap with the live neighbours on either side.
      auto next = live.lower_bound(*got);
      if (next != live.end()) {
        ASSERT_LE(*got + rounded, next->first);
      }
      if (next != live.begin()) {
        auto prev = std::prev(next);
        ASSERT_LE(prev->first + prev->second, *got);
      }
      live.emplace(*got, rounded);
    } else {
      auto it = live.begin();
      std::advance(it, rng() % live.size());
      a.Free(it->first);
      live.erase(it);
      ++frees;
    }
    size_t used = 0;
    for (const auto& [offset, length] : live) used += length;
    ASSERT_EQ(a.used(), used) << "op " << op;
    const auto g = gaps();
    ASSERT_EQ(a.free_ranges(), g.size()) << "op " << op;  // coalesced: one range per gap
    size_t largest = 0;
    for (const auto& [offset, length] : g) largest = std::max(largest, length);
    ASSERT_EQ(a.largest_free(), largest) << "op " << op;
  }
  // The mix must have exercised every path.
  EXPECT_GT(allocs, 1000);
  EXPECT_GT(fails, 50);
  EXPECT_GT(frees, 1000);
}

// ---------------------------------------------------------------------------------------------
// Heap pool

TEST(HeapBufferPool, BlocksAreAlignedSizedAndWritable) {
  auto pool = MakeHeapBufferPool();
  std::vector<HostBlockRef> blocks;
  const std::vector<size_t> sizes = {0, 1, 255, 256, 257, 4096, 100'000, size_t{1} << 20};
  for (size_t bytes : sizes) {
    auto block = pool->Acquire(bytes);
    ASSERT_TRUE(block.ok()) << block.status();
    const HostBlockRef& b = *block;
    ASSERT_NE(b->data(), nullptr);
    EXPECT_EQ(Addr(b->data()) % 256, 0u) << bytes;
    EXPECT_GE(b->size(), bytes);
    EXPECT_EQ(b->memory(), MemoryKind::kPageable);
    std::memset(b->data(), static_cast<int>(blocks.size() + 1), b->size());
    blocks.push_back(b);
  }
  // Every block kept its own contents: no two share memory.
  for (size_t i = 0; i < blocks.size(); ++i) {
    for (size_t k = 0; k < blocks[i]->size(); ++k) {
      ASSERT_EQ(blocks[i]->data()[k], static_cast<std::byte>(i + 1)) << "block " << i << " byte " << k;
    }
  }
}

TEST(HeapBufferPool, StatsCountAcquiredOnly) {
  auto pool = MakeHeapBufferPool();
  HostBufferPoolStats s = pool->Stats();
  EXPECT_EQ(s.memory, MemoryKind::kPageable);
  EXPECT_EQ(s.acquired, 0);
  {
    std::vector<HostBlockRef> blocks;
    for (int i = 0; i < 5; ++i) blocks.push_back(*pool->Acquire(1000));
    s = pool->Stats();
    EXPECT_EQ(s.acquired, 5);
    EXPECT_EQ(s.in_use_bytes, 0);
    EXPECT_EQ(s.capacity_bytes, 0);
    EXPECT_EQ(s.overflowed, 0);
  }
  (void)pool->Acquire(1);
  s = pool->Stats();
  EXPECT_EQ(s.acquired, 6);  // a counter: dropping blocks does not lower it
  EXPECT_EQ(s.memory, MemoryKind::kPageable);
  EXPECT_EQ(s.in_use_bytes, 0);
}

TEST(HeapBufferPool, ImpossibleSizeIsResourceExhausted) {
  auto pool = MakeHeapBufferPool();
  for (size_t bytes : {SIZE_MAX, SIZE_MAX - 100, size_t{1} << 62}) {
    auto block = pool->Acquire(bytes);
    ASSERT_FALSE(block.ok()) << bytes;
    EXPECT_EQ(block.status().code(), absl::StatusCode::kResourceExhausted);
    EXPECT_NE(block.status().message().find(std::to_string(bytes)), std::string::npos)
        << block.status();
  }
  EXPECT_EQ(pool->Stats().acquired, 0);
}

// ---------------------------------------------------------------------------------------------
// Region pool

// A heap buffer standing in for the pinned region, with the free_region callback counted.
struct Region {
  explicit Region(size_t bytes, size_t misalign = 0)
      : storage(static_cast<std::byte*>(::operator new(bytes + misalign, std::align_val_t{256}))),
        base(storage + misalign),
        size(bytes) {}
  ~Region() {
    if (storage != nullptr) ::operator delete(storage, std::align_val_t{256});
  }
  Region(const Region&) = delete;
  Region& operator=(const Region&) = delete;

  bool Contains(const HostBlockRef& b) const {
    return Addr(b->data()) >= Addr(base) && Addr(b->data()) + b->size() <= Addr(base) + size;
  }
  std::unique_ptr<HostBufferPool> MakePool(MemoryKind memory = MemoryKind::kPinned) {
    return MakeRegionBufferPool(base, size, memory, [this] { ++freed; });
  }

  std::byte* storage;
  std::byte* base;
  size_t size;
  int freed = 0;
};

TEST(RegionBufferPool, BlocksLieInsideTheRegionWithThePoolsMemory) {
  Region region(64 * 1024);
  auto pool = region.MakePool();
  HostBufferPoolStats s = pool->Stats();
  EXPECT_EQ(s.memory, MemoryKind::kPinned);
  EXPECT_EQ(s.capacity_bytes, 64 * 1024);
  EXPECT_EQ(s.in_use_bytes, 0);

  std::vector<HostBlockRef> blocks;
  int64_t expected_in_use = 0;
  for (size_t bytes : {size_t{0}, size_t{1}, size_t{300}, size_t{256}, size_t{5000}, size_t{17}}) {
    auto block = pool->Acquire(bytes);
    ASSERT_TRUE(block.ok()) << block.status();
    const HostBlockRef& b = *block;
    EXPECT_TRUE(region.Contains(b)) << bytes;
    EXPECT_EQ(b->memory(), MemoryKind::kPinned);
    EXPECT_EQ(Addr(b->data()) % 256, 0u);
    EXPECT_GE(b->size(), bytes);
    expected_in_use += static_cast<int64_t>(std::max<size_t>((bytes + 255) / 256, 1) * 256);
    std::memset(b->data(), static_cast<int>(blocks.size() + 1), b->size());
    blocks.push_back(b);
  }
  for (size_t i = 0; i < blocks.size(); ++i) {
    for (size_t k = 0; k < blocks[i]->size(); ++k) {
      ASSERT_EQ(blocks[i]->data()[k], static_cast<std::byte>(i + 1)) << "block " << i << " byte " << k;
    }
  }
  s = pool->Stats();
  EXPECT_EQ(s.in_use_bytes, expected_in_use);
  EXPECT_EQ(s.acquired, 6);
  EXPECT_EQ(s.overflowed, 0);

  auto pageable = MakeRegionBufferPool(region.base, region.size, MemoryKind::kPageable, nullptr);
  EXPECT_EQ(pageable->Stats().memory, MemoryKind::kPageable);
  EXPECT_EQ((*pageable->Acquire(10))->memory(), MemoryKind::kPageable);
}

TEST(RegionBufferPool, UnalignedBaseUsesItsAlignedPart) {
  Region region(8 * 1024 + 100, /*misalign=*/1);  // aligned part: 255 bytes in, 7 full units + 101
  auto pool = region.MakePool();
  EXPECT_EQ(pool->Stats().capacity_bytes, 32 * 256 - 256);  // (8292 - 255) rounded down = 7936
  auto block = pool->Acquire(7936);
  ASSERT_TRUE(block.ok());
  EXPECT_EQ((*block)->data(), region.storage + 256);
  EXPECT_EQ((*block)->memory(), MemoryKind::kPinned);
  EXPECT_TRUE(region.Contains(*block));
  EXPECT_EQ(pool->Stats().overflowed, 0);
  EXPECT_EQ((*pool->Acquire(1))->memory(), MemoryKind::kPageable);  // the region is full
  EXPECT_EQ(pool->Stats().overflowed, 1);
}

TEST(RegionBufferPool, WhatDoesNotFitComesFromTheHeap) {
  Region region(4 * 1024);
  auto pool = region.MakePool();

  auto big = pool->Acquire(8 * 1024);  // larger than the whole region
  ASSERT_TRUE(big.ok());
  EXPECT_EQ((*big)->memory(), MemoryKind::kPageable);
  EXPECT_FALSE(region.Contains(*big));
  EXPECT_EQ(Addr((*big)->data()) % 256, 0u);
  EXPECT_GE((*big)->size(), 8u * 1024);
  std::memset((*big)->data(), 0x5a, (*big)->size());
  HostBufferPoolStats s = pool->Stats();
  EXPECT_EQ(s.acquired, 1);
  EXPECT_EQ(s.overflowed, 1);
  EXPECT_EQ(s.in_use_bytes, 0);  // heap blocks are not the region's

  std::vector<HostBlockRef> small;
  for (int i = 0; i < 16; ++i) {
    small.push_back(*pool->Acquire(200));
    EXPECT_TRUE(region.Contains(small.back()));
    EXPECT_EQ(small.back()->memory(), MemoryKind::kPinned);
  }
  EXPECT_EQ(pool->Stats().in_use_bytes, 4 * 1024);
  auto spill = pool->Acquire(1);  // the region is full now
  ASSERT_TRUE(spill.ok());
  EXPECT_EQ((*spill)->memory(), MemoryKind::kPageable);
  EXPECT_FALSE(region.Contains(*spill));
  s = pool->Stats();
  EXPECT_EQ(s.acquired, 18);
  EXPECT_EQ(s.overflowed, 2);

  small.pop_back();  // a unit comes back; the next small block fits again
  auto fits = pool->Acquire(1);
  ASSERT_TRUE(fits.ok());
  EXPECT_TRUE(region.Contains(*fits));
  EXPECT_EQ(pool->Stats().overflowed, 2);

  auto impossible = pool->Acquire(SIZE_MAX);
  ASSERT_FALSE(impossible.ok());
  EXPECT_EQ(impossible.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(pool->Stats().acquired, 19);
  EXPECT_EQ(pool->Stats().overflowed, 2);
}

TEST(RegionBufferPool, InUseReturnsToZeroAndTheRegionIsWholeAgain) {
  Region region(64 * 1024);
  auto pool = region.MakePool();
  {
    std::vector<HostBlockRef> blocks;
    std::mt19937 rng(99);
    for (int i = 0; i < 1000 && pool->Stats().overflowed == 0; ++i) {
      blocks.push_back(*pool->Acquire(rng() % 3000));
    }
    ASSERT_EQ(pool->Stats().overflowed, 1);  // filled the region up
    EXPECT_GT(pool->Stats().in_use_bytes, 60 * 1024);
    std::shuffle(blocks.begin(), blocks.end(), rng);
  }
  HostBufferPoolStats s = pool->Stats();
  EXPECT_EQ(s.in_use_bytes, 0);
  EXPECT_GT(s.acquired, 20);  // counters survive
  // Freed blocks coalesced: the whole region is one block again.
  auto whole = pool->Acquire(64 * 1024);
  ASSERT_TRUE(whole.ok());
  EXPECT_EQ((*whole)->data(), region.base);
  EXPECT_EQ((*whole)->memory(), MemoryKind::kPinned);
  EXPECT_EQ(pool->Stats().in_use_bytes, 64 * 1024);
  EXPECT_EQ(region.freed, 0);
}

TEST(RegionBufferPool, RegionIsFreedOnceAfterThePoolAndTheLastBlock) {
  Region region(16 * 1024);
  auto pool = region.MakePool();
  HostBlockRef first = *pool->Acquire(1000);
  HostBlockRef second = *pool->Acquire(1000);
  HostBlockRef overflow = *pool->Acquire(1 << 20);
  ASSERT_EQ(first->memory(), MemoryKind::kPinned);
  ASSERT_EQ(overflow->memory(), MemoryKind::kPageable);

  pool.reset();
  EXPECT_EQ(region.freed, 0);  // blocks still point into the region
  std::memset(first->data(), 0x11, first->size());
  std::memset(second->data(), 0x22, second->size());
  first.reset();
  EXPECT_EQ(region.freed, 0);
  EXPECT_EQ(second->data()[999], std::byte{0x22});
  second.reset();
  EXPECT_EQ(region.freed, 1);  // the last region block went
  overflow.reset();             // a heap block does not hold the region
  EXPECT_EQ(region.freed, 1);
}

TEST(RegionBufferPool, RegionIsFreedWithThePoolWhenNoBlockIsLeft) {
  Region region(16 * 1024);
  {
    auto pool = region.MakePool();
    {
      HostBlockRef b = *pool->Acquire(100);
      HostBlockRef c = *pool->Acquire(1 << 20);  // overflow
    }
    EXPECT_EQ(region.freed, 0);  // blocks gone, pool still alive
  }
  EXPECT_EQ(region.freed, 1);
}

TEST(RegionBufferPool, ConcurrentBlocksNeverOverlap) {
  constexpr int kThreads = 8;
  constexpr int kIterations = 3000;
  constexpr size_t kHeld = 4;  // each thread holds a few blocks at once
  Region region(1 << 20);
  auto pool = region.MakePool();

  std::vector<std::thread> threads;
  std::vector<int> failures(kThreads, 0);
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      std::mt19937 rng(1000 + t);
      std::uniform_int_distribution<size_t> size(0, 48 * 1024);  // some overflow a busy region
      struct Held {
        HostBlockRef block;
        int slot;
        std::byte tag;
      };
      std::vector<Held> held;
      auto verify_and_drop = [&](size_t i) {
        const Held& h = held[i];
        const std::byte* p = h.block->data();
        for (size_t k = 0; k < h.block->size(); ++k) {
          if (p[k] != h.tag) {
            ++failures[t];
            break;
          }
        }
        held.erase(held.begin() + static_cast<std::ptrdiff_t>(i));
      };
      for (int i = 0; i < kIterations; ++i) {
        // Every 64th request is larger than the region: overflow happens however the threads run.
        auto block = pool->Acquire(i % 64 == 63 ? (1 << 20) + 1 : size(rng));
        if (!block.ok()) {
          ++failures[t];
          continue;
        }
        const HostBlockRef& b = *block;
        const bool in_region = region.Contains(b);
        if (Addr(b->data()) % 256 != 0 ||
            (b->memory() == MemoryKind::kPinned) != in_region) {
          ++failures[t];
        }
        // Tags are unique among every live block of every thread: 32 slots per thread, at most
        // kHeld + 1 of them live.
        int slot = 0;
        while (std::any_of(held.begin(), held.end(), [&](const Held& h) { return h.slot == slot; })) {
          ++slot;
        }
        const auto tag = static_cast<std::byte>(t * 32 + slot);
        std::memset(b->data(), static_cast<int>(tag), b->size());
        held.push_back({b, slot, tag});
        if (held.size() > kHeld) verify_and_drop(rng() % held.size());
      }
      while (!held.empty()) verify_and_drop(held.size() - 1);
    });
  }
  for (auto& th : threads) th.join();
  for (int t = 0; t < kThreads; ++t) EXPECT_EQ(failures[t], 0) << "thread " << t;

  HostBufferPoolStats s = pool->Stats();
  EXPECT_EQ(s.acquired, int64_t{kThreads} * kIterations);
  EXPECT_EQ(s.in_use_bytes, 0);
  EXPECT_GE(s.overflowed, kThreads * (kIterations / 64));
  EXPECT_LT(s.overflowed, s.acquired * 3 / 4);  // the region did serve much of the traffic
  auto whole = pool->Acquire(1 << 20);
  ASSERT_TRUE(whole.ok());
  EXPECT_EQ((*whole)->data(), region.base);
  whole->reset();
  EXPECT_EQ(region.freed, 0);
  pool.reset();
  EXPECT_EQ(region.freed, 1);
}

}  // namespace
}  // namespace sage::server
