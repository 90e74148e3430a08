// BatchAssembler: keys, sizes, concatenation and slicing; and, with the real CpuEngine, that a
// request's output is bit-identical whether it runs alone or merged with others (directly and
// through the DynamicBatcher).
#include "server/scheduler/batch_assembler.h"

#include <algorithm>
#include <cstring>
#include <memory>
#include <condition_variable>
#include <mutex>

#include "gtest/gtest.h"
#include "kernels/reference/cpu_engine.h"
#include "kernels/reference/synthetic_data.h"
#include "server/scheduler/dynamic_batcher.h"
#include "tests/scheduler/batcher_test_util.h"

namespace sage::server {
namespace {

using testing::MakeTagged;
using testing::ProblemShape;

void ExpectBitIdentical(const std::vector<float>& a, const std::vector<float>& b) {
  ASSERT_EQ(a.size(), b.size());
  EXPECT_EQ(std::memcmp(a.data(), b.data(), a.size() * sizeof(float)), 0);
}

TEST(BatchKey, EqualForCompatibleProblems) {
  auto a = MakeTagged(1);
  ProblemShape other_lengths;
  other_lengths.q_lens = {3, 9};
  other_lengths.k_lens = {30, 1};
  auto b = MakeTagged(2, other_lengths);
  EXPECT_EQ(MakeBatchKey(a->input, a->config), MakeBatchKey(b->input, b->config));
}

TEST(BatchKey, DiffersOnEverythingThatIsNotPerSequence) {
  const ProblemShape base;
  auto key = [](const ProblemShape& s) {
    auto p = MakeTagged(1, s);
    return MakeBatchKey(p->input, p->config);
  };
  const BatchKey k0 = key(base);
  std::vector<ProblemShape> variants(9, base);
  variants[0].dtype = DType::kF16;
  variants[1].head_dim = 128;
  variants[2].q_heads = 4;
  variants[3].kv_heads = 1;
  variants[4].mask = MaskMode::kCausal;
  variants[5].lse = LseMode::kNatural;
  variants[6].scale = 0.25f;
  variants[7].config.granularity = QuantGranularity::kPerBlock;
  variants[8].config.accumulation = PvAccumulation::kFp22Only;
  for (size_t i = 0; i < variants.size(); ++i) EXPECT_FALSE(key(variants[i]) == k0) << "variant " << i;
  ProblemShape explicit_default = base;
  explicit_default.scale = 0.125f;  // 1/sqrt(64): the same effective scale.
  EXPECT_EQ(key(explicit_default), k0);
}

TEST(MeasureProblem, TokensAndWork) {
  ProblemShape s;
  s.q_lens = {1, 10};
  s.k_lens = {100, 20};
  auto p = MakeTagged(1, s);
  const ProblemSize size = MeasureProblem(p->input);
  EXPECT_EQ(size.tokens, 120);  // max(11 q tokens, 120 k tokens)
  EXPECT_EQ(size.work, 1 * 100 + 10 * 20);
  EXPECT_EQ(size.q_elements, 11 * 2 * 64);
  EXPECT_EQ(size.kv_elements, 120 * 2 * 64);
  EXPECT_EQ(size.sequences, 2);
}

TEST(AssembleBatch, ConcatenatesTokensAndChainsCuSeqlens) {
  ProblemShape a;
  a.q_lens = {2, 3};
  a.k_lens = {4, 5};
  ProblemShape b;
  b.q_lens = {7};
  b.k_lens = {1};
  auto pa = MakeTagged(10, a);
  auto pb = MakeTagged(20, b);
  const EngineInput* members[] = {&pa->input, &pb->input};
  absl::StatusOr<AssembledBatch> batch = AssembleBatch(members);
  ASSERT_TRUE(batch.ok()) << batch.status();
  const EngineInput& in = batch->input();
  EXPECT_TRUE(ValidateInput(in).ok());
  EXPECT_EQ(in.q.tokens, 12);
  EXPECT_EQ(in.k.tokens, 10);
  EXPECT_EQ(std::vector<int32_t>(in.cu_seqlens_q.begin(), in.cu_seqlens_q.end()),
            (std::vector<int32_t>{0, 2, 5, 12}));
  EXPECT_EQ(std::vector<int32_t>(in.cu_seqlens_k.begin(), in.cu_seqlens_k.end()),
            (std::vector<int32_t>{0, 4, 9, 10}));
  EXPECT_EQ(testing::TagAt(in.q, 4), 10);
  EXPECT_EQ(testing::TagAt(in.q, 5), 20);
  EXPECT_EQ(testing::TagAt(in.k, 8), 10);
  EXPECT_EQ(testing::TagAt(in.v, 9), 20);
  ASSERT_EQ(batch->members().size(), 2u);
  EXPECT_EQ(batch->members()[1].q_token_offset, 5);
  EXPECT_EQ(batch->members()[1].q_tokens, 7);

  // Moving the batch keeps its views valid.
  AssembledBatch moved = *std::move(batch);
  EXPECT_EQ(testing::TagAt(moved.input().q, 11), 20);
}

// Paged members (session steps): Q concatenated, page tables and their offsets chained, K/V left
// in the pool; a member of another pool has another key.
TEST(AssembleBatch, ChainsPageTablesOfPagedMembers) {
  ProblemShape a;
  a.q_lens = {1, 2};
  a.k_lens = {20, 40};
  ProblemShape b;
  b.q_lens = {1};
  b.k_lens = {17};
  auto pa = MakeTagged(10, a);
  auto pb = MakeTagged(20, b);
  std::vector<std::byte> pool(size_t{1} << 20);
  const std::vector<int32_t> table_a{3, 5, 6, 1, 7}, cu_a{0, 2, 5}, table_b{0, 2}, cu_b{0, 2};  // 16-token pages
  const auto attach = [&](EngineInput& in, const std::vector<int32_t>& table, const std::vector<int32_t>& cu) {
    PagedKv& p = in.paged.emplace();
    p.layout = KvPageLayout{KvStorage::k16Bit, in.k.dtype, 16, in.k.heads, in.k.head_dim};
    p.pool = pool.data();
    p.page_bytes = p.layout.page_bytes();
    p.pool_pages = static_cast<int64_t>(pool.size() / p.page_bytes);
    p.page_table = table;
    p.cu_pages = cu;
    in.k.data = in.v.data = pool.data();
  };
  attach(pa->input, table_a, cu_a);
  attach(pb->input, table_b, cu_b);
  ASSERT_TRUE(ValidatePagedKv(pa->input, *pa->input.paged).ok());
  EXPECT_EQ(MakeBatchKey(pa->input, ConfigFor(Recipe::kUnquantized)), MakeBatchKey(pb->input, ConfigFor(Recipe::kUnquantized)));
  const EngineInput* members[] = {&pa->input, &pb->input};
  absl::StatusOr<AssembledBatch> batch = AssembleBatch(members);
  ASSERT_TRUE(batch.ok()) << batch.status();
  const EngineInput& in = batch->input();
  ASSERT_TRUE(in.paged.has_value());
  EXPECT_EQ(std::vector<int32_t>(in.paged->page_table.begin(), in.paged->page_table.end()),
            (std::vector<int32_t>{3, 5, 6, 1, 7, 0, 2}));
  EXPECT_EQ(std::vector<int32_t>(in.paged->cu_pages.begin(), in.paged->cu_pages.end()), (std::vector<int32_t>{0, 2, 5, 7}));
  EXPECT_EQ(std::vector<int32_t>(in.cu_seqlens_k.begin(), in.cu_seqlens_k.end()), (std::vector<int32_t>{0, 20, 60, 77}));
  EXPECT_TRUE(ValidatePagedKv(in, *in.paged).ok());
  EXPECT_EQ(testing::TagAt(in.q, 3), 20);
  // The batcher counts a paged problem by its Q: K/V stay in the pool.
  const ProblemSize size = MeasureProblem(in);
  EXPECT_EQ(size.tokens, 4);
  EXPECT_EQ(size.kv_elements, 0);
  EXPECT_EQ(size.q_elements, in.q.numel());
  EXPECT_EQ(size.work, 1 * 20 + 2 * 40 + 1 * 17);

  // Too few pages for a sequence, and a page outside the pool, are refused.
  const std::vector<int32_t> short_cu{0, 1, 3};
  EngineInput bad = pa->input;
  bad.paged->cu_pages = short_cu;
  bad.paged->page_table = std::span<const int32_t>(table_a).first(3);
  EXPECT_EQ(ValidatePagedKv(bad, *bad.paged).code(), absl::StatusCode::kInvalidArgument);
  const std::vector<int32_t> outside{3, 5, 6, 1 << 20, 7};
  bad = pa->input;
  bad.paged->page_table = outside;
  EXPECT_EQ(ValidatePagedKv(bad, *bad.paged).code(), absl::StatusCode::kInvalidArgument);

  std::vector<std::byte> other(pool.size());
  pb->input.paged->pool = other.data();
  EXPECT_FALSE(MakeBatchKey(pa->input, ConfigFor(Recipe::kUnquantized)) == MakeBatchKey(pb->input, ConfigFor(Recipe::kUnquantized)));
}

TEST(AssembleBatch, RefusesIncompatibleMembersAndEmptyInput) {
  ProblemShape other;
  other.head_dim = 128;
  auto a = MakeTagged(1);
  auto b = MakeTagged(2, other);
  const EngineInput* members[] = {&a->input, &b->input};
  EXPECT_EQ(AssembleBatch(members).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(AssembleBatch({}).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(SliceOutput, CutsEachMembersRowsOfOAndLse) {
  ProblemShape s;
  s.q_lens = {2};
  s.k_lens = {2};
  s.lse = LseMode::kNatural;
  auto a = MakeTagged(1, s);
  s.q_lens = {3};
  auto b = MakeTagged(2, s);
  const EngineInput* members[] = {&a->input, &b->input};
  absl::StatusOr<AssembledBatch> batch = AssembleBatch(members);
  ASSERT_TRUE(batch.ok());
  const size_t row = 2 * 64;
  EngineOutput merged;
  for (int t = 0; t < 5; ++t) {
    merged.o.insert(merged.o.end(), row, static_cast<float>(t));
    merged.lse.insert(merged.lse.end(), 2, static_cast<float>(-t));
  }
  const EngineOutput second = SliceOutput(merged, *batch, 1);
  ASSERT_EQ(second.o.size(), 3 * row);
  EXPECT_EQ(second.o.front(), 2.0f);
  EXPECT_EQ(second.o.back(), 4.0f);
  ASSERT_EQ(second.lse.size(), 6u);
  EXPECT_EQ(second.lse.front(), -2.0f);
  EXPECT_EQ(SliceOutput(merged, *batch, 0).o.size(), 2 * row);
}

// The merged launch's 16-bit O (EngineOutput::o_native) is cut the same way, staying 16-bit, and the
// launch's device timings go to every member.
TEST(SliceOutput, CutsNativeOAndKeepsDeviceTimings) {
  ProblemShape s;
  s.q_lens = {2};
  s.k_lens = {2};
  auto a = MakeTagged(1, s);
  s.q_lens = {3};
  auto b = MakeTagged(2, s);
  const EngineInput* members[] = {&a->input, &b->input};
  absl::StatusOr<AssembledBatch> batch = AssembleBatch(members);
  ASSERT_TRUE(batch.ok());
  const size_t row = 2 * 64;
  EngineOutput merged;
  merged.o_native_dtype = DType::kBF16;
  std::vector<uint16_t> codes;
  for (int t = 0; t < 5; ++t) codes.insert(codes.end(), row, static_cast<uint16_t>(t));
  merged.o_native.assign(reinterpret_cast<const char*>(codes.data()), codes.size() * 2);
  merged.device_timings = DeviceTimings{1.0, 2.0, 3.0, 0, 1};
  const EngineOutput second = SliceOutput(merged, *batch, 1);
  EXPECT_TRUE(second.o.empty());
  EXPECT_EQ(second.o_native_dtype, DType::kBF16);
  ASSERT_EQ(second.o_elements(), 3 * row);
  std::vector<uint16_t> got(second.o_elements());
  std::memcpy(got.data(), second.o_native.data(), got.size() * 2);
  EXPECT_EQ(got.front(), 2);
  EXPECT_EQ(got.back(), 4);
  ASSERT_TRUE(second.device_timings.has_value());
  EXPECT_EQ(second.device_timings->kernel_us, 2.0);
}

// Metadata-only assembly: the same cu_seqlens, slices and shapes, no bytes; the output form is
// kNativeAllowed only when every member allows it.
TEST(AssembleBatch, MetadataOnlyHasShapesButNoBytes) {
  ProblemShape a;
  a.q_lens = {2, 3};
  a.k_lens = {4, 5};
  auto pa = MakeTagged(10, a);
  auto pb = MakeTagged(20, a);
  pa->input.output.form = OutputForm::kNativeAllowed;
  const EngineInput* members[] = {&pa->input, &pb->input};
  absl::StatusOr<AssembledBatch> meta = AssembleBatch(members, AssembleMode::kMetadataOnly);
  absl::StatusOr<AssembledBatch> copy = AssembleBatch(members);
  ASSERT_TRUE(meta.ok() && copy.ok());
  EXPECT_EQ(meta->input().q.data, nullptr);
  EXPECT_EQ(meta->input().v.data, nullptr);
  EXPECT_EQ(meta->input().q.tokens, copy->input().q.tokens);
  EXPECT_EQ(meta->input().k.tokens, copy->input().k.tokens);
  EXPECT_TRUE(std::equal(meta->input().cu_seqlens_q.begin(), meta->input().cu_seqlens_q.end(),
                         copy->input().cu_seqlens_q.begin(), copy->input().cu_seqlens_q.end()));
  EXPECT_EQ(meta->members()[1].q_token_offset, copy->members()[1].q_token_offset);
  EXPECT_EQ(meta->input().output.form, OutputForm::kFloat);
  pb->input.output.form = OutputForm::kNativeAllowed;
  absl::StatusOr<AssembledBatch> both = AssembleBatch(members, AssembleMode::kMetadataOnly);
  ASSERT_TRUE(both.ok());
  EXPECT_EQ(both->input().output.form, OutputForm::kNativeAllowed);
  EXPECT_EQ(both->input().memory, MemoryKind::kPageable);

  // Writing into the members' own buffers only when every member has one; pinned only when all are.
  pa->input.output.form = OutputForm::kNativeInto;
  pa->input.memory = MemoryKind::kPinned;
  absl::StatusOr<AssembledBatch> one_into = AssembleBatch(members, AssembleMode::kMetadataOnly);
  ASSERT_TRUE(one_into.ok());
  EXPECT_EQ(one_into->input().output.form, OutputForm::kNativeAllowed);
  EXPECT_EQ(one_into->input().memory, MemoryKind::kPageable);
  pb->input.output.form = OutputForm::kNativeInto;
  pb->input.memory = MemoryKind::kPinned;
  absl::StatusOr<AssembledBatch> all_into = AssembleBatch(members, AssembleMode::kMetadataOnly);
  ASSERT_TRUE(all_into.ok());
  EXPECT_EQ(all_into->input().output.form, OutputForm::kNativeInto);
  EXPECT_EQ(all_into->input().memory, MemoryKind::kPinned);
  // A concatenated copy lives in ordinary memory and has no member buffers to write into.
  absl::StatusOr<AssembledBatch> copied = AssembleBatch(members);
  ASSERT_TRUE(copied.ok());
  EXPECT_EQ(copied->input().output.form, OutputForm::kNativeAllowed);
  EXPECT_EQ(copied->input().memory, MemoryKind::kPageable);
}

// An output the engine wrote into the members' buffers slices into per-member markers, no bytes.
TEST(SliceOutput, CallerBuffersCarryNoBytes) {
  ProblemShape a;
  a.q_lens = {2};
  a.k_lens = {3};
  auto pa = MakeTagged(1, a);
  auto pb = MakeTagged(2, a);
  const EngineInput* members[] = {&pa->input, &pb->input};
  absl::StatusOr<AssembledBatch> batch = AssembleBatch(members, AssembleMode::kMetadataOnly);
  ASSERT_TRUE(batch.ok());
  EngineOutput merged;
  merged.placement = OutputPlacement::kCallerBuffers;
  merged.device_timings = DeviceTimings{1.0, 2.0, 3.0, 0, 1};
  const EngineOutput second = SliceOutput(merged, *batch, 1);
  EXPECT_EQ(second.placement, OutputPlacement::kCallerBuffers);
  EXPECT_TRUE(second.o.empty());
  EXPECT_TRUE(second.o_native.empty());
  EXPECT_TRUE(second.lse.empty());
  ASSERT_TRUE(second.device_timings.has_value());
  EXPECT_EQ(second.device_timings->d2h_us, 3.0);
}

// Problems of one BatchKey with varied lengths, including ones that cross tile boundaries.
std::vector<ProblemSpec> MixedSpecs(MaskMode mask, DType dtype) {
  std::vector<ProblemSpec> specs;
  const std::vector<std::vector<int>> q_lens = {{70, 128}, {1}, {257}, {64, 3}};
  const std::vector<std::vector<int>> k_lens = {{70, 200}, {300}, {257}, {129, 3}};
  for (size_t i = 0; i < q_lens.size(); ++i) {
    ProblemSpec s;
    s.q_lens = q_lens[i];
    s.k_lens = k_lens[i];
    s.q_heads = 4;
    s.kv_heads = 2;
    s.head_dim = 64;
    s.mask = mask;
    s.lse = LseMode::kNatural;
    s.dtype = dtype;
    s.distribution = Distribution::kLlmLike;
    s.seed = 100 + i;
    specs.push_back(s);
  }
  return specs;
}

std::vector<RecipeConfig> AllConfigs() {
  std::vector<RecipeConfig> configs;
  for (Recipe r : kAllRecipes) configs.push_back(ConfigFor(r));
  RecipeConfig variant = ConfigFor(Recipe::kInt8QkFp8Pv);
  variant.granularity = QuantGranularity::kPerBlock;
  variant.v_smoothing = VSmoothing::kMean;
  configs.push_back(variant);
  return configs;
}

TEST(BatchInvariance, MergedOutputsEqualSoloOutputsBitForBit) {
  auto engine = CpuEngine::Create({.num_threads = 2});
  ASSERT_TRUE(engine.ok());
  for (MaskMode mask : {MaskMode::kNone, MaskMode::kCausal}) {
    for (DType dtype : {DType::kF16, DType::kBF16}) {
      std::vector<SyntheticProblem> problems;
      std::vector<EngineInput> engine_inputs;
      std::vector<const EngineInput*> inputs;
      for (const ProblemSpec& s : MixedSpecs(mask, dtype)) problems.emplace_back(s);
      for (const SyntheticProblem& p : problems) engine_inputs.push_back(EngineInput{p.input()});
      for (const EngineInput& in : engine_inputs) inputs.push_back(&in);
      absl::StatusOr<AssembledBatch> batch = AssembleBatch(inputs);
      ASSERT_TRUE(batch.ok()) << batch.status();
      for (const RecipeConfig& config : AllConfigs()) {
        SCOPED_TRACE(DescribeConfig(config));
        absl::StatusOr<EngineOutput> merged = testing::RunOnCpu(**engine, batch->input(), config);
        ASSERT_TRUE(merged.ok()) << merged.status();
        for (size_t i = 0; i < problems.size(); ++i) {
          absl::StatusOr<EngineOutput> alone = testing::RunOnCpu(**engine, problems[i].input(), config);
          ASSERT_TRUE(alone.ok()) << alone.status();
          const EngineOutput part = SliceOutput(*merged, *batch, i);
          ExpectBitIdentical(part.o, alone->o);
          ExpectBitIdentical(part.lse, alone->lse);
        }
      }
    }
  }
}

// The CPU engine behind AttentionBackend, held shut on demand so that requests queue up and merge.
class GatedCpuBackend final : public AttentionBackend {
 public:
  explicit GatedCpuBackend(std::unique_ptr<CpuEngine> engine) : engine_(std::move(engine)) {}
  const BackendInfo& info() const override { return info_; }
  absl::StatusOr<EngineOutput> Attend(const EngineInput& in, const RecipeConfig& config) override {
    gate_.Pass(in.batch());
    return testing::RunOnCpu(*engine_, in, config);
  }
  void Close() { gate_.Close(); }
  void Open() { gate_.Open(); }
  bool WaitForLaunches(size_t n) { return gate_.WaitForLaunches(n); }
  std::vector<int> sequences_per_launch() { return gate_.launches(); }

 private:
  std::unique_ptr<CpuEngine> engine_;
  BackendInfo info_;
  testing::LaunchGate<int> gate_;  // each launch recorded as its sequence count
};

TEST(BatchInvariance, ThroughTheBatcherOnTheCpuEngine) {
  auto engine = CpuEngine::Create({.num_threads = 2});
  ASSERT_TRUE(engine.ok());
  auto reference = CpuEngine::Create({.num_threads = 1});
  ASSERT_TRUE(reference.ok());
  GatedCpuBackend backend(*std::move(engine));
  BatcherOptions options;
  options.worker_threads = 1;
  options.max_queue_delay_us = 1000;
  auto batcher = DynamicBatcher::Create(options, &backend);
  ASSERT_TRUE(batcher.ok());

  const RecipeConfig config = ConfigFor(Recipe::kInt8QkFp8Pv);
  std::vector<SyntheticProblem> problems;
  for (const ProblemSpec& s : MixedSpecs(MaskMode::kCausal, DType::kF16)) problems.emplace_back(s);
  testing::Collector collector;
  auto item = [&](size_t i) {
    testing::TaggedProblem view;  // Only input/config/tag are read by MakeItem.
    view.tag = static_cast<int>(i);
    view.input = EngineInput{problems[i].input()};
    view.config = config;
    return collector.MakeItem(view);
  };
  backend.Close();
  ASSERT_TRUE((*batcher)->Submit(item(0)).ok());  // Runs alone and holds the worker.
  ASSERT_TRUE(backend.WaitForLaunches(1));
  for (size_t i = 1; i < problems.size(); ++i) ASSERT_TRUE((*batcher)->Submit(item(i)).ok());
  backend.Open();
  for (size_t i = 0; i < problems.size(); ++i) {
    ASSERT_TRUE(collector.WaitFor(static_cast<int>(i)));
    testing::Result r = collector.Get(static_cast<int>(i));
    ASSERT_TRUE(r.out.ok()) << r.out.status();
    absl::StatusOr<EngineOutput> alone = testing::RunOnCpu(**reference, problems[i].input(), config);
    ASSERT_TRUE(alone.ok());
    ExpectBitIdentical(r.out->o, alone->o);
    ExpectBitIdentical(r.out->lse, alone->lse);
  }
  // Problem 0 alone (2 sequences), then problems 1..3 merged (1 + 1 + 2 sequences).
  EXPECT_EQ(backend.sequences_per_launch(), (std::vector<int>{2, 4}));
}

}  // namespace
}  // namespace sage::server
