// The session store over KV memory that is not host memory (as a GPU's pool is): pages written
// and read only through KvMemory, never through base(); placement on the pool with the most free
// pages; pinned pages that outlive truncation and close and are copied before a write.
#include <atomic>
#include <cstring>
#include <thread>
#include <random>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/reference/numerics.h"
#include "server/session/session_store.h"

namespace sage::server {
namespace {

const SessionCaller kAlice{"alice", false};

// Host bytes behind a KvMemory that calls itself device memory. base() is an address nothing may
// dereference (it is not mapped), so a store that touched the pages directly would crash.
class FakeDeviceMemory final : public KvMemory {
 public:
  FakeDeviceMemory(int device, size_t bytes) : device_(device), bytes_(bytes) {}
  std::byte* base() const override { return reinterpret_cast<std::byte*>(uintptr_t{0x10000} << 32); }
  size_t bytes() const override { return bytes_.size(); }
  MemoryKind memory() const override { return MemoryKind::kDevice; }
  int device() const override { return device_; }
  absl::Status Write(std::span<const KvWrite> writes) override {
    ++write_calls;
    for (const KvWrite& w : writes) {
      if (w.offset + w.bytes > bytes_.size()) return absl::InternalError("write past the pool");
      std::memcpy(bytes_.data() + w.offset, w.src, w.bytes);
      written += w.bytes;
    }
    return absl::OkStatus();
  }
  absl::Status WriteTokens(const KvPageLayout& layout, std::span<const KvTokenWrite> tokens) override {
    ++write_calls;  // a transfer, as a GPU's pool makes one launch of its encode kernel
    for (const KvTokenWrite& t : tokens) {
      if (t.page_offset + layout.page_bytes() > bytes_.size()) return absl::InternalError("write past the pool");
    }
    if (absl::Status s = EncodeOnHost(layout, bytes_.data(), tokens); !s.ok()) return s;
    encoded_tokens += static_cast<int64_t>(tokens.size());
    return absl::OkStatus();
  }
  absl::Status OrderAfterWrites(void* /*stream*/) const override { return absl::OkStatus(); }
  absl::Status WaitForWrites() const override { return absl::OkStatus(); }
  absl::Status Read(size_t offset, void* dst, size_t bytes) const override {
    std::memcpy(dst, bytes_.data() + offset, bytes);
    return absl::OkStatus();
  }
  absl::Status Copy(size_t dst_offset, size_t src_offset, size_t bytes) override {
    ++copies;
    std::memcpy(bytes_.data() + dst_offset, bytes_.data() + src_offset, bytes);
    return absl::OkStatus();
  }
  const std::byte* bytes_at(size_t offset) const { return bytes_.data() + offset; }

  int write_calls = 0;
  size_t written = 0;
  int64_t encoded_tokens = 0;  // tokens the memory encoded (WriteTokens)
  int copies = 0;

