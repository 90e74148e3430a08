// SystemSharedMemory: the object it creates is a real POSIX shared-memory object that another
// mapping of the same key sees, keys are exclusive and checked, and nothing is left behind.
#include "sageserve/client/shared_memory.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <string>
#include <vector>

#include "gtest/gtest.h"

namespace {

using sageserve::SystemSharedMemory;

constexpr size_t kBytes = 3 * 4096 + 123;  // Not a whole number of pages.

// An independent read/write mapping of `key`, as the server would make it.
class Mapping {
 public:
  explicit Mapping(const std::string& key) {
    fd_ = shm_open(key.c_str(), O_RDWR, 0);
    if (fd_ < 0) return;
    struct stat st {};
    if (fstat(fd_, &st) != 0) return;
    size_ = static_cast<size_t>(st.st_size);
    void* p = mmap(nullptr, size_, PROT_READ | PROT_WRITE, MAP_SHARED, fd_, 0);
    if (p != MAP_FAILED) data_ = static_cast<unsigned char*>(p);
  }
  ~Mapping() {
    if (data_ != nullptr) munmap(data_, size_);
    if (fd_ >= 0) close(fd_);
  }
  unsigned char* data() const { return data_; }
  size_t size() const { return size_; }

 private:
  int fd_ = -1;
  size_t size_ = 0;
  unsigned char* data_ = nullptr;
};

TEST(SystemSharedMemory, WritesAreVisibleThroughAnIndependentMapping) {
  const std::string key = SystemSharedMemory::UniqueKey("test");
  auto shm = SystemSharedMemory::Create(key, kBytes);
  ASSERT_TRUE(shm.ok()) << shm.status();
  EXPECT_EQ((*shm)->key(), key);
  EXPECT_EQ((*shm)->size(), kBytes);
  ASSERT_NE((*shm)->data(), nullptr);
  for (size_t i = 0; i < kBytes; ++i) ASSERT_EQ((*shm)->data()[i], std::byte{0}) << i;  // Starts zeroed.
  for (size_t i = 0; i < kBytes; ++i) (*shm)->data()[i] = static_cast<std::byte>(i * 7 + 1);

  Mapping other(key);
  ASSERT_NE(other.data(), nullptr) << std::strerror(errno);
  ASSERT_EQ(other.size(), kBytes);
  for (size_t i = 0; i < kBytes; ++i) ASSERT_EQ(other.data()[i], static_cast<unsigned char>(i * 7 + 1)) << i;
  // And back: the server writes outputs into the client's memory.
  other.data()[kBytes - 1] = 0xAB;
  EXPECT_EQ((*shm)->data()[kBytes - 1], std::byte{0xAB});
}

TEST(SystemSharedMemory, ModeIsOwnerOnly) {
  auto shm = SystemSharedMemory::Create(SystemSharedMemory::UniqueKey("mode"), kBytes);
  ASSERT_TRUE(shm.ok()) << shm.status();
  const int fd = shm_open((*shm)->key().c_str(), O_RDONLY, 0);
  ASSERT_GE(fd, 0);
  struct stat st {};
  ASSERT_EQ(fstat(fd, &st), 0);
  close(fd);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
}

TEST(SystemSharedMemory, SecondCreateWithTheSameKeyIsAlreadyExists) {
  const std::string key = SystemSharedMemory::UniqueKey("twice");
  auto first = SystemSharedMemory::Create(key, kBytes);
  ASSERT_TRUE(first.ok()) << first.status();
  auto second = SystemSharedMemory::Create(key, kBytes);
  EXPECT_EQ(second.status().code(), absl::StatusCode::kAlreadyExists) << second.status();
  // The failed Create must not have unlinked the first object.
  Mapping still(key);
  EXPECT_NE(still.data(), nullptr);
}

TEST(SystemSharedMemory, BadKeysAndZeroBytesAreInvalidArgument) {
  const std::vector<std::string> bad = {"", "/", "no-slash", "/a/b", "/trailing/", std::string("/nul\0x", 6),
                                       "/" + std::string(300, 'x')};
  for (const std::string& key : bad) {
    auto shm = SystemSharedMemory::Create(key, kBytes);
    EXPECT_EQ(shm.status().code(), absl::StatusCode::kInvalidArgument) << "'" << key << "': " << shm.status();
  }
  const std::string key = SystemSharedMemory::UniqueKey("zero");
  EXPECT_EQ(SystemSharedMemory::Create(key, 0).status().code(), absl::StatusCode::kInvalidArgument);
  // Nothing was created for the rejected size.
  EXPECT_LT(shm_open(key.c_str(), O_RDONLY, 0), 0);
  EXPECT_EQ(errno, ENOENT);
}

TEST(SystemSharedMemory, DestructionUnlinksTheObject) {
  const std::string key = SystemSharedMemory::UniqueKey("gone");
  {
    auto shm = SystemSharedMemory::Create(key, kBytes);
    ASSERT_TRUE(shm.ok()) << shm.status();
    Mapping alive(key);
    ASSERT_NE(alive.data(), nullptr);
  }
  errno = 0;
  EXPECT_LT(shm_open(key.c_str(), O_RDONLY, 0), 0);
  EXPECT_EQ(errno, ENOENT);
  // The key is free again.
  auto again = SystemSharedMemory::Create(key, kBytes);
  EXPECT_TRUE(again.ok()) << again.status();
}

TEST(SystemSharedMemory, UniqueKeysAreValidAndDistinct) {
  const std::string a = SystemSharedMemory::UniqueKey("x/y");
  const std::string b = SystemSharedMemory::UniqueKey("x/y");
  EXPECT_NE(a, b);
  EXPECT_EQ(a.rfind("/sage-x_y-", 0), 0u) << a;
  EXPECT_EQ(a.find('/', 1), std::string::npos) << a;
  EXPECT_NE(a.find(std::to_string(getpid())), std::string::npos) << a;
}

TEST(SharedMemoryRange, FillsTheReference) {
  const sageserve::v1::SharedMemoryRef ref = sageserve::SharedMemoryRange("region", 256, 1024);
  EXPECT_EQ(ref.region(), "region");
  EXPECT_EQ(ref.offset(), 256u);
  EXPECT_EQ(ref.byte_size(), 1024u);
}

}  // namespace
