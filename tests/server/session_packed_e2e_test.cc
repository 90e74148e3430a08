// AttendSession's packed form (AttendSessionRequest.packed: one k, v and q tensor for all steps),
// end to end on the CPU engine: the same lengths, O and LSE as the per-step form bit for bit, with
// the tensors inline and in registered system shared memory (O and LSE into o_output/lse_output),
// 16-bit and 8-bit storage, prefill chunks, decode rows and bulk imports mixed in one call; the C++
// client's SetPacked builds such calls; every malformed packed call is refused naming the field,
// with nothing appended.
#include <cstring>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "grpcpp/grpcpp.h"
#include "sageserve/client/session.h"
#include "sageserve/client/shared_memory.h"
#include "sageserve/client/tensor.h"
#include "sageserve/v1/session.grpc.pb.h"
#include "tests/server/test_support.h"

namespace sage::testing {
namespace {
namespace v1 = ::sageserve::v1;

constexpr int kHq = 4, kHkv = 2, kD = 64, kLayers = 2;
constexpr size_t kKvRowBytes = kHkv * kD * 2, kQRowBytes = kHq * kD * 2, kLseRowBytes = kHq * sizeof(float);
// Where the shared-memory calls put their tensors in the region.
constexpr size_t kKAt = 0, kVAt = 128 << 10, kQAt = 256 << 10, kOAt = 512 << 10, kLseAt = 768 << 10,
                 kRegionBytes = 1 << 20;

std::vector<uint16_t> Values(int64_t n, int heads, uint32_t seed) { return ChannelBiasedFp16(n, heads, kD, seed, 1.0f, 7); }

void SetTensor(const std::vector<uint16_t>& x, int heads, v1::Tensor* t) {
  ASSERT_TRUE(sageserve::SetTensorFp16(x, sageserve::Shape3{static_cast<int64_t>(x.size() / heads / kD), heads, kD}, t).ok());
}

// One step's tokens: n_new of K/V and n_q rows of Q (0: a bulk import).
struct StepData {
  std::vector<uint16_t> k, v, q;
  int64_t n_new = 0, n_q = 0;
};

class SessionPackedE2E : public ::testing::Test {
 protected:
  void SetUp() override {
    server::ServerOptions options = TestServerOptions();
    options.shared_memory.policy = server::SharedMemoryPolicy::kAllow;
    StartServer(options, nullptr, &s_);
    stub_ = v1::SessionService::NewStub(s_.client->channel());
    auto shm = sageserve::SystemSharedMemory::Create(sageserve::SystemSharedMemory::UniqueKey("packed"), kRegionBytes);
    ASSERT_TRUE(shm.ok()) << shm.status();
    shm_ = *std::move(shm);
    ASSERT_TRUE(s_.client->RegisterSystemSharedMemory("r", shm_->key(), 0, shm_->size()).ok());
  }

  std::string Create(v1::KvStorage storage) {
    return CreateTestSession(*stub_, TestSessionShape{kLayers, kHq, kHkv, kD, storage, 4096});
  }
  int64_t Length(const std::string& id, int layer) { return TestSessionLength(*stub_, id, layer); }
  grpc::Status Call(const v1::AttendSessionRequest& req, v1::AttendSessionResponse* resp) {
    grpc::ClientContext ctx;
    return stub_->AttendSession(&ctx, req, resp);
  }
  std::string RegionBytes(size_t at, size_t bytes) const {
    return std::string(reinterpret_cast<const char*>(shm_->data() + at), bytes);
  }

