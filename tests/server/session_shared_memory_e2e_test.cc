// AttendSession with q, k, v and O/LSE in registered system shared memory, end to end on the CPU
// engine: prefill and decode steps give the inline path's O, LSE and lengths bit for bit (16-bit and
// 8-bit storage), each step's result names its own rows of o_output; every bad reference gets its
// code and a message naming the field, with nothing appended; a region unregistered between calls
// or shrunk under one is refused; a retried step is appended once; the stream takes references too.
#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cstring>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "grpcpp/grpcpp.h"
#include "sageserve/client/shared_memory.h"
#include "sageserve/client/tensor.h"
#include "sageserve/v1/session.grpc.pb.h"
#include "tests/server/test_support.h"

namespace sage::testing {
namespace {
namespace v1 = ::sageserve::v1;

constexpr int kHq = 4, kHkv = 2, kD = 64;
constexpr size_t kQRowBytes = kHq * kD * 2, kLseRowBytes = kHq * sizeof(float);
// Where the tests put things in the region: Q of a call, then its O, then its LSE, then its K/V.
constexpr size_t kQAt = 0, kOAt = 256 << 10, kLseAt = 512 << 10, kKvAt = 768 << 10, kRegionBytes = 1 << 20;

// Which of a step's k and v ToShared moves into the region (q always goes).
enum class KvBytes { kInline, kShared, kKOnly };

std::vector<uint16_t> Values(int64_t n, int heads, uint32_t seed) { return ChannelBiasedFp16(n, heads, kD, seed, 1.0f, 7); }

void SetTensor(const std::vector<uint16_t>& x, int heads, v1::Tensor* t) {
  ASSERT_TRUE(sageserve::SetTensorFp16(x, sageserve::Shape3{static_cast<int64_t>(x.size() / heads / kD), heads, kD}, t).ok());
}

struct StepData {
  std::vector<uint16_t> k, v, q;
};

class SessionSharedMemoryE2E : public ::testing::Test {
 protected:
  void SetUp() override {
    server::ServerOptions options = TestServerOptions();
    options.shared_memory.policy = server::SharedMemoryPolicy::kAllow;
    StartServer(options, nullptr, &s_);
    stub_ = v1::SessionService::NewStub(s_.client->channel());
    auto shm = sageserve::SystemSharedMemory::Create(sageserve::SystemSharedMemory::UniqueKey("sess"), kRegionBytes);
    ASSERT_TRUE(shm.ok()) << shm.status();
    shm_ = *std::move(shm);
    ASSERT_TRUE(s_.client->RegisterSystemSharedMemory("r", shm_->key(), 0, shm_->size()).ok());
  }

  std::string Create(v1::KvStorage storage = v1::KV_STORAGE_16BIT) {
    return CreateTestSession(*stub_, TestSessionShape{2, kHq, kHkv, kD, storage, 4096});
  }
  int64_t Length(const std::string& id, int layer) { return TestSessionLength(*stub_, id, layer); }

