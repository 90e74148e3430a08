// DynamicBatcher against a fake backend: what merges, the caps, the delay, deadlines,
// cancellation, back-pressure, failure isolation and shutdown. Timing is controlled by holding
// the fake backend shut (with one worker, everything submitted meanwhile queues up), never by
// sleeping; the only time bounds checked are lower bounds.
#include "server/scheduler/dynamic_batcher.h"

#include <atomic>
#include <thread>

#include "gtest/gtest.h"
#include "server/metrics/metrics_registry.h"
#include "tests/scheduler/batcher_test_util.h"

namespace sage::server {
namespace {

using testing::Collector;
using testing::FakeBackend;
using testing::MakeTagged;
using testing::ProblemShape;
using testing::TaggedProblem;
using Launches = std::vector<std::vector<int>>;

BatcherOptions OneWorker() {
  BatcherOptions o;
  o.worker_threads = 1;
  o.max_queue_delay_us = 1000;
  o.max_batch_tokens = 1 << 20;
  o.max_batch_work = int64_t{1} << 40;
  return o;
}

// Owns a batcher, its backend and items; item 1 is the blocker that occupies the only worker.
class BatcherTest : public ::testing::Test {
 protected:
  void Start(const BatcherOptions& options, ServerMetrics* metrics = nullptr) {
    auto made = DynamicBatcher::Create(options, &backend_, metrics);
    ASSERT_TRUE(made.ok()) << made.status();
    batcher_ = *std::move(made);
  }
  const TaggedProblem& Add(int tag, const ProblemShape& shape = {}) {
    problems_[tag] = MakeTagged(tag, shape);
    return *problems_[tag];
  }
  absl::Status Submit(int tag, const ProblemShape& shape = {},
                      std::optional<Clock::time_point> deadline = std::nullopt,
                      std::function<bool()> cancelled = {}) {
    return batcher_->Submit(collector_.MakeItem(Add(tag, shape), deadline, std::move(cancelled)));
  }
  // Occupies the single worker with item 1 until Open().
  void Block(const ProblemShape& shape = {}) {
    backend_.Close();
    ASSERT_TRUE(Submit(1, shape).ok());
    ASSERT_TRUE(backend_.WaitForLaunches(1));
  }
  void ExpectOkWithTag(int tag) {
    testing::Result r = collector_.Get(tag);
    ASSERT_TRUE(r.out.ok()) << "item " << tag << ": " << r.out.status();
    const TaggedProblem& p = *problems_[tag];
    ASSERT_EQ(r.out->o.size(), static_cast<size_t>(p.input.q.numel()));
    for (float x : r.out->o) ASSERT_EQ(x, static_cast<float>(tag)) << "item " << tag;
  }

