// KV sessions on the CUDA backend, end to end over gRPC: the same 8-bit sessions (INT8 K − k̄,
// FP8 V) and decode steps on a cuda server and on a cpu server (the CPU emulation of the scheme and
// the recipe); the GPU's error against the fp64 oracle over the original K/V stays within the
// recipe's tolerance rule of the emulation's (docs/NUMERICS.md §9). Also: 16-bit storage with the
// unquantized recipe, and a batch of sessions of different lengths in one call.
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "grpcpp/grpcpp.h"
#include "kernels/reference/metrics.h"
#include "kernels/reference/numerics.h"
#include "kernels/reference/oracle.h"
#include "sageserve/client/session.h"
#include "sageserve/client/tensor.h"
#include "tests/cuda/gpu_test_util.h"
#include "tests/server/test_support.h"

namespace sage::testing {
namespace {
namespace v1 = ::sageserve::v1;

constexpr int kHq = 8, kHkv = 2, kD = 128;

std::vector<uint16_t> Values(int64_t n, int heads, uint32_t seed, float bias) {
  return ChannelBiasedFp16(n, heads, kD, seed, bias, 5);
}

std::vector<float> Floats(const std::string& fp16) {
  std::vector<float> out(fp16.size() / 2);
  for (size_t i = 0; i < out.size(); ++i) {
    uint16_t b;
    std::memcpy(&b, fp16.data() + 2 * i, 2);
    out[i] = DecodeFp16(b);
  }
  return out;
}

sageserve::SessionOptions Options(v1::KvStorage storage, int layers, int64_t max_tokens) {
  sageserve::SessionOptions so;
  so.layers = layers;
  so.heads_q = kHq;
  so.heads_kv = kHkv;
  so.head_dim = kD;
  so.kv_storage = storage;
  so.max_tokens = max_tokens;
  return so;
}

// The fp64 oracle's O for one causal sequence: q [n_q, Hq, D] over k/v [n_k, Hkv, D] (fp16 values).
absl::StatusOr<std::vector<double>> ExactO(const std::vector<uint16_t>& q, const std::vector<uint16_t>& k,
                                           const std::vector<uint16_t>& v) {
  const int64_t nq = static_cast<int64_t>(q.size()) / kHq / kD, nk = static_cast<int64_t>(k.size()) / kHkv / kD;
  AttnInput in;
  in.q = TensorView{DType::kF16, q.data(), nq, kHq, kD};
  in.k = TensorView{DType::kF16, k.data(), nk, kHkv, kD};
  in.v = TensorView{DType::kF16, v.data(), nk, kHkv, kD};
  const int32_t cu_q[] = {0, static_cast<int32_t>(nq)}, cu_k[] = {0, static_cast<int32_t>(nk)};
  in.cu_seqlens_q = cu_q;
  in.cu_seqlens_k = cu_k;
  in.mask = MaskMode::kCausal;
  absl::StatusOr<ExactOutput> exact = AttendExact(in);
  if (!exact.ok()) return exact.status();
  return std::move(exact->o);
}

struct Served {
  RunningServer server;
  std::unique_ptr<sageserve::SessionClient> sessions;
};

void Start(server::BackendChoice backend, Served* out) {
  server::ServerOptions o = TestServerOptions();
  o.backend.choice = backend;
  o.sessions.pool_bytes = size_t{256} << 20;  // a 40k-token 16-bit session takes 40 MiB
  StartServer(o, nullptr, &out->server);
  out->sessions = std::make_unique<sageserve::SessionClient>(*out->server.client);
}

TEST(SessionGpu, EightBitDecodeStepsWithinTheToleranceOfTheEmulation) {
  SAGE_SKIP_WITHOUT_GPU();
  Served gpu, cpu;
  Start(server::BackendChoice::kCuda, &gpu);
  Start(server::BackendChoice::kCpu, &cpu);
  for (v1::Recipe recipe : {v1::RECIPE_INT8_QK_FP8_PV, v1::RECIPE_UNQUANTIZED}) {
    for (v1::KvStorage storage : {v1::KV_STORAGE_INT8_K_FP8_V, v1::KV_STORAGE_16BIT, v1::KV_STORAGE_INT4_K_FP8_V}) {
      SCOPED_TRACE(v1::Recipe_Name(recipe) + " " + v1::KvStorage_Name(storage));
      const sageserve::SessionOptions so = Options(storage, 2, 4096);
      absl::StatusOr<sageserve::Session> g = gpu.sessions->Create(so), c = cpu.sessions->Create(so);
      ASSERT_TRUE(g.ok() && c.ok());
      std::vector<uint16_t> k_all = Values(2000, kHkv, 1, 1.5f), v_all = Values(2000, kHkv, 2, 0.5f);
      std::vector<uint16_t> k_seen, v_seen;
      for (int step = 0; step < 4; ++step) {
        const int64_t from = step == 0 ? 0 : 1996 + step - 1, n = step == 0 ? 1996 : 1;
        const std::vector<uint16_t> k(k_all.begin() + from * kHkv * kD, k_all.begin() + (from + n) * kHkv * kD);
        const std::vector<uint16_t> v(v_all.begin() + from * kHkv * kD, v_all.begin() + (from + n) * kHkv * kD);
        k_seen.insert(k_seen.end(), k.begin(), k.end());
        v_seen.insert(v_seen.end(), v.begin(), v.end());
        const std::vector<uint16_t> q = Values(step == 0 ? 64 : 1, kHq, 10 + step, 0.0f);
        v1::AttendSessionRequest rg, rc;
        rg.set_recipe(recipe);
        rc.set_recipe(recipe);
        *rg.add_steps() = g->MakeStep(1, k, v, q);
        *rc.add_steps() = c->MakeStep(1, k, v, q);
        absl::StatusOr<v1::AttendSessionResponse> og = gpu.sessions->Attend(rg), oc = cpu.sessions->Attend(rc);
        ASSERT_TRUE(og.ok()) << og.status();
        ASSERT_TRUE(oc.ok()) << oc.status();
        g->Commit(1, og->results(0));
        c->Commit(1, oc->results(0));
        const int64_t nk = static_cast<int64_t>(k_seen.size()) / kHkv / kD;
        absl::StatusOr<std::vector<double>> exact = ExactO(q, k_seen, v_seen);
        ASSERT_TRUE(exact.ok());
        const ErrorMetrics eg = CompareToReference(Floats(og->results(0).o().data()), *exact);
        const ErrorMetrics ec = CompareToReference(Floats(oc->results(0).o().data()), *exact);
        EXPECT_LE(eg.relative_l1, 1.5 * ec.relative_l1 + 2e-3 + 1e-3) << "step " << step;
        std::printf("  step %d (%lld keys): gpu relL1 %.5f cos %.6f | cpu-emu relL1 %.5f cos %.6f\n", step,
                    static_cast<long long>(nk), eg.relative_l1, eg.cosine, ec.relative_l1, ec.cosine);
      }
    }
  }
}

// A session whose three layers store 16-bit, INT8 and INT4 K/V (CreateSession.layer_kv_storages):
// one call with a decode step on each layer reads each layer's pages as its storage lays them out
// (the call mixes storages, so the CUDA backend gathers them), within the tolerance rule of the CPU
// server's answer to the same call.
TEST(SessionGpu, LayersOfDifferentStoragesInOneCall) {
  SAGE_SKIP_WITHOUT_GPU();
  Served gpu, cpu;
  Start(server::BackendChoice::kCuda, &gpu);
  Start(server::BackendChoice::kCpu, &cpu);
  sageserve::SessionOptions so = Options(v1::KV_STORAGE_UNSPECIFIED, 3, 4096);
  so.layer_kv_storages = {v1::KV_STORAGE_16BIT, v1::KV_STORAGE_INT8_K_FP8_V, v1::KV_STORAGE_INT4_K_FP8_V};
  absl::StatusOr<sageserve::Session> g = gpu.sessions->Create(so), c = cpu.sessions->Create(so);
  ASSERT_TRUE(g.ok()) << g.status();
  ASSERT_TRUE(c.ok()) << c.status();
  std::vector<std::vector<uint16_t>> k_seen(3), v_seen(3);
  for (int step = 0; step < 3; ++step) {
    const int64_t n = step == 0 ? 1500 : 1;
    v1::AttendSessionRequest rg, rc;
    std::vector<std::vector<uint16_t>> qs;
    for (int layer = 0; layer < 3; ++layer) {
      const auto seed = static_cast<uint32_t>(100 * step + layer);
      const std::vector<uint16_t> k = Values(n, kHkv, seed, 1.5f), v = Values(n, kHkv, seed + 7, 0.5f);
      k_seen[layer].insert(k_seen[layer].end(), k.begin(), k.end());
      v_seen[layer].insert(v_seen[layer].end(), v.begin(), v.end());
      qs.push_back(Values(1, kHq, seed + 13, 0.0f));
      *rg.add_steps() = g->MakeStep(layer, k, v, qs.back());
      *rc.add_steps() = c->MakeStep(layer, k, v, qs.back());
    }
    absl::StatusOr<v1::AttendSessionResponse> og = gpu.sessions->Attend(rg), oc = cpu.sessions->Attend(rc);
    ASSERT_TRUE(og.ok()) << og.status();
    ASSERT_TRUE(oc.ok()) << oc.status();
    for (int layer = 0; layer < 3; ++layer) {
      g->Commit(layer, og->results(layer));
      c->Commit(layer, oc->results(layer));
      absl::StatusOr<std::vector<double>> exact = ExactO(qs[layer], k_seen[layer], v_seen[layer]);
      ASSERT_TRUE(exact.ok());
      const ErrorMetrics eg = CompareToReference(Floats(og->results(layer).o().data()), *exact);
      const ErrorMetrics ec = CompareToReference(Floats(oc->results(layer).o().data()), *exact);
      EXPECT_LE(eg.relative_l1, 1.5 * ec.relative_l1 + 3e-3) << "step " << step << " layer " << layer;
      std::printf("  mixed step %d layer %d: gpu relL1 %.5f cos %.6f | cpu relL1 %.5f cos %.6f\n", step, layer,
                  eg.relative_l1, eg.cosine, ec.relative_l1, ec.cosine);
    }
  }
}

// One call carrying sessions of very different lengths (1 to 40k tokens, so some split across CTAs)
// and 1, 4 or 16 query rows each: the pages are read in place by the paged decode kernel, and each
// step's O is held to the exact attention over the stored values as the CPU server's is
// (docs/NUMERICS.md §9a), for both storages.
TEST(SessionGpu, BatchedPagedDecodeWithinTheToleranceOfTheCpuServer) {
  SAGE_SKIP_WITHOUT_GPU();
  Served gpu, cpu;
  Start(server::BackendChoice::kCuda, &gpu);
  Start(server::BackendChoice::kCpu, &cpu);
  const std::vector<int64_t> lengths = {1, 15, 16, 300, 5000, 40000};
  const std::vector<int64_t> rows = {1, 4, 16, 1, 16, 4};
  for (v1::KvStorage storage : {v1::KV_STORAGE_INT8_K_FP8_V, v1::KV_STORAGE_16BIT, v1::KV_STORAGE_INT4_K_FP8_V}) {
    SCOPED_TRACE(v1::KvStorage_Name(storage));
    const sageserve::SessionOptions so = Options(storage, 1, 65536);
    std::vector<sageserve::Session> gs, cs;
    std::vector<std::vector<uint16_t>> ks, vs, qs;
    v1::AttendSessionRequest rg, rc;
    rg.set_recipe(v1::RECIPE_UNQUANTIZED);
    rc.set_recipe(v1::RECIPE_UNQUANTIZED);
    for (size_t i = 0; i < lengths.size(); ++i) {
      absl::StatusOr<sageserve::Session> g = gpu.sessions->Create(so), c = cpu.sessions->Create(so);
      ASSERT_TRUE(g.ok() && c.ok());
      gs.push_back(*std::move(g));
      cs.push_back(*std::move(c));
      const int64_t prefix = lengths[i] - rows[i] > 0 ? lengths[i] - rows[i] : 0;
      ks.push_back(Values(lengths[i] + rows[i], kHkv, 100 + static_cast<uint32_t>(i), 1.5f));
      vs.push_back(Values(lengths[i] + rows[i], kHkv, 200 + static_cast<uint32_t>(i), 0.5f));
      qs.push_back(Values(rows[i], kHq, 300 + static_cast<uint32_t>(i), 0.0f));
      const auto part = [](const std::vector<uint16_t>& x, int64_t from, int64_t to) {
        return std::vector<uint16_t>(x.begin() + from * kHkv * kD, x.begin() + to * kHkv * kD);
      };
      if (prefix > 0) {  // a bulk import of the prefix, then the step's own tokens with its Q
        v1::AttendSessionRequest bulk;
        *bulk.add_steps() = gs.back().MakeStep(0, part(ks[i], 0, prefix), part(vs[i], 0, prefix), {});
        absl::StatusOr<v1::AttendSessionResponse> bg = gpu.sessions->Attend(bulk);
        ASSERT_TRUE(bg.ok()) << bg.status();
        gs.back().Commit(0, bg->results(0));
        *bulk.mutable_steps(0) = cs.back().MakeStep(0, part(ks[i], 0, prefix), part(vs[i], 0, prefix), {});
        absl::StatusOr<v1::AttendSessionResponse> bc = cpu.sessions->Attend(bulk);
        ASSERT_TRUE(bc.ok()) << bc.status();
        cs.back().Commit(0, bc->results(0));
      }
      const int64_t end = prefix + rows[i];
      ks[i].resize(static_cast<size_t>(end) * kHkv * kD);
      vs[i].resize(ks[i].size());
      *rg.add_steps() = gs.back().MakeStep(0, part(ks[i], prefix, end), part(vs[i], prefix, end), qs[i]);
      *rc.add_steps() = cs.back().MakeStep(0, part(ks[i], prefix, end), part(vs[i], prefix, end), qs[i]);
    }
    absl::StatusOr<v1::AttendSessionResponse> og = gpu.sessions->Attend(rg), oc = cpu.sessions->Attend(rc);
    ASSERT_TRUE(og.ok()) << og.status();
    ASSERT_TRUE(oc.ok()) << oc.status();
    for (size_t i = 0; i < lengths.size(); ++i) {
      SCOPED_TRACE(i);
      const int64_t nq = rows[i], nk = static_cast<int64_t>(ks[i].size()) / kHkv / kD;
      absl::StatusOr<std::vector<double>> exact = ExactO(qs[i], ks[i], vs[i]);
      ASSERT_TRUE(exact.ok());
      const ErrorMetrics eg = CompareToReference(Floats(og->results(static_cast<int>(i)).o().data()), *exact);
      const ErrorMetrics ec = CompareToReference(Floats(oc->results(static_cast<int>(i)).o().data()), *exact);
      EXPECT_LE(eg.relative_l1, 1.5 * ec.relative_l1 + 1e-3);
      EXPECT_GE(eg.cosine, 0.999);
      std::printf("  %lld keys, %lld rows: gpu relL1 %.5f cos %.6f | cpu relL1 %.5f cos %.6f\n", static_cast<long long>(nk),
                  static_cast<long long>(nq), eg.relative_l1, eg.cosine, ec.relative_l1, ec.cosine);
    }
  }
}

}  // namespace
}  // namespace sage::testing