  // One call over `ids` (a step each, with `data[i]`), every q inline.
  static v1::AttendSessionRequest Inline(const std::vector<std::string>& ids, int layer, int64_t position,
                                         const std::vector<StepData>& data, v1::Recipe recipe) {
    v1::AttendSessionRequest req;
    req.set_request_id(absl::StrCat("call-", layer, "-", position));
    req.set_recipe(recipe);
    req.set_return_lse(true);
    for (size_t i = 0; i < ids.size(); ++i) {
      v1::SessionStep* s = req.add_steps();
      s->set_session_id(ids[i]);
      s->set_layer(layer);
      s->set_position(position);
      s->set_step_id(static_cast<uint64_t>(position * 8 + layer));
      SetTensor(data[i].k, kHkv, s->mutable_k());
      SetTensor(data[i].v, kHkv, s->mutable_v());
      SetTensor(data[i].q, kHq, s->mutable_q());
    }
    return req;
  }
  // `req` with every step's q moved into the region (back to back from kQAt), k and v as `kv` says
  // (k0, v0, k1, ... from kKvAt) and O/LSE into it, the output ranges poisoned so the server must
  // write every byte.
  v1::AttendSessionRequest ToShared(v1::AttendSessionRequest req, KvBytes kv = KvBytes::kInline) {
    size_t at = kQAt, rows = 0, kv_at = kKvAt;
    const auto move = [&](v1::Tensor* t) {
      std::memcpy(shm_->data() + kv_at, t->data().data(), t->data().size());
      *t->mutable_shared_memory() = sageserve::SharedMemoryRange("r", kv_at, t->data().size());
      kv_at += t->data().size();
      t->clear_data();
    };
    for (v1::SessionStep& s : *req.mutable_steps()) {
      if (kv != KvBytes::kInline) move(s.mutable_k());
      if (kv == KvBytes::kShared) move(s.mutable_v());
      const std::string& bytes = s.q().data();
      std::memcpy(shm_->data() + at, bytes.data(), bytes.size());
      *s.mutable_q()->mutable_shared_memory() = sageserve::SharedMemoryRange("r", at, bytes.size());
      at += bytes.size();
      rows += bytes.size() / kQRowBytes;
      s.mutable_q()->clear_data();
    }
    std::memset(shm_->data() + kOAt, 0xA5, rows * kQRowBytes);
    std::memset(shm_->data() + kLseAt, 0xA5, rows * kLseRowBytes);
    *req.mutable_o_output() = sageserve::SharedMemoryRange("r", kOAt, rows * kQRowBytes);
    if (req.return_lse()) *req.mutable_lse_output() = sageserve::SharedMemoryRange("r", kLseAt, rows * kLseRowBytes);
    return req;
  }
  grpc::Status Call(const v1::AttendSessionRequest& req, v1::AttendSessionResponse* resp) {
    grpc::ClientContext ctx;
    return stub_->AttendSession(&ctx, req, resp);
  }
  std::string RegionBytes(const v1::SharedMemoryRef& ref) const {
    return std::string(reinterpret_cast<const char*>(shm_->data() + ref.offset()), ref.byte_size());
  }
  // `got` (answered through the region) equals `want` (the inline answer) bit for bit, and each
  // step's references name its own rows of o_output / lse_output.
  void ExpectSameAnswer(const v1::AttendSessionRequest& shared, const v1::AttendSessionResponse& got,
                        const v1::AttendSessionResponse& want) {
    ASSERT_EQ(got.results_size(), want.results_size());
    uint64_t row = 0;
    for (int i = 0; i < got.results_size(); ++i) {
      const v1::SessionStepResult& g = got.results(i);
      const v1::SessionStepResult& w = want.results(i);
      EXPECT_EQ(g.length(), w.length());
      ASSERT_TRUE(g.o().data().empty()) << "step " << i;
      ASSERT_TRUE(g.o().has_shared_memory()) << "step " << i;
      EXPECT_EQ(g.o().shape(0), w.o().shape(0));
      const uint64_t n_q = static_cast<uint64_t>(w.o().shape(0));
      EXPECT_EQ(g.o().shared_memory().region(), "r");
      EXPECT_EQ(g.o().shared_memory().offset(), shared.o_output().offset() + row * kQRowBytes);
      EXPECT_EQ(g.o().shared_memory().byte_size(), n_q * kQRowBytes);
      EXPECT_EQ(RegionBytes(g.o().shared_memory()), w.o().data()) << "step " << i;
      ASSERT_TRUE(g.lse().data().empty());
      EXPECT_EQ(g.lse().shared_memory().offset(), shared.lse_output().offset() + row * kLseRowBytes);
      EXPECT_EQ(RegionBytes(g.lse().shared_memory()), w.lse().data()) << "step " << i;
      row += n_q;
    }
  }

  // Twin sessions get the same tokens, one pair inline and one through the region (k and v as `kv`
  // says): a prefill chunk (the gathered path) and decode steps (the paged path), two sessions per
  // call. Returns the position after them.
  int64_t ExpectTwinsAgree(const std::vector<std::string>& inline_ids, const std::vector<std::string>& shared_ids,
                           KvBytes kv) {
    int64_t position = 0;
    for (int step = 0; step < 4; ++step) {
      const int64_t n = step == 0 ? 40 : 1;
      for (int layer = 0; layer < 2; ++layer) {
        std::vector<StepData> data(2);
        for (int s = 0; s < 2; ++s) {
          const uint32_t seed = static_cast<uint32_t>(step * 100 + layer * 10 + s);
          data[s] = {Values(n, kHkv, seed), Values(n, kHkv, seed + 1000), Values(n, kHq, seed + 2000)};
        }
        const v1::Recipe recipe = step == 0 ? v1::RECIPE_UNQUANTIZED : v1::RECIPE_UNSPECIFIED;
        v1::AttendSessionResponse want, got;
        grpc::Status st = Call(Inline(inline_ids, layer, position, data, recipe), &want);
        EXPECT_TRUE(st.ok()) << st.error_message();
        const v1::AttendSessionRequest shared = ToShared(Inline(shared_ids, layer, position, data, recipe), kv);
        st = Call(shared, &got);
        EXPECT_TRUE(st.ok()) << st.error_message();
        EXPECT_EQ(got.recipe(), want.recipe());
        ExpectSameAnswer(shared, got, want);
      }
      position += n;
    }
    for (size_t s = 0; s < shared_ids.size(); ++s) {
      for (int layer = 0; layer < 2; ++layer) EXPECT_EQ(Length(shared_ids[s], layer), Length(inline_ids[s], layer));
    }
    return position;
  }