  // The per-step form of a call: step i of session ids[i] at positions[i].
  static v1::AttendSessionRequest PerStep(const std::vector<std::string>& ids, int layer, const std::vector<int64_t>& positions,
                                          const std::vector<StepData>& data, v1::Recipe recipe) {
    v1::AttendSessionRequest req;
    req.set_recipe(recipe);
    req.set_return_lse(true);
    for (size_t i = 0; i < ids.size(); ++i) {
      v1::SessionStep* s = req.add_steps();
      s->set_session_id(ids[i]);
      s->set_layer(layer);
      s->set_position(positions[i]);
      s->set_step_id(static_cast<uint64_t>(positions[i] * 8 + layer));
      SetTensor(data[i].k, kHkv, s->mutable_k());
      SetTensor(data[i].v, kHkv, s->mutable_v());
      if (data[i].n_q > 0) SetTensor(data[i].q, kHq, s->mutable_q());
    }
    return req;
  }
  // The same call packed: each step keeps its session, layer, position and step id, and its
  // tensors move into packed.k / v / q, inline or (shared) into the region with O and LSE there too.
  v1::AttendSessionRequest Packed(v1::AttendSessionRequest req, bool shared) {
    std::string k, v, q;
    v1::PackedSteps* p = req.mutable_packed();
    for (v1::SessionStep& s : *req.mutable_steps()) {
      p->add_n_new(s.k().shape(0));
      p->add_n_q(s.has_q() ? s.q().shape(0) : 0);
      k += s.k().data();
      v += s.v().data();
      if (s.has_q()) q += s.q().data();
      s.clear_k();
      s.clear_v();
      s.clear_q();
    }
    const int64_t tokens = static_cast<int64_t>(k.size() / kKvRowBytes), rows = static_cast<int64_t>(q.size() / kQRowBytes);
    for (auto [t, bytes, heads, at] : {std::tuple{p->mutable_k(), &k, kHkv, kKAt}, {p->mutable_v(), &v, kHkv, kVAt},
                                       {p->mutable_q(), &q, kHq, kQAt}}) {
      if (t == p->mutable_q() && rows == 0) {
        p->clear_q();
        continue;
      }
      t->set_dtype(v1::DTYPE_FP16);
      t->add_shape(t == p->mutable_q() ? rows : tokens);
      t->add_shape(heads);
      t->add_shape(kD);
      if (shared) {
        std::memcpy(shm_->data() + at, bytes->data(), bytes->size());
        *t->mutable_shared_memory() = sageserve::SharedMemoryRange("r", at, bytes->size());
      } else {
        t->set_data(*bytes);
      }
    }
    if (shared && rows > 0) {
      std::memset(shm_->data() + kOAt, 0xA5, static_cast<size_t>(rows) * kQRowBytes);  // poisoned: every byte written
      std::memset(shm_->data() + kLseAt, 0xA5, static_cast<size_t>(rows) * kLseRowBytes);
      *req.mutable_o_output() = sageserve::SharedMemoryRange("r", kOAt, static_cast<size_t>(rows) * kQRowBytes);
      *req.mutable_lse_output() = sageserve::SharedMemoryRange("r", kLseAt, static_cast<size_t>(rows) * kLseRowBytes);
    }
    return req;
  }

  // `got` (a packed call's answer) against `want` (the per-step form's): the same lengths, and O and
  // LSE the per-step results' concatenated, in the response or in the region.
  void ExpectSameAnswer(const v1::AttendSessionRequest& packed, const v1::AttendSessionResponse& got,
                        const v1::AttendSessionResponse& want) {
    ASSERT_EQ(got.results_size(), want.results_size());
    std::string o, lse;
    int64_t rows = 0;
    for (int i = 0; i < got.results_size(); ++i) {
      EXPECT_EQ(got.results(i).length(), want.results(i).length()) << "step " << i;
      EXPECT_TRUE(got.results(i).session_id().empty());
      EXPECT_FALSE(got.results(i).has_o());
      o += want.results(i).o().data();
      lse += want.results(i).lse().data();
      rows += want.results(i).has_o() ? want.results(i).o().shape(0) : 0;
    }
    if (rows == 0) {
      EXPECT_FALSE(got.has_o());
      return;
    }
    ASSERT_EQ(got.o().shape_size(), 3);
    EXPECT_EQ(got.o().shape(0), rows);
    EXPECT_EQ(got.o().shape(1), kHq);
    EXPECT_EQ(got.lse().shape(0), rows);
    if (packed.has_o_output()) {
      EXPECT_TRUE(got.o().data().empty());
      EXPECT_EQ(got.o().shared_memory().offset(), kOAt);
      EXPECT_EQ(RegionBytes(kOAt, o.size()), o);
      EXPECT_EQ(RegionBytes(kLseAt, lse.size()), lse);
    } else {
      EXPECT_EQ(got.o().data(), o);
      EXPECT_EQ(got.lse().data(), lse);
    }
  }

