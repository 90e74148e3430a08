// SessionStore without gRPC: appends at named positions (retries, gaps), gathers, copy-on-write
// forks, truncation, pool exhaustion and recovery, idle expiry, ownership and ids of other
// instances (and replica names in them), and many threads at once.
#include "server/session/session_store.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstring>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/reference/numerics.h"

namespace sage::server {
namespace {

const SessionCaller kAlice{"alice", false}, kBob{"bob", false}, kAdmin{"root", true};

SessionShape Shape(KvStorage storage = KvStorage::k16Bit, int64_t max_tokens = 4096) {
  SessionShape s;
  s.layers = 2;
  s.heads_q = 4;
  s.heads_kv = 2;
  s.head_dim = 64;
  s.dtype = DType::kF16;
  s.storages.assign(static_cast<size_t>(s.layers), storage);
  s.max_tokens = max_tokens;
  return s;
}

std::unique_ptr<SessionStore> Store(size_t pool_bytes = size_t{8} << 20, std::chrono::milliseconds ttl = std::chrono::minutes(5)) {
  SessionStoreOptions o;
  o.pool_bytes = pool_bytes;
  o.page_bytes = 64 << 10;  // 128 tokens of this shape in 16 bits
  o.ttl = ttl;
  auto s = SessionStore::Create(o);
  EXPECT_TRUE(s.ok()) << s.status();
  return s.ok() ? *std::move(s) : nullptr;
}

// n tokens of [Hkv=2, D=64] fp16 values.
std::vector<uint16_t> Tokens(int64_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<uint16_t> out(static_cast<size_t>(n) * 2 * 64);
  for (uint16_t& x : out) x = EncodeFp16(normal(rng) + 2.0f);
  return out;
}

absl::StatusOr<int64_t> Append(SessionStore& s, const SessionCaller& c, const std::string& id, int layer, int64_t pos,
                               uint64_t step, const std::vector<uint16_t>& k, const std::vector<uint16_t>& v) {
  return s.Append(c, AppendStep{id, layer, pos, step, static_cast<int64_t>(k.size() / 128), k.data(), v.data()});
}

std::pair<std::vector<uint16_t>, std::vector<uint16_t>> Gathered(SessionStore& s, const std::string& id, int layer,
                                                                 int64_t end) {
  std::vector<uint16_t> k(static_cast<size_t>(end) * 128), v(k.size());
  const absl::Status st = s.Gather(kAlice, id, layer, end, std::as_writable_bytes(std::span(k)),
                                   std::as_writable_bytes(std::span(v)));
  EXPECT_TRUE(st.ok()) << st;
  return {k, v};
}

TEST(SessionStore, SixteenBitAppendsGatherBackExactly) {
  auto store = Store();
  auto info = store->CreateSession(kAlice, Shape(), 0);
  ASSERT_TRUE(info.ok()) << info.status();
  EXPECT_EQ(info->page_tokens, std::vector<int>(2, 128));
  std::vector<uint16_t> all_k, all_v;
  int64_t pos = 0;
  for (int64_t n : {300, 1, 1, 200, 7}) {  // crosses pages, with single-token decode steps
    const auto k = Tokens(n, static_cast<uint32_t>(pos)), v = Tokens(n, static_cast<uint32_t>(pos + 1000));
    absl::StatusOr<int64_t> end = Append(*store, kAlice, info->id, 1, pos, pos, k, v);
    ASSERT_TRUE(end.ok()) << end.status();
    pos += n;
    EXPECT_EQ(*end, pos);
    all_k.insert(all_k.end(), k.begin(), k.end());
    all_v.insert(all_v.end(), v.begin(), v.end());
  }
  auto [k, v] = Gathered(*store, info->id, 1, pos);
  EXPECT_EQ(k, all_k);
  EXPECT_EQ(v, all_v);
  auto got = store->Get(kAlice, info->id);
  ASSERT_TRUE(got.ok());
  EXPECT_EQ(got->layer_lengths, (std::vector<int64_t>{0, pos}));
  EXPECT_EQ(got->pages, (pos + 127) / 128);
}

TEST(SessionStore, PositionsRetriesAndGaps) {
  auto store = Store();
  auto info = store->CreateSession(kAlice, Shape(), 0);
  ASSERT_TRUE(info.ok());
  const auto a = Tokens(10, 1), b = Tokens(3, 2);
  ASSERT_TRUE(Append(*store, kAlice, info->id, 0, 0, 7, a, a).ok());
  // The same step again (a retry): recognised, not appended twice.
  absl::StatusOr<int64_t> retry = Append(*store, kAlice, info->id, 0, 0, 7, a, a);
  ASSERT_TRUE(retry.ok()) << retry.status();
  EXPECT_EQ(*retry, 10);
  EXPECT_EQ(store->Get(kAlice, info->id)->layer_lengths[0], 10);
  // Another step at an old position, and a gap: refused naming the expected position.
  absl::StatusOr<int64_t> stale = Append(*store, kAlice, info->id, 0, 0, 8, a, a);
  EXPECT_EQ(stale.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(stale.status().message().find("position 10"), std::string::npos) << stale.status();
  absl::StatusOr<int64_t> gap = Append(*store, kAlice, info->id, 0, 12, 9, b, b);
  EXPECT_EQ(gap.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(gap.status().message().find("a gap"), std::string::npos) << gap.status();
  // Layers have their own lengths; out-of-range layers and max_tokens are OUT_OF_RANGE.
  EXPECT_TRUE(Append(*store, kAlice, info->id, 1, 0, 1, b, b).ok());
  EXPECT_EQ(Append(*store, kAlice, info->id, 2, 0, 1, b, b).status().code(), absl::StatusCode::kOutOfRange);
  auto small = store->CreateSession(kAlice, Shape(KvStorage::k16Bit, 12), 0);
  ASSERT_TRUE(small.ok());
  ASSERT_TRUE(Append(*store, kAlice, small->id, 0, 0, 1, a, a).ok());
  EXPECT_EQ(Append(*store, kAlice, small->id, 0, 10, 2, b, b).status().code(), absl::StatusCode::kOutOfRange);
  // After a truncate the rolled-back positions take new steps.
  ASSERT_TRUE(store->Truncate(kAlice, info->id, 4).ok());
  EXPECT_EQ(Append(*store, kAlice, info->id, 0, 0, 7, a, a).status().code(), absl::StatusCode::kFailedPrecondition);
  absl::StatusOr<int64_t> again = Append(*store, kAlice, info->id, 0, 4, 11, b, b);
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_EQ(*again, 7);
  auto [k, v] = Gathered(*store, info->id, 0, 7);
  EXPECT_TRUE(std::equal(a.begin(), a.begin() + 4 * 128, k.begin()));
  EXPECT_TRUE(std::equal(b.begin(), b.end(), k.begin() + 4 * 128));
}

TEST(SessionStore, ForksShareThePrefixCopyOnWrite) {
  auto store = Store();
  auto parent = store->CreateSession(kAlice, Shape(), 0);
  ASSERT_TRUE(parent.ok());
  const auto prefix = Tokens(200, 3);  // one full page and part of a second
  ASSERT_TRUE(Append(*store, kAlice, parent->id, 0, 0, 1, prefix, prefix).ok());
  const int64_t free_before = store->Stats().pool.pages_free;
  auto child = store->Fork(kAlice, parent->id, std::nullopt);
  ASSERT_TRUE(child.ok()) << child.status();
  EXPECT_EQ(store->Stats().pool.pages_free, free_before) << "a fork copies no page";
  const auto theirs = Tokens(5, 4), mine = Tokens(5, 5);
  ASSERT_TRUE(Append(*store, kAlice, child->id, 0, 200, 2, theirs, theirs).ok());
  EXPECT_EQ(store->Stats().pool.pages_free, free_before - 1) << "the shared partial page was copied once";
  ASSERT_TRUE(Append(*store, kAlice, parent->id, 0, 200, 2, mine, mine).ok());
  auto [pk, pv] = Gathered(*store, parent->id, 0, 205);
  auto [ck, cv] = Gathered(*store, child->id, 0, 205);
  EXPECT_TRUE(std::equal(prefix.begin(), prefix.end(), pk.begin()));
  EXPECT_TRUE(std::equal(prefix.begin(), prefix.end(), ck.begin()));
  EXPECT_TRUE(std::equal(mine.begin(), mine.end(), pk.begin() + 200 * 128));
  EXPECT_TRUE(std::equal(theirs.begin(), theirs.end(), ck.begin() + 200 * 128));
  // A fork of a shorter prefix, then closing everything frees every page.
  auto short_fork = store->Fork(kAlice, parent->id, 100);
  ASSERT_TRUE(short_fork.ok());
  EXPECT_EQ(short_fork->layer_lengths[0], 100);
  for (const std::string& id : {parent->id, child->id, short_fork->id}) ASSERT_TRUE(store->Close(kAlice, id).ok());
  EXPECT_EQ(store->Stats().pool.pages_free, store->Stats().pool.pages_total);
}

// AppendAll's pins: the pages of [0, end) of the steps that ask, taken only when every step
// appended; they outlive a close (the pages return to the pool at the last Unpin), and a truncate
// right after cannot take them from under the launch.
TEST(SessionStore, AppendAllPinsTheStepsPagesItWrote) {
  auto store = Store();
  auto a = store->CreateSession(kAlice, Shape(), 0), b = store->CreateSession(kAlice, Shape(), 0);
  ASSERT_TRUE(a.ok() && b.ok());
  const auto ka = Tokens(200, 1), kb = Tokens(3, 2);
  std::vector<AppendStep> steps = {AppendStep{a->id, 1, 0, 1, 200, ka.data(), ka.data()},
                                   AppendStep{b->id, 0, 0, 1, 3, kb.data(), kb.data()}};
  steps[0].pin = true;  // b's step is a bulk import: nothing pinned
  SessionStore::AppendAllResult r = store->AppendAll(kAlice, steps);
  ASSERT_TRUE(r.status.ok()) << r.status;
  ASSERT_EQ(r.pins.size(), 1u);
  EXPECT_EQ(r.pins[0].pages.size(), 2u) << "200 tokens of 128 per page";
  // A failing call pins nothing: b's step repeats position 0 with another step id.
  std::vector<AppendStep> bad = {AppendStep{a->id, 0, 0, 2, 3, kb.data(), kb.data()},
                                 AppendStep{b->id, 0, 0, 2, 3, kb.data(), kb.data()}};
  bad[0].pin = bad[1].pin = true;
  SessionStore::AppendAllResult failed = store->AppendAll(kAlice, bad);
  EXPECT_EQ(failed.status.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_TRUE(failed.pins.empty());
  // Truncated and closed under the pin: the pinned pages stay out of the free list until Unpin.
  ASSERT_TRUE(store->Truncate(kAlice, a->id, 0).ok());
  for (const std::string& id : {a->id, b->id}) ASSERT_TRUE(store->Close(kAlice, id).ok());
  EXPECT_EQ(store->Stats().pool.pages_free, store->Stats().pool.pages_total - 2);
  store->Unpin(r.pins[0]);
  EXPECT_EQ(store->Stats().pool.pages_free, store->Stats().pool.pages_total);
}

TEST(SessionStore, ExhaustionThenRecovery) {
  auto store = Store(size_t{64} << 10 << 2);  // 4 pages of 128 tokens
  auto a = store->CreateSession(kAlice, Shape(), 0);
  ASSERT_TRUE(a.ok());
  const auto big = Tokens(500, 6);
  ASSERT_TRUE(Append(*store, kAlice, a->id, 0, 0, 1, big, big).ok());  // 4 pages
  auto b = store->CreateSession(kAlice, Shape(), 0);
  ASSERT_TRUE(b.ok());
  const auto one = Tokens(1, 7);
  absl::StatusOr<int64_t> refused = Append(*store, kAlice, b->id, 0, 0, 1, one, one);
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_NE(refused.status().message().find("1 pages needed, 0 free"), std::string::npos) << refused.status();
  EXPECT_EQ(store->Get(kAlice, b->id)->layer_lengths[0], 0) << "a refused append leaves nothing behind";
  EXPECT_EQ(store->CreateSession(kAlice, Shape(), 10).status().code(), absl::StatusCode::kResourceExhausted);
  ASSERT_TRUE(store->Close(kAlice, a->id).ok());
  EXPECT_TRUE(Append(*store, kAlice, b->id, 0, 0, 1, one, one).ok());
}

TEST(SessionStore, IdleSessionsExpire) {
  auto store = Store(size_t{8} << 20, std::chrono::milliseconds(40));
  auto a = store->CreateSession(kAlice, Shape(), 128);
  ASSERT_TRUE(a.ok());
  EXPECT_LT(store->Stats().pool.pages_free, store->Stats().pool.pages_total);
  std::this_thread::sleep_for(std::chrono::milliseconds(300));  // the sweeper runs every 10 ms here
  const absl::Status gone = store->Get(kAlice, a->id).status();
  EXPECT_EQ(gone.code(), absl::StatusCode::kNotFound);
  EXPECT_NE(gone.message().find("expired"), std::string::npos) << gone;
  EXPECT_EQ(store->Stats().pool.pages_free, store->Stats().pool.pages_total);
  EXPECT_EQ(store->Stats().expired_idle, 1);
}

TEST(SessionStore, SessionsBelongToTheirCreator) {
  auto store = Store();
  auto a = store->CreateSession(kAlice, Shape(), 0);
  ASSERT_TRUE(a.ok());
  EXPECT_GE(a->id.size(), 16u + 1 + 3 + 1 + 32u) << a->id;
  EXPECT_EQ(store->Get(kBob, a->id).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(store->Close(kBob, a->id).code(), absl::StatusCode::kNotFound);
  EXPECT_TRUE(store->List(kBob).empty());
  EXPECT_EQ(store->List(kAdmin).size(), 1u);
  EXPECT_TRUE(store->Get(kAdmin, a->id).ok());
  // An id of another server instance says so.
  auto other = Store();
  const absl::Status elsewhere = other->Get(kAlice, a->id).status();
  EXPECT_EQ(elsewhere.code(), absl::StatusCode::kNotFound);
  EXPECT_NE(elsewhere.message().find("another server"), std::string::npos) << elsewhere;
}

// --replica_name: the instance becomes "<name>-<64 random bits>", new per process, and an id of
// another process of the same name is still another instance's. Bad names are refused.
TEST(SessionStore, ReplicaNamePrefixesTheInstance) {
  SessionStoreOptions o;
  o.pool_bytes = size_t{8} << 20;
  o.page_bytes = 64 << 10;
  o.replica_name = "gpu-node-7";
  auto first = SessionStore::Create(o);
  auto second = SessionStore::Create(o);
  ASSERT_TRUE(first.ok() && second.ok());
  const std::string instance((*first)->instance());
  EXPECT_EQ(instance.size(), std::string("gpu-node-7-").size() + 16) << instance;
  EXPECT_EQ(instance.rfind("gpu-node-7-", 0), 0u) << instance;
  EXPECT_NE(instance, std::string((*second)->instance()));
  auto a = (*first)->CreateSession(kAlice, Shape(), 0);
  ASSERT_TRUE(a.ok());
  EXPECT_EQ(a->id.rfind(instance + ".cpu.", 0), 0u) << a->id;
  const absl::Status elsewhere = (*second)->Get(kAlice, a->id).status();
  EXPECT_EQ(elsewhere.code(), absl::StatusCode::kNotFound);
  EXPECT_NE(elsewhere.message().find(instance), std::string::npos) << elsewhere;  // the whole instance
  EXPECT_NE(elsewhere.message().find("restarted"), std::string::npos) << elsewhere;

  for (const char* bad : {"Upper", "has.dot", "under_score", "a b", "x12345678901234567890123456789012345678901"}) {
    o.replica_name = bad;
    const absl::Status st = SessionStore::CheckOptions(o);
    EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument) << bad;
    EXPECT_NE(st.message().find("replica_name"), std::string::npos) << st;
    EXPECT_EQ(SessionStore::Create(o).status().code(), absl::StatusCode::kInvalidArgument) << bad;
  }
  for (const char* good : {"", "a", "replica-0", "0123456789012345678901234567890123456789"}) {
    o.replica_name = good;
    EXPECT_TRUE(SessionStore::CheckOptions(o).ok()) << good;
  }
}

TEST(SessionStore, BadShapesNameTheField) {
  auto store = Store();
  SessionShape s = Shape();
  s.heads_kv = 3;
  absl::Status st = store->CreateSession(kAlice, s, 0).status();
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(st.message().find("heads_kv"), std::string::npos);
  // INT4 K: whole 32-channel groups, in the nibble order's 64-channel blocks.
  s = Shape(KvStorage::kInt4KFp8V);
  s.head_dim = 96;
  st = store->CreateSession(kAlice, s, 0).status();
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(st.message().find("head_dim: 96"), std::string::npos) << st;
  EXPECT_NE(st.message().find("KV_STORAGE_INT4_K_FP8_V"), std::string::npos) << st;
  s.storages.assign(static_cast<size_t>(s.layers), KvStorage::kInt8KFp8V);
  EXPECT_TRUE(store->CreateSession(kAlice, s, 0).ok());
  s = Shape();
  s.max_tokens = 0;
  EXPECT_NE(store->CreateSession(kAlice, s, 0).status().message().find("max_tokens"), std::string::npos);
  s = Shape();
  s.heads_kv = 4;
  s.heads_q = 4;
  s.head_dim = 256;  // 4 KiB a token: a 64 KiB page holds 16, the least allowed
  EXPECT_TRUE(store->CreateSession(kAlice, s, 0).ok());
  s.heads_kv = 8;
  s.heads_q = 8;
  EXPECT_EQ(store->CreateSession(kAlice, s, 0).status().code(), absl::StatusCode::kInvalidArgument);
}

// The quantized schemes: what Gather returns is exactly the per-token encode/decode with the first
// append's K mean (the emulation), and close to the K it came from: within one INT8 step, or for
// INT4 K half a step of the channel's 32-channel group (its amax / 7) plus the fp16 rounding.
TEST(SessionStore, QuantizedGatherIsTheSchemesDecode) {
  for (KvStorage storage : {KvStorage::kInt8KFp8V, KvStorage::kInt4KFp8V}) {
    SCOPED_TRACE(std::string(KvStorageName(storage)));
    auto store = Store();
    auto info = store->CreateSession(kAlice, Shape(storage), 0);
    ASSERT_TRUE(info.ok());
    const auto first = Tokens(64, 8), later = Tokens(3, 9);
    ASSERT_TRUE(Append(*store, kAlice, info->id, 0, 0, 1, first, first).ok());
    ASSERT_TRUE(Append(*store, kAlice, info->id, 0, 64, 2, later, later).ok());
    auto [k, v] = Gathered(*store, info->id, 0, 67);
    std::vector<float> mean(128, 0.0f);
    for (int64_t t = 0; t < 64; ++t) {
      for (int i = 0; i < 128; ++i) mean[static_cast<size_t>(i)] += DecodeFp16(first[static_cast<size_t>(t * 128 + i)]);
    }
    for (float& m : mean) m /= 64.0f;
    // One token at a time through a one-token page: the scheme's definition, token by token.
    const KvPageLayout one{storage, DType::kF16, 1, 2, 64};
    std::vector<std::byte> page(one.page_bytes());
    for (int64_t t = 0; t < 67; ++t) {
      const std::vector<uint16_t>& src = t < 64 ? first : later;
      const uint16_t* kin = src.data() + (t < 64 ? t : t - 64) * 128;
      EncodeKvTokens(one, page.data(), 0, 1, kin, kin, mean);
      uint16_t want_k[128], want_v[128];
      DecodeKvTokens(one, page.data(), 0, 1, want_k, want_v);
      ASSERT_EQ(std::memcmp(want_k, k.data() + t * 128, sizeof(want_k)), 0) << "token " << t;
      ASSERT_EQ(std::memcmp(want_v, v.data() + t * 128, sizeof(want_v)), 0) << "token " << t;
      float centred[128], group_amax[4] = {0, 0, 0, 0};
      for (int c = 0; c < 128; ++c) {
        centred[c] = DecodeFp16(kin[c]) - mean[static_cast<size_t>(c)];
        group_amax[c / 32] = std::max(group_amax[c / 32], std::fabs(centred[c]));
      }
      for (int c = 0; c < 128; ++c) {  // K comes back mean-subtracted
        const float bound = storage == KvStorage::kInt8KFp8V ? 0.05f : group_amax[c / 32] / 14.0f + 0.01f;
        EXPECT_NEAR(DecodeFp16(k[static_cast<size_t>(t * 128 + c)]), centred[c], bound) << "token " << t << " channel " << c;
      }
    }
  }
}

// Layers of one session in different storages: each layer's pages hold its own storage's tokens
// (its own tokens per page, reserved per layer), and every layer gathers back what a session of
// that storage alone gives, through a fork and a truncation too.
TEST(SessionStore, EachLayerKeepsItsOwnStorage) {
  auto store = Store();
  const KvStorage per_layer[] = {KvStorage::k16Bit, KvStorage::kInt8KFp8V, KvStorage::kInt4KFp8V};
  SessionShape mixed = Shape();
  mixed.layers = 3;
  mixed.storages.assign(std::begin(per_layer), std::end(per_layer));
  EXPECT_EQ(mixed.uniform_storage(), std::nullopt);
  auto info = store->CreateSession(kAlice, mixed, 200);
  ASSERT_TRUE(info.ok()) << info.status();
  ASSERT_EQ(info->page_tokens.size(), 3u);
  EXPECT_EQ(info->page_tokens[0], 128);
  EXPECT_GT(info->page_tokens[1], info->page_tokens[0]);  // fewer bytes per token, more tokens per page
  EXPECT_GT(info->page_tokens[2], info->page_tokens[1]);
  int64_t reserved = 0;
  for (int t : info->page_tokens) reserved += (200 + t - 1) / t;
  EXPECT_EQ(info->pages, reserved);
  EXPECT_EQ(info->shape.storages, mixed.storages);

  const auto first = Tokens(150, 21), later = Tokens(2, 22);
  for (int layer = 0; layer < 3; ++layer) {
    SCOPED_TRACE(std::string(KvStorageName(per_layer[layer])));
    ASSERT_TRUE(Append(*store, kAlice, info->id, layer, 0, 1, first, first).ok());
    ASSERT_TRUE(Append(*store, kAlice, info->id, layer, 150, 2, later, later).ok());
    auto alone = store->CreateSession(kAlice, Shape(per_layer[layer]), 0);
    ASSERT_TRUE(alone.ok()) << alone.status();
    ASSERT_TRUE(Append(*store, kAlice, alone->id, 0, 0, 1, first, first).ok());
    ASSERT_TRUE(Append(*store, kAlice, alone->id, 0, 150, 2, later, later).ok());
    const auto got = Gathered(*store, info->id, layer, 152);
    EXPECT_EQ(got, Gathered(*store, alone->id, 0, 152));
    if (per_layer[layer] == KvStorage::k16Bit) {
      EXPECT_EQ(std::vector<uint16_t>(got.first.begin(), got.first.begin() + 150 * 128), first);
    }
  }
  auto child = store->Fork(kAlice, info->id, 140);
  ASSERT_TRUE(child.ok()) << child.status();
  EXPECT_EQ(child->shape.storages, mixed.storages);
  EXPECT_EQ(child->page_tokens, info->page_tokens);
  ASSERT_TRUE(store->Truncate(kAlice, info->id, 100).ok());
  for (int layer = 0; layer < 3; ++layer) {
    auto [k, v] = Gathered(*store, child->id, layer, 140);
    auto [pk, pv] = Gathered(*store, info->id, layer, 100);
    EXPECT_TRUE(std::equal(pk.begin(), pk.end(), k.begin())) << "layer " << layer;
    EXPECT_TRUE(std::equal(pv.begin(), pv.end(), v.begin())) << "layer " << layer;
  }
  SessionShape wrong = mixed;
  wrong.storages.pop_back();
  const absl::Status st = store->CreateSession(kAlice, wrong, 0).status();
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(st.message().find("layer_kv_storages: 2 entries for 3 layers"), std::string::npos) << st;
}

// A close while another thread appends and gathers: every call either succeeds on the whole session
// or gets NOT_FOUND, never a torn result or a crash, and every page comes back.
TEST(SessionStore, CloseDuringStepsIsSafe) {
  auto store = Store(size_t{32} << 20);
  for (int round = 0; round < 20; ++round) {
    auto info = store->CreateSession(kAlice, Shape(), 0);
    ASSERT_TRUE(info.ok());
    const auto tok = Tokens(3, static_cast<uint32_t>(round));
    std::atomic<bool> go{false};
    std::atomic<int> bad{0};
    std::thread stepper([&] {
      while (!go.load()) std::this_thread::yield();
      for (int64_t pos = 0; pos < 3000; pos += 3) {
        absl::StatusOr<int64_t> end = Append(*store, kAlice, info->id, 0, pos, static_cast<uint64_t>(pos), tok, tok);
        if (!end.ok()) {
          if (end.status().code() != absl::StatusCode::kNotFound) ++bad;
          return;
        }
        std::vector<uint16_t> k(static_cast<size_t>(*end) * 128), v(k.size());
        const absl::Status g = store->Gather(kAlice, info->id, 0, *end, std::as_writable_bytes(std::span(k)),
                                             std::as_writable_bytes(std::span(v)));
        if (!g.ok() && g.code() != absl::StatusCode::kNotFound) ++bad;
        if (g.ok() && !std::equal(tok.begin(), tok.end(), k.end() - 3 * 128)) ++bad;
      }
    });
    go = true;
    std::this_thread::sleep_for(std::chrono::microseconds(200 * (round % 5)));
    ASSERT_TRUE(store->Close(kAlice, info->id).ok());
    stepper.join();
    EXPECT_EQ(bad.load(), 0) << "round " << round;
  }
  EXPECT_EQ(store->Stats().pool.pages_free, store->Stats().pool.pages_total);
  EXPECT_EQ(store->Stats().closed, 20);
}

TEST(SessionStore, ManyThreadsManySessions) {
  auto store = Store(size_t{32} << 20);
  constexpr int kThreads = 8, kSteps = 200;
  std::vector<std::thread> threads;
  std::atomic<int> failures{0};
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      const SessionCaller me{"user" + std::to_string(t), false};
      auto info = store->CreateSession(me, Shape(), 0);
      if (!info.ok()) return (void)++failures;
      const auto tok = Tokens(1, static_cast<uint32_t>(t));
      for (int i = 0; i < kSteps; ++i) {
        if (!Append(*store, me, info->id, i % 2, i / 2, static_cast<uint64_t>(i), tok, tok).ok()) ++failures;
        if (i % 50 == 0 && !store->Fork(me, info->id, std::nullopt).ok()) ++failures;
      }
      auto got = store->Get(me, info->id);
      if (!got.ok() || got->layer_lengths != std::vector<int64_t>{kSteps / 2, kSteps / 2}) ++failures;
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(failures.load(), 0);
  EXPECT_EQ(store->List(kAdmin).size(), static_cast<size_t>(kThreads * 5));
}

}  // namespace
}  // namespace sage::server
