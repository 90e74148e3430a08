#include "server/shared_memory/safe_copy.h"

#include <sys/uio.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "server/util/status_details.h"

namespace sage::server {
namespace {

constexpr absl::string_view kRegionResource = "sageserve.v1.SharedMemoryRegion";

enum class Direction { kFromClient, kToClient };

absl::Status Copy(Direction direction, std::byte* dst, const std::byte* src, size_t bytes, absl::string_view field,
                  absl::string_view region) {
  const pid_t self = getpid();  // not cached: a forked child must read its own memory
  size_t done = 0;
  while (done < bytes) {
    iovec local{}, remote{};
    if (direction == Direction::kFromClient) {
      local = {dst + done, bytes - done};
      remote = {const_cast<std::byte*>(src) + done, bytes - done};
    } else {
      local = {const_cast<std::byte*>(src) + done, bytes - done};
      remote = {dst + done, bytes - done};
    }
    const ssize_t n = direction == Direction::kFromClient ? process_vm_readv(self, &local, 1, &remote, 1, 0)
                                                          : process_vm_writev(self, &local, 1, &remote, 1, 0);
    if (n > 0) {
      done += static_cast<size_t>(n);  // a short count stops at the first unbacked page: the next call says why
      continue;
    }
    const int err = n == 0 ? EFAULT : errno;
    if (err == EINTR) continue;
    if (err == EFAULT) {
      return WithResource(absl::FailedPreconditionError(absl::StrCat(
                              field, ": region '", region, "' shrank or was unmapped while the request used it")),
                          kRegionResource, region);
    }
    return absl::InternalError(absl::StrCat(field, ": region '", region, "': ",
                                            direction == Direction::kFromClient ? "process_vm_readv" : "process_vm_writev",
                                            " failed: ", std::strerror(err)));
  }
  return absl::OkStatus();
}

absl::Status CheckSizes(size_t dst, size_t src, absl::string_view field) {
  if (dst == src) return absl::OkStatus();
  return absl::InternalError(absl::StrCat(field, ": copy of ", src, " bytes into ", dst));
}

}  // namespace

absl::Status CopyFromClient(std::span<std::byte> dst, std::span<const std::byte> src, absl::string_view field,
                            absl::string_view region) {
  if (absl::Status s = CheckSizes(dst.size(), src.size(), field); !s.ok()) return s;
  return Copy(Direction::kFromClient, dst.data(), src.data(), src.size(), field, region);
}

absl::Status CopyToClient(std::span<std::byte> dst, std::span<const std::byte> src, absl::string_view field,
                          absl::string_view region) {
  if (absl::Status s = CheckSizes(dst.size(), src.size(), field); !s.ok()) return s;
  return Copy(Direction::kToClient, dst.data(), src.data(), src.size(), field, region);
}

}  // namespace sage::server
