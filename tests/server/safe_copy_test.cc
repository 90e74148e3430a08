// The fault-tolerant copies between server memory and a client's mapped shared memory
// (server/shared_memory/safe_copy.h): a mapping whose object was truncated or unmapped gives
// FAILED_PRECONDITION naming the field and region, never a signal (a SIGBUS would end this test).
#include "server/shared_memory/safe_copy.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "server/shared_memory/system_mapping.h"
#include "server/util/status_details.h"

namespace sage::server {
namespace {

const size_t kPage = static_cast<size_t>(sysconf(_SC_PAGESIZE));

// A memfd of `bytes`, mapped MAP_SHARED as the server maps a client's object.
struct Mapped {
  explicit Mapped(size_t bytes) : size(bytes) {
    fd = memfd_create("safe_copy_test", 0);
    EXPECT_GE(fd, 0);
    EXPECT_EQ(ftruncate(fd, static_cast<off_t>(bytes)), 0);
    void* p = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    EXPECT_NE(p, MAP_FAILED);
    data = static_cast<std::byte*>(p);
  }
  ~Mapped() {
    if (data != nullptr) munmap(data, size);
    close(fd);
  }
  std::span<std::byte> span() const { return {data, size}; }
  int fd = -1;
  std::byte* data = nullptr;
  size_t size = 0;
};

void ExpectShrank(const absl::Status& s, const std::string& field, const std::string& region) {
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition) << s;
  EXPECT_NE(s.message().find(absl::StrCat(field, ": region '", region,
                                          "' shrank or was unmapped while the request used it")),
            std::string::npos)
      << s;
  const auto resource = ResourceOf(s);
  ASSERT_TRUE(resource.has_value()) << s;
  EXPECT_EQ(resource->first, "sageserve.v1.SharedMemoryRegion");
  EXPECT_EQ(resource->second, region);
}

TEST(SafeCopy, CopiesBothWays) {
  Mapped m(3 * kPage);
  for (size_t i = 0; i < m.size; ++i) m.data[i] = static_cast<std::byte>(i * 7);
  std::vector<std::byte> in(m.size);
  ASSERT_TRUE(CopyFromClient(in, m.span(), "q.shared_memory", "r").ok());
  EXPECT_EQ(std::memcmp(in.data(), m.data, m.size), 0);
  std::vector<std::byte> out(kPage + 13, std::byte{0x5A});
  ASSERT_TRUE(CopyToClient(m.span().subspan(100, out.size()), out, "o_output", "r").ok());
  EXPECT_EQ(std::memcmp(m.data + 100, out.data(), out.size()), 0);
  EXPECT_TRUE(CopyFromClient({}, {}, "q.shared_memory", "r").ok());  // nothing to copy
}

TEST(SafeCopy, SizeMismatchIsInternal) {
  Mapped m(kPage);
  std::vector<std::byte> in(10);
  EXPECT_EQ(CopyFromClient(in, m.span(), "k.shared_memory", "r").code(), absl::StatusCode::kInternal);
  EXPECT_EQ(CopyToClient(m.span(), in, "o_output", "r").code(), absl::StatusCode::kInternal);
}

// A plain memcpy here would raise SIGBUS (the process dies with 135).
TEST(SafeCopy, TruncatedToZeroFailsWithoutASignal) {
  Mapped m(4 * kPage);
  std::memset(m.data, 1, m.size);
  ASSERT_EQ(ftruncate(m.fd, 0), 0);
  std::vector<std::byte> buf(m.size);
  ExpectShrank(CopyFromClient(buf, m.span(), "v.shared_memory", "region-a"), "v.shared_memory", "region-a");
  ExpectShrank(CopyToClient(m.span(), buf, "lse_output", "region-a"), "lse_output", "region-a");
  // Grown back, the mapping is usable again (the bytes are zeros now).
  ASSERT_EQ(ftruncate(m.fd, static_cast<off_t>(m.size)), 0);
  ASSERT_TRUE(CopyFromClient(buf, m.span(), "v.shared_memory", "region-a").ok());
  EXPECT_EQ(buf[0], std::byte{0});
}

// Shrunk to part of a page: the copy stops at the first unbacked page and says so; the covered
// part alone still copies.
TEST(SafeCopy, PartlyTruncated) {
  Mapped m(4 * kPage);
  std::memset(m.data, 3, m.size);
  ASSERT_EQ(ftruncate(m.fd, static_cast<off_t>(kPage + 100)), 0);
  std::vector<std::byte> buf(m.size);
  ExpectShrank(CopyFromClient(buf, m.span(), "q.shared_memory", "r"), "q.shared_memory", "r");
  ExpectShrank(CopyToClient(m.span(), buf, "o_output", "r"), "o_output", "r");
  std::vector<std::byte> first(kPage);
  ASSERT_TRUE(CopyFromClient(first, m.span().first(kPage), "q.shared_memory", "r").ok());
}

TEST(SafeCopy, UnmappedFails) {
  Mapped m(2 * kPage);
  std::byte* const was = m.data;
  ASSERT_EQ(munmap(m.data, m.size), 0);
  m.data = nullptr;
  std::vector<std::byte> buf(2 * kPage);
  ExpectShrank(CopyFromClient(buf, {was, buf.size()}, "q.shared_memory", "gone"), "q.shared_memory", "gone");
  ExpectShrank(CopyToClient({was, buf.size()}, buf, "o_output", "gone"), "o_output", "gone");
}

// The server's own mapping of a POSIX shm object (SystemMapping), truncated by its "client".
TEST(SafeCopy, TruncatedPosixShmMapping) {
  const std::string key = absl::StrCat("/sage-safe-copy-", getpid());
  const int fd = shm_open(key.c_str(), O_RDWR | O_CREAT | O_EXCL, 0600);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(ftruncate(fd, static_cast<off_t>(8 * kPage)), 0);
  absl::StatusOr<std::unique_ptr<SystemMapping>> mapping = SystemMapping::Map(key, kPage + 64, 4 * kPage);
  shm_unlink(key.c_str());
  ASSERT_TRUE(mapping.ok()) << mapping.status();
  const std::span<std::byte> region((*mapping)->data(), (*mapping)->size());
  std::vector<std::byte> buf(region.size());
  ASSERT_TRUE(CopyFromClient(buf, region, "q.shared_memory", "shm").ok());
  ASSERT_EQ(ftruncate(fd, 0), 0);
  EXPECT_EQ((*mapping)->CheckStillCovered().code(), absl::StatusCode::kFailedPrecondition);
  ExpectShrank(CopyFromClient(buf, region, "q.shared_memory", "shm"), "q.shared_memory", "shm");
  ExpectShrank(CopyToClient(region, buf, "o_output", "shm"), "o_output", "shm");
  close(fd);
}

}  // namespace
}  // namespace sage::server
