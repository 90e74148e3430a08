// The CUDA runtime of issue 5 (server/backend/cuda: executors, stream slots, preallocated pools):
// many threads calling Attend at once on several streams give bit-identical results to one stream;
// a batch too large for the pools answers RESOURCE_EXHAUSTED and service continues; stage timings
// and per-device counters are filled; the pools are sized as configured.
#include <gtest/gtest.h>

#include <atomic>
#include <string>
#include <thread>
#include <vector>

#include "kernels/reference/numerics.h"
#include "server/backend/cuda/cuda_backend.h"
#include "server/scheduler/batch_assembler.h"
#include "tests/cuda/gpu_test_util.h"

namespace sage::gputest {
namespace {
using server::DeviceTimings;
using server::EngineInput;
using server::EngineOutput;
using server::OutputForm;


using server::AttentionBackend;
using server::CreateCudaBackend;
using server::CudaBackendOptions;

// Full-size slots only (the light ones have their own test below).
CudaBackendOptions Pools(int streams) {
  CudaBackendOptions o;
  o.streams_per_device = streams;
  o.light_streams_per_device = 0;
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
  std::vector<EngineOutput> want;
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

// Light slots: launches within their limit run there (and give the same bits as a full-size slot),
// larger ones only ever on the full-size slot, many threads mixing both; light slots cost a fraction
// of a full-size slot's memory.
TEST(CudaRuntime, LightSlotsTakeSmallLaunchesAndLeaveLargeOnesToFullSizeSlots) {
  SAGE_SKIP_WITHOUT_GPU();
  CudaBackendOptions o = Pools(1);
  o.light_streams_per_device = 3;
  o.pool.light_max_batch_elements = int64_t{512} * 8 * 128;  // 512 tokens of 8 heads x D128
  o.pool.light_max_batch_sequences = 8;
  auto made = CreateCudaBackend(o);
  ASSERT_TRUE(made.ok()) << made.status();
  std::unique_ptr<AttentionBackend> light = *std::move(made);
  auto reference = Make(1);
  ASSERT_NE(reference, nullptr);
  const RecipeConfig config = ConfigFor(light->info().default_recipe);
  const HostProblem small = Problem(31, {200, 37, 1}, 8, 8);  // 238 tokens: fits a light slot
  const HostProblem large = Problem(32, {1500}, 8, 8);        // 1500 tokens: full-size only
  auto want_small = reference->Attend(small.Input(), config);
  auto want_large = reference->Attend(large.Input(), config);
  ASSERT_TRUE(want_small.ok() && want_large.ok());

  auto alone = light->Attend(small.Input(), config);
  ASSERT_TRUE(alone.ok()) << alone.status();
  ASSERT_TRUE(alone->device_timings.has_value());
  EXPECT_GE(alone->device_timings->stream_slot, 1);  // slots 1..3 are the light ones
  EXPECT_EQ(alone->o, want_small->o);
  EXPECT_EQ(alone->lse, want_small->lse);
  alone = light->Attend(large.Input(), config);
  ASSERT_TRUE(alone.ok()) << alone.status();
  EXPECT_EQ(alone->device_timings->stream_slot, 0);
  EXPECT_EQ(alone->o, want_large->o);

  std::atomic<int> failures{0}, mismatches{0}, large_on_light{0}, small_on_light{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 12; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < 8; ++i) {
        const bool big = (t + i) % 4 == 0;
        auto out = light->Attend((big ? large : small).Input(), config);
        if (!out.ok() || !out->device_timings) {
          failures++;
          continue;
        }
        const EngineOutput& want = big ? *want_large : *want_small;
        if (out->o != want.o || out->lse != want.lse) mismatches++;
        if (out->device_timings->stream_slot >= 1) (big ? large_on_light : small_on_light)++;
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(failures.load(), 0);
  EXPECT_EQ(mismatches.load(), 0);
  EXPECT_EQ(large_on_light.load(), 0);
  EXPECT_GT(small_on_light.load(), 0);

  const auto with_light = light->DeviceStatsSnapshot();
  const auto full_only = reference->DeviceStatsSnapshot();
  ASSERT_FALSE(with_light.empty());
  ASSERT_FALSE(full_only.empty());
  EXPECT_EQ(with_light.front().streams, 4);
  EXPECT_EQ(with_light.front().light_streams, 3);
  const int64_t extra = with_light.front().pool_bytes - full_only.front().pool_bytes;
  EXPECT_GT(extra, 0);
  EXPECT_LT(extra, full_only.front().pool_bytes / 2) << "three light slots should cost well under a full-size one";
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

// The server's output path: O left in the kernel's 16-bit type is exactly the float result encoded
// back (so the codec's copy sends the same bytes as before), for fp16 and bf16 inputs.
TEST(CudaRuntime, NativeOutputIsTheFloatOutputEncoded) {
  SAGE_SKIP_WITHOUT_GPU();
  auto backend = Make(2);
  ASSERT_NE(backend, nullptr);
  for (DType dt : {DType::kF16, DType::kBF16}) {
    ProblemSpec spec;
    spec.q_lens = {200, 33};
    spec.hq = 8;
    spec.hkv = 4;
    spec.d = 128;
    spec.dtype = dt;
    spec.lse = LseMode::kNatural;
    spec.seed = 77;
    const HostProblem p = MakeProblem(spec);
    EngineInput in = p.Input();
    auto as_float = backend->Attend(in, ConfigFor(backend->info().default_recipe));
    ASSERT_TRUE(as_float.ok()) << as_float.status();
    in.output.form = OutputForm::kNativeAllowed;
    auto native = backend->Attend(in, ConfigFor(backend->info().default_recipe));
    ASSERT_TRUE(native.ok()) << native.status();
    ASSERT_TRUE(native->has_native_o());
    EXPECT_EQ(native->o_native_dtype, dt);
    EXPECT_TRUE(native->o.empty());
    std::vector<uint16_t> want(as_float->o.size());
    if (dt == DType::kF16) {
      EncodeFp16Bulk(as_float->o.data(), want.data(), want.size(), BulkPath::kScalar);
    } else {
      EncodeBf16Bulk(as_float->o.data(), want.data(), want.size(), BulkPath::kScalar);
    }
    EXPECT_EQ(native->o_native, std::string(reinterpret_cast<const char*>(want.data()), want.size() * 2));
    EXPECT_EQ(native->lse, as_float->lse);
  }
}

// A merged launch gathered straight from the members' memory equals the same launch over the
// concatenated copy, bit for bit (float and native O), and its slices equal each member run alone.
TEST(CudaRuntime, GatheredLaunchEqualsConcatenatedLaunch) {
  SAGE_SKIP_WITHOUT_GPU();
  auto backend = Make(2);
  ASSERT_NE(backend, nullptr);
  ASSERT_EQ(backend->info().input_gather, server::InputGather::kSegments);
  std::vector<HostProblem> problems;
  for (int i = 0; i < 4; ++i) problems.push_back(Problem(500 + i, {128, 17 + 40 * i}));
  std::vector<EngineInput> inputs;
  for (const HostProblem& p : problems) inputs.push_back(p.Input());
  std::vector<const EngineInput*> members;
  for (const EngineInput& in : inputs) members.push_back(&in);
  const RecipeConfig cfg = ConfigFor(backend->info().default_recipe);

  auto copied = server::AssembleBatch(members, server::AssembleMode::kCopyTensors);
  ASSERT_TRUE(copied.ok()) << copied.status();
  auto want = backend->Attend(copied->input(), cfg);
  ASSERT_TRUE(want.ok()) << want.status();

  auto meta = server::AssembleBatch(members, server::AssembleMode::kMetadataOnly);
  ASSERT_TRUE(meta.ok()) << meta.status();
  EXPECT_EQ(meta->input().q.data, nullptr);
  auto got = backend->AttendGathered(meta->input(), members, cfg);
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(got->o, want->o);
  EXPECT_EQ(got->lse, want->lse);

  for (EngineInput& in : inputs) in.output.form = OutputForm::kNativeAllowed;
  auto meta_native = server::AssembleBatch(members, server::AssembleMode::kMetadataOnly);
  ASSERT_TRUE(meta_native.ok());
  EXPECT_EQ(meta_native->input().output.form, OutputForm::kNativeAllowed);
  auto native = backend->AttendGathered(meta_native->input(), members, cfg);
  ASSERT_TRUE(native.ok()) << native.status();
  std::vector<uint16_t> want16(want->o.size());
  EncodeFp16Bulk(want->o.data(), want16.data(), want16.size(), BulkPath::kScalar);
  EXPECT_EQ(native->o_native, std::string(reinterpret_cast<const char*>(want16.data()), want16.size() * 2));

  // Members that do not add up to the merged shape are refused, never launched.
  auto short_members = std::vector<const EngineInput*>(members.begin(), members.end() - 1);
  EXPECT_EQ(backend->AttendGathered(meta->input(), short_members, cfg).status().code(),
            absl::StatusCode::kInvalidArgument);

  // Batch invariance on the GPU: each member's slice of the merged launch equals the member alone.
  for (size_t i = 0; i < members.size(); ++i) {
    EngineInput alone = *members[i];
    alone.output.form = OutputForm::kFloat;
    auto one = backend->Attend(alone, cfg);
    ASSERT_TRUE(one.ok()) << one.status();
    const EngineOutput slice = server::SliceOutput(*want, *copied, i);
    EXPECT_EQ(slice.o, one->o) << "member " << i;
  }
}

// A launch over 8 MiB of inputs is staged on several threads; the result equals the 1-slot,
// back-to-back reference computed on a copy whose bytes arrive as fp32 (converted while staging).
TEST(CudaRuntime, LargeLaunchStagedOnSeveralThreads) {
  SAGE_SKIP_WITHOUT_GPU();
  auto backend = Make(1);
  ASSERT_NE(backend, nullptr);
  const HostProblem p = Problem(900, {8192}, 8, 8);  // 16 MiB per tensor at fp16
  const RecipeConfig cfg = ConfigFor(backend->info().default_recipe);
  auto a = backend->Attend(p.Input(), cfg);
  ASSERT_TRUE(a.ok()) << a.status();
  auto b = backend->Attend(p.Input(), cfg);
  ASSERT_TRUE(b.ok()) << b.status();
  EXPECT_EQ(a->o, b->o);
  // Same problem with fp32 inputs: converted to fp16 on the staging threads, same bits out.
  std::vector<float> q32(p.q.size()), k32(p.k.size()), v32(p.v.size());
  DecodeFp16Bulk(p.q.data(), q32.data(), q32.size());
  DecodeFp16Bulk(p.k.data(), k32.data(), k32.size());
  DecodeFp16Bulk(p.v.data(), v32.data(), v32.size());
  EngineInput in32 = p.Input();
  in32.q.dtype = in32.k.dtype = in32.v.dtype = DType::kF32;
  in32.q.data = q32.data();
  in32.k.data = k32.data();
  in32.v.data = v32.data();
  auto c = backend->Attend(in32, cfg);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->o, a->o);
}

}  // namespace
}  // namespace sage::gputest