  // Twin sessions (one set per-step, one packed) get the same calls: a prefill chunk, then decode
  // steps where the third session's step is a bulk import of two tokens.
  void ExpectTwinsAgree(v1::KvStorage storage, bool shared) {
    std::vector<std::string> per_step, packed;
    for (int i = 0; i < 3; ++i) {
      per_step.push_back(Create(storage));
      packed.push_back(Create(storage));
    }
    std::vector<int64_t> positions(3, 0);
    for (int step = 0; step < 3; ++step) {
      for (int layer = 0; layer < kLayers; ++layer) {
        std::vector<StepData> data(3);
        for (int s = 0; s < 3; ++s) {
          const uint32_t seed = static_cast<uint32_t>(step * 100 + layer * 10 + s);
          const int64_t n = step == 0 ? 24 + 8 * s : s == 2 ? 2 : 1;
          const int64_t n_q = step > 0 && s == 2 ? 0 : step == 0 ? 3 : 1;
          data[s] = {Values(n, kHkv, seed), Values(n, kHkv, seed + 1000), Values(n_q, kHq, seed + 2000), n, n_q};
        }
        const v1::Recipe recipe = step == 0 ? v1::RECIPE_UNQUANTIZED : v1::RECIPE_UNSPECIFIED;
        v1::AttendSessionResponse want, got;
        grpc::Status st = Call(PerStep(per_step, layer, positions, data, recipe), &want);
        ASSERT_TRUE(st.ok()) << st.error_message();
        const v1::AttendSessionRequest req = Packed(PerStep(packed, layer, positions, data, recipe), shared);
        st = Call(req, &got);
        ASSERT_TRUE(st.ok()) << st.error_message();
        EXPECT_EQ(got.recipe(), want.recipe());
        ExpectSameAnswer(req, got, want);
      }
      for (int s = 0; s < 3; ++s) positions[s] += step == 0 ? 24 + 8 * s : s == 2 ? 2 : 1;
    }
    for (int s = 0; s < 3; ++s) {
      for (int layer = 0; layer < kLayers; ++layer) EXPECT_EQ(Length(packed[s], layer), Length(per_step[s], layer));
    }
  }