  FakeBackend backend_;
  Collector collector_;
  std::map<int, std::unique_ptr<TaggedProblem>> problems_;
  std::unique_ptr<DynamicBatcher> batcher_;  // Declared last: destroyed first.
};

TEST_F(BatcherTest, MergesCompatibleItemsQueuedBehindABusyWorker) {
  Start(OneWorker());
  Block();
  for (int tag : {2, 3, 4}) ASSERT_TRUE(Submit(tag).ok());
  EXPECT_EQ(batcher_->queue_depth(), 3);
  backend_.Open();
  ASSERT_TRUE(collector_.WaitForAll({1, 2, 3, 4}));
  EXPECT_EQ(backend_.launches(), (Launches{{1}, {2, 3, 4}}));
  for (int tag : {1, 2, 3, 4}) ExpectOkWithTag(tag);
  for (int tag : {2, 3, 4}) EXPECT_EQ(collector_.Calls(tag), 1);
}

// A backend that gathers (the CUDA one) gets merged launches without the batcher's copy; every
// member still gets its own rows, and single items still go through Attend.
TEST_F(BatcherTest, GatheringBackendGetsMergedLaunchesWithoutACopy) {
  backend_.EnableGather();
  Start(OneWorker());
  Block();
  ProblemShape a;
  a.q_lens = {3, 40};
  a.k_lens = {50, 7};
  for (int tag : {2, 3, 4}) ASSERT_TRUE(Submit(tag, tag == 3 ? a : ProblemShape{}).ok());
  backend_.Open();
  ASSERT_TRUE(collector_.WaitForAll({1, 2, 3, 4}));
  EXPECT_EQ(backend_.launches(), (Launches{{1}, {2, 3, 4}}));
  EXPECT_EQ(backend_.gathered(), 1);
  for (int tag : {1, 2, 3, 4}) ExpectOkWithTag(tag);
}

// Members that take O into their own buffers (the server's wire path): one merged launch writes
// every member's rows and the batcher answers each without slicing or re-running anyone.
TEST_F(BatcherTest, MergedLaunchIntoMembersBuffersIsNotSplit) {
  backend_.EnableGather();
  Start(OneWorker());
  Block();
  ProblemShape shape;
  shape.dtype = DType::kF16;
  std::map<int, std::vector<std::byte>> o;
  for (int tag : {2, 3, 4}) {
    TaggedProblem& p = const_cast<TaggedProblem&>(Add(tag, shape));
    o[tag].assign(static_cast<size_t>(p.input.q.numel()) * 2, std::byte{0});
    p.input.output.form = OutputForm::kNativeInto;
    p.input.output.o_into = o[tag];
    ASSERT_TRUE(batcher_->Submit(collector_.MakeItem(p, std::nullopt, {})).ok());
  }
  backend_.Open();
  ASSERT_TRUE(collector_.WaitForAll({1, 2, 3, 4}));
  EXPECT_EQ(backend_.launches(), (Launches{{1}, {2, 3, 4}}));
  for (int tag : {2, 3, 4}) {
    testing::Result r = collector_.Get(tag);
    ASSERT_TRUE(r.out.ok()) << r.out.status();
    EXPECT_EQ(r.out->placement, OutputPlacement::kCallerBuffers);
    EXPECT_TRUE(r.out->o.empty());
    for (size_t i = 0; i < o[tag].size(); i += 2) {
      uint16_t code = 0;
      std::memcpy(&code, o[tag].data() + i, 2);
      ASSERT_EQ(code, tag) << "item " << tag << " byte " << i;
    }
  }
}

TEST_F(BatcherTest, MultiSequenceItemsKeepTheirRowsWhenMerged) {
  Start(OneWorker());
  Block();
  ProblemShape a;
  a.q_lens = {3, 40};
  a.k_lens = {50, 7};
  ProblemShape b;
  b.q_lens = {1};
  b.k_lens = {300};
  b.lse = LseMode::kNone;
  ASSERT_TRUE(Submit(2, a).ok());
  ASSERT_TRUE(Submit(3, b).ok());
  ASSERT_TRUE(Submit(4, a).ok());
  backend_.Open();
  ASSERT_TRUE(collector_.WaitForAll({2, 3, 4}));
  EXPECT_EQ(backend_.launches(), (Launches{{1}, {2, 3, 4}}));
  for (int tag : {2, 3, 4}) ExpectOkWithTag(tag);
}

TEST_F(BatcherTest, KeepsIncompatibleItemsApart) {
  Start(OneWorker());
  Block();
  ProblemShape base;
  ProblemShape hd128 = base;
  hd128.head_dim = 128;
  ProblemShape fp16 = base;
  fp16.dtype = DType::kF16;
  ProblemShape bf16 = base;
  bf16.dtype = DType::kBF16;
  ProblemShape causal = base;
  causal.mask = MaskMode::kCausal;
  ProblemShape lse = base;
  lse.lse = LseMode::kNatural;
  ProblemShape scaled = base;
  scaled.scale = 0.5f;
  ProblemShape gqa = base;
  gqa.q_heads = 4;
  ProblemShape recipe = base;
  recipe.config = ConfigFor(Recipe::kInt4QkFp8Pv);
  ProblemShape default_scale_spelled_out = base;  // Same effective scale: may merge with base.
  default_scale_spelled_out.scale = 1.0f / 8.0f;   // 1/sqrt(64)

  ASSERT_TRUE(Submit(2, base).ok());
  ASSERT_TRUE(Submit(3, hd128).ok());
  ASSERT_TRUE(Submit(4, fp16).ok());
  ASSERT_TRUE(Submit(5, bf16).ok());
  ASSERT_TRUE(Submit(6, causal).ok());
  ASSERT_TRUE(Submit(7, lse).ok());
  ASSERT_TRUE(Submit(8, scaled).ok());
  ASSERT_TRUE(Submit(9, gqa).ok());
  ASSERT_TRUE(Submit(10, recipe).ok());
  ASSERT_TRUE(Submit(11, default_scale_spelled_out).ok());
  ASSERT_TRUE(Submit(12, fp16).ok());
  ASSERT_TRUE(Submit(13, base).ok());
  backend_.Open();
  ASSERT_TRUE(collector_.WaitForAll({2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13}));
  // Groups launch in the order of their oldest member.
  EXPECT_EQ(backend_.launches(),
            (Launches{{1}, {2, 11, 13}, {3}, {4, 12}, {5}, {6}, {7}, {8}, {9}, {10}}));
  for (int tag : {2, 3, 6, 7, 8, 9, 10, 11, 13}) ExpectOkWithTag(tag);
}

TEST_F(BatcherTest, TokenCapSplitsBatchesInArrivalOrder) {
  BatcherOptions o = OneWorker();
  o.max_batch_tokens = 300;  // Two 128-token items fit, three do not.
  Start(o);
  Block();
  for (int tag : {2, 3, 4, 5, 6}) ASSERT_TRUE(Submit(tag).ok());
  backend_.Open();
  ASSERT_TRUE(collector_.WaitForAll({2, 3, 4, 5, 6}));
  EXPECT_EQ(backend_.launches(), (Launches{{1}, {2, 3}, {4, 5}, {6}}));
}

TEST_F(BatcherTest, WorkCapCountsQueryTimesKeyLengths) {
  BatcherOptions o = OneWorker();
  ProblemShape decode;  // 1 query row against 1024 keys: small work, many tokens.
  decode.q_lens = {1};
  decode.k_lens = {1024};
  ProblemShape square;  // 128 x 128 = 16384 work.
  o.max_batch_work = 3 * 128 * 128 - 1;  // Two squares fit, three do not.
  Start(o);
  Block();
  for (int tag : {2, 3, 4}) ASSERT_TRUE(Submit(tag, square).ok());
  for (int tag : {5, 6, 7}) ASSERT_TRUE(Submit(tag, decode).ok());  // 1024 work each: all fit.
  backend_.Open();
  ASSERT_TRUE(collector_.WaitForAll({2, 3, 4, 5, 6, 7}));
  EXPECT_EQ(backend_.launches(), (Launches{{1}, {2, 3}, {4, 5, 6, 7}}));
}

TEST_F(BatcherTest, ElementAndSequenceCapsMatchADevicePool) {
  BatcherOptions o = OneWorker();
  o.max_batch_elements = 3 * 128 * 2 * 64 - 1;  // Two default items' Q (128 x 2 heads x 64) fit.
  o.max_batch_sequences = 3;
  Start(o);
  Block();
  for (int tag : {2, 3, 4}) ASSERT_TRUE(Submit(tag).ok());
  ProblemShape two_seqs;
  two_seqs.q_lens = {1, 1};
  two_seqs.k_lens = {1, 1};
  for (int tag : {5, 6}) ASSERT_TRUE(Submit(tag, two_seqs).ok());  // 4 sequences > 3.
  backend_.Open();
  ASSERT_TRUE(collector_.WaitForAll({2, 3, 4, 5, 6}));
  EXPECT_EQ(backend_.launches(), (Launches{{1}, {2, 3}, {4, 5}, {6}}));
}

TEST_F(BatcherTest, ItemLargerThanTheCapsRunsAlone) {
  BatcherOptions o = OneWorker();
  o.max_batch_tokens = 100;
  Start(o);
  Block();
  ASSERT_TRUE(Submit(2).ok());  // 128 tokens > 100.
  ASSERT_TRUE(Submit(3).ok());
  backend_.Open();
  ASSERT_TRUE(collector_.WaitForAll({2, 3}));
  EXPECT_EQ(backend_.launches(), (Launches{{1}, {2}, {3}}));
  ExpectOkWithTag(2);
}

TEST_F(BatcherTest, MergePolicyNeverLaunchesOneItemAtATime) {
  BatcherOptions o = OneWorker();
  o.merge = MergePolicy::kNever;
  Start(o);
  Block();
  for (int tag : {2, 3, 4}) ASSERT_TRUE(Submit(tag).ok());
  backend_.Open();
  ASSERT_TRUE(collector_.WaitForAll({2, 3, 4}));
  EXPECT_EQ(backend_.launches(), (Launches{{1}, {2}, {3}, {4}}));
}

TEST_F(BatcherTest, QueueDelayFlushesALoneRequest) {
  BatcherOptions o = OneWorker();
  o.max_queue_delay_us = 50'000;
  Start(o);
  const Clock::time_point before = Clock::now();
  ASSERT_TRUE(Submit(2).ok());
  ASSERT_TRUE(collector_.WaitFor(2));
  ExpectOkWithTag(2);
  // It waited for company for the whole delay, then went alone.
  EXPECT_GE(Clock::now() - before, std::chrono::milliseconds(50));
  EXPECT_GE(collector_.Get(2).timings.queued, std::chrono::milliseconds(50));
  EXPECT_EQ(backend_.launches(), (Launches{{2}}));
}

TEST_F(BatcherTest, FullBatchDoesNotWaitForTheDelay) {
  BatcherOptions o = OneWorker();
  o.max_queue_delay_us = 60'000'000;  // A minute: only a full batch can launch in this test.
  o.max_batch_tokens = 256;
  Start(o);
  ASSERT_TRUE(Submit(2).ok());
  ASSERT_TRUE(Submit(3).ok());  // 2 x 128 = the cap: full.
  ASSERT_TRUE(collector_.WaitForAll({2, 3}));
  EXPECT_EQ(backend_.launches(), (Launches{{2, 3}}));
  batcher_->Shutdown(DrainMode::kDropQueued);
}

TEST_F(BatcherTest, DeadlineExpiringInTheQueueIsAnsweredAndNeverLaunched) {
  Start(OneWorker());
  Block();
  ASSERT_TRUE(Submit(2, {}, Clock::now() + std::chrono::milliseconds(30)).ok());
  ASSERT_TRUE(Submit(3).ok());
  // Answered while the worker is still held: the dispatcher's timer expires it.
  ASSERT_TRUE(collector_.WaitFor(2));
  EXPECT_EQ(collector_.Get(2).out.status().code(), absl::StatusCode::kDeadlineExceeded);
  EXPECT_FALSE(collector_.Has(1));
  backend_.Open();
  ASSERT_TRUE(collector_.WaitForAll({1, 3}));
  EXPECT_FALSE(backend_.EverLaunched(2));
  EXPECT_EQ(backend_.launches(), (Launches{{1}, {3}}));
  EXPECT_EQ(collector_.Calls(2), 1);
}

TEST_F(BatcherTest, AlreadyExpiredDeadlineIsNeverLaunched) {
  Start(OneWorker());
  ASSERT_TRUE(Submit(2, {}, Clock::now() - std::chrono::milliseconds(1)).ok());
  ASSERT_TRUE(collector_.WaitFor(2));
  EXPECT_EQ(collector_.Get(2).out.status().code(), absl::StatusCode::kDeadlineExceeded);
  EXPECT_FALSE(backend_.EverLaunched(2));
}

// An idle worker takes a lone request straight from Submit; one already cancelled still never runs.
TEST_F(BatcherTest, CancelledBeforeSubmitIsNeverLaunchedEvenWithAnIdleWorker) {
  Start(OneWorker());
  ASSERT_TRUE(Submit(2, {}, std::nullopt, [] { return true; }).ok());
  ASSERT_TRUE(Submit(3).ok());
  ASSERT_TRUE(collector_.WaitForAll({2, 3}));
  EXPECT_EQ(collector_.Get(2).out.status().code(), absl::StatusCode::kCancelled);
  EXPECT_TRUE(collector_.Get(3).out.ok());
  EXPECT_FALSE(backend_.EverLaunched(2));
  EXPECT_EQ(backend_.launches(), (Launches{{3}}));
}

TEST_F(BatcherTest, CancelledWhileQueuedIsDropped) {
  Start(OneWorker());
  Block();
  auto cancelled = std::make_shared<std::atomic<bool>>(false);
  ASSERT_TRUE(Submit(2, {}, std::nullopt, [cancelled] { return cancelled->load(); }).ok());
  ASSERT_TRUE(Submit(3).ok());
  cancelled->store(true);
  ASSERT_TRUE(collector_.WaitFor(2));  // Polled by the dispatcher while the worker is held.
  EXPECT_EQ(collector_.Get(2).out.status().code(), absl::StatusCode::kCancelled);
  backend_.Open();
  ASSERT_TRUE(collector_.WaitForAll({1, 3}));
  EXPECT_FALSE(backend_.EverLaunched(2));
}

// Without a queue delay (the server's default), requests queued behind busy workers do not wake the
// dispatcher one by one: the worker that finishes forms the next batch. The dispatcher's own timers
// must still fire for them: a deadline, and the cancellation poll. Its idle sleep is 1 s, so an
// answer well before that shows it was woken for the queued item (the only upper bounds here; wide).
BatcherOptions NoDelayOneWorker() {
  BatcherOptions o = OneWorker();
  o.max_queue_delay_us = 0;
  return o;
}
constexpr auto kWellBeforeIdleWake = std::chrono::milliseconds(700);

TEST_F(BatcherTest, WithoutQueueDelayTheFinishingWorkerMergesWhatQueued) {
  Start(NoDelayOneWorker());
  Block();
  for (int tag : {2, 3, 4}) ASSERT_TRUE(Submit(tag).ok());
  backend_.Open();
  ASSERT_TRUE(collector_.WaitForAll({1, 2, 3, 4}));
  EXPECT_EQ(backend_.launches(), (Launches{{1}, {2, 3, 4}}));
  for (int tag : {1, 2, 3, 4}) ExpectOkWithTag(tag);
}

TEST_F(BatcherTest, WithoutQueueDelayADeadlineInTheQueueStillFires) {
  Start(NoDelayOneWorker());
  Block();
  ASSERT_TRUE(Submit(2).ok());  // queued first: the dispatcher's timer is armed by it
  const Clock::time_point before = Clock::now();
  ASSERT_TRUE(Submit(3, {}, before + std::chrono::milliseconds(5)).ok());
  ASSERT_TRUE(collector_.WaitFor(3));
  EXPECT_LT(Clock::now() - before, kWellBeforeIdleWake);
  EXPECT_EQ(collector_.Get(3).out.status().code(), absl::StatusCode::kDeadlineExceeded);
  EXPECT_FALSE(collector_.Has(1));  // the worker is still held
  backend_.Open();
  ASSERT_TRUE(collector_.WaitForAll({1, 2}));
  EXPECT_FALSE(backend_.EverLaunched(3));
}

TEST_F(BatcherTest, WithoutQueueDelayCancellationInTheQueueIsStillPolled) {
  Start(NoDelayOneWorker());
  Block();
  auto cancelled = std::make_shared<std::atomic<bool>>(false);
  ASSERT_TRUE(Submit(2, {}, std::nullopt, [cancelled] { return cancelled->load(); }).ok());
  ASSERT_TRUE(Submit(3).ok());
  const Clock::time_point before = Clock::now();
  cancelled->store(true);
  ASSERT_TRUE(collector_.WaitFor(2));
  EXPECT_LT(Clock::now() - before, kWellBeforeIdleWake);
  EXPECT_EQ(collector_.Get(2).out.status().code(), absl::StatusCode::kCancelled);
  EXPECT_FALSE(collector_.Has(1));
  backend_.Open();
  ASSERT_TRUE(collector_.WaitForAll({1, 3}));
  EXPECT_FALSE(backend_.EverLaunched(2));
}

// The worker that forms the next batch checks what it launches: a member cancelled while queued is
// answered, not launched, even when the dispatcher's next poll is still far off.
TEST_F(BatcherTest, WorkerFormingABatchLeavesOutACancelledMember) {
  Start(NoDelayOneWorker());
  Block();
  auto cancelled = std::make_shared<std::atomic<bool>>(false);
  ASSERT_TRUE(Submit(2, {}, std::nullopt, [cancelled] { return cancelled->load(); }).ok());
  ASSERT_TRUE(Submit(3).ok());
  ASSERT_TRUE(Submit(4, {}, Clock::now() - std::chrono::milliseconds(1)).ok());  // already expired
  cancelled->store(true);
  backend_.Open();
  ASSERT_TRUE(collector_.WaitForAll({1, 2, 3, 4}));
  EXPECT_EQ(collector_.Get(2).out.status().code(), absl::StatusCode::kCancelled);
  EXPECT_EQ(collector_.Get(4).out.status().code(), absl::StatusCode::kDeadlineExceeded);
  EXPECT_EQ(backend_.launches(), (Launches{{1}, {3}}));
  ExpectOkWithTag(3);
  EXPECT_EQ(collector_.Calls(2), 1);
  EXPECT_EQ(collector_.Calls(4), 1);
}

TEST_F(BatcherTest, FullQueueRefusesAtOnceWithoutCallingDone) {
  BatcherOptions o = OneWorker();
  o.queue_capacity = 2;
  Start(o);
  Block();  // Item 1 runs: it no longer counts against the queue.
  ASSERT_TRUE(Submit(2).ok());
  ASSERT_TRUE(Submit(3).ok());
  const absl::Status refused = Submit(4);
  EXPECT_EQ(refused.code(), absl::StatusCode::kResourceExhausted) << refused;
  backend_.Open();
  ASSERT_TRUE(collector_.WaitForAll({1, 2, 3}));
  batcher_->Shutdown(DrainMode::kFinishQueued);
  EXPECT_EQ(collector_.Calls(4), 0);
  EXPECT_FALSE(backend_.EverLaunched(4));
  // Room again once the queue drained.
}

TEST_F(BatcherTest, QueueHasRoomAgainAfterDraining) {
  BatcherOptions o = OneWorker();
  o.queue_capacity = 1;
  Start(o);
  Block();
  ASSERT_TRUE(Submit(2).ok());
  EXPECT_EQ(Submit(3).code(), absl::StatusCode::kResourceExhausted);
  backend_.Open();
  ASSERT_TRUE(collector_.WaitForAll({1, 2}));
  ASSERT_TRUE(Submit(4).ok());
  ASSERT_TRUE(collector_.WaitFor(4));
  ExpectOkWithTag(4);
}

TEST_F(BatcherTest, FailingItemDoesNotFailItsBatchMates) {
  Start(OneWorker());
  backend_.Poison(3);
  Block();
  for (int tag : {2, 3, 4}) ASSERT_TRUE(Submit(tag).ok());
  backend_.Open();
  ASSERT_TRUE(collector_.WaitForAll({2, 3, 4}));
  ExpectOkWithTag(2);
  ExpectOkWithTag(4);
  EXPECT_EQ(collector_.Get(3).out.status().code(), absl::StatusCode::kInternal);
  // The merged launch failed, then each member ran alone.
  EXPECT_EQ(backend_.launches(), (Launches{{1}, {2, 3, 4}, {2}, {3}, {4}}));
  for (int tag : {2, 3, 4}) EXPECT_EQ(collector_.Calls(tag), 1);
}

TEST_F(BatcherTest, MalformedItemIsRefusedAtSubmit) {
  Start(OneWorker());
  const TaggedProblem& p = Add(2);
  WorkItem item = collector_.MakeItem(p);
  static const int32_t kBadCu[] = {0, 200};  // q has 128 tokens.
  item.input.cu_seqlens_q = kBadCu;
  const absl::Status s = batcher_->Submit(std::move(item));
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  EXPECT_NE(s.message().find("cu_seqlens_q"), std::string::npos) << s;
  EXPECT_EQ(collector_.Calls(2), 0);
}

TEST_F(BatcherTest, ShutdownFinishQueuedRunsEverythingAccepted) {
  BatcherOptions o = OneWorker();
  o.max_queue_delay_us = 60'000'000;  // Draining must not wait for the delay.
  o.max_batch_tokens = 1000;
  Start(o);
  ProblemShape large;  // Over the token cap, so the blocker launches without waiting.
  large.q_lens = {1024};
  large.k_lens = {1024};
  Block(large);
  ASSERT_TRUE(Submit(2).ok());
  ASSERT_TRUE(Submit(3).ok());
  batcher_->StopAccepting();
  EXPECT_EQ(Submit(4).code(), absl::StatusCode::kUnavailable);
  std::thread closer([this] { batcher_->Shutdown(DrainMode::kFinishQueued); });
  backend_.Open();
  closer.join();
  for (int tag : {1, 2, 3}) ExpectOkWithTag(tag);
  EXPECT_EQ(backend_.launches(), (Launches{{1}, {2, 3}}));
  EXPECT_EQ(collector_.Calls(4), 0);
}

TEST_F(BatcherTest, ShutdownDropQueuedFailsQueuedButFinishesRunning) {
  Start(OneWorker());
  Block();
  ASSERT_TRUE(Submit(2).ok());
  ASSERT_TRUE(Submit(3).ok());
  std::thread closer([this] { batcher_->Shutdown(DrainMode::kDropQueued); });
  ASSERT_TRUE(collector_.WaitForAll({2, 3}));  // Answered while item 1 still runs.
  EXPECT_EQ(collector_.Get(2).out.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(collector_.Get(3).out.status().code(), absl::StatusCode::kUnavailable);
  backend_.Open();
  closer.join();
  ExpectOkWithTag(1);
  EXPECT_EQ(backend_.launches(), (Launches{{1}}));
  EXPECT_EQ(Submit(5).code(), absl::StatusCode::kUnavailable);
}

TEST_F(BatcherTest, ShutdownTwiceAndDestructorAreSafe) {
  Start(OneWorker());
  ASSERT_TRUE(Submit(2).ok());
  batcher_->Shutdown(DrainMode::kFinishQueued);
  batcher_->Shutdown(DrainMode::kDropQueued);
  ExpectOkWithTag(2);
  batcher_.reset();
}

TEST_F(BatcherTest, RejectsBadOptions) {
  BatcherOptions o;
  o.worker_threads = 0;
  EXPECT_FALSE(DynamicBatcher::Create(o, &backend_).ok());
  o = BatcherOptions{};
  o.queue_capacity = 0;
  EXPECT_FALSE(DynamicBatcher::Create(o, &backend_).ok());
  o = BatcherOptions{};
  o.max_batch_tokens = 0;
  EXPECT_FALSE(DynamicBatcher::Create(o, &backend_).ok());
  o = BatcherOptions{};
  o.max_batch_elements = 0;
  EXPECT_FALSE(DynamicBatcher::Create(o, &backend_).ok());
  o = BatcherOptions{};
  o.max_queue_delay_us = -1;
  EXPECT_FALSE(DynamicBatcher::Create(o, &backend_).ok());
  o = BatcherOptions{};
  o.worker_spin_us = -1;
  EXPECT_FALSE(DynamicBatcher::Create(o, &backend_).ok());
  o.worker_spin_us = 100001;
  EXPECT_FALSE(DynamicBatcher::Create(o, &backend_).ok());
  EXPECT_FALSE(DynamicBatcher::Create(BatcherOptions{}, nullptr).ok());
}

// Eight threads submitting at once: every item answered once, with its own rows. Run with a
// queue delay (batches form in the dispatcher) and without one, with polling workers (lone requests
// go straight to a worker, and workers form the next launch themselves).
class ManySubmitters : public BatcherTest, public ::testing::WithParamInterface<bool> {};

TEST_P(ManySubmitters, AllGetTheirOwnRows) {
  BatcherOptions o;
  o.worker_threads = 2;
  o.max_queue_delay_us = GetParam() ? 0 : 200;
  o.worker_spin_us = GetParam() ? 200 : 0;
  o.max_batch_tokens = 2048;
  o.queue_capacity = 4096;
  Start(o);
  constexpr int kThreads = 8;
  constexpr int kPerThread = 40;
  std::vector<ProblemShape> shapes(3);
  shapes[1].head_dim = 128;
  shapes[2].q_lens = {5, 17};
  shapes[2].k_lens = {64, 9};
  for (int t = 0; t < kThreads; ++t) {
    for (int i = 0; i < kPerThread; ++i) {
      const int tag = 100 + t * kPerThread + i;
      Add(tag, shapes[static_cast<size_t>(tag) % shapes.size()]);
    }
  }
  std::vector<std::thread> threads;
  std::atomic<int> refused{0};
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < kPerThread; ++i) {
        const int tag = 100 + t * kPerThread + i;
        if (!batcher_->Submit(collector_.MakeItem(*problems_[tag])).ok()) refused.fetch_add(1);
      }
    });
  }
  for (std::thread& th : threads) th.join();
  EXPECT_EQ(refused.load(), 0);
  for (int tag = 100; tag < 100 + kThreads * kPerThread; ++tag) {
    ASSERT_TRUE(collector_.WaitFor(tag)) << tag;
    ExpectOkWithTag(tag);
    EXPECT_EQ(collector_.Calls(tag), 1);
  }
}
INSTANTIATE_TEST_SUITE_P(DelayOrPolling, ManySubmitters, ::testing::Bool());

