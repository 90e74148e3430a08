// The CUDA runtime of issue 5 (server/backend/cuda: executors, stream slots, preallocated pools):
// many threads calling Attend at once on several streams give bit-identical results to one stream;
// a batch too large for the pools answers RESOURCE_EXHAUSTED and service continues; stage timings
// and per-device counters are filled; the pools are sized as configured.
#include <gtest/gtest.h>

#include <atomic>
#include <thread>
#include <vector>

#include "server/backend/cuda/cuda_backend.h"
#include "tests/cuda/gpu_test_util.h"

namespace sage::gputest {
namespace {

using server::AttentionBackend;
using server::CreateCudaBackend;
using server::CudaBackendOptions;

CudaBackendOptions Pools(int streams) {
  CudaBackendOptions o;
  o.streams_per_device = streams;
  o.pool.max_batch_elements = int64_t{8192} * 8 * 128;
  o.pool.max_batch_sequences = 64;
  return o;
}

std::unique_ptr<AttentionBackend> Make(int streams) {
  auto b = CreateCudaBackend(Pools(streams));
  EXPECT_TRUE(b.ok()) << b.status();
  return b.ok() ? *std::move(b) : nullptr;
}

HostProblem Problem(uint64_t seed, std::vector<int> lens, int hq = 8, int hkv = 4) {
  ProblemSpec spec;
  spec.q_lens = std::move(lens);
  spec.hq = hq;
  spec.hkv = hkv;
  spec.d = 128;
  spec.mask = MaskMode::kCausal;
  spec.seed = seed;
  return MakeProblem(spec);
}

TEST(CudaRuntime, ManyThreadsManyStreamsBitIdenticalToOneStream) {
  SAGE_SKIP_WITHOUT_GPU();
  // Reference: a backend with a single stream slot, one call at a time.
  auto serial = Make(1);
  auto pooled = Make(4);
  ASSERT_NE(serial, nullptr);
  ASSERT_NE(pooled, nullptr);
  std::vector<HostProblem> problems;
  for (int i = 0; i < 6; ++i) problems.push_back(Problem(100 + i, {64 + 97 * i, 1 + 13 * i, 300}));
  const std::vector<Recipe> recipes = {serial->info().default_recipe, Recipe::kInt8QkFp16Pv, Recipe::kUnquantized};
  std::vector<AttnOutput> want;
  for (const HostProblem& p : problems) {
    for (Recipe r : recipes) {
      auto out = serial->Attend(p.Input(), ConfigFor(r));
      ASSERT_TRUE(out.ok()) << out.status();
      want.push_back(*std::move(out));
    }
  }
  constexpr int kThreads = 16, kRounds = 4;
  std::atomic<int> mismatches{0}, failures{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int round = 0; round < kRounds; ++round) {
        for (size_t j = 0; j < want.size(); ++j) {
          const size_t idx = (j + static_cast<size_t>(t) * 5 + static_cast<size_t>(round)) % want.size();
          const HostProblem& p = problems[idx / recipes.size()];
          auto out = pooled->Attend(p.Input(), ConfigFor(recipes[idx % recipes.size()]));
          if (!out.ok()) {
            failures++;
            continue;
          }
          if (out->o != want[idx].o || out->lse != want[idx].lse) mismatches++;
        }
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(failures.load(), 0);
  EXPECT_EQ(mismatches.load(), 0);
  // Several stream slots were actually used.
  const auto stats = pooled->DeviceStatsSnapshot();
  ASSERT_FALSE(stats.empty());
  int64_t batches = 0;
  for (const auto& s : stats) batches += s.batches;
  EXPECT_EQ(batches, static_cast<int64_t>(kThreads * kRounds * want.size()));
}

TEST(CudaRuntime, SlotsRotateUnderConcurrency) {
  SAGE_SKIP_WITHOUT_GPU();
  auto backend = Make(4);
  ASSERT_NE(backend, nullptr);
  const HostProblem p = Problem(7, {2000}, 8, 8);
  std::vector<std::atomic<int>> used(4);
  std::vector<std::thread> threads;
  for (int t = 0; t < 8; ++t) {
    threads.emplace_back([&] {
      for (int i = 0; i < 10; ++i) {
        auto out = backend->Attend(p.Input(), ConfigFor(backend->info().default_recipe));
        if (out.ok() && out->device_timings) used[static_cast<size_t>(out->device_timings->stream_slot)]++;
      }
    });
  }
  for (auto& th : threads) th.join();
  int slots_used = 0;
  for (auto& u : used) slots_used += u.load() > 0 ? 1 : 0;
  EXPECT_GE(slots_used, 2);
}

TEST(CudaRuntime, TooLargeIsResourceExhaustedThenServiceContinues) {
  SAGE_SKIP_WITHOUT_GPU();
  auto backend = Make(2);
  ASSERT_NE(backend, nullptr);
  // 8192 tokens × 8 heads × 128 fits exactly; 9000 tokens do not.
  const HostProblem big = Problem(3, {9000}, 8, 8);
  auto r = backend->Attend(big.Input(), ConfigFor(backend->info().default_recipe));
  ASSERT_EQ(r.status().code(), absl::StatusCode::kResourceExhausted) << r.status();
  EXPECT_NE(r.status().message().find("max_batch_elements"), std::string::npos) << r.status();
  EXPECT_NE(r.status().message().find("9216000"), std::string::npos) << r.status();  // 9000·8·128
  // Too many sequences.
  const HostProblem many = Problem(4, std::vector<int>(65, 2), 8, 8);
  r = backend->Attend(many.Input(), ConfigFor(Recipe::kUnquantized));
  ASSERT_EQ(r.status().code(), absl::StatusCode::kResourceExhausted) << r.status();
  EXPECT_NE(r.status().message().find("max_batch_sequences"), std::string::npos) << r.status();
  // The largest batch that fits, then a small one: both served.
  const HostProblem fits = Problem(5, {8192}, 8, 8);
  auto ok = backend->Attend(fits.Input(), ConfigFor(backend->info().default_recipe));
  ASSERT_TRUE(ok.ok()) << ok.status();
  const HostProblem small = Problem(6, {100, 3});
  ok = backend->Attend(small.Input(), ConfigFor(backend->info().default_recipe));
  ASSERT_TRUE(ok.ok()) << ok.status();
  auto exact = AttendExact(small.Input());
  ASSERT_TRUE(exact.ok());
  const ErrorStats e = Compare(ok->o, exact->o, ok->lse, exact->lse);
  EXPECT_LT(e.rel_l1, 0.05);
  for (const auto& s : backend->DeviceStatsSnapshot()) EXPECT_TRUE(s.healthy);
}

TEST(CudaRuntime, PoolLargerThanDeviceMemoryFailsAtStartWithResourceExhausted) {
  SAGE_SKIP_WITHOUT_GPU();
  CudaBackendOptions o = Pools(1);
  o.devices = {0};
  o.pool.max_batch_elements = int64_t{1} << 40;  // 2 TiB per tensor
  o.pool.workspace_bytes = 1024;
  auto b = CreateCudaBackend(o);
  ASSERT_FALSE(b.ok());
  EXPECT_EQ(b.status().code(), absl::StatusCode::kResourceExhausted) << b.status();
  // And the GPU is still usable afterwards.
  auto backend = Make(1);
  ASSERT_NE(backend, nullptr);
  auto ok = backend->Attend(Problem(8, {50}).Input(), ConfigFor(Recipe::kUnquantized));
  EXPECT_TRUE(ok.ok()) << ok.status();
}

TEST(CudaRuntime, TimingsAndCountersPopulated) {
  SAGE_SKIP_WITHOUT_GPU();
  auto backend = Make(2);
  ASSERT_NE(backend, nullptr);
  const HostProblem p = Problem(11, {1024, 512}, 8, 8);
  for (int i = 0; i < 3; ++i) {
    auto out = backend->Attend(p.Input(), ConfigFor(backend->info().default_recipe));
    ASSERT_TRUE(out.ok()) << out.status();
    ASSERT_TRUE(out->device_timings.has_value());
    const DeviceTimings& t = *out->device_timings;
    EXPECT_GT(t.h2d_us, 0);
    EXPECT_GT(t.kernel_us, 0);
    EXPECT_GT(t.d2h_us, 0);
    EXPECT_GE(t.device, 0);
    EXPECT_GE(t.stream_slot, 0);
    EXPECT_LT(t.stream_slot, 2);
  }
  const auto stats = backend->DeviceStatsSnapshot();
  ASSERT_EQ(stats.size(), backend->info().devices.size());
  int64_t batches = 0, tokens = 0;
  for (const auto& s : stats) {
    batches += s.batches;
    tokens += s.tokens;
    EXPECT_EQ(s.in_flight, 0);
    EXPECT_EQ(s.queued_work, 0);
    EXPECT_EQ(s.streams, 2);
    EXPECT_GT(s.pool_bytes, 2 * int64_t{8192} * 8 * 128 * 2 * 4);  // q, k, v, o per slot at least
    EXPECT_GT(s.pinned_bytes, 0);
    EXPECT_GT(s.memory_used_bytes, s.pool_bytes);
    EXPECT_GT(s.memory_total_bytes, s.memory_used_bytes);
    EXPECT_FALSE(s.name.empty());
  }
  EXPECT_EQ(batches, 3);
  EXPECT_EQ(tokens, 3 * 1536);
}

TEST(CudaRuntime, EmptyBatchNeedsNoLaunch) {
  SAGE_SKIP_WITHOUT_GPU();
  auto backend = Make(1);
  ASSERT_NE(backend, nullptr);
  const HostProblem p = Problem(12, {0, 0}, 8, 8);
  auto out = backend->Attend(p.Input(), ConfigFor(Recipe::kUnquantized));
  if (out.ok()) {
    EXPECT_TRUE(out->o.empty());
  }
}

}  // namespace
}  // namespace sage::gputest
