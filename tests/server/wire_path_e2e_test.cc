// The zero-copy response path end to end, without a GPU. A backend that writes O and LSE into the
// request's own block (OutputForm::kNativeInto) stands in for the CUDA backend. It wraps the CPU
// engine and serves blocks from a region pool, as the CUDA backend's pinned pool does. Responses
// that leave as slices of that block must carry exactly the engine's bits: unary and streamed,
// alone and merged by the batcher, with and without LSE, and when the region overflows.
#include <cstring>
#include <future>
#include <memory>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "kernels/reference/numerics.h"
#include "sageserve/client/tensor.h"
#include "server/backend/cpu_backend.h"
#include "server/backend/host_buffer_pool.h"
#include "server/scheduler/batch_assembler.h"
#include "tests/server/test_support.h"

namespace sage::testing {
namespace {
using server::EngineInput;
using server::EngineOutput;
using server::MemoryKind;
using server::OutputForm;
using server::OutputPlacement;

namespace v1 = ::sageserve::v1;

// The CPU engine, answering kNativeInto the way the CUDA backend does: each request's (or merged
// member's) rows go into its o_into / lse_into as codes of q's dtype. Counts what it wrote in place.
class IntoBuffersBackend final : public server::AttentionBackend {
 public:
  explicit IntoBuffersBackend(size_t region_bytes) : region_(region_bytes) {
    auto cpu = server::CreateCpuBackend({});
    EXPECT_TRUE(cpu.ok()) << cpu.status();
    inner_ = *std::move(cpu);
    info_ = inner_->info();
    info_.input_gather = server::InputGather::kSegments;
    pool_ = server::MakeRegionBufferPool(region_.data(), region_.size(), MemoryKind::kPinned, [] {});
  }
  const server::BackendInfo& info() const override { return info_; }
  server::HostBufferPool* host_buffers() override { return pool_.get(); }

  absl::StatusOr<EngineOutput> Attend(const EngineInput& in, const RecipeConfig& config) override {
    const EngineInput* members[] = {&in};
    return Run(in, members, config);
  }
  absl::StatusOr<EngineOutput> AttendGathered(const EngineInput& merged, std::span<const EngineInput* const> members,
                                            const RecipeConfig& config) override {
    ++merged_launches_;
    return Run(merged, members, config);
  }
  int into_writes() const { return into_writes_.load(); }
  int merged_launches() const { return merged_launches_.load(); }
  server::HostBufferPoolStats pool_stats() const { return pool_->Stats(); }

 private:
  absl::StatusOr<EngineOutput> Run(const EngineInput& in, std::span<const EngineInput* const> members,
                                 const RecipeConfig& config) {
    absl::StatusOr<server::AssembledBatch> copy = server::AssembleBatch(members);
    if (!copy.ok()) return copy.status();
    EngineInput run = copy->input();
    run.output.form = OutputForm::kFloat;
    absl::StatusOr<EngineOutput> out = inner_->Attend(run, config);
    if (!out.ok() || in.output.form != OutputForm::kNativeInto) return out;  // merged: the batcher slices it
    const size_t row = static_cast<size_t>(in.q.heads) * in.q.head_dim;
    size_t first = 0;
    for (const EngineInput* m : members) {
      const size_t rows = static_cast<size_t>(m->q.tokens);
      if (m->output.o_into.size() < rows * row * 2) return absl::InternalError("o_into too small");
      EncodeFromFloatBulk(out->o.data() + first * row, m->output.o_into.data(), rows * row, m->q.dtype);
      if (m->lse == LseMode::kNatural) {
        const size_t lse_row = static_cast<size_t>(in.q.heads);
        if (m->output.lse_into.size() < rows * lse_row) return absl::InternalError("lse_into too small");
        std::memcpy(m->output.lse_into.data(), out->lse.data() + first * lse_row, rows * lse_row * sizeof(float));
      }
      first += rows;
    }
    ++into_writes_;
    EngineOutput placed;
    placed.placement = OutputPlacement::kCallerBuffers;
    return placed;
  }

