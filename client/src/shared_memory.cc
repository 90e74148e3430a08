#include "sageserve/client/shared_memory.h"

#include <fcntl.h>
#include <limits.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdint>
#include <limits>
#include <random>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace sageserve {
namespace {

// POSIX leaves keys with other slashes implementation-defined; Linux rejects them. NAME_MAX
// bounds the file name under /dev/shm (the key without its '/').
absl::Status CheckKey(const std::string& key) {
  if (key.size() < 2 || key.front() != '/' || key.find('/', 1) != std::string::npos ||
      key.find('\0') != std::string::npos || key.size() - 1 > NAME_MAX) {
    return absl::InvalidArgumentError(absl::StrCat(
        "shared-memory key '", key, "' must be '/' then 1 to ", NAME_MAX, " characters without '/' or NUL"));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::unique_ptr<SystemSharedMemory>> SystemSharedMemory::Create(std::string key, size_t bytes) {
  if (absl::Status st = CheckKey(key); !st.ok()) return st;
  if (bytes == 0) return absl::InvalidArgumentError("shared-memory size must be > 0 bytes");
  if (bytes > static_cast<size_t>(std::numeric_limits<off_t>::max())) {
    return absl::InvalidArgumentError(absl::StrCat("shared-memory size ", bytes, " does not fit in off_t"));
  }
  // O_EXCL: never adopt (and later unlink) an object that someone else created.
  const int fd = shm_open(key.c_str(), O_CREAT | O_EXCL | O_RDWR, 0600);
  if (fd < 0) return absl::ErrnoToStatus(errno, absl::StrCat("shm_open ", key));
  auto fail = [&](const char* what) {
    const int err = errno;
    close(fd);
    shm_unlink(key.c_str());
    return absl::ErrnoToStatus(err, absl::StrCat(what, " ", key, " (", bytes, " bytes)"));
  };
  if (ftruncate(fd, static_cast<off_t>(bytes)) != 0) return fail("ftruncate");
  void* p = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  if (p == MAP_FAILED) return fail("mmap");
  close(fd);  // The mapping keeps the object alive; the descriptor is not needed again.
  return std::unique_ptr<SystemSharedMemory>(
      new SystemSharedMemory(std::move(key), static_cast<std::byte*>(p), bytes));
}

std::string SystemSharedMemory::UniqueKey(std::string_view prefix) {
  static std::atomic<uint64_t> counter{0};
  std::string safe(prefix);
  for (char& c : safe) {
    if (c == '/' || c == '\0') c = '_';
  }
  // 64 random bits: another client of the server cannot guess the name and register the object
  // as its own region (the server refuses a key another identity holds, but only once held).
  static const uint64_t nonce = [] {
    std::random_device device;
    return (uint64_t{device()} << 32) ^ device();
  }();
  return absl::StrCat("/sage-", safe, "-", getpid(), "-", absl::Hex(nonce, absl::kZeroPad16), "-",
                      counter.fetch_add(1, std::memory_order_relaxed));
}

SystemSharedMemory::~SystemSharedMemory() {
  munmap(data_, size_);
  shm_unlink(key_.c_str());
}

v1::SharedMemoryRef SharedMemoryRange(std::string region, uint64_t offset, uint64_t byte_size) {
  v1::SharedMemoryRef ref;
  ref.set_region(std::move(region));
  ref.set_offset(offset);
  ref.set_byte_size(byte_size);
  return ref;
}

}  // namespace sageserve
