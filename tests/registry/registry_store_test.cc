// The registry file: round trips, and every way a bad file is refused (or moved aside on request).
#include "server/registry/registry_store.h"

#include <sys/stat.h>

#include <filesystem>

#include "gtest/gtest.h"
#include "server/registry/registry_json.h"
#include "tests/registry/registry_test_util.h"

namespace sage::registry {
namespace {

using testing::ReadWholeFile;
using testing::SnapshotForGeneration;
using testing::TempDir;
using testing::WriteWholeFile;

std::unique_ptr<RegistryStore> OpenStore(const std::string& dir,
                                         CorruptFilePolicy policy = CorruptFilePolicy::kRefuse) {
  RegistryStoreOptions options;
  options.state_dir = dir;
  options.on_corrupt = policy;
  absl::StatusOr<std::unique_ptr<RegistryStore>> store = RegistryStore::Open(options);
  EXPECT_TRUE(store.ok()) << store.status();
  return store.ok() ? *std::move(store) : nullptr;
}

// Writes a valid registry of generation 7 and returns its text.
std::string WriteValid(const TempDir& dir) {
  auto store = OpenStore(dir.path());
  EXPECT_TRUE(store->Save(SnapshotForGeneration(7)).ok());
  return ReadWholeFile(store->path());
}

TEST(RegistryStoreTest, MissingFileIsAFreshEmptyRegistry) {
  TempDir dir;
  auto store = OpenStore(dir.path() + "/state");  // Created on open.
  absl::StatusOr<LoadResult> loaded = store->Load();
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  EXPECT_EQ(loaded->kind, LoadKind::kFresh);
  EXPECT_TRUE(loaded->snapshot.models.empty());
}

TEST(RegistryStoreTest, SaveThenLoadRoundTripsExactly) {
  TempDir dir;
  for (int64_t g : {1, 2, 3, 4, 5}) {
    {
      auto store = OpenStore(dir.path());
      ASSERT_TRUE(store->Save(SnapshotForGeneration(g)).ok());
    }
    auto store = OpenStore(dir.path());  // A restart: new process state, same directory.
    absl::StatusOr<LoadResult> loaded = store->Load();
    ASSERT_TRUE(loaded.ok()) << loaded.status();
    EXPECT_EQ(loaded->kind, LoadKind::kLoaded);
    EXPECT_TRUE(SnapshotsEqual(loaded->snapshot, SnapshotForGeneration(g))) << "generation " << g;
  }
}

TEST(RegistryStoreTest, FileIsHumanReadableJson) {
  TempDir dir;
  const std::string text = WriteValid(dir);
  EXPECT_NE(text.find("\"format\": \"sageserve-precision-registry\""), std::string::npos) << text;
  EXPECT_NE(text.find("\"schema_version\": 1"), std::string::npos);
  EXPECT_NE(text.find("\"recipe\": \"int8_qk_fp16_pv\""), std::string::npos);
  EXPECT_NE(text.find("\"granularity\": \"per_thread\""), std::string::npos);
}

void ExpectRefused(const TempDir& dir, absl::StatusCode code, const std::string& problem) {
  auto store = OpenStore(dir.path());
  absl::StatusOr<LoadResult> loaded = store->Load();
  ASSERT_FALSE(loaded.ok());
  EXPECT_EQ(loaded.status().code(), code) << loaded.status();
  EXPECT_NE(loaded.status().message().find(store->path()), std::string::npos) << loaded.status();
  EXPECT_NE(loaded.status().message().find(problem), std::string::npos) << loaded.status();
}

TEST(RegistryStoreTest, TruncatedFileIsRefusedNamingFileAndProblem) {
  TempDir dir;
  const std::string text = WriteValid(dir);
  for (size_t keep : {text.size() / 3, text.size() / 2, text.size() - 3}) {
    WriteWholeFile(dir.path() + "/registry.json", text.substr(0, keep));
    ExpectRefused(dir, absl::StatusCode::kDataLoss, "truncated");
  }
  WriteWholeFile(dir.path() + "/registry.json", "");
  ExpectRefused(dir, absl::StatusCode::kDataLoss, "empty");
  // Refusing changes nothing on disk.
  EXPECT_EQ(ReadWholeFile(dir.path() + "/registry.json"), "");
}

TEST(RegistryStoreTest, GarbageAndWrongStructureAreRefused) {
  TempDir dir;
  WriteValid(dir);
  WriteWholeFile(dir.path() + "/registry.json", "{\"format\": \x01\x02 garbage");
  ExpectRefused(dir, absl::StatusCode::kDataLoss, "not valid JSON at byte");
  WriteWholeFile(dir.path() + "/registry.json", "[1, 2, 3]\n");
  ExpectRefused(dir, absl::StatusCode::kDataLoss, "expected an object");
  WriteWholeFile(dir.path() + "/registry.json",
                 "{\"format\": \"sageserve-precision-registry\", \"schema_version\": 1, \"generation\": 1,"
                 " \"models\": {\"m\": {\"num_layers\": \"four\"}}}");
  ExpectRefused(dir, absl::StatusCode::kDataLoss, "$.models.m.num_layers: expected an integer");
}

TEST(RegistryStoreTest, FlippedDigitIsCaughtByTheChecksum) {
  TempDir dir;
  std::string text = WriteValid(dir);
  const size_t pos = text.find("\"num_layers\": 8");
  ASSERT_NE(pos, std::string::npos);
  text[pos + 14] = '9';  // Still valid JSON, different content.
  WriteWholeFile(dir.path() + "/registry.json", text);
  ExpectRefused(dir, absl::StatusCode::kDataLoss, "checksum mismatch");
}

TEST(RegistryStoreTest, HandEditedFileWithoutChecksumLoads) {
  TempDir dir;
  std::string text = WriteValid(dir);
  const size_t start = text.find("  \"checksum\"");
  ASSERT_NE(start, std::string::npos);
  text.erase(start, text.find('\n', start) - start + 1);
  WriteWholeFile(dir.path() + "/registry.json", text);
  auto store = OpenStore(dir.path());
  absl::StatusOr<LoadResult> loaded = store->Load();
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  EXPECT_TRUE(SnapshotsEqual(loaded->snapshot, SnapshotForGeneration(7)));
}

TEST(RegistryStoreTest, UnknownSchemaVersionIsRefused) {
  TempDir dir;
  std::string text = WriteValid(dir);
  const size_t pos = text.find("\"schema_version\": 1");
  text.replace(pos, 19, "\"schema_version\": 42");
  WriteWholeFile(dir.path() + "/registry.json", text);
  ExpectRefused(dir, absl::StatusCode::kFailedPrecondition, "unsupported schema_version 42");
}

// A file of another schema version is intact: even with move-aside on it is refused and left in
// place (moving it would make a downgrade wipe every plan).
TEST(RegistryStoreTest, NewerSchemaVersionIsNeverMovedAside) {
  TempDir dir;
  std::string text = WriteValid(dir);
  const size_t pos = text.find("\"schema_version\": 1");
  text.replace(pos, 19, "\"schema_version\": 42");
  WriteWholeFile(dir.path() + "/registry.json", text);
  auto store = OpenStore(dir.path(), CorruptFilePolicy::kMoveAside);
  absl::StatusOr<LoadResult> loaded = store->Load();
  ASSERT_FALSE(loaded.ok());
  EXPECT_EQ(loaded.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(loaded.status().message().find("written by a newer sageserve"), std::string::npos) << loaded.status();
  EXPECT_NE(loaded.status().message().find("not moving it aside"), std::string::npos) << loaded.status();
  EXPECT_EQ(ReadWholeFile(dir.path() + "/registry.json"), text);
}

TEST(RegistryStoreTest, MoveAsideKeepsTheBadFileAndStartsEmpty) {
  TempDir dir;
  const std::string text = WriteValid(dir);
  const std::string bad = text.substr(0, text.size() / 2);
  WriteWholeFile(dir.path() + "/registry.json", bad);
  auto store = OpenStore(dir.path(), CorruptFilePolicy::kMoveAside);
  absl::StatusOr<LoadResult> loaded = store->Load();
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  EXPECT_EQ(loaded->kind, LoadKind::kMovedAside);
  EXPECT_TRUE(loaded->snapshot.models.empty());
  EXPECT_NE(loaded->problem.find("truncated"), std::string::npos);
  EXPECT_NE(loaded->moved_to.find("registry.json.corrupt-"), std::string::npos);
  EXPECT_EQ(ReadWholeFile(loaded->moved_to), bad);  // Nothing lost: the operator can inspect it.
  EXPECT_FALSE(std::filesystem::exists(dir.path() + "/registry.json"));
  // The next save creates a fresh file next to the moved one.
  ASSERT_TRUE(store->Save(SnapshotForGeneration(1)).ok());
  EXPECT_TRUE(std::filesystem::exists(dir.path() + "/registry.json"));
}

TEST(RegistryStoreTest, MoveAsideDoesNotTouchAGoodFile) {
  TempDir dir;
  const std::string text = WriteValid(dir);
  auto store = OpenStore(dir.path(), CorruptFilePolicy::kMoveAside);
  absl::StatusOr<LoadResult> loaded = store->Load();
  ASSERT_TRUE(loaded.ok());
  EXPECT_EQ(loaded->kind, LoadKind::kLoaded);
  EXPECT_EQ(ReadWholeFile(store->path()), text);
}

TEST(RegistryStoreTest, SecondOpenOfTheSameDirectoryIsRefused) {
  TempDir dir;
  auto first = OpenStore(dir.path());
  RegistryStoreOptions options;
  options.state_dir = dir.path();
  absl::StatusOr<std::unique_ptr<RegistryStore>> second = RegistryStore::Open(options);
  ASSERT_EQ(second.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(second.status().message().find("another process"), std::string::npos);
  first.reset();
  EXPECT_TRUE(RegistryStore::Open(options).ok());  // Released with the first store.
}

TEST(RegistryStoreTest, StaleTempFilesFromAKilledWriterAreRemovedOnOpen) {
  TempDir dir;
  WriteValid(dir);
  const std::string stale = dir.path() + "/registry.json.tmp-99999-1";
  WriteWholeFile(stale, "{ half a write");
  auto store = OpenStore(dir.path());
  EXPECT_FALSE(std::filesystem::exists(stale));
  EXPECT_TRUE(store->Load().ok());
}

TEST(RegistryStoreTest, StateDirThatIsAFileIsAPreciseError) {
  TempDir dir;
  WriteWholeFile(dir.path() + "/file", "x");
  RegistryStoreOptions options;
  options.state_dir = dir.path() + "/file";
  absl::StatusOr<std::unique_ptr<RegistryStore>> store = RegistryStore::Open(options);
  ASSERT_FALSE(store.ok());
  EXPECT_NE(store.status().message().find("not a directory"), std::string::npos) << store.status();
}

}  // namespace
}  // namespace sage::registry
