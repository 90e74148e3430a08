#include "server/shared_memory/system_mapping.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <climits>
#include <cstring>

#include "absl/strings/str_cat.h"

namespace sage::server {
namespace {

std::string ErrnoText(int err) { return std::strerror(err); }

absl::Status KeyError(const std::string& key, absl::string_view why) {
  return absl::InvalidArgumentError(absl::StrCat("key '", key, "': ", why));
}

}  // namespace

absl::StatusOr<std::unique_ptr<SystemMapping>> SystemMapping::Map(const std::string& key, uint64_t offset,
                                                                 uint64_t bytes) {
  // shm_open's portable form: one leading slash, no other, at most NAME_MAX characters.
  if (key.size() < 2 || key[0] != '/') return KeyError(key, "must be '/' followed by a name");
  if (key.find('/', 1) != std::string::npos) return KeyError(key, "must not contain '/' after the first character");
  if (key.find('\0') != std::string::npos) return KeyError(key, "must not contain NUL");
  if (key.size() > NAME_MAX) return KeyError(key, absl::StrCat("longer than ", NAME_MAX, " characters"));
  if (bytes == 0) return absl::InvalidArgumentError("byte_size: must be > 0");
  if (offset > UINT64_MAX - bytes) return absl::InvalidArgumentError("offset + byte_size overflows");

  const int fd = shm_open(key.c_str(), O_RDWR, 0);
  if (fd < 0) {
    const int err = errno;
    if (err == ENOENT) return absl::NotFoundError(absl::StrCat("key '", key, "': no such shared-memory object"));
    if (err == EACCES) {
      return absl::PermissionDeniedError(absl::StrCat("key '", key, "': the server may not open it read-write"));
    }
    return absl::InvalidArgumentError(absl::StrCat("key '", key, "': shm_open failed: ", ErrnoText(err)));
  }
  struct stat st {};
  if (fstat(fd, &st) != 0) {
    const int err = errno;
    close(fd);
    return absl::InternalError(absl::StrCat("key '", key, "': fstat failed: ", ErrnoText(err)));
  }
  const uint64_t object_bytes = static_cast<uint64_t>(st.st_size);
  if (offset + bytes > object_bytes) {
    close(fd);
    return absl::InvalidArgumentError(absl::StrCat("offset ", offset, " + byte_size ", bytes, " = ", offset + bytes,
                                                   " runs past the end of '", key, "' (", object_bytes, " bytes)"));
  }
  const uint64_t page = static_cast<uint64_t>(sysconf(_SC_PAGESIZE));
  const uint64_t map_offset = offset / page * page;
  const size_t mapped = static_cast<size_t>(offset - map_offset + bytes);
  void* base = mmap(nullptr, mapped, PROT_READ | PROT_WRITE, MAP_SHARED, fd, static_cast<off_t>(map_offset));
  if (base == MAP_FAILED) {
    const int err = errno;
    close(fd);
    if (err == ENOMEM) {
      return absl::ResourceExhaustedError(absl::StrCat("key '", key, "': cannot map ", mapped, " bytes"));
    }
    return absl::InvalidArgumentError(absl::StrCat("key '", key, "': mmap failed: ", ErrnoText(err)));
  }
  std::byte* data = static_cast<std::byte*>(base) + (offset - map_offset);
  return std::unique_ptr<SystemMapping>(
      new SystemMapping(fd, base, mapped, data, static_cast<size_t>(bytes), offset + bytes));
}

SystemMapping::~SystemMapping() {
  munmap(base_, mapped_);
  close(fd_);
}

absl::Status SystemMapping::CheckStillCovered() const {
  struct stat st {};
  if (fstat(fd_, &st) != 0) return absl::InternalError(absl::StrCat("fstat failed: ", ErrnoText(errno)));
  if (static_cast<uint64_t>(st.st_size) < end_) {
    return absl::FailedPreconditionError(
        absl::StrCat("the shared-memory object was shrunk to ", st.st_size, " bytes after registration (the region ends at ",
                     end_, "); unregister the region and register it again"));
  }
  return absl::OkStatus();
}

}  // namespace sage::server
