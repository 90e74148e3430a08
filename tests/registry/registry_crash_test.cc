// kill -9 during registry writes loses nothing: a child process rewrites the registry in a loop
// and is SIGKILLed at random moments; every time, the file must load and be exactly either the
// last generation the child reported as saved or the one it was writing.
#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <random>
#include <thread>
#include <vector>

#include "gtest/gtest.h"
#include "server/registry/registry_store.h"
#include "tests/registry/registry_test_util.h"

namespace sage::registry {
namespace {

constexpr int kKills = 60;
// Up to 30 ms lets the child get through start-up and a few fsync'd saves, so kills land both
// between saves and inside one (temp written, not yet renamed).
constexpr int kMaxDelayUs = 30000;

struct Child {
  pid_t pid = -1;
  int read_fd = -1;
};

Child Spawn(const std::string& dir) {
  int fds[2];
  EXPECT_EQ(::pipe2(fds, O_CLOEXEC), 0);
  const pid_t pid = ::fork();
  if (pid == 0) {
    ::dup2(fds[1], STDOUT_FILENO);  // dup2 clears O_CLOEXEC on the copy.
    ::execl(SAGE_REGISTRY_WRITER_HELPER, SAGE_REGISTRY_WRITER_HELPER, dir.c_str(), nullptr);
    ::_exit(127);
  }
  ::close(fds[1]);
  return Child{pid, fds[0]};
}

// Every generation the child acknowledged, in order.
std::vector<int64_t> DrainAcks(int fd) {
  std::vector<int64_t> acks;
  std::vector<char> buf;
  char chunk[4096];
  ssize_t n;
  while ((n = ::read(fd, chunk, sizeof(chunk))) > 0) buf.insert(buf.end(), chunk, chunk + n);
  for (size_t i = 0; i + sizeof(int64_t) <= buf.size(); i += sizeof(int64_t)) {
    int64_t g;
    std::memcpy(&g, &buf[i], sizeof(g));
    acks.push_back(g);
  }
  return acks;
}

TEST(RegistryCrashTest, Kill9AtRandomMomentsLeavesOldOrNewFile) {
  testing::TempDir dir;
  {
    RegistryStoreOptions options;
    options.state_dir = dir.path();
    auto store = RegistryStore::Open(options);
    ASSERT_TRUE(store.ok());
    ASSERT_TRUE((*store)->Save(testing::SnapshotForGeneration(1)).ok());
  }
  std::mt19937 rng(20261125);
  std::uniform_int_distribution<int> delay(0, kMaxDelayUs);
  int64_t durable = 1;  // Last generation known to be on disk.
  int landed_mid_write = 0;
  int stale_temps = 0;
  for (int round = 0; round < kKills; ++round) {
    Child child = Spawn(dir.path());
    std::this_thread::sleep_for(std::chrono::microseconds(delay(rng)));
    ASSERT_EQ(::kill(child.pid, SIGKILL), 0);
    int status = 0;
    ASSERT_EQ(::waitpid(child.pid, &status, 0), child.pid);
    ASSERT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL)
        << "the helper exited on its own (status " << status << ") in round " << round;
    std::vector<int64_t> acks = DrainAcks(child.read_fd);
    ::close(child.read_fd);
    for (int64_t g : acks) {
      ASSERT_EQ(g, durable + 1) << "acks must be consecutive";
      durable = g;
    }
    for (const auto& e : std::filesystem::directory_iterator(dir.path())) {
      if (e.path().filename().string().find(".tmp-") != std::string::npos) ++stale_temps;
    }
    // The parent reads without the lock (the child is dead; nothing else writes).
    absl::StatusOr<RegistrySnapshot> loaded = RegistryStore::ReadFile(dir.path() + "/registry.json");
    ASSERT_TRUE(loaded.ok()) << "round " << round << ": " << loaded.status();
    ASSERT_TRUE(loaded->generation == durable || loaded->generation == durable + 1)
        << "round " << round << ": file has generation " << loaded->generation << ", last saved "
        << durable;
    ASSERT_TRUE(SnapshotsEqual(*loaded, testing::SnapshotForGeneration(loaded->generation)))
        << "round " << round << ": generation " << loaded->generation << " is not a whole version";
    if (loaded->generation == durable + 1) ++landed_mid_write;  // Renamed, ack not yet written.
    durable = loaded->generation;
  }
  // Not assertions (timing-dependent), but shows what the kills hit.
  std::printf("kills: %d, final generation %lld, killed between rename and ack: %d, "
              "temp files left by killed writes: %d\n",
              kKills, static_cast<long long>(durable), landed_mid_write, stale_temps);
  // The next owner cleans the leftovers up.
  RegistryStoreOptions options;
  options.state_dir = dir.path();
  ASSERT_TRUE(RegistryStore::Open(options).ok());
  for (const auto& e : std::filesystem::directory_iterator(dir.path())) {
    EXPECT_EQ(e.path().filename().string().find(".tmp-"), std::string::npos) << e.path();
  }
}

}  // namespace
}  // namespace sage::registry
