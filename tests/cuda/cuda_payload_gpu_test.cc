// The zero-copy request path of the CUDA backend: inputs in the backend's pinned pool are copied to
// the device straight from their own memory, and O/LSE land straight in the caller's buffers
// (OutputForm::kNativeInto). Every combination (pinned or pageable inputs, pinned or pageable
// destinations, alone or merged with others) gives the same bits as the staged path.
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <cstring>
#include <string>
#include <vector>

#include "server/backend/cuda/cuda_backend.h"
#include "server/backend/host_buffer_pool.h"
#include "server/scheduler/batch_assembler.h"
#include "tests/cuda/gpu_test_util.h"

namespace sage::gputest {
namespace {
using server::EngineInput;
using server::EngineOutput;
using server::MemoryKind;
using server::OutputForm;
using server::OutputPlacement;


using server::AttentionBackend;
using server::HostBlockRef;

std::unique_ptr<AttentionBackend> Make() {
  server::CudaBackendOptions o;
  o.streams_per_device = 2;
  o.pool.max_batch_elements = int64_t{8192} * 8 * 128;
  o.pool.max_batch_sequences = 64;
  o.request_pinned_bytes = int64_t{64} << 20;
  auto b = server::CreateCudaBackend(o);
  EXPECT_TRUE(b.ok()) << b.status();
  return b.ok() ? *std::move(b) : nullptr;
}

HostProblem Problem(uint64_t seed, std::vector<int> lens) {
  ProblemSpec spec;
  spec.q_lens = std::move(lens);
  spec.hq = 8;
  spec.hkv = 4;
  spec.d = 128;
  spec.mask = MaskMode::kCausal;
  spec.lse = LseMode::kNatural;
  spec.seed = seed;
  return MakeProblem(spec);
}

// One problem's bytes in a host block (pinned from the backend's pool, or the heap), with room for
// O and LSE after them, the way the wire path lays out a request.
struct PlacedProblem {
  HostBlockRef block;
  std::vector<std::byte> heap;  // the storage when not pooled
  EngineInput in;

