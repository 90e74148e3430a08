// The server's CUDA backend through the AttentionBackend interface: info, every recipe against the
// double oracle, fp32 inputs (converted to fp16 on the host), errors, and concurrent callers.
#include <gtest/gtest.h>

#include <algorithm>
#include <thread>
#include <vector>

#include "server/backend/cuda/cuda_backend.h"
#include "tests/cuda/gpu_test_util.h"

namespace sage::gputest {
namespace {
using server::EngineInput;


using server::AttentionBackend;
using server::CreateCudaBackend;
using server::CudaBackendOptions;

// Small pools: these tests never send large batches, and every test starts its own backend.
CudaBackendOptions SmallPools() {
  CudaBackendOptions o;
  o.streams_per_device = 2;
  o.pool.max_batch_elements = int64_t{4096} * 8 * 128;
  o.pool.max_batch_sequences = 64;
  return o;
}

std::unique_ptr<AttentionBackend> MakeBackend() {
  auto b = CreateCudaBackend(SmallPools());
  EXPECT_TRUE(b.ok()) << b.status();
  return b.ok() ? *std::move(b) : nullptr;
}

HostProblem SmallProblem(uint64_t seed, DType dt = DType::kF16) {
  ProblemSpec spec;
  spec.q_lens = {150, 1, 70};
  spec.k_lens = {150, 9, 200};
  spec.hq = 4;
  spec.hkv = 2;
  spec.d = 128;
  spec.mask = MaskMode::kCausal;
  spec.dtype = dt;
  spec.seed = seed;
  return MakeProblem(spec);
}

TEST(CudaBackend, VisibleDevicesAndInfo) {
  SAGE_SKIP_WITHOUT_GPU();
  EXPECT_GE(server::VisibleCudaDevices(), 1);
  auto backend = MakeBackend();
  ASSERT_NE(backend, nullptr);
  const server::BackendInfo& info = backend->info();
  EXPECT_EQ(info.kind, server::BackendKind::kCuda);
  ASSERT_EQ(info.devices.size(), static_cast<size_t>(server::VisibleCudaDevices()));
  EXPECT_FALSE(info.devices[0].name.empty());
  EXPECT_GT(info.devices[0].memory_bytes, 0);
  EXPECT_EQ(info.head_dims, (std::vector<int>{64, 128}));
  EXPECT_NE(info.default_recipe, Recipe::kInt4QkFp8Pv);
  if (DeviceSm() >= 90) {
    EXPECT_EQ(info.devices[0].architecture, "sm_" + std::to_string(DeviceSm()));
    EXPECT_EQ(info.default_recipe, Recipe::kInt8QkFp8Pv);
  }
}

TEST(CudaBackend, BadDeviceOrdinal) {
  SAGE_SKIP_WITHOUT_GPU();
  CudaBackendOptions o = SmallPools();
  o.devices = {1000};
  EXPECT_EQ(CreateCudaBackend(o).status().code(), absl::StatusCode::kInvalidArgument);
  o.devices = {0, 0};
  EXPECT_EQ(CreateCudaBackend(o).status().code(), absl::StatusCode::kInvalidArgument);
  o.devices = {0};
  o.streams_per_device = 0;
  EXPECT_EQ(CreateCudaBackend(o).status().code(), absl::StatusCode::kInvalidArgument);
  o.streams_per_device = 1;
  for (int light : {-1, 65}) {
    o.light_streams_per_device = light;
    const absl::Status s = CreateCudaBackend(o).status();
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << light;
    EXPECT_NE(s.message().find("light_streams_per_device"), std::string::npos) << s;
  }
  o.light_streams_per_device = 2;
  o.pool.light_max_batch_elements = 100;
  EXPECT_EQ(CreateCudaBackend(o).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(CudaBackend, EveryRecipeAgainstOracle) {
  SAGE_SKIP_WITHOUT_GPU();
  auto backend = MakeBackend();
  ASSERT_NE(backend, nullptr);
  for (Recipe r : backend->info().recipes) {
    SCOPED_TRACE(std::string(RecipeName(r)));
    const HostProblem p = SmallProblem(40 + static_cast<int>(r));
    const EngineInput in = p.Input();
    auto gpu = backend->Attend(in, ConfigFor(r));
    ASSERT_TRUE(gpu.ok()) << gpu.status();
    auto exact = AttendExact(in);
    ASSERT_TRUE(exact.ok());
    auto emu = CpuEmulation(in, ConfigFor(r));
    ASSERT_TRUE(emu.ok());
    const ErrorStats eg = Compare(gpu->o, exact->o, gpu->lse, exact->lse);
    const ErrorStats ec = Compare(emu->o, exact->o, emu->lse, exact->lse);
    const Tolerance tol = ToleranceFor(static_cast<sage_recipe_t>(r), DType::kF16);
    EXPECT_LE(eg.rel_l1, tol.k * ec.rel_l1 + tol.atol_l1) << "gpu " << eg.rel_l1 << " cpu " << ec.rel_l1;
    EXPECT_LE(eg.lse_max_abs, tol.k * ec.lse_max_abs + tol.atol_lse);
    EXPECT_EQ(gpu->lse.size(), static_cast<size_t>(p.total_q() * p.spec.hq));
  }
}

TEST(CudaBackend, Fp32InputsAreConvertedToFp16) {
  SAGE_SKIP_WITHOUT_GPU();
  auto backend = MakeBackend();
  ASSERT_NE(backend, nullptr);
  const HostProblem p = SmallProblem(77);
  std::vector<float> qf(p.q.size()), kf(p.k.size()), vf(p.v.size());
  for (size_t i = 0; i < qf.size(); ++i) qf[i] = DecodeFp16(p.q[i]);
  for (size_t i = 0; i < kf.size(); ++i) kf[i] = DecodeFp16(p.k[i]);
  for (size_t i = 0; i < vf.size(); ++i) vf[i] = DecodeFp16(p.v[i]);
  EngineInput in = p.Input();
  in.q.dtype = in.k.dtype = in.v.dtype = DType::kF32;
  in.q.data = qf.data();
  in.k.data = kf.data();
  in.v.data = vf.data();
  auto gpu32 = backend->Attend(in, ConfigFor(Recipe::kUnquantized));
  ASSERT_TRUE(gpu32.ok()) << gpu32.status();
  auto gpu16 = backend->Attend(p.Input(), ConfigFor(Recipe::kUnquantized));
  ASSERT_TRUE(gpu16.ok()) << gpu16.status();
  EXPECT_EQ(gpu32->o, gpu16->o);  // fp16-exact fp32 values convert back to the same bits
}

TEST(CudaBackend, ErrorsThenKeepsServing) {
  SAGE_SKIP_WITHOUT_GPU();
  auto backend = MakeBackend();
  ASSERT_NE(backend, nullptr);
  const HostProblem p = SmallProblem(5);
  EngineInput bad = p.Input();
  bad.k.heads = 3;  // Hq = 4 not a multiple
  EXPECT_EQ(backend->Attend(bad, ConfigFor(Recipe::kUnquantized)).status().code(),
            absl::StatusCode::kInvalidArgument);
  RecipeConfig odd = ConfigFor(Recipe::kUnquantized);
  odd.pv = PvType::kFp8E4M3;  // 16-bit Q·Kᵀ with FP8 P·V: no kernel
  EXPECT_EQ(backend->Attend(p.Input(), odd).status().code(), absl::StatusCode::kUnimplemented);
  auto ok = backend->Attend(p.Input(), ConfigFor(backend->info().default_recipe));
  EXPECT_TRUE(ok.ok()) << ok.status();
}

TEST(CudaBackend, ConcurrentCallers) {
  SAGE_SKIP_WITHOUT_GPU();
  auto backend = MakeBackend();
  ASSERT_NE(backend, nullptr);
  const HostProblem p = SmallProblem(9);
  auto ref = backend->Attend(p.Input(), ConfigFor(Recipe::kInt8QkFp16Pv));
  ASSERT_TRUE(ref.ok()) << ref.status();
  std::vector<std::thread> threads;
  std::vector<int> same(4, 0);
  for (int i = 0; i < 4; ++i) {
    threads.emplace_back([&, i] {
      for (int rep = 0; rep < 3; ++rep) {
        auto r = backend->Attend(p.Input(), ConfigFor(Recipe::kInt8QkFp16Pv));
        same[i] += (r.ok() && r->o == ref->o) ? 1 : 0;
      }
    });
  }
  for (auto& t : threads) t.join();
  for (int i = 0; i < 4; ++i) EXPECT_EQ(same[i], 3) << "thread " << i;
}

}  // namespace
}  // namespace sage::gputest