  RunningServer s_;
  std::unique_ptr<v1::SessionService::Stub> stub_;
  std::unique_ptr<sageserve::SystemSharedMemory> shm_;
};

TEST_F(SessionSharedMemoryE2E, StepsEqualTheInlinePathBitForBit) {
  const std::vector<std::string> inline_ids = {Create(), Create()}, shared_ids = {Create(), Create()};
  const int64_t position = ExpectTwinsAgree(inline_ids, shared_ids, KvBytes::kInline);
  // Without return_lse, O alone goes to the region.
  std::vector<StepData> data(2);
  for (int s = 0; s < 2; ++s) data[s] = {Values(1, kHkv, 7 + s), Values(1, kHkv, 17 + s), Values(1, kHq, 27 + s)};
  v1::AttendSessionRequest in = Inline(inline_ids, 0, position, data, v1::RECIPE_UNSPECIFIED);
  in.set_return_lse(false);
  v1::AttendSessionRequest shared = Inline(shared_ids, 0, position, data, v1::RECIPE_UNSPECIFIED);
  shared.set_return_lse(false);
  shared = ToShared(shared);
  v1::AttendSessionResponse want, got;
  ASSERT_TRUE(Call(in, &want).ok());
  grpc::Status st = Call(shared, &got);
  ASSERT_TRUE(st.ok()) << st.error_message();
  for (int i = 0; i < 2; ++i) {
    EXPECT_FALSE(got.results(i).has_lse());
    EXPECT_EQ(RegionBytes(got.results(i).o().shared_memory()), want.results(i).o().data());
  }
}

// Each bad reference: its code, a message naming the field, nothing appended, and the server
// still serves the good call afterwards.
TEST_F(SessionSharedMemoryE2E, BadReferencesAreRefusedNamingTheField) {
  const std::string id = Create();
  std::vector<StepData> data = {{Values(2, kHkv, 1), Values(2, kHkv, 2), Values(2, kHq, 3)}};
  // k at kKvAt, v right after it.
  const v1::AttendSessionRequest good = ToShared(Inline({id}, 0, 0, data, v1::RECIPE_UNSPECIFIED), KvBytes::kShared);
  const uint64_t q_bytes = 2 * kQRowBytes, kv_bytes = 2 * kHkv * kD * 2;
  struct Case {
    const char* name;
    std::function<void(v1::AttendSessionRequest&)> mutate;
    grpc::StatusCode code;
    const char* field;
  };
  const std::vector<Case> cases = {
      {"unknown region", [](auto& r) { r.mutable_steps(0)->mutable_q()->mutable_shared_memory()->set_region("nope"); },
       grpc::StatusCode::NOT_FOUND, "steps[0].q.shared_memory"},
      {"size unlike the shape", [](auto& r) { r.mutable_steps(0)->mutable_q()->mutable_shared_memory()->set_byte_size(8); },
       grpc::StatusCode::INVALID_ARGUMENT, "steps[0].q.shared_memory"},
      {"outside the region",
       [](auto& r) { r.mutable_steps(0)->mutable_q()->mutable_shared_memory()->set_offset(kRegionBytes - 64); },
       grpc::StatusCode::INVALID_ARGUMENT, "steps[0].q.shared_memory"},
      {"unaligned", [](auto& r) { r.mutable_steps(0)->mutable_q()->mutable_shared_memory()->set_offset(1); },
       grpc::StatusCode::INVALID_ARGUMENT, "steps[0].q.shared_memory.offset"},
      {"data and shared_memory", [](auto& r) { r.mutable_steps(0)->mutable_q()->set_data("xx"); },
       grpc::StatusCode::INVALID_ARGUMENT, "steps[0].q"},
      {"k in an unknown region",
       [](auto& r) { r.mutable_steps(0)->mutable_k()->mutable_shared_memory()->set_region("nope"); },
       grpc::StatusCode::NOT_FOUND, "steps[0].k.shared_memory"},
      {"v size unlike the shape",
       [](auto& r) { r.mutable_steps(0)->mutable_v()->mutable_shared_memory()->set_byte_size(kv_bytes - 2); },
       grpc::StatusCode::INVALID_ARGUMENT, "steps[0].v.shared_memory"},
      {"k outside the region",
       [](auto& r) { r.mutable_steps(0)->mutable_k()->mutable_shared_memory()->set_offset(kRegionBytes - 64); },
       grpc::StatusCode::INVALID_ARGUMENT, "steps[0].k.shared_memory"},
      {"v unaligned", [](auto& r) { r.mutable_steps(0)->mutable_v()->mutable_shared_memory()->set_offset(kKvAt + 1); },
       grpc::StatusCode::INVALID_ARGUMENT, "steps[0].v.shared_memory.offset"},
      {"k data and shared_memory", [](auto& r) { r.mutable_steps(0)->mutable_k()->set_data("xx"); },
       grpc::StatusCode::INVALID_ARGUMENT, "steps[0].k"},
      {"v shape unlike k's", [](auto& r) { r.mutable_steps(0)->mutable_v()->set_shape(0, 1); },
       grpc::StatusCode::INVALID_ARGUMENT, "steps[0].v"},
      {"o_output over v",
       [q_bytes](auto& r) { *r.mutable_o_output() = sageserve::SharedMemoryRange("r", kKvAt + kv_bytes, q_bytes); },
       grpc::StatusCode::INVALID_ARGUMENT, "o_output: overlaps steps[0].v"},
      {"lse_output without o_output", [](auto& r) { r.clear_o_output(); }, grpc::StatusCode::INVALID_ARGUMENT,
       "lse_output"},
      {"lse_output missing", [](auto& r) { r.clear_lse_output(); }, grpc::StatusCode::INVALID_ARGUMENT, "lse_output"},
      {"lse_output without return_lse", [](auto& r) { r.set_return_lse(false); }, grpc::StatusCode::INVALID_ARGUMENT,
       "lse_output"},
      {"o_output too small", [](auto& r) { r.mutable_o_output()->set_byte_size(kQRowBytes); },
       grpc::StatusCode::INVALID_ARGUMENT, "o_output"},
      {"o_output over q", [q_bytes](auto& r) { *r.mutable_o_output() = sageserve::SharedMemoryRange("r", kQAt, q_bytes); },
       grpc::StatusCode::INVALID_ARGUMENT, "o_output: overlaps steps[0].q"},
      {"lse_output over o_output",
       [](auto& r) { *r.mutable_lse_output() = sageserve::SharedMemoryRange("r", kOAt, 2 * kLseRowBytes); },
       grpc::StatusCode::INVALID_ARGUMENT, "lse_output: overlaps o_output"},
      {"o_output region unknown", [](auto& r) { r.mutable_o_output()->set_region("nope"); }, grpc::StatusCode::NOT_FOUND,
       "o_output"},
      {"o_output with no q", [](auto& r) { r.mutable_steps(0)->clear_q(); }, grpc::StatusCode::INVALID_ARGUMENT,
       "o_output"},
  };
  for (const Case& c : cases) {
    v1::AttendSessionRequest bad = good;
    c.mutate(bad);
    v1::AttendSessionResponse resp;
    grpc::Status st = Call(bad, &resp);
    EXPECT_EQ(st.error_code(), c.code) << c.name << ": " << st.error_message();
    EXPECT_EQ(st.error_message().rfind(c.field, 0), 0u) << c.name << ": " << st.error_message();
    EXPECT_EQ(Length(id, 0), 0) << c.name << ": appended by a refused call";
  }
  v1::AttendSessionResponse resp;
  grpc::Status st = Call(good, &resp);
  ASSERT_TRUE(st.ok()) << st.error_message();
  EXPECT_EQ(resp.results(0).length(), 2);
}

// A region unregistered after a call is refused by the next one (NOT_FOUND naming the field).
TEST_F(SessionSharedMemoryE2E, RegionUnregisteredBetweenCallsIsRefused) {
  const std::string id = Create();
  std::vector<StepData> data = {{Values(1, kHkv, 1), Values(1, kHkv, 2), Values(1, kHq, 3)}};
  v1::AttendSessionResponse resp;
  grpc::Status st = Call(ToShared(Inline({id}, 0, 0, data, v1::RECIPE_UNSPECIFIED)), &resp);
  ASSERT_TRUE(st.ok()) << st.error_message();
  ASSERT_TRUE(s_.client->UnregisterSharedMemory("r").ok());
  st = Call(ToShared(Inline({id}, 0, 1, data, v1::RECIPE_UNSPECIFIED)), &resp);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::NOT_FOUND) << st.error_message();
  EXPECT_EQ(st.error_message().rfind("steps[0].q.shared_memory", 0), 0u) << st.error_message();
  EXPECT_EQ(Length(id, 0), 1);
}

// K and V from the region (both, or k alone beside an inline v) give the inline twins' O, LSE and
// lengths bit for bit, with 16-bit and 8-bit storage.
TEST_F(SessionSharedMemoryE2E, KvFromSharedMemoryEqualsTheInlinePath) {
  for (v1::KvStorage storage : {v1::KV_STORAGE_16BIT, v1::KV_STORAGE_INT8_K_FP8_V}) {
    for (KvBytes kv : {KvBytes::kShared, KvBytes::kKOnly}) {
      SCOPED_TRACE(absl::StrCat("storage ", static_cast<int>(storage), ", k/v ", static_cast<int>(kv)));
      ExpectTwinsAgree({Create(storage), Create(storage)}, {Create(storage), Create(storage)}, kv);
    }
  }
}

// A retried step (same position and step id) whose K/V come from the region is appended once and
// answers as the first time did.
TEST_F(SessionSharedMemoryE2E, RetriedKvFromSharedMemoryIsAppendedOnce) {
  const std::string id = Create(v1::KV_STORAGE_INT8_K_FP8_V);
  std::vector<StepData> data = {{Values(3, kHkv, 1), Values(3, kHkv, 2), Values(1, kHq, 3)}};
  const v1::AttendSessionRequest req = ToShared(Inline({id}, 0, 0, data, v1::RECIPE_UNSPECIFIED), KvBytes::kShared);
  v1::AttendSessionResponse first, again;
  grpc::Status st = Call(req, &first);
  ASSERT_TRUE(st.ok()) << st.error_message();
  const std::string o = RegionBytes(first.results(0).o().shared_memory());
  st = Call(req, &again);
  ASSERT_TRUE(st.ok()) << st.error_message();
  EXPECT_EQ(again.results(0).length(), 3);
  EXPECT_EQ(Length(id, 0), 3);
  EXPECT_EQ(RegionBytes(again.results(0).o().shared_memory()), o);
}

// K/V in a region unregistered after a call: the next call is NOT_FOUND naming k, nothing appended.
TEST_F(SessionSharedMemoryE2E, KvRegionUnregisteredBetweenCallsIsRefused) {
  const std::string id = Create();
  std::vector<StepData> data = {{Values(1, kHkv, 1), Values(1, kHkv, 2), Values(1, kHq, 3)}};
  v1::AttendSessionResponse resp;
  ASSERT_TRUE(Call(ToShared(Inline({id}, 0, 0, data, v1::RECIPE_UNSPECIFIED), KvBytes::kShared), &resp).ok());
  const v1::AttendSessionRequest next = ToShared(Inline({id}, 0, 1, data, v1::RECIPE_UNSPECIFIED), KvBytes::kShared);
  ASSERT_TRUE(s_.client->UnregisterSharedMemory("r").ok());
  grpc::Status st = Call(next, &resp);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::NOT_FOUND) << st.error_message();
  EXPECT_EQ(st.error_message().rfind("steps[0].k.shared_memory", 0), 0u) << st.error_message();
  EXPECT_EQ(Length(id, 0), 1);
}