TEST_F(BatcherTest, RecordsQueueAndBatchMetrics) {
  auto metrics = ServerMetrics::Create();
  ASSERT_TRUE(metrics.ok()) << metrics.status();
  BatcherOptions o = OneWorker();
  o.device_label = "cpu0";
  Start(o, metrics->get());
  Block();
  for (int tag : {2, 3, 4}) ASSERT_TRUE(Submit(tag).ok());
  ASSERT_TRUE(Submit(5, {}, Clock::now() - std::chrono::seconds(1)).ok());  // Expires.
  ASSERT_TRUE(collector_.WaitFor(5));
  backend_.Open();
  ASSERT_TRUE(collector_.WaitForAll({1, 2, 3, 4}));
  batcher_->Shutdown(DrainMode::kFinishQueued);

  std::map<std::string, metrics::FamilySnapshot> by_name;
  for (metrics::FamilySnapshot& f : (*metrics)->registry().Collect()) by_name[f.name] = f;
  const auto& batches = by_name.at("sageserve_batches_total");
  ASSERT_EQ(batches.samples.size(), 1u);
  EXPECT_EQ(batches.samples[0].label_values, std::vector<std::string>{"cpu0"});
  EXPECT_EQ(batches.samples[0].value, 2.0);
  const auto& sizes = by_name.at("sageserve_batch_size_requests").samples.at(0).histogram;
  EXPECT_EQ(sizes.count, 2u);
  EXPECT_EQ(sizes.sum, 4.0);  // 1 + 3
  EXPECT_EQ(by_name.at("sageserve_batch_size_tokens").samples.at(0).histogram.sum, 4.0 * 128);
  EXPECT_EQ(by_name.at("sageserve_queue_duration_seconds").samples.at(0).histogram.count, 4u);
  EXPECT_EQ(by_name.at("sageserve_kernel_duration_seconds").samples.at(0).histogram.count, 2u);
  const auto& dropped = by_name.at("sageserve_queue_dropped_total");
  ASSERT_EQ(dropped.samples.size(), 1u);
  EXPECT_EQ(dropped.samples[0].label_values, std::vector<std::string>{"DEADLINE_EXCEEDED"});
  EXPECT_EQ(by_name.at("sageserve_queue_depth_requests").samples.at(0).value, 0.0);
}

