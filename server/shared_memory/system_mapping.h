// A POSIX shared-memory object (shm_open) mapped into the server: the host side of a client's
// system shared-memory region.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/statusor.h"

namespace sage::server {

class SystemMapping {
 public:
  // Maps [offset, offset + bytes) of the object named `key` read-write. INVALID_ARGUMENT for a
  // malformed key, a zero size or a range outside the object; NOT_FOUND when no such object exists;
  // PERMISSION_DENIED when the server may not open it.
  static absl::StatusOr<std::unique_ptr<SystemMapping>> Map(const std::string& key, uint64_t offset, uint64_t bytes);
  ~SystemMapping();
  SystemMapping(const SystemMapping&) = delete;
  SystemMapping& operator=(const SystemMapping&) = delete;

  std::byte* data() const { return data_; }
  size_t size() const { return size_; }
  // OK while the object still covers the mapped range. A client that shrinks the object under a
  // live mapping would make the server's next access fault; requests check this first.
  absl::Status CheckStillCovered() const;

 private:
  SystemMapping(int fd, void* base, size_t mapped, std::byte* data, size_t size, uint64_t end)
      : fd_(fd), base_(base), mapped_(mapped), data_(data), size_(size), end_(end) {}

  int fd_;          // kept open so the object's size can be checked while mapped
  void* base_;      // page-aligned mmap result
  size_t mapped_;
  std::byte* data_; // base_ + (offset % page size)
  size_t size_;
  uint64_t end_;    // offset + bytes within the object
};

}  // namespace sage::server