// A client that shrinks its object under K/V gets FAILED_PRECONDITION naming the step's k (read
// with the fault-tolerant copy: the server, in this process, would otherwise die of SIGBUS), and
// nothing is appended.
TEST_F(SessionSharedMemoryE2E, KvInAShrunkObjectIsRefused) {
  const std::string id = Create();
  std::vector<StepData> data = {{Values(2, kHkv, 1), Values(2, kHkv, 2), Values(2, kHq, 3)}};
  const v1::AttendSessionRequest req = ToShared(Inline({id}, 0, 0, data, v1::RECIPE_UNSPECIFIED), KvBytes::kShared);
  const int fd = shm_open(shm_->key().c_str(), O_RDWR, 0);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(ftruncate(fd, 4096), 0);  // q stays readable; k and v (at kKvAt) are gone
  v1::AttendSessionResponse resp;
  grpc::Status st = Call(req, &resp);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::FAILED_PRECONDITION) << st.error_message();
  EXPECT_EQ(st.error_message().rfind("steps[0].k.shared_memory", 0), 0u) << st.error_message();
  EXPECT_EQ(Length(id, 0), 0);
  ASSERT_EQ(ftruncate(fd, kRegionBytes), 0);  // the bytes come back as zeros; the call now appends
  close(fd);
  st = Call(req, &resp);
  ASSERT_TRUE(st.ok()) << st.error_message();
  EXPECT_EQ(Length(id, 0), 2);
}

