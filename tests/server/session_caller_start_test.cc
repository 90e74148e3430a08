// SessionAttend::StartsOnCaller: which session calls are light enough to start on the gRPC thread
// that read them. Decode-shaped, unquantized, within the byte limits and in one pool: yes; a step
// past 16 query rows, a quantized recipe, too many new K/V or Q bytes, sessions of two placements
// or two storages, an empty call: no. (K/V in CUDA memory need a GPU: session_cuda_shm_gpu_test runs them.)
#include <cstddef>
#include <memory>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "server/core/session_attend.h"
#include "server/session/session_store.h"

namespace sage::server {
namespace {

constexpr int kHq = 32, kHkv = 8, kD = 128;

class StartsOnCallerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    SessionStoreOptions options;
    options.pool_bytes = size_t{64} << 20;
    auto store = SessionStore::Create(options);
    ASSERT_TRUE(store.ok()) << store.status();
    store_ = *std::move(store);
    SessionShape shape;
    shape.layers = 2;
    shape.heads_q = kHq;
    shape.heads_kv = kHkv;
    shape.head_dim = kD;
    shape.max_tokens = 4096;
    for (int i = 0; i < 2; ++i) {
      auto info = store_->CreateSession(caller_, shape, 0);
      ASSERT_TRUE(info.ok()) << info.status();
      ids_.push_back(info->id);
    }
  }

  // One step of session `id`: `n_new` tokens of K/V and `n_q` rows of Q, inline (bytes that
  // StartsOnCaller only counts).
  SessionStepInput Step(const std::string& id, int64_t n_new, int64_t n_q) {
    bytes_.push_back(std::make_unique<std::byte[]>(static_cast<size_t>(n_new * kHkv * kD * 2 + n_q * kHq * kD * 2 + 1)));
    std::byte* at = bytes_.back().get();
    SessionStepInput st;
    st.session_id = id;
    st.n_new = n_new;
    st.k = {at, static_cast<size_t>(n_new * kHkv * kD * 2)};
    st.v = st.k;
    st.n_q = n_q;
    st.q = {at, static_cast<size_t>(n_q * kHq * kD * 2)};
    return st;
  }

  SessionCaller caller_{"tester", false};
  std::unique_ptr<SessionStore> store_;
  std::vector<std::string> ids_;
  std::vector<std::unique_ptr<std::byte[]>> bytes_;
};

TEST_F(StartsOnCallerTest, DecodeStepsWithinTheLimitsStartThere) {
  SessionAttend sessions(store_.get(), nullptr);
  SessionAttendRequest decode;
  for (const std::string& id : ids_) decode.steps.push_back(Step(id, 1, 1));
  EXPECT_TRUE(sessions.StartsOnCaller(caller_, decode));
  // Each step's session is kept for Start, which then looks none up again.
  ASSERT_EQ(decode.sessions.size(), 2u);
  EXPECT_EQ(decode.sessions[1].shape().heads_q, kHq);
  decode.recipe = Recipe::kUnquantized;
  EXPECT_TRUE(sessions.StartsOnCaller(caller_, decode));
  // 16 rows (speculative decoding) still do; 256 KiB of new K/V in all is the most.
  SessionAttendRequest wide;
  wide.steps.push_back(Step(ids_[0], 32, 16));  // 32 tokens x 8 heads x 128 x 2 bytes x (K, V): 128 KiB
  wide.steps.push_back(Step(ids_[1], 32, 16));
  EXPECT_TRUE(sessions.StartsOnCaller(caller_, wide));
}

TEST_F(StartsOnCallerTest, OthersGoToASessionWorker) {
  SessionAttend sessions(store_.get(), nullptr);
  SessionAttendRequest empty;
  EXPECT_FALSE(sessions.StartsOnCaller(caller_, empty));
  SessionAttendRequest rows;
  rows.steps.push_back(Step(ids_[0], 1, 17));
  EXPECT_FALSE(sessions.StartsOnCaller(caller_, rows)) << "more than 16 query rows";
  SessionAttendRequest quantized;
  quantized.steps.push_back(Step(ids_[0], 1, 1));
  quantized.recipe = Recipe::kInt8QkFp8Pv;
  EXPECT_FALSE(sessions.StartsOnCaller(caller_, quantized)) << "a quantized recipe";
  SessionAttendRequest kv;
  kv.steps.push_back(Step(ids_[0], 33, 1));
  kv.steps.push_back(Step(ids_[1], 32, 1));
  EXPECT_FALSE(sessions.StartsOnCaller(caller_, kv)) << "past 256 KiB of new K/V";
  SessionAttendRequest q;
  for (int i = 0; i < 9; ++i) q.steps.push_back(Step(ids_[i % 2], 0, 16));  // 9 x 128 KiB of Q
  EXPECT_FALSE(sessions.StartsOnCaller(caller_, q)) << "past 1 MiB of Q";
  SessionShape int8;
  int8.layers = 2;
  int8.heads_q = kHq;
  int8.heads_kv = kHkv;
  int8.head_dim = kD;
  int8.storages.assign(2, KvStorage::kInt8KFp8V);
  int8.max_tokens = 4096;
  auto other = store_->CreateSession(caller_, int8, 0);
  ASSERT_TRUE(other.ok()) << other.status();
  SessionAttendRequest two_storages;
  two_storages.steps.push_back(Step(ids_[0], 1, 1));
  two_storages.steps.push_back(Step(other->id, 1, 1));
  EXPECT_FALSE(sessions.StartsOnCaller(caller_, two_storages)) << "sessions of two storages (the caches are gathered)";
  SessionAttendRequest two_places;
  two_places.steps.push_back(Step(ids_[0], 1, 1));
  two_places.steps.push_back(Step("elsewhere.cuda1.00ff", 1, 1));
  EXPECT_FALSE(sessions.StartsOnCaller(caller_, two_places)) << "sessions of two placements";
  // An unknown session: not here (Start reports it), and nothing kept.
  SessionAttendRequest unknown;
  unknown.steps.push_back(Step(ids_[0], 1, 1));
  unknown.steps.push_back(Step(ids_[0].substr(0, ids_[0].rfind('.')) + ".00ff", 1, 1));
  EXPECT_FALSE(sessions.StartsOnCaller(caller_, unknown));
  EXPECT_TRUE(unknown.sessions.empty());
  // Another identity's session is not looked up for it.
  SessionAttendRequest theirs;
  theirs.steps.push_back(Step(ids_[0], 1, 1));
  EXPECT_FALSE(sessions.StartsOnCaller(SessionCaller{"someone-else", false}, theirs));
  EXPECT_TRUE(theirs.sessions.empty());
}

}  // namespace
}  // namespace sage::server
