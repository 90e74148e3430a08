// SharedMemoryRegistry without gRPC: what the engine is asked to pin, how long regions stay mapped
// and pinned (as long as any request holds them, past unregistration), and its limits.
#include <atomic>
#include <cstring>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "gtest/gtest.h"
#include "sageserve/client/shared_memory.h"
#include "server/shared_memory/shared_memory_registry.h"

namespace sage::server {
namespace {

// Every caller of a server without a token file.
const server::RegionCaller kCaller{"anonymous", true};

// Records pins and unpins; the pin object checks on release that the memory is still mapped (by
// touching it), as cudaHostUnregister needs.
class PinRecorder final : public AttentionBackend {
 public:
  struct Pin final : EngineMemory {
    Pin(PinRecorder* r, std::byte* d) : rec(r), data(d) {}
    ~Pin() override {
      volatile std::byte b = *data;  // faults if the registry unmapped first
      (void)b;
      rec->unpins.fetch_add(1);
    }
    PinRecorder* rec;
    std::byte* data;
  };
  const BackendInfo& info() const override { return info_; }
  absl::StatusOr<EngineOutput> Attend(const EngineInput&, const RecipeConfig&) override {
    return absl::UnimplementedError("not used");
  }
  absl::StatusOr<std::unique_ptr<EngineMemory>> PinHostMemory(std::byte* data, size_t bytes) override {
    if (refuse) return absl::ResourceExhaustedError("cannot page-lock");
    pins.fetch_add(1);
    pinned_bytes = bytes;
    return std::unique_ptr<EngineMemory>(std::make_unique<Pin>(this, data));
  }
  BackendInfo info_;
  bool refuse = false;
  std::atomic<int> pins{0}, unpins{0};
  size_t pinned_bytes = 0;
};

std::unique_ptr<sageserve::SystemSharedMemory> MakeShm(size_t bytes) {
  auto shm = sageserve::SystemSharedMemory::Create(sageserve::SystemSharedMemory::UniqueKey("reg"), bytes);
  EXPECT_TRUE(shm.ok()) << shm.status();
  return shm.ok() ? *std::move(shm) : nullptr;
}

SharedMemoryOptions Allow(int max_regions = 8) {
  SharedMemoryOptions o;
  o.policy = SharedMemoryPolicy::kAllow;
  o.max_regions = max_regions;
  return o;
}

TEST(SharedMemoryRegistry, PinnedRegionOutlivesUnregisterWhileHeld) {
  PinRecorder engine;
  SharedMemoryRegistry registry(Allow(), &engine);
  auto shm = MakeShm(64 << 10);
  ASSERT_NE(shm, nullptr);
  std::memset(shm->data(), 7, shm->size());
  // An offset that is not page-aligned: the server maps from the page below.
  ASSERT_TRUE(registry.RegisterSystem(kCaller, "r", shm->key(), 4100, 8192).ok());
  EXPECT_EQ(engine.pins.load(), 1);
  EXPECT_EQ(engine.pinned_bytes, 8192u);
  absl::StatusOr<SharedRange> range = registry.Resolve(kCaller, "q.shared_memory", "r", 100, 256, 256);
  ASSERT_TRUE(range.ok()) << range.status();
  EXPECT_EQ(range->memory(), MemoryKind::kPinned);
  // The same bytes the client sees at 4100 + 100.
  shm->data()[4200] = std::byte{42};
  EXPECT_EQ(range->bytes[0], std::byte{42});
  range->bytes[1] = std::byte{43};
  EXPECT_EQ(shm->data()[4201], std::byte{43});

  ASSERT_TRUE(registry.Unregister(kCaller, "r").ok());
  EXPECT_EQ(registry.size(), 0);
  EXPECT_EQ(engine.unpins.load(), 0) << "a request still holds the region";
  EXPECT_EQ(registry.Resolve(kCaller, "q.shared_memory", "r", 0, 256, 256).status().code(), absl::StatusCode::kNotFound);
  range->bytes[2] = std::byte{44};  // still mapped
  EXPECT_EQ(shm->data()[4202], std::byte{44});
  range.value().region.reset();
  EXPECT_EQ(engine.unpins.load(), 1);
}

TEST(SharedMemoryRegistry, StatusCountsRequestsAndListsByName) {
  PinRecorder engine;
  SharedMemoryRegistry registry(Allow(), &engine);
  auto shm = MakeShm(1 << 16);
  ASSERT_NE(shm, nullptr);
  ASSERT_TRUE(registry.RegisterSystem(kCaller, "b", shm->key(), 0, 4096).ok());
  ASSERT_TRUE(registry.RegisterSystem(kCaller, "a", shm->key(), 4096, 4096).ok());
  for (int i = 0; i < 3; ++i) {
    absl::StatusOr<SharedRange> r = registry.Resolve(kCaller, "q", "b", 0, 16, 16);
    ASSERT_TRUE(r.ok());
    r->region->CountRequest();
  }
  EXPECT_FALSE(registry.Resolve(kCaller, "q", "b", 0, 16, 32).ok());
  absl::StatusOr<std::vector<SharedMemoryRegionInfo>> all = registry.Status(kCaller, "");
  ASSERT_TRUE(all.ok());
  ASSERT_EQ(all->size(), 2u);
  EXPECT_EQ((*all)[0].name, "a");
  EXPECT_EQ((*all)[1].name, "b");
  EXPECT_EQ((*all)[1].requests, 3);
  EXPECT_EQ((*all)[0].offset, 4096u);
  EXPECT_EQ((*all)[0].memory, MemoryKind::kPinned);
  absl::StatusOr<std::vector<std::string>> gone = registry.Unregister(kCaller, "");
  ASSERT_TRUE(gone.ok());
  EXPECT_EQ(*gone, (std::vector<std::string>{"a", "b"}));
  EXPECT_EQ(engine.unpins.load(), 2);
}

TEST(SharedMemoryRegistry, LimitsAndEngineRefusal) {
  PinRecorder engine;
  SharedMemoryRegistry registry(Allow(2), &engine);
  auto shm = MakeShm(1 << 16);
  ASSERT_NE(shm, nullptr);
  ASSERT_TRUE(registry.RegisterSystem(kCaller, "1", shm->key(), 0, 64).ok());
  ASSERT_TRUE(registry.RegisterSystem(kCaller, "2", shm->key(), 0, 64).ok());
  EXPECT_EQ(registry.RegisterSystem(kCaller, "3", shm->key(), 0, 64).code(), absl::StatusCode::kResourceExhausted);
  ASSERT_TRUE(registry.Unregister(kCaller, "1").ok());
  engine.refuse = true;
  EXPECT_EQ(registry.RegisterSystem(kCaller, "3", shm->key(), 0, 64).code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(registry.size(), 1);  // the refused region was not kept
  engine.refuse = false;
  EXPECT_TRUE(registry.RegisterSystem(kCaller, "3", shm->key(), 0, 64).ok());
  ASSERT_TRUE(registry.Unregister(kCaller, "3").ok());
  EXPECT_EQ(registry.RegisterSystem(kCaller, std::string(300, 'x'), shm->key(), 0, 64).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(registry.RegisterCuda(kCaller, "c", {}, 0, 64).code(), absl::StatusCode::kUnimplemented);
  EXPECT_EQ(registry.RegisterCuda(kCaller, "c", {}, -1, 64).code(), absl::StatusCode::kInvalidArgument);
}

// Many threads registering, resolving and unregistering the same names: no double registration,
// no lost region, every pin released once.
TEST(SharedMemoryRegistry, ConcurrentUse) {
  PinRecorder engine;
  SharedMemoryRegistry registry(Allow(64), &engine);
  auto shm = MakeShm(1 << 16);
  ASSERT_NE(shm, nullptr);
  std::vector<std::thread> threads;
  for (int t = 0; t < 8; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < 200; ++i) {
        const std::string name = std::to_string((t + i) % 5);
        (void)registry.RegisterSystem(kCaller, name, shm->key(), 0, 4096);
        absl::StatusOr<SharedRange> r = registry.Resolve(kCaller, "q", name, 0, 64, 64);
        if (r.ok()) r->bytes[0] = std::byte{1};
        (void)registry.Unregister(kCaller, name);
      }
    });
  }
  for (auto& th : threads) th.join();
  (void)registry.Unregister(kCaller, "");
  EXPECT_EQ(engine.pins.load(), engine.unpins.load());
}

// System keys outside the configured prefix are refused before anything is opened, and one
// identity cannot map an object another identity registered.
TEST(SharedMemoryRegistry, KeysUnderThePrefixAndNotAnotherIdentitys) {
  PinRecorder engine;
  SharedMemoryRegistry registry(Allow(), &engine);
  auto shm = MakeShm(4096);
  ASSERT_NE(shm, nullptr);
  ASSERT_EQ(shm->key().rfind(kDefaultShmKeyPrefix, 0), 0u) << shm->key();
  auto other = sageserve::SystemSharedMemory::Create("/other-" + shm->key().substr(1), 4096);
  ASSERT_TRUE(other.ok()) << other.status();
  const absl::Status refused = registry.RegisterSystem(kCaller, "o", (*other)->key(), 0, 64);
  EXPECT_EQ(refused.code(), absl::StatusCode::kPermissionDenied) << refused;
  EXPECT_NE(refused.message().find("--shared_memory_key_prefix"), std::string::npos) << refused;
  EXPECT_EQ(engine.pins.load(), 0);

  const RegionCaller alice{"alice", false}, bob{"bob", false};
  ASSERT_TRUE(registry.RegisterSystem(alice, "a", shm->key(), 0, 64).ok());
  const absl::Status theft = registry.RegisterSystem(bob, "b", shm->key(), 0, 64);
  EXPECT_EQ(theft.code(), absl::StatusCode::kPermissionDenied) << theft;
  EXPECT_NE(theft.message().find("another identity"), std::string::npos) << theft;
  // The owner may map it again under another name.
  EXPECT_TRUE(registry.RegisterSystem(alice, "a2", shm->key(), 64, 64).ok());

  // An empty prefix opens any name (the operator's choice).
  SharedMemoryOptions open = Allow();
  open.key_prefix.clear();
  SharedMemoryRegistry any(open, &engine);
  EXPECT_TRUE(any.RegisterSystem(kCaller, "r", shm->key(), 0, 64).ok());
  (void)registry.Unregister(kCaller, "");
  (void)any.Unregister(kCaller, "");
}

TEST(SharedMemoryRegistry, RefusedUnlessAllowed) {
  PinRecorder engine;
  SharedMemoryRegistry registry(SharedMemoryOptions{}, &engine);
  auto shm = MakeShm(4096);
  ASSERT_NE(shm, nullptr);
  EXPECT_EQ(registry.RegisterSystem(kCaller, "r", shm->key(), 0, 64).code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(registry.Resolve(kCaller, "q", "r", 0, 64, 64).status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(engine.pins.load(), 0);
}

}  // namespace
}  // namespace sage::server
