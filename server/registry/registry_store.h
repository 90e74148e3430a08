// The registry's file in the state directory: loaded once at start, rewritten atomically on every
// change (temp file in the same directory, fsync, rename, fsync the directory), so a crash or a
// kill -9 at any instant leaves either the previous or the new file, never a mix.
#pragma once

#include <memory>
#include <mutex>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "server/registry/registry.h"

namespace sage::registry {

inline constexpr std::string_view kRegistryFileName = "registry.json";

enum class CorruptFilePolicy {
  kRefuse,     // Load fails, naming the file and the problem; nothing is changed on disk.
  kMoveAside,  // Rename the bad file to <name>.corrupt-<UTC timestamp> and start empty.
};

enum class DirectoryLock {
  kExclusive,  // flock(registry.lock): a second process on the same directory fails to open it.
  kNone,       // Tests that inspect a directory another process owns.
};

struct RegistryStoreOptions {
  std::string state_dir;  // Created (one level) if missing.
  CorruptFilePolicy on_corrupt = CorruptFilePolicy::kRefuse;
  DirectoryLock lock = DirectoryLock::kExclusive;
  // Skips fsync; only for tests that measure logic, never in the server (it voids the crash
  // guarantee).
  enum class Durability { kFsync, kNoSync } durability = Durability::kFsync;
};

enum class LoadKind {
  kLoaded,      // The file was read.
  kFresh,       // No file yet: empty registry.
  kMovedAside,  // The file was bad and was moved to `moved_to`; empty registry.
};

struct LoadResult {
  RegistrySnapshot snapshot;
  LoadKind kind = LoadKind::kFresh;
  std::string moved_to;  // kMovedAside only.
  std::string problem;   // kMovedAside only: why the file was refused.
};

class RegistryStore final : public SnapshotSink {
 public:
  // Creates the directory if needed, takes the lock, removes temp files a killed writer left.
  static absl::StatusOr<std::unique_ptr<RegistryStore>> Open(const RegistryStoreOptions& options);
  ~RegistryStore() override;

  // Reads the file per options.on_corrupt. Errors name the file: "<path>: truncated: ...".
  absl::StatusOr<LoadResult> Load();
  // Atomic replace of the file with `snapshot`. Thread-safe; concurrent calls are serialized.
  absl::Status Save(const RegistrySnapshot& snapshot) override;

  const std::string& path() const { return path_; }

  // Reads and decodes one registry file, without any policy (tests, tools).
  static absl::StatusOr<RegistrySnapshot> ReadFile(const std::string& path);

 private:
  RegistryStore(const RegistryStoreOptions& options, std::string path, int lock_fd)
      : options_(options), path_(std::move(path)), lock_fd_(lock_fd) {}

  const RegistryStoreOptions options_;
  const std::string path_;
  int lock_fd_ = -1;
  std::mutex save_mu_;
  uint64_t temp_counter_ = 0;  // Guarded by save_mu_.
};

}  // namespace sage::registry