// AttendSessionStream: requests with references are answered like unary ones; a bad one fails
// alone and the stream goes on.
TEST_F(SessionSharedMemoryE2E, StreamTakesReferences) {
  const std::vector<std::string> inline_ids = {Create()}, shared_ids = {Create()};
  grpc::ClientContext ctx;
  auto stream = stub_->AttendSessionStream(&ctx);
  for (int64_t pos = 0; pos < 3; ++pos) {
    std::vector<StepData> data = {{Values(1, kHkv, 5 + pos), Values(1, kHkv, 15 + pos), Values(1, kHq, 25 + pos)}};
    v1::AttendSessionResponse want, got;
    ASSERT_TRUE(Call(Inline(inline_ids, 1, pos, data, v1::RECIPE_UNSPECIFIED), &want).ok());
    v1::AttendSessionRequest bad = ToShared(Inline(shared_ids, 1, pos, data, v1::RECIPE_UNSPECIFIED));
    bad.set_request_id("bad");
    bad.mutable_o_output()->set_region("nope");
    ASSERT_TRUE(stream->Write(bad));
    ASSERT_TRUE(stream->Read(&got));
    EXPECT_EQ(got.request_id(), "bad");
    EXPECT_EQ(got.status().code(), static_cast<int>(grpc::StatusCode::NOT_FOUND)) << got.status().message();
    const v1::AttendSessionRequest shared = ToShared(Inline(shared_ids, 1, pos, data, v1::RECIPE_UNSPECIFIED));
    ASSERT_TRUE(stream->Write(shared));
    ASSERT_TRUE(stream->Read(&got));
    ASSERT_EQ(got.status().code(), 0) << got.status().message();
    ExpectSameAnswer(shared, got, want);
  }
  stream->WritesDone();
  grpc::Status st = stream->Finish();
  EXPECT_TRUE(st.ok()) << st.error_message();
}