 private:
  const int device_;
  std::vector<std::byte> bytes_ = std::vector<std::byte>(size_t{8} << 20);
};

SessionShape Shape(KvStorage storage) {
  SessionShape s;
  s.layers = 2;
  s.heads_q = 4;
  s.heads_kv = 2;
  s.head_dim = 64;
  s.storages.assign(static_cast<size_t>(s.layers), storage);
  s.max_tokens = 4096;
  return s;
}

SessionStoreOptions Options() {
  SessionStoreOptions o;
  o.pool_bytes = size_t{8} << 20;
  o.page_bytes = 64 << 10;  // 128 tokens in 16 bits, 240 in 8 bits: capped to a multiple of 16
  return o;
}

std::vector<uint16_t> Tokens(int64_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<uint16_t> out(static_cast<size_t>(n) * 128);
  for (uint16_t& x : out) x = EncodeFp16(normal(rng) * 3.0f + 1.0f);
  return out;
}

struct TwoStores {
  std::unique_ptr<SessionStore> host, device;
  FakeDeviceMemory* memory = nullptr;
};

TwoStores Make() {
  TwoStores t;
  auto host = SessionStore::Create(Options());
  EXPECT_TRUE(host.ok()) << host.status();
  auto fake = std::make_unique<FakeDeviceMemory>(0, Options().pool_bytes);
  t.memory = fake.get();
  std::vector<std::unique_ptr<KvMemory>> memories;
  memories.push_back(std::move(fake));
  auto device = SessionStore::Create(Options(), std::move(memories));
  EXPECT_TRUE(device.ok()) << device.status();
  t.host = *std::move(host);
  t.device = *std::move(device);
  return t;
}

const char* StorageName(KvStorage storage) {
  return storage == KvStorage::k16Bit ? "16-bit" : storage == KvStorage::kInt8KFp8V ? "INT8 K" : "INT4 K";
}

// The same appends (a prefill crossing pages, then decode steps, then a run ending mid-page) give
// the same decoded cache, whether the pool is written in place or through KvMemory::WriteTokens
// (every storage: the memory encodes each token where its page is); each append is one transfer.
TEST(SessionPools, WritesThroughKvMemoryEqualInPlaceEncoding) {
  for (KvStorage storage : kAllKvStorages) {
    SCOPED_TRACE(StorageName(storage));
    TwoStores t = Make();
    auto a = t.host->CreateSession(kAlice, Shape(storage), 0);
    auto b = t.device->CreateSession(kAlice, Shape(storage), 0);
    ASSERT_TRUE(a.ok() && b.ok());
    EXPECT_NE(b->id.find(".cuda0."), std::string::npos) << b->id;
    int64_t pos = 0;
    int appends = 0;
    for (int64_t n : {300, 1, 1, 17, 250, 1}) {
      const auto k = Tokens(n, static_cast<uint32_t>(pos)), v = Tokens(n, static_cast<uint32_t>(pos + 7));
      for (SessionStore* s : {t.host.get(), t.device.get()}) {
        const std::string& id = s == t.host.get() ? a->id : b->id;
        auto end = s->Append(kAlice, AppendStep{id, 1, pos, static_cast<uint64_t>(pos), n, k.data(), v.data()});
        ASSERT_TRUE(end.ok()) << end.status();
      }
      ++appends;
      pos += n;
    }
    EXPECT_EQ(t.memory->write_calls, appends);
    EXPECT_EQ(t.memory->encoded_tokens, pos);
    std::vector<uint16_t> hk(static_cast<size_t>(pos) * 128), hv(hk.size()), dk(hk.size()), dv(hk.size());
    ASSERT_TRUE(t.host->Gather(kAlice, a->id, 1, pos, std::as_writable_bytes(std::span(hk)), std::as_writable_bytes(std::span(hv))).ok());
    ASSERT_TRUE(t.device->Gather(kAlice, b->id, 1, pos, std::as_writable_bytes(std::span(dk)), std::as_writable_bytes(std::span(dv))).ok());
    EXPECT_EQ(hk, dk);
    EXPECT_EQ(hv, dv);
    // The pinned pages hold exactly the bytes the host store encoded in place.
    auto hp = t.host->Pin(kAlice, a->id, 1, pos);
    auto dp = t.device->Pin(kAlice, b->id, 1, pos);
    ASSERT_TRUE(hp.ok() && dp.ok());
    ASSERT_EQ(hp->pages.size(), dp->pages.size());
    const KvPageLayout& layout = dp->layout;
    const size_t tokens_last = static_cast<size_t>(pos - (static_cast<int64_t>(dp->pages.size()) - 1) * layout.page_tokens);
    const struct {
      const char* name;
      size_t offset, row_bytes;
    } parts[] = {{"K codes", 0, layout.k_code_bytes()},
                 {"V codes", layout.v_codes_offset(), layout.v_code_bytes()},
                 {"K scales", layout.k_scales_offset(), layout.k_scales_per_token_head() * sizeof(float)},
                 {"V scales", layout.v_scales_offset(), layout.v_scales_per_token_head() * sizeof(float)}};
    for (size_t i = 0; i < dp->pages.size(); ++i) {
      const std::byte* h = t.host->pool(0).memory().base() + t.host->pool(0).offset(hp->pages[i]);
      const std::byte* d = t.memory->bytes_at(t.device->pool(0).offset(dp->pages[i]));
      const int tokens = static_cast<int>(i + 1 == dp->pages.size() ? tokens_last : static_cast<size_t>(layout.page_tokens));
      for (const auto& part : parts) {
        for (int head = 0; head < layout.heads; ++head) {
          for (int tok = 0; tok < tokens; ++tok) {
            const size_t at = part.offset + layout.row(tok, head) * part.row_bytes;
            ASSERT_EQ(std::memcmp(h + at, d + at, part.row_bytes), 0) << part.name << ", page " << i << " token " << tok;
          }
        }
      }
    }
    t.host->Unpin(*hp);
    t.device->Unpin(*dp);
  }
}

// New sessions go to the pool with the most free pages (the first on a tie), and their ids say where.
TEST(SessionPools, PlacementPicksTheDeviceWithTheMostFreePages) {
  std::vector<std::unique_ptr<KvMemory>> memories;
  memories.push_back(std::make_unique<FakeDeviceMemory>(0, Options().pool_bytes));
  memories.push_back(std::make_unique<FakeDeviceMemory>(1, Options().pool_bytes));
  auto store = SessionStore::Create(Options(), std::move(memories));
  ASSERT_TRUE(store.ok()) << store.status();
  auto first = (*store)->CreateSession(kAlice, Shape(KvStorage::k16Bit), 1024);  // 8 pages per layer on cuda0
  ASSERT_TRUE(first.ok());
  EXPECT_NE(first->id.find(".cuda0."), std::string::npos);
  auto second = (*store)->CreateSession(kAlice, Shape(KvStorage::k16Bit), 128);
  ASSERT_TRUE(second.ok());
  EXPECT_NE(second->id.find(".cuda1."), std::string::npos) << second->id;
  auto third = (*store)->CreateSession(kAlice, Shape(KvStorage::k16Bit), 0);
  ASSERT_TRUE(third.ok());
  EXPECT_NE(third->id.find(".cuda1."), std::string::npos) << "cuda1 still has more free pages";
  const SessionStoreStats stats = (*store)->Stats();
  ASSERT_EQ(stats.devices.size(), 2u);
  EXPECT_EQ(stats.devices[0].device, "cuda0");
  EXPECT_EQ(stats.devices[0].pool.pages_total - stats.devices[0].pool.pages_free, 16);
  EXPECT_EQ(stats.devices[1].pool.pages_total - stats.devices[1].pool.pages_free, 2);
  EXPECT_EQ(stats.pool.pages_total, stats.devices[0].pool.pages_total + stats.devices[1].pool.pages_total);
}

// Pages pinned for a launch keep their bytes while the session truncates, rewrites the rolled-back
// positions (its shared page is copied first) and closes; they are free once unpinned.
TEST(SessionPools, PinnedPagesOutliveTruncateRewriteAndClose) {
  TwoStores t = Make();
  auto info = t.device->CreateSession(kAlice, Shape(KvStorage::kInt8KFp8V), 0);
  ASSERT_TRUE(info.ok());
  const auto k = Tokens(40, 1), v = Tokens(40, 2);
  ASSERT_TRUE(t.device->Append(kAlice, AppendStep{info->id, 0, 0, 1, 40, k.data(), v.data()}).ok());
  auto pinned = t.device->Pin(kAlice, info->id, 0, 40);
  ASSERT_TRUE(pinned.ok());
  ASSERT_EQ(pinned->pages.size(), 1u);
  const size_t page_at = t.device->pool(0).offset(pinned->pages[0]);
  const std::vector<std::byte> before(t.memory->bytes_at(page_at), t.memory->bytes_at(page_at) + pinned->layout.page_bytes());
  EXPECT_EQ(t.device->Pin(kAlice, info->id, 0, 41).status().code(), absl::StatusCode::kFailedPrecondition);

  ASSERT_TRUE(t.device->Truncate(kAlice, info->id, 20).ok());
  const auto k2 = Tokens(20, 3), v2 = Tokens(20, 4);
  ASSERT_TRUE(t.device->Append(kAlice, AppendStep{info->id, 0, 20, 9, 20, k2.data(), v2.data()}).ok());
  EXPECT_EQ(t.memory->copies, 1) << "the pinned page is shared: the write goes to a copy";
  EXPECT_EQ(std::memcmp(before.data(), t.memory->bytes_at(page_at), before.size()), 0);

  ASSERT_TRUE(t.device->Close(kAlice, info->id).ok());
  EXPECT_EQ(t.device->Stats().pool.pages_free, t.device->Stats().pool.pages_total - 1);
  t.device->Unpin(*pinned);
  EXPECT_EQ(t.device->Stats().pool.pages_free, t.device->Stats().pool.pages_total);
}

// A call's steps over several sessions reach the pool in one transfer; a failing step stops the
// call there, with the steps before it appended.
TEST(SessionPools, AppendAllWritesACallInOneTransfer) {
  TwoStores t = Make();
  std::vector<std::string> ids;
  for (int i = 0; i < 4; ++i) {
    auto info = t.device->CreateSession(kAlice, Shape(KvStorage::kInt8KFp8V), 0);
    ASSERT_TRUE(info.ok());
    ids.push_back(info->id);
  }
  const auto k = Tokens(3, 5), v = Tokens(3, 6);
  std::vector<AppendStep> steps;
  for (const std::string& id : ids) steps.push_back(AppendStep{id, 0, 0, 1, 3, k.data(), v.data()});
  steps.push_back(AppendStep{ids[0], 1, 0, 1, 3, k.data(), v.data()});  // another layer of the same session
  SessionStore::AppendAllResult r = t.device->AppendAll(kAlice, steps);
  ASSERT_TRUE(r.status.ok()) << r.status;
  EXPECT_EQ(r.ends, (std::vector<int64_t>{3, 3, 3, 3, 3}));
  EXPECT_EQ(t.memory->write_calls, 1);

  // Step 2 has a gap: steps 0 and 1 are appended, 2 and 3 are not.
  std::vector<AppendStep> next = {AppendStep{ids[0], 0, 3, 2, 3, k.data(), v.data()},
                                  AppendStep{ids[1], 0, 3, 2, 3, k.data(), v.data()},
                                  AppendStep{ids[2], 0, 9, 2, 3, k.data(), v.data()},
                                  AppendStep{ids[3], 0, 3, 2, 3, k.data(), v.data()}};
  r = t.device->AppendAll(kAlice, next);
  EXPECT_EQ(r.status.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(r.failed, 2u);
  EXPECT_EQ(t.memory->write_calls, 2);
  const std::vector<int64_t> want = {6, 6, 3, 3};
  for (size_t i = 0; i < ids.size(); ++i) {
    auto info = t.device->Get(kAlice, ids[i]);
    ASSERT_TRUE(info.ok());
    EXPECT_EQ(info->layer_lengths[0], want[i]) << i;
  }
  // A retry of the appended steps is recognised and writes nothing.
  r = t.device->AppendAll(kAlice, std::span<const AppendStep>(next).first(2));
  ASSERT_TRUE(r.status.ok()) << r.status;
  EXPECT_EQ(r.ends, (std::vector<int64_t>{6, 6}));
  EXPECT_EQ(t.memory->write_calls, 2);
}

// Pool options are checked before any memory is asked for: an absurd --kv_pool_bytes is
// INVALID_ARGUMENT naming the flag, not an attempt to allocate it.
TEST(SessionPools, BadPoolOptionsAreRefusedBeforeAllocating) {
  SessionStoreOptions o = Options();
  o.pool_bytes = size_t{1} << 62;
  absl::StatusOr<std::unique_ptr<SessionStore>> huge = SessionStore::Create(o);
  EXPECT_EQ(huge.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(huge.status().message().find("kv_pool_bytes"), std::string::npos) << huge.status();
  o = Options();
  o.page_bytes = 5000;
  EXPECT_EQ(SessionStore::CheckOptions(o).code(), absl::StatusCode::kInvalidArgument);
  o = Options();
  o.pool_bytes = 1000;  // less than a page
  EXPECT_EQ(SessionStore::CheckOptions(o).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(SessionStore::CheckOptions(Options()).ok());
}

// Two threads append to the same two sessions in opposite step orders, many times: the sessions
// are locked in one order whatever the call's, so neither waits on the other forever, and every
// append lands (each thread writes its own layer).
TEST(SessionPools, CallsOverTheSameSessionsInOppositeOrdersDoNotDeadlock) {
  auto store = SessionStore::Create(Options());
  ASSERT_TRUE(store.ok());
  auto a = (*store)->CreateSession(kAlice, Shape(KvStorage::k16Bit), 0);
  auto b = (*store)->CreateSession(kAlice, Shape(KvStorage::k16Bit), 0);
  ASSERT_TRUE(a.ok() && b.ok());
  const auto k = Tokens(1, 1);
  constexpr int kRounds = 300;
  std::atomic<int> failures{0};
  const auto run = [&](int layer, bool a_first) {
    for (int i = 0; i < kRounds; ++i) {
      const AppendStep sa{a->id, layer, i, static_cast<uint64_t>(i), 1, k.data(), k.data()};
      const AppendStep sb{b->id, layer, i, static_cast<uint64_t>(i), 1, k.data(), k.data()};
      const std::vector<AppendStep> steps = a_first ? std::vector<AppendStep>{sa, sb} : std::vector<AppendStep>{sb, sa};
      if (!(*store)->AppendAll(kAlice, steps).status.ok()) ++failures;
    }
  };
  std::thread t0(run, 0, true), t1(run, 1, false);
  t0.join();
  t1.join();
  EXPECT_EQ(failures.load(), 0);
  for (const auto& id : {a->id, b->id}) {
    auto info = (*store)->Get(kAlice, id);
    ASSERT_TRUE(info.ok());
    EXPECT_EQ(info->layer_lengths, (std::vector<int64_t>{kRounds, kRounds}));
  }
}

}  // namespace
}  // namespace sage::server
