#include "server/registry/registry_store.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <string>
#include <string_view>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "server/registry/registry_json.h"

namespace sage::registry {
namespace {

constexpr std::string_view kTempMarker = ".tmp-";
constexpr std::string_view kLockFileName = "registry.lock";

absl::Status ErrnoError(std::string_view what, const std::string& path, int err) {
  const std::string message = absl::StrCat(path, ": ", std::string(what), ": ", std::strerror(err));
  if (err == ENOENT) return absl::NotFoundError(message);
  if (err == EACCES || err == EPERM || err == EROFS) return absl::PermissionDeniedError(message);
  if (err == ENOSPC || err == EDQUOT) return absl::ResourceExhaustedError(message);
  return absl::InternalError(message);
}

// Writes everything, retrying short writes and EINTR.
absl::Status WriteAll(int fd, std::string_view data, const std::string& path) {
  while (!data.empty()) {
    const ssize_t n = ::write(fd, data.data(), data.size());
    if (n < 0) {
      if (errno == EINTR) continue;
      return ErrnoError("write", path, errno);
    }
    data.remove_prefix(static_cast<size_t>(n));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::string> ReadAll(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return ErrnoError("open", path, errno);
  std::string out;
  char buf[1 << 16];
  while (true) {
    const ssize_t n = ::read(fd, buf, sizeof(buf));
    if (n < 0) {
      if (errno == EINTR) continue;
      const int err = errno;
      ::close(fd);
      return ErrnoError("read", path, err);
    }
    if (n == 0) break;
    out.append(buf, static_cast<size_t>(n));
  }
  ::close(fd);
  return out;
}

absl::Status FsyncDirectory(const std::string& dir) {
  const int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return ErrnoError("open directory", dir, errno);
  // The rename is only durable once the directory entry is: without this a power cut after
  // rename() could bring back the old name.
  const int rc = ::fsync(fd);
  const int err = errno;
  ::close(fd);
  if (rc != 0) return ErrnoError("fsync directory", dir, err);
  return absl::OkStatus();
}

// Leftover "registry.json.tmp-<pid>-<n>" files are writes that never reached rename(): the real
// file is intact without them.
void RemoveStaleTempFiles(const std::string& dir) {
  DIR* d = ::opendir(dir.c_str());
  if (d == nullptr) return;
  const std::string prefix = absl::StrCat(std::string(kRegistryFileName), std::string(kTempMarker));
  while (dirent* e = ::readdir(d)) {
    if (absl::StartsWith(e->d_name, prefix)) ::unlink(absl::StrCat(dir, "/", e->d_name).c_str());
  }
  ::closedir(d);
}

std::string CorruptSuffix(absl::Time now) {
  return absl::StrCat(".corrupt-", absl::FormatTime("%Y%m%dT%H%M%SZ", now, absl::UTCTimeZone()));
}

}  // namespace

absl::StatusOr<std::unique_ptr<RegistryStore>> RegistryStore::Open(const RegistryStoreOptions& options) {
  if (options.state_dir.empty()) return absl::InvalidArgumentError("state_dir: must not be empty");
  if (::mkdir(options.state_dir.c_str(), 0755) != 0 && errno != EEXIST) {
    return ErrnoError("create state directory", options.state_dir, errno);
  }
  struct stat st;
  if (::stat(options.state_dir.c_str(), &st) != 0) return ErrnoError("stat", options.state_dir, errno);
  if (!S_ISDIR(st.st_mode)) {
    return absl::FailedPreconditionError(absl::StrCat(options.state_dir, ": not a directory"));
  }
  int lock_fd = -1;
  if (options.lock == DirectoryLock::kExclusive) {
    const std::string lock_path = absl::StrCat(options.state_dir, "/", std::string(kLockFileName));
    lock_fd = ::open(lock_path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (lock_fd < 0) return ErrnoError("open lock file", lock_path, errno);
    if (::flock(lock_fd, LOCK_EX | LOCK_NB) != 0) {
      const int err = errno;
      ::close(lock_fd);
      if (err == EWOULDBLOCK) {
        return absl::FailedPreconditionError(absl::StrCat(
            lock_path, ": another process holds this state directory (two servers must not share it)"));
      }
      return ErrnoError("flock", lock_path, err);
    }
    // Only the owner may clean up: another process could be between write and rename.
    RemoveStaleTempFiles(options.state_dir);
  }
  return std::unique_ptr<RegistryStore>(new RegistryStore(
      options, absl::StrCat(options.state_dir, "/", std::string(kRegistryFileName)), lock_fd));
}

RegistryStore::~RegistryStore() {
  if (lock_fd_ >= 0) ::close(lock_fd_);  // Closing releases the flock.
}

absl::StatusOr<RegistrySnapshot> RegistryStore::ReadFile(const std::string& path) {
  absl::StatusOr<std::string> text = ReadAll(path);
  if (!text.ok()) return text.status();
  absl::StatusOr<RegistrySnapshot> snap = DecodeRegistry(*text);
  if (!snap.ok()) {
    return absl::Status(snap.status().code(),
                        absl::StrCat("registry file ", path, ": ", snap.status().message()));
  }
  return snap;
}

absl::StatusOr<LoadResult> RegistryStore::Load() {
  LoadResult result;
  struct stat st;
  if (::stat(path_.c_str(), &st) != 0) {
    if (errno == ENOENT) return result;  // First start: nothing to load.
    return ErrnoError("stat", path_, errno);
  }
  absl::StatusOr<RegistrySnapshot> snap = ReadFile(path_);
  if (snap.ok()) {
    result.snapshot = *std::move(snap);
    result.kind = LoadKind::kLoaded;
    return result;
  }
  // Only damaged content is "corrupt". I/O errors are not (moving a file aside because of EACCES
  // would lose plans), and neither is a schema version this build does not read
  // (FAILED_PRECONDITION): the file is intact, another sageserve wrote it, and moving it aside
  // would make a downgrade wipe every plan.
  const bool bad_content = snap.status().code() == absl::StatusCode::kDataLoss;
  if (snap.status().code() == absl::StatusCode::kFailedPrecondition) {
    return absl::FailedPreconditionError(absl::StrCat(
        snap.status().message(), "; refusing to start with it, and not moving it aside: it is not corrupt (run the "
        "sageserve version that wrote it, or move it aside explicitly to start empty)"));
  }
  if (!bad_content || options_.on_corrupt == CorruptFilePolicy::kRefuse) {
    if (!bad_content) return snap.status();
    return absl::Status(snap.status().code(),
                        absl::StrCat(snap.status().message(),
                                     "; refusing to start with it (move it aside explicitly to start empty)"));
  }
  const std::string aside = absl::StrCat(path_, CorruptSuffix(absl::Now()));
  if (::rename(path_.c_str(), aside.c_str()) != 0) return ErrnoError("move aside to " + aside, path_, errno);
  if (options_.durability == RegistryStoreOptions::Durability::kFsync) {
    if (absl::Status s = FsyncDirectory(options_.state_dir); !s.ok()) return s;
  }
  result.kind = LoadKind::kMovedAside;
  result.moved_to = aside;
  result.problem = std::string(snap.status().message());
  return result;
}

absl::Status RegistryStore::Save(const RegistrySnapshot& snapshot) {
  const std::string text = EncodeRegistry(snapshot, absl::Now());
  std::lock_guard<std::mutex> lock(save_mu_);
  // Same directory as the target: rename() is only atomic within one filesystem.
  const std::string temp = absl::StrCat(path_, std::string(kTempMarker), ::getpid(), "-", ++temp_counter_);
  const int fd = ::open(temp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
  if (fd < 0) return ErrnoError("create temp file", temp, errno);
  absl::Status s = WriteAll(fd, text, temp);
  // fsync before rename: otherwise the rename can reach the disk before the data does and a crash
  // leaves a complete-looking but empty file under the real name.
  if (s.ok() && options_.durability == RegistryStoreOptions::Durability::kFsync && ::fsync(fd) != 0) {
    s = ErrnoError("fsync", temp, errno);
  }
  if (::close(fd) != 0 && s.ok()) s = ErrnoError("close", temp, errno);
  if (s.ok() && ::rename(temp.c_str(), path_.c_str()) != 0) s = ErrnoError("rename to " + path_, temp, errno);
  if (!s.ok()) {
    ::unlink(temp.c_str());
    return s;
  }
  if (options_.durability == RegistryStoreOptions::Durability::kFsync) {
    return FsyncDirectory(options_.state_dir);
  }
  return absl::OkStatus();
}

}  // namespace sage::registry