// Without --allow_shared_memory a reference is refused (FAILED_PRECONDITION), as for Attend.
TEST(SessionSharedMemoryOff, ReferencesAreRefused) {
  RunningServer s;
  StartServer(TestServerOptions(), nullptr, &s);
  auto stub = v1::SessionService::NewStub(s.client->channel());
  v1::CreateSessionRequest create;
  create.set_layers(1);
  create.set_heads_q(kHq);
  create.set_heads_kv(kHkv);
  create.set_head_dim(kD);
  create.set_dtype(v1::DTYPE_FP16);
  create.set_max_tokens(64);
  v1::CreateSessionResponse created;
  grpc::ClientContext c1;
  ASSERT_TRUE(stub->CreateSession(&c1, create, &created).ok());
  v1::AttendSessionRequest req;
  v1::SessionStep* step = req.add_steps();
  step->set_session_id(created.session_id());
  SetTensor(Values(1, kHkv, 1), kHkv, step->mutable_k());
  SetTensor(Values(1, kHkv, 2), kHkv, step->mutable_v());
  v1::Tensor* q = step->mutable_q();
  q->set_dtype(v1::DTYPE_FP16);
  for (int64_t d : {1, kHq, kD}) q->add_shape(d);
  *q->mutable_shared_memory() = sageserve::SharedMemoryRange("r", 0, kQRowBytes);
  v1::AttendSessionResponse resp;
  grpc::ClientContext c2;
  grpc::Status st = stub->AttendSession(&c2, req, &resp);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::FAILED_PRECONDITION) << st.error_message();
  EXPECT_NE(st.error_message().find("--allow_shared_memory"), std::string::npos) << st.error_message();
}

}  // namespace
}  // namespace sage::testing