  RunningServer s_;
  std::unique_ptr<v1::SessionService::Stub> stub_;
  std::unique_ptr<sageserve::SystemSharedMemory> shm_;
};

TEST_F(SessionPackedE2E, InlineEqualsThePerStepForm16Bit) { ExpectTwinsAgree(v1::KV_STORAGE_16BIT, false); }
TEST_F(SessionPackedE2E, InlineEqualsThePerStepForm8Bit) { ExpectTwinsAgree(v1::KV_STORAGE_INT8_K_FP8_V, false); }
TEST_F(SessionPackedE2E, SharedMemoryEqualsThePerStepForm) { ExpectTwinsAgree(v1::KV_STORAGE_INT8_K_FP8_V, true); }

// The client library's SetPacked and MakePackedStep build the call Session::Step would send, step
// by step, and Commit keeps the handles' positions.
TEST_F(SessionPackedE2E, ClientSetPackedMatchesSessionStep) {
  sageserve::SessionClient client(*s_.client);
  sageserve::SessionOptions options;
  options.layers = 1;
  options.heads_q = kHq;
  options.heads_kv = kHkv;
  options.head_dim = kD;
  options.max_tokens = 256;
  std::vector<sageserve::Session> one, both;
  for (int i = 0; i < 2; ++i) {
    one.push_back(*client.Create(options));
    both.push_back(*client.Create(options));
  }
  for (int step = 0; step < 3; ++step) {
    const int64_t n = step == 0 ? 16 : 1;
    std::vector<uint16_t> k, v, q;
    std::string want_o;
    for (int s = 0; s < 2; ++s) {
      const uint32_t seed = static_cast<uint32_t>(step * 10 + s);
      const std::vector<uint16_t> ks = Values(n, kHkv, seed), vs = Values(n, kHkv, seed + 100), qs = Values(1, kHq, seed + 200);
      absl::StatusOr<v1::SessionStepResult> r = one[s].Step(0, ks, vs, qs);
      ASSERT_TRUE(r.ok()) << r.status();
      want_o += r->o().data();
      k.insert(k.end(), ks.begin(), ks.end());
      v.insert(v.end(), vs.begin(), vs.end());
      q.insert(q.end(), qs.begin(), qs.end());
    }
    v1::AttendSessionRequest req;
    for (const sageserve::Session& s : both) *req.add_steps() = s.MakePackedStep(0);
    const std::vector<int64_t> n_new = {n, n}, n_q = {1, 1};
    sageserve::SetPacked(options, n_new, n_q, k, v, q, &req);
    absl::StatusOr<v1::AttendSessionResponse> got = client.Attend(req);
    ASSERT_TRUE(got.ok()) << got.status();
    EXPECT_EQ(got->o().data(), want_o) << "step " << step;
    for (int s = 0; s < 2; ++s) both[s].Commit(0, got->results(s));
    EXPECT_EQ(both[0].length(0), one[0].length(0));
  }
}

// Each malformed packed call: INVALID_ARGUMENT naming the field, nothing appended, and the good call
// still served afterwards.
TEST_F(SessionPackedE2E, MalformedPackedCallsAreRefusedNamingTheField) {
  const std::vector<std::string> ids = {Create(v1::KV_STORAGE_16BIT), Create(v1::KV_STORAGE_16BIT)};
  const std::vector<StepData> data = {{Values(2, kHkv, 1), Values(2, kHkv, 2), Values(1, kHq, 3), 2, 1},
                                      {Values(3, kHkv, 4), Values(3, kHkv, 5), Values(2, kHq, 6), 3, 2}};
  const v1::AttendSessionRequest good = Packed(PerStep(ids, 0, {0, 0}, data, v1::RECIPE_UNSPECIFIED), false);
  struct Case {
    const char* name;
    std::function<void(v1::AttendSessionRequest&)> mutate;
    const char* field;
  };
  const std::vector<Case> cases = {
      {"a step's own k as well", [](auto& r) { SetTensor(Values(1, kHkv, 9), kHkv, r.mutable_steps(1)->mutable_k()); },
       "steps[1].k"},
      {"a step's own q as well", [](auto& r) { SetTensor(Values(1, kHq, 9), kHq, r.mutable_steps(0)->mutable_q()); },
       "steps[0].q"},
      {"n_new count short", [](auto& r) { r.mutable_packed()->mutable_n_new()->RemoveLast(); }, "packed.n_new"},
      {"n_q count long", [](auto& r) { r.mutable_packed()->add_n_q(1); }, "packed.n_q"},
      {"n_new negative", [](auto& r) { r.mutable_packed()->set_n_new(0, -1); }, "packed.n_new[0]"},
      {"n_new sum unlike k", [](auto& r) { r.mutable_packed()->set_n_new(0, 1); }, "packed.k.shape[0]"},
      {"n_q sum unlike q", [](auto& r) { r.mutable_packed()->set_n_q(1, 1); }, "packed.q.shape[0]"},
      {"q absent with rows", [](auto& r) { r.mutable_packed()->clear_q(); }, "packed.q"},
      {"v shorter than k", [](auto& r) {
         v1::Tensor* v = r.mutable_packed()->mutable_v();
         v->set_shape(0, 4);
         v->mutable_data()->resize(4 * kKvRowBytes);
       }, "packed.v"},
      {"k bytes unlike its shape", [](auto& r) { r.mutable_packed()->mutable_k()->mutable_data()->resize(8); },
       "packed.k.data"},
  };
  for (const Case& c : cases) {
    v1::AttendSessionRequest bad = good;
    c.mutate(bad);
    v1::AttendSessionResponse resp;
    grpc::Status st = Call(bad, &resp);
    EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << c.name << ": " << st.error_message();
    EXPECT_EQ(st.error_message().rfind(c.field, 0), 0u) << c.name << ": " << st.error_message();
    for (const std::string& id : ids) EXPECT_EQ(Length(id, 0), 0) << c.name << ": appended by a refused call";
  }
  v1::AttendSessionResponse resp;
  grpc::Status st = Call(good, &resp);
  ASSERT_TRUE(st.ok()) << st.error_message();
  EXPECT_EQ(resp.results(1).length(), 3);
  EXPECT_EQ(resp.o().shape(0), 3);
}

}  // namespace
}  // namespace sage::testing
