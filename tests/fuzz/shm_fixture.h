// A POSIX shared-memory object made at start for the shared-memory fuzz targets, registered in a
// SharedMemoryRegistry as a few small regions of two owners. The object is unlinked at once (the
// registry's mappings keep it), so nothing is left in /dev/shm.
#pragma once

#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cstdint>
#include <iterator>
#include <memory>
#include <string>

#include "absl/strings/str_cat.h"
#include "server/shared_memory/shared_memory_registry.h"
#include "tests/fuzz/fuzz_check.h"

namespace sage::fuzz {

inline constexpr size_t kShmObjectBytes = 3 * 4096;

// (owner, name, offset in the object, bytes)
struct FixtureRegion {
  const char* owner;
  const char* name;
  uint64_t offset;
  uint64_t bytes;
};
// "fuzz" owns r0 and r1 (r1 not page-aligned); "other" owns its own r0 and r2.
inline constexpr FixtureRegion kFixtureRegions[] = {
    {"fuzz", "r0", 0, 4096},
    {"fuzz", "r1", 100, 3000},
    {"other", "r0", 4096, 4096},
    {"other", "r2", 8192, 4096},
};

// Made once per process; never destroyed (the fuzzer exits without running destructors anyway).
inline server::SharedMemoryRegistry& FixtureRegistry() {
  static server::SharedMemoryRegistry* registry = [] {
    server::SharedMemoryOptions options;
    options.policy = server::SharedMemoryPolicy::kAllow;
    auto* r = new server::SharedMemoryRegistry(options, /*backend=*/nullptr);
    // One object per region: the registry refuses a key another identity already holds.
    for (size_t i = 0; i < std::size(kFixtureRegions); ++i) {
      const FixtureRegion& region = kFixtureRegions[i];
      const std::string key = absl::StrCat("/sageserve-fuzz-", ::getpid(), "-", i);
      const int fd = ::shm_open(key.c_str(), O_RDWR | O_CREAT | O_EXCL, 0600);
      FUZZ_CHECK(fd >= 0, "shm_open " + key);
      FUZZ_CHECK(::ftruncate(fd, kShmObjectBytes) == 0, "ftruncate");
      void* map = ::mmap(nullptr, kShmObjectBytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
      FUZZ_CHECK(map != MAP_FAILED, "mmap");
      auto* bytes = static_cast<uint8_t*>(map);
      for (size_t b = 0; b < kShmObjectBytes; ++b) bytes[b] = static_cast<uint8_t>(b * 131 + 7);  // finite fp16/bf16 mostly
      ::munmap(map, kShmObjectBytes);
      ::close(fd);
      const absl::Status s = r->RegisterSystem({region.owner, false}, region.name, key, region.offset, region.bytes);
      FUZZ_CHECK(s.ok(), s.ToString());
      ::shm_unlink(key.c_str());
    }
    return r;
  }();
  return *registry;
}

}  // namespace sage::fuzz