  std::string o() const { return std::string(reinterpret_cast<const char*>(in.output.o_into.data()), in.output.o_into.size()); }
  std::vector<float> lse() const { return std::vector<float>(in.output.lse_into.begin(), in.output.lse_into.end()); }
};

PlacedProblem Place(const HostProblem& p, server::HostBufferPool* pool) {
  PlacedProblem placed;
  placed.in = p.Input();
  const size_t qb = placed.in.q.bytes(), kb = placed.in.k.bytes(), vb = placed.in.v.bytes();
  const size_t lse_b = static_cast<size_t>(placed.in.q.tokens) * placed.in.q.heads * sizeof(float);
  const auto up = [](size_t x) { return (x + 255) / 256 * 256; };
  const size_t at_k = up(qb), at_v = up(at_k + kb), at_o = up(at_v + vb), at_lse = up(at_o + qb);
  const size_t total = at_lse + lse_b;
  std::byte* base = nullptr;
  if (pool != nullptr) {
    auto block = pool->Acquire(total);
    EXPECT_TRUE(block.ok()) << block.status();
    placed.block = *block;
    base = placed.block->data();
    placed.in.memory = placed.block->memory();
    placed.in.output.memory = placed.block->memory();
  } else {
    placed.heap.resize(total);
    base = placed.heap.data();
    placed.in.memory = MemoryKind::kPageable;
    placed.in.output.memory = MemoryKind::kPageable;
  }
  std::memcpy(base, p.q.data(), qb);
  std::memcpy(base + at_k, p.k.data(), kb);
  std::memcpy(base + at_v, p.v.data(), vb);
  std::memset(base + at_o, 0xff, at_lse - at_o + lse_b);  // poison: every byte must be written
  placed.in.q.data = base;
  placed.in.k.data = base + at_k;
  placed.in.v.data = base + at_v;
  placed.in.output.form = OutputForm::kNativeInto;
  placed.in.output.o_into = std::span<std::byte>(base + at_o, qb);
  placed.in.output.lse_into = std::span<float>(reinterpret_cast<float*>(base + at_lse), lse_b / sizeof(float));
  return placed;
}

TEST(CudaPayload, PoolBlocksArePinned) {
  SAGE_SKIP_WITHOUT_GPU();
  auto backend = Make();
  ASSERT_NE(backend, nullptr);
  server::HostBufferPool* pool = backend->host_buffers();
  ASSERT_NE(pool, nullptr);
  auto block = pool->Acquire(1 << 20);
  ASSERT_TRUE(block.ok()) << block.status();
  EXPECT_EQ((*block)->memory(), MemoryKind::kPinned);
  cudaPointerAttributes attr{};
  ASSERT_EQ(cudaPointerGetAttributes(&attr, (*block)->data()), cudaSuccess);
  EXPECT_EQ(attr.type, cudaMemoryTypeHost);  // page-locked and known to the driver
  EXPECT_EQ(pool->Stats().capacity_bytes, int64_t{64} << 20);
  // Larger than the region: served from the heap, pageable, counted.
  auto big = pool->Acquire(size_t{65} << 20);
  ASSERT_TRUE(big.ok()) << big.status();
  EXPECT_EQ((*big)->memory(), MemoryKind::kPageable);
  EXPECT_EQ(pool->Stats().overflowed, 1);
}

// Alone: each placement of inputs and outputs gives the staged path's bits.
TEST(CudaPayload, DirectCopiesEqualStagedCopies) {
  SAGE_SKIP_WITHOUT_GPU();
  auto backend = Make();
  ASSERT_NE(backend, nullptr);
  const RecipeConfig cfg = ConfigFor(backend->info().default_recipe);
  for (uint64_t seed : {11u, 12u}) {
    const HostProblem p = Problem(seed, {200, 37, 512});
    EngineInput staged = p.Input();
    staged.output.form = OutputForm::kNativeAllowed;
    auto want = backend->Attend(staged, cfg);
    ASSERT_TRUE(want.ok()) << want.status();
    ASSERT_TRUE(want->has_native_o());
    for (bool pinned : {true, false}) {
      PlacedProblem placed = Place(p, pinned ? backend->host_buffers() : nullptr);
      ASSERT_EQ(placed.in.memory, pinned ? MemoryKind::kPinned : MemoryKind::kPageable);
      auto got = backend->Attend(placed.in, cfg);
      ASSERT_TRUE(got.ok()) << got.status();
      EXPECT_EQ(got->placement, OutputPlacement::kCallerBuffers);
      EXPECT_TRUE(got->o_native.empty());
      EXPECT_EQ(placed.o(), want->o_native) << "pinned " << pinned;
      EXPECT_EQ(placed.lse(), want->lse) << "pinned " << pinned;
      ASSERT_TRUE(got->device_timings.has_value());
    }
  }
}

// Merged: members with pinned and pageable memory in one launch, each member's rows written into
// its own buffers, equal to that member run alone. Large members take their own DMAs; tiny ones
// (under 64 KiB a tensor) are gathered through the slot's staging even when pinned.
class CudaPayloadMerged : public ::testing::TestWithParam<bool> {};

TEST_P(CudaPayloadMerged, MembersWriteTheirOwnBuffers) {
  SAGE_SKIP_WITHOUT_GPU();
  auto backend = Make();
  ASSERT_NE(backend, nullptr);
  const RecipeConfig cfg = ConfigFor(backend->info().default_recipe);
  const bool tiny = GetParam();
  std::vector<HostProblem> problems;
  for (int i = 0; i < (tiny ? 24 : 5); ++i) {
    problems.push_back(tiny ? Problem(400 + i, {5 + i}) : Problem(300 + i, {128 + 61 * i, 7 + 3 * i}));
  }
  std::vector<PlacedProblem> placed;
  for (size_t i = 0; i < problems.size(); ++i) {
    placed.push_back(Place(problems[i], i % 2 == 0 ? backend->host_buffers() : nullptr));
  }
  std::vector<const EngineInput*> members;
  for (const PlacedProblem& pp : placed) members.push_back(&pp.in);
  auto meta = server::AssembleBatch(members, server::AssembleMode::kMetadataOnly);
  ASSERT_TRUE(meta.ok()) << meta.status();
  EXPECT_EQ(meta->input().output.form, OutputForm::kNativeInto);
  auto merged = backend->AttendGathered(meta->input(), members, cfg);
  ASSERT_TRUE(merged.ok()) << merged.status();
  EXPECT_EQ(merged->placement, OutputPlacement::kCallerBuffers);
  for (size_t i = 0; i < problems.size(); ++i) {
    EngineInput alone = problems[i].Input();
    alone.output.form = OutputForm::kNativeAllowed;
    auto want = backend->Attend(alone, cfg);
    ASSERT_TRUE(want.ok()) << want.status();
    EXPECT_EQ(placed[i].o(), want->o_native) << "member " << i;
    EXPECT_EQ(placed[i].lse(), want->lse) << "member " << i;
    const EngineOutput slice = server::SliceOutput(*merged, *meta, i);
    EXPECT_EQ(slice.placement, OutputPlacement::kCallerBuffers);
  }
}
INSTANTIATE_TEST_SUITE_P(LargeAndTiny, CudaPayloadMerged, ::testing::Bool());

// One problem's tensors in device memory, as a client's CUDA shared memory is: q/k/v, then O and LSE.
struct DeviceProblem {
  void* base = nullptr;
  EngineInput in;
  DeviceProblem() = default;
  DeviceProblem(const DeviceProblem&) = delete;
  DeviceProblem& operator=(const DeviceProblem&) = delete;
  DeviceProblem(DeviceProblem&& o) noexcept : base(o.base), in(o.in) { o.base = nullptr; }
  ~DeviceProblem() {
    if (base != nullptr) (void)cudaFree(base);
  }
  std::string o() const {
    std::string out(in.output.o_into.size(), '\0');
    EXPECT_EQ(cudaMemcpy(out.data(), in.output.o_into.data(), out.size(), cudaMemcpyDeviceToHost), cudaSuccess);
    return out;
  }
  std::vector<float> lse() const {
    std::vector<float> out(in.output.lse_into.size());
    EXPECT_EQ(cudaMemcpy(out.data(), in.output.lse_into.data(), out.size() * sizeof(float), cudaMemcpyDeviceToHost),
              cudaSuccess);
    return out;
  }
};

// `skew` shifts every tensor by that many bytes: 8 leaves q/k/v short of the 16-byte alignment the
// kernels read in place, so the executor must copy them instead.
DeviceProblem OnDevice(const HostProblem& p, size_t skew = 0) {
  DeviceProblem d;
  d.in = p.Input();
  const size_t qb = d.in.q.bytes(), kb = d.in.k.bytes(), vb = d.in.v.bytes();
  const size_t lse_b = static_cast<size_t>(d.in.q.tokens) * d.in.q.heads * sizeof(float);
  const auto up = [](size_t x) { return (x + 255) / 256 * 256; };
  const size_t at_k = up(qb), at_v = up(at_k + kb), at_o = up(at_v + vb), at_lse = up(at_o + qb);
  EXPECT_EQ(cudaMalloc(&d.base, at_lse + lse_b + skew), cudaSuccess);
  auto* base = static_cast<std::byte*>(d.base) + skew;
  EXPECT_EQ(cudaMemcpy(base, d.in.q.data, qb, cudaMemcpyHostToDevice), cudaSuccess);
  EXPECT_EQ(cudaMemcpy(base + at_k, d.in.k.data, kb, cudaMemcpyHostToDevice), cudaSuccess);
  EXPECT_EQ(cudaMemcpy(base + at_v, d.in.v.data, vb, cudaMemcpyHostToDevice), cudaSuccess);
  EXPECT_EQ(cudaMemset(base + at_o, 0xff, at_lse - at_o + lse_b), cudaSuccess);  // poison
  d.in.q.data = base;
  d.in.k.data = base + at_k;
  d.in.v.data = base + at_v;
  d.in.memory = MemoryKind::kDevice;
  d.in.output.memory = MemoryKind::kDevice;
  d.in.memory_device = 0;
  d.in.output.form = OutputForm::kNativeInto;
  d.in.output.o_into = std::span<std::byte>(base + at_o, qb);
  d.in.output.lse_into = std::span<float>(reinterpret_cast<float*>(base + at_lse), lse_b / sizeof(float));
  return d;
}

// Tensors in device memory (CUDA shared memory): copied on the device, alone and merged, with the
// staged path's bits. Tiny members too: device memory never goes through host staging.
TEST(CudaPayload, DeviceMemoryEqualsStagedPath) {
  SAGE_SKIP_WITHOUT_GPU();
  auto backend = Make();
  ASSERT_NE(backend, nullptr);
  const RecipeConfig cfg = ConfigFor(backend->info().default_recipe);
  std::vector<HostProblem> problems;
  for (int i = 0; i < 6; ++i) problems.push_back(Problem(600 + i, i % 2 == 0 ? std::vector<int>{300 + 17 * i, 9} : std::vector<int>{3 + i}));
  std::vector<EngineOutput> want;
  for (const HostProblem& p : problems) {
    EngineInput staged = p.Input();
    staged.output.form = OutputForm::kNativeAllowed;
    auto w = backend->Attend(staged, cfg);
    ASSERT_TRUE(w.ok()) << w.status();
    want.push_back(*std::move(w));
  }
  // Alone: read and written in place (aligned), or copied on the device (skewed).
  for (size_t skew : {size_t{0}, size_t{8}}) {
    for (size_t i = 0; i < problems.size(); ++i) {
      DeviceProblem d = OnDevice(problems[i], skew);
      auto got = backend->Attend(d.in, cfg);
      ASSERT_TRUE(got.ok()) << got.status();
      EXPECT_EQ(got->placement, OutputPlacement::kCallerBuffers);
      EXPECT_EQ(d.o(), want[i].o_native) << "problem " << i << " skew " << skew;
      EXPECT_EQ(d.lse(), want[i].lse) << "problem " << i << " skew " << skew;
      ASSERT_TRUE(got->device_timings.has_value());
      EXPECT_GT(got->device_timings->kernel_us, 0);
      if (skew == 0) {
        // Read and written in place: cu_seqlens ride in the kernel parameters and nothing comes
        // back, so neither copy stage happens (the default recipe is quantized).
        EXPECT_EQ(got->device_timings->h2d_us, 0) << "problem " << i;
        EXPECT_EQ(got->device_timings->d2h_us, 0) << "problem " << i;
      } else {
        EXPECT_GT(got->device_timings->h2d_us, 0) << "copied on the device";
      }
    }
  }
  // Device inputs, O into pinned host memory.
  {
    DeviceProblem d = OnDevice(problems[0]);
    PlacedProblem host = Place(problems[0], backend->host_buffers());
    d.in.output.memory = host.in.output.memory;
    d.in.output.o_into = host.in.output.o_into;
    d.in.output.lse_into = host.in.output.lse_into;
    auto got = backend->Attend(d.in, cfg);
    ASSERT_TRUE(got.ok()) << got.status();
    EXPECT_EQ(host.o(), want[0].o_native);
    EXPECT_EQ(host.lse(), want[0].lse);
  }
  // Merged: gathered and scattered by the copy kernel, 16-byte aligned or not.
  std::vector<DeviceProblem> on_device;
  std::vector<const EngineInput*> members;
  for (size_t skew : {size_t{0}, size_t{8}}) {
    on_device.clear();
    members.clear();
    for (const HostProblem& p : problems) on_device.push_back(OnDevice(p, skew));
    for (const DeviceProblem& d : on_device) members.push_back(&d.in);
    auto meta = server::AssembleBatch(members, server::AssembleMode::kMetadataOnly);
    ASSERT_TRUE(meta.ok()) << meta.status();
    auto merged = backend->AttendGathered(meta->input(), members, cfg);
    ASSERT_TRUE(merged.ok()) << merged.status();
    EXPECT_EQ(merged->placement, OutputPlacement::kCallerBuffers);
    for (size_t i = 0; i < problems.size(); ++i) {
      EXPECT_EQ(on_device[i].o(), want[i].o_native) << "member " << i << " skew " << skew;
      EXPECT_EQ(on_device[i].lse(), want[i].lse) << "member " << i << " skew " << skew;
    }
  }
  // The host cannot concatenate device tensors: refused, not read.
  EXPECT_EQ(server::AssembleBatch(members).status().code(), absl::StatusCode::kInvalidArgument);
  // A device the backend does not run is refused.
  DeviceProblem elsewhere = OnDevice(problems[1]);
  elsewhere.in.memory_device = 7;
  EXPECT_EQ(backend->Attend(elsewhere.in, cfg).status().code(), absl::StatusCode::kInvalidArgument);
}

// A destination too small for the rows is refused before anything is launched.
TEST(CudaPayload, ShortDestinationIsRefused) {
  SAGE_SKIP_WITHOUT_GPU();
  auto backend = Make();
  ASSERT_NE(backend, nullptr);
  const HostProblem p = Problem(77, {64});
  PlacedProblem placed = Place(p, backend->host_buffers());
  placed.in.output.o_into = placed.in.output.o_into.first(placed.in.output.o_into.size() - 2);
  auto got = backend->Attend(placed.in, ConfigFor(backend->info().default_recipe));
  EXPECT_EQ(got.status().code(), absl::StatusCode::kInvalidArgument) << got.status();
  // The backend keeps serving.
  PlacedProblem ok = Place(p, backend->host_buffers());
  EXPECT_TRUE(backend->Attend(ok.in, ConfigFor(backend->info().default_recipe)).ok());
}

}  // namespace
}  // namespace sage::gputest