  std::vector<std::byte> region_;
  std::unique_ptr<server::AttentionBackend> inner_;
  server::BackendInfo info_;
  std::unique_ptr<server::HostBufferPool> pool_;
  std::atomic<int> into_writes_{0};
  std::atomic<int> merged_launches_{0};
};

// O as fp16 codes and LSE, bit for bit, against the local engine.
void ExpectEngineBits(const v1::AttendResponse& r, const v1::AttendRequest& request) {
  const LocalResult local = RunLocally(request, Recipe::kInt8QkFp8Pv);
  ASSERT_EQ(r.o().dtype(), v1::DTYPE_FP16) << r.request_id();
  ASSERT_EQ(r.o().shape_size(), 3);
  auto bits = sageserve::Tensor16Bits(r.o());
  ASSERT_TRUE(bits.ok()) << bits.status();
  ASSERT_EQ(bits->size(), local.o.size());
  for (size_t i = 0; i < local.o.size(); ++i) {
    ASSERT_EQ((*bits)[i], sageserve::FloatToFp16(local.o[i])) << r.request_id() << " element " << i;
  }
  if (request.return_lse()) {
    ASSERT_EQ(r.lse().dtype(), v1::DTYPE_FP32);
    ASSERT_EQ(r.lse().data().size(), local.lse.size() * sizeof(float));
    EXPECT_EQ(0, std::memcmp(r.lse().data().data(), local.lse.data(), r.lse().data().size())) << r.request_id();
  } else {
    EXPECT_FALSE(r.has_lse());
  }
}

v1::AttendRequest Request(int i, bool lse) {
  ProblemShape shape;
  shape.cu_q = {0, 17 + i, 40 + 2 * i};
  shape.cu_k = {0, 30 + i, 90 + i};
  shape.causal = (i % 2) == 0;
  shape.lse = lse;
  shape.output_dtype = v1::DTYPE_UNSPECIFIED;  // q's dtype: O can be written in place
  shape.seed = 100 + static_cast<uint32_t>(i);
  return MakeRequest(shape, absl::StrCat("wire-", i, lse ? "-lse" : ""));
}

class WirePathE2E : public ::testing::Test {
 protected:
  void Start(size_t region_bytes, int workers) {
    auto backend = std::make_unique<IntoBuffersBackend>(region_bytes);
    backend_ = backend.get();
    server::ServerOptions options = TestServerOptions();
    options.scheduler.worker_threads = workers;
    StartServer(options, std::move(backend), &server_);
  }
  // Blocks go back to the pool once gRPC has sent the slices that point into them.
  void ExpectPoolDrains() {
    for (int i = 0; i < 200 && backend_->pool_stats().in_use_bytes != 0; ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    EXPECT_EQ(backend_->pool_stats().in_use_bytes, 0);
  }
  RunningServer server_;
  IntoBuffersBackend* backend_ = nullptr;
};

TEST_F(WirePathE2E, UnaryResponsesLeaveFromTheRequestBlock) {
  Start(size_t{64} << 20, 2);
  for (int i = 0; i < 6; ++i) {
    const v1::AttendRequest request = Request(i, i % 3 != 0);
    absl::StatusOr<v1::AttendResponse> r = server_.client->Attend(request);
    ASSERT_TRUE(r.ok()) << r.status();
    EXPECT_EQ(r->request_id(), request.request_id());
    ExpectEngineBits(*r, request);
  }
  EXPECT_EQ(backend_->into_writes(), 6);
  EXPECT_EQ(backend_->pool_stats().overflowed, 0);
  ExpectPoolDrains();
}

// One worker and 48 requests in flight on a stream: the batcher merges them and each member's rows
// land in its own block.
TEST_F(WirePathE2E, MergedStreamRequestsEachGetTheirOwnRows) {
  Start(size_t{64} << 20, 1);
  std::unique_ptr<sageserve::StreamSession> stream = server_.client->OpenStream();
  std::vector<v1::AttendRequest> requests;
  for (int i = 0; i < 48; ++i) requests.push_back(Request(i, i % 2 == 0));
  std::vector<std::future<absl::StatusOr<v1::AttendResponse>>> pending;
  for (const v1::AttendRequest& r : requests) pending.push_back(stream->Send(r));
  for (size_t i = 0; i < requests.size(); ++i) {
    absl::StatusOr<v1::AttendResponse> r = pending[i].get();
    ASSERT_TRUE(r.ok()) << r.status();
    ASSERT_EQ(r->request_id(), requests[i].request_id());
    ExpectEngineBits(*r, requests[i]);
  }
  EXPECT_TRUE(stream->Close().ok());
  EXPECT_GT(backend_->merged_launches(), 0);
  ExpectPoolDrains();
}

// A region too small for any request: every block overflows to the heap, results are the same.
TEST_F(WirePathE2E, RequestsThatDoNotFitTheRegionStillGetTheirBits) {
  Start(4096, 2);
  const v1::AttendRequest request = Request(3, true);
  absl::StatusOr<v1::AttendResponse> r = server_.client->Attend(request);
  ASSERT_TRUE(r.ok()) << r.status();
  ExpectEngineBits(*r, request);
  EXPECT_GE(backend_->pool_stats().overflowed, 1);
}

// Another output dtype than q's: the engine returns O and the codec converts it (no in-place path).
TEST_F(WirePathE2E, OtherOutputDtypeTakesTheOrdinaryPath) {
  Start(size_t{64} << 20, 2);
  v1::AttendRequest request = Request(1, true);
  request.set_output_dtype(v1::DTYPE_FP32);
  absl::StatusOr<v1::AttendResponse> r = server_.client->Attend(request);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(backend_->into_writes(), 0);
  const LocalResult local = RunLocally(request, Recipe::kInt8QkFp8Pv);
  ASSERT_EQ(r->o().data().size(), local.o.size() * sizeof(float));
  EXPECT_EQ(0, std::memcmp(r->o().data().data(), local.o.data(), r->o().data().size()));
}

}  // namespace
}  // namespace sage::testing
