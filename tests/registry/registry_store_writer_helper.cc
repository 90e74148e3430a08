// Child process of registry_crash_test: opens the registry in argv[1], checks it loads, then
// rewrites it forever with generations loaded+1, loaded+2, ... Each generation is reported on
// stdout (8 bytes, host order) only after Save() returned, i.e. once it is durable. The parent
// kills this process with SIGKILL at random moments.
#include <unistd.h>

#include <cstdint>
#include <cstdio>

#include "server/registry/registry_store.h"
#include "tests/registry/registry_test_util.h"

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s STATE_DIR\n", argv[0]);
    return 2;
  }
  sage::registry::RegistryStoreOptions options;
  options.state_dir = argv[1];
  absl::StatusOr<std::unique_ptr<sage::registry::RegistryStore>> store =
      sage::registry::RegistryStore::Open(options);
  if (!store.ok()) {
    std::fprintf(stderr, "open: %s\n", std::string(store.status().message()).c_str());
    return 3;
  }
  absl::StatusOr<sage::registry::LoadResult> loaded = (*store)->Load();
  if (!loaded.ok()) {
    std::fprintf(stderr, "load: %s\n", std::string(loaded.status().message()).c_str());
    return 4;
  }
  for (int64_t g = loaded->snapshot.generation + 1;; ++g) {
    absl::Status s = (*store)->Save(sage::registry::testing::SnapshotForGeneration(g));
    if (!s.ok()) {
      std::fprintf(stderr, "save: %s\n", std::string(s.message()).c_str());
      return 5;
    }
    if (::write(STDOUT_FILENO, &g, sizeof(g)) != static_cast<ssize_t>(sizeof(g))) return 6;
  }
}
