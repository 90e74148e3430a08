// INT4 K / FP8 V sessions (KV_STORAGE_INT4_K_FP8_V) end to end over gRPC: on the CPU engine every
// step, prefill and decode, equals a stateless Attend over the values the scheme decodes
// (DecodeKvTokens with the session's K mean), bit for bit, for the unquantized recipe and a
// quantized one; an engine whose pages cannot hold INT4 K (a stand-in) refuses such a
// session at creation, naming the storage. The storage's accuracy: session_e2e_test.cc.
#include <memory>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "grpcpp/grpcpp.h"
#include "kernels/reference/kv_pages.h"
#include "kernels/reference/numerics.h"
#include "sageserve/client/tensor.h"
#include "sageserve/v1/attention_service.grpc.pb.h"
#include "sageserve/v1/session.grpc.pb.h"
#include "tests/server/test_support.h"

namespace sage::testing {
namespace {
namespace v1 = ::sageserve::v1;

constexpr int kHq = 4, kHkv = 2, kD = 64, kLayers = 3;
constexpr size_t kRow = static_cast<size_t>(kHkv) * kD;  // values per token of K or V

void SetTensor(const std::vector<uint16_t>& x, int heads, v1::Tensor* t) {
  ASSERT_TRUE(sageserve::SetTensorFp16(x, sageserve::Shape3{static_cast<int64_t>(x.size() / heads / kD), heads, kD}, t).ok());
}

// The session's K mean: its first append's per-channel mean, an fp32 sum in token order and one
// division (as the store takes it).
std::vector<float> KMean(const std::vector<uint16_t>& k) {
  std::vector<float> mean(kRow, 0.0f);
  const size_t n = k.size() / kRow;
  for (size_t t = 0; t < n; ++t) {
    for (size_t i = 0; i < kRow; ++i) mean[i] += DecodeFp16(k[t * kRow + i]);
  }
  for (float& m : mean) m /= static_cast<float>(n);
  return mean;
}

// Appends what the session's pages give back for tokens `k`/`v`: each token encoded and decoded on
// its own (scales are per token-head, so where a token sits in its page changes nothing).
void AppendDecoded(const std::vector<uint16_t>& k, const std::vector<uint16_t>& v, const std::vector<float>& mean,
                   std::vector<uint16_t>* dk, std::vector<uint16_t>* dv) {
  const KvPageLayout one{KvStorage::kInt4KFp8V, DType::kF16, 1, kHkv, kD};
  std::vector<std::byte> page(one.page_bytes());
  std::vector<uint16_t> tk(kRow), tv(kRow);
  for (size_t t = 0; t < k.size() / kRow; ++t) {
    EncodeKvTokens(one, page.data(), 0, 1, k.data() + t * kRow, v.data() + t * kRow, mean);
    DecodeKvTokens(one, page.data(), 0, 1, tk.data(), tv.data());
    dk->insert(dk->end(), tk.begin(), tk.end());
    dv->insert(dv->end(), tv.begin(), tv.end());
  }
}

// Prefill 300 tokens, then 6 decode steps, on each of 3 layers (layer 2 with the INT8 recipe):
// each step's O and LSE equal a stateless Attend with the same Q and recipe over the decoded K/V.
// GetServerInfo's kv_storages, so a client can choose before CreateSession.
std::vector<int> ServedStorages(RunningServer& s) {
  auto stub = v1::AttentionService::NewStub(s.client->channel());
  grpc::ClientContext ctx;
  v1::GetServerInfoResponse info;
  const grpc::Status st = stub->GetServerInfo(&ctx, v1::GetServerInfoRequest(), &info);
  EXPECT_TRUE(st.ok()) << st.error_message();
  return std::vector<int>(info.kv_storages().begin(), info.kv_storages().end());
}

TEST(SessionInt4E2E, StepsEqualStatelessAttendOverTheDecodedValues) {
  RunningServer s;
  StartServer(TestServerOptions(), nullptr, &s);
  EXPECT_EQ(ServedStorages(s), (std::vector<int>{v1::KV_STORAGE_16BIT, v1::KV_STORAGE_INT8_K_FP8_V,
                                                 v1::KV_STORAGE_INT4_K_FP8_V}));
  auto stub = v1::SessionService::NewStub(s.client->channel());
  TestSessionShape shape;
  shape.layers = kLayers;
  shape.heads_q = kHq;
  shape.heads_kv = kHkv;
  shape.head_dim = kD;
  shape.storage = v1::KV_STORAGE_INT4_K_FP8_V;
  const std::string id = CreateTestSession(*stub, shape);
  ASSERT_FALSE(id.empty());
  std::vector<std::vector<float>> mean(kLayers);
  std::vector<std::vector<uint16_t>> dk(kLayers), dv(kLayers), sent_k(kLayers);
  int64_t len = 0;
  for (int step = 0; step < 7; ++step) {
    const int64_t n = step == 0 ? 300 : 1;
    for (int layer = 0; layer < kLayers; ++layer) {
      const auto seed = static_cast<uint32_t>(step * 10 + layer);
      const auto nk = ChannelBiasedFp16(n, kHkv, kD, seed, 1.5f, 7), nv = ChannelBiasedFp16(n, kHkv, kD, seed + 500, 0.5f, 5);
      const auto q = ChannelBiasedFp16(n, kHq, kD, seed + 900, 0.0f, 1);
      if (step == 0) mean[layer] = KMean(nk);
      AppendDecoded(nk, nv, mean[layer], &dk[layer], &dv[layer]);
      sent_k[layer].insert(sent_k[layer].end(), nk.begin(), nk.end());
      const v1::Recipe recipe = layer == 2 ? v1::RECIPE_INT8_QK_FP8_PV : v1::RECIPE_UNQUANTIZED;

      grpc::ClientContext ctx;
      v1::AttendSessionRequest req;
      req.set_recipe(recipe);
      req.set_return_lse(true);
      v1::SessionStep* st = req.add_steps();
      st->set_session_id(id);
      st->set_layer(layer);
      st->set_position(len);
      st->set_step_id(static_cast<uint64_t>(step));
      SetTensor(nk, kHkv, st->mutable_k());
      SetTensor(nv, kHkv, st->mutable_v());
      SetTensor(q, kHq, st->mutable_q());
      v1::AttendSessionResponse got;
      const grpc::Status status = stub->AttendSession(&ctx, req, &got);
      ASSERT_TRUE(status.ok()) << status.error_message();
      ASSERT_EQ(got.results_size(), 1);
      EXPECT_EQ(got.results(0).length(), len + n);

      v1::AttendRequest stateless;
      SetTensor(q, kHq, stateless.mutable_q());
      SetTensor(dk[layer], kHkv, stateless.mutable_k());
      SetTensor(dv[layer], kHkv, stateless.mutable_v());
      stateless.set_mask(v1::MASK_MODE_CAUSAL);
      stateless.set_recipe(recipe);
      stateless.set_return_lse(true);
      absl::StatusOr<v1::AttendResponse> want = s.client->Attend(stateless);
      ASSERT_TRUE(want.ok()) << want.status();
      ASSERT_EQ(got.results(0).o().data(), want->o().data()) << "step " << step << " layer " << layer;
      ASSERT_EQ(got.results(0).lse().data(), want->lse().data()) << "step " << step << " layer " << layer;
    }
    len += n;
  }
  // The pages hold INT4 codes, not the values sent: K comes back centred and quantized.
  EXPECT_NE(dk[0], sent_k[0]);
}

// Steps of different storages in one call, from three sessions or from the three layers of one
// session whose layers store differently: each step reads its own layer's pages as that storage
// lays them out (a launch over pages of one layout would read the INT4 codes as 16-bit values), so
// every result equals the stateless Attend over that layer's decoded K/V.
void CheckOneCallOverStorages(bool one_session) {
  RunningServer s;
  StartServer(TestServerOptions(), nullptr, &s);
  auto stub = v1::SessionService::NewStub(s.client->channel());
  const v1::KvStorage storages[] = {v1::KV_STORAGE_16BIT, v1::KV_STORAGE_INT4_K_FP8_V, v1::KV_STORAGE_INT8_K_FP8_V};
  std::vector<std::string> ids;
  if (one_session) {
    grpc::ClientContext ctx;
    TestSessionShape shape;
    shape.layers = 3;
    shape.heads_q = kHq;
    shape.heads_kv = kHkv;
    shape.head_dim = kD;
    shape.storage = v1::KV_STORAGE_UNSPECIFIED;
    v1::CreateSessionRequest req = TestSessionRequest(shape);
    for (v1::KvStorage st : storages) req.add_layer_kv_storages(st);
    v1::CreateSessionResponse resp;
    const grpc::Status st = stub->CreateSession(&ctx, req, &resp);
    ASSERT_TRUE(st.ok()) << st.error_message();
    ASSERT_EQ(resp.info().layer_kv_storages_size(), 3);
    EXPECT_EQ(resp.info().layer_kv_storages(1), v1::KV_STORAGE_INT4_K_FP8_V);
    EXPECT_EQ(resp.info().kv_storage(), v1::KV_STORAGE_UNSPECIFIED);
    ASSERT_EQ(resp.info().layer_page_tokens_size(), 3);
    for (int t : resp.info().layer_page_tokens()) {  // page_tokens: the layers' count where they agree, else 0
      EXPECT_TRUE(resp.info().page_tokens() == 0 || resp.info().page_tokens() == t);
    }
    ids.assign(3, resp.session_id());
  } else {
    for (int i = 0; i < 3; ++i) {
      TestSessionShape shape;
      shape.layers = 1;
      shape.heads_q = kHq;
      shape.heads_kv = kHkv;
      shape.head_dim = kD;
      shape.storage = storages[i];
      ids.push_back(CreateTestSession(*stub, shape));
      ASSERT_FALSE(ids.back().empty());
    }
  }
  std::vector<std::vector<uint16_t>> dk(3), dv(3);
  std::vector<std::vector<float>> mean(3);
  for (int step = 0; step < 3; ++step) {
    const int64_t n = step == 0 ? 200 : 1;
    const int64_t pos = step == 0 ? 0 : 199 + step;
    grpc::ClientContext ctx;
    v1::AttendSessionRequest req;
    req.set_return_lse(true);
    std::vector<std::vector<uint16_t>> qs;
    for (int i = 0; i < 3; ++i) {
      const auto seed = static_cast<uint32_t>(step * 10 + i + 100);
      const auto nk = ChannelBiasedFp16(n, kHkv, kD, seed, 1.5f, 7), nv = ChannelBiasedFp16(n, kHkv, kD, seed + 500, 0.5f, 5);
      qs.push_back(ChannelBiasedFp16(1, kHq, kD, seed + 900, 0.0f, 1));
      if (storages[i] == v1::KV_STORAGE_16BIT) {
        dk[i].insert(dk[i].end(), nk.begin(), nk.end());
        dv[i].insert(dv[i].end(), nv.begin(), nv.end());
      } else if (storages[i] == v1::KV_STORAGE_INT4_K_FP8_V) {
        if (step == 0) mean[i] = KMean(nk);
        AppendDecoded(nk, nv, mean[i], &dk[i], &dv[i]);
      }
      v1::SessionStep* st = req.add_steps();
      st->set_session_id(ids[i]);
      st->set_layer(one_session ? i : 0);
      st->set_position(pos);
      st->set_step_id(static_cast<uint64_t>(step));
      SetTensor(nk, kHkv, st->mutable_k());
      SetTensor(nv, kHkv, st->mutable_v());
      SetTensor(qs.back(), kHq, st->mutable_q());
    }
    v1::AttendSessionResponse got;
    const grpc::Status status = stub->AttendSession(&ctx, req, &got);
    ASSERT_TRUE(status.ok()) << status.error_message();
    ASSERT_EQ(got.results_size(), 3);
    for (int i = 0; i < 3; ++i) {
      if (storages[i] == v1::KV_STORAGE_INT8_K_FP8_V) continue;  // its decode is checked in session_e2e_test
      v1::AttendRequest stateless;
      SetTensor(qs[i], kHq, stateless.mutable_q());
      SetTensor(dk[i], kHkv, stateless.mutable_k());
      SetTensor(dv[i], kHkv, stateless.mutable_v());
      stateless.set_mask(v1::MASK_MODE_CAUSAL);
      stateless.set_recipe(v1::RECIPE_UNQUANTIZED);  // a decode-shaped session call's
      stateless.set_return_lse(true);
      absl::StatusOr<v1::AttendResponse> want = s.client->Attend(stateless);
      ASSERT_TRUE(want.ok()) << want.status();
      EXPECT_EQ(got.results(i).o().data(), want->o().data()) << "step " << step << " storage " << i;
      EXPECT_EQ(got.results(i).lse().data(), want->lse().data()) << "step " << step << " storage " << i;
    }
  }
}

TEST(SessionInt4E2E, OneCallOverSessionsOfDifferentStorages) { CheckOneCallOverStorages(false); }
TEST(SessionInt4E2E, OneCallOverLayersOfDifferentStorages) { CheckOneCallOverStorages(true); }

// A stand-in engine whose pages hold 16-bit and INT8 K only (as the cuda backend's did before its
// INT4 kernels had run on a GPU).
class NoInt4Backend final : public server::AttentionBackend {
 public:
  NoInt4Backend() : info_(TestBackendInfo("no INT4 K pages (test)")) {
    info_.kv_storages = {KvStorage::k16Bit, KvStorage::kInt8KFp8V};
  }
  const server::BackendInfo& info() const override { return info_; }
  absl::StatusOr<EngineOutput> Attend(const EngineInput& /*in*/, const RecipeConfig& /*config*/) override {
    return absl::UnimplementedError("not used");
  }