TEST_F(BatcherTest, DeviceTimingsNameTheDeviceAndStages) {
  auto metrics = ServerMetrics::Create();
  ASSERT_TRUE(metrics.ok());
  BatcherOptions o = OneWorker();
  o.device_label = "cuda";
  o.launch_timing = LaunchTiming::kBackendReportsStages;
  Start(o, metrics->get());
  backend_.ReportTimings(DeviceTimings{100.0, 700.0, 50.0, 1, 0});
  ASSERT_TRUE(Submit(2).ok());
  ASSERT_TRUE(collector_.WaitFor(2));
  batcher_->Shutdown(DrainMode::kFinishQueued);
  std::map<std::string, metrics::FamilySnapshot> by_name;
  for (metrics::FamilySnapshot& f : (*metrics)->registry().Collect()) by_name[f.name] = f;
  const auto& batches = by_name.at("sageserve_batches_total");
  ASSERT_EQ(batches.samples.size(), 1u);
  EXPECT_EQ(batches.samples[0].label_values, std::vector<std::string>{"cuda:1"});
  for (const char* stage : {"sageserve_h2d_duration_seconds", "sageserve_kernel_duration_seconds",
                            "sageserve_d2h_duration_seconds"}) {
    const auto& f = by_name.at(stage);
    ASSERT_EQ(f.samples.size(), 1u) << stage;
    EXPECT_EQ(f.samples[0].label_values, std::vector<std::string>{"cuda:1"});
    EXPECT_EQ(f.samples[0].histogram.count, 1u);
  }
  EXPECT_NEAR(by_name.at("sageserve_kernel_duration_seconds").samples[0].histogram.sum, 700e-6, 1e-9);
}

}  // namespace
}  // namespace sage::server