 private:
  server::BackendInfo info_;
};

TEST(SessionInt4E2E, AnEngineWithoutTheStorageRefusesTheSession) {
  RunningServer s;
  StartServer(TestServerOptions(), std::make_unique<NoInt4Backend>(), &s);
  EXPECT_EQ(ServedStorages(s), (std::vector<int>{v1::KV_STORAGE_16BIT, v1::KV_STORAGE_INT8_K_FP8_V}));
  auto stub = v1::SessionService::NewStub(s.client->channel());
  grpc::ClientContext ctx;
  TestSessionShape shape;
  shape.layers = 1;
  shape.heads_q = kHq;
  shape.heads_kv = kHkv;
  shape.head_dim = kD;
  shape.storage = v1::KV_STORAGE_INT4_K_FP8_V;
  shape.max_tokens = 64;
  v1::CreateSessionResponse resp;
  const grpc::Status st = stub->CreateSession(&ctx, TestSessionRequest(shape), &resp);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(st.error_message().find("kv_storage: KV_STORAGE_INT4_K_FP8_V"), std::string::npos) << st.error_message();
  EXPECT_NE(st.error_message().find("KV_STORAGE_INT8_K_FP8_V"), std::string::npos) << st.error_message();
  // The storages it runs are created as before.
  shape.storage = v1::KV_STORAGE_INT8_K_FP8_V;
  EXPECT_FALSE(CreateTestSession(*stub, shape).empty());
}

}  // namespace
}  // namespace sage::testing
