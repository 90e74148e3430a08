// The CUDA executor's transfer plan (server/backend/cuda/transfer_plan.h) without a GPU: plain host
// arrays stand in for the slot's pinned and device buffers and for the callers' memory, so every
// copy, copy-kernel segment and kernel pointer is checked as an address.
#include "server/backend/cuda/transfer_plan.h"

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <deque>
#include <memory>
#include <vector>

#include "absl/status/status.h"
#include "gtest/gtest.h"
#include "server/backend/output_placement.h"

namespace sage::server {
namespace {

constexpr int kHeads = 2;
constexpr int kDim = 64;
constexpr size_t kRowBytes = size_t{kHeads} * kDim * 2;  // one token of q (or O) in 16-bit
constexpr size_t kLseRowBytes = size_t{kHeads} * sizeof(float);
constexpr size_t kSeg = sizeof(sage_copy_segment_t);

unsigned char* U(const void* p) { return static_cast<unsigned char*>(const_cast<void*>(p)); }

// A slot's four buffers and workspace as host arrays, sized as DeviceExecutor::CapacityFor does.
struct FakeSlot {
  std::vector<unsigned char> host_in, dev_in, host_out, dev_out, ws;
  SlotBuffers buffers;
  explicit FakeSlot(int64_t max_elements = int64_t{1} << 19, int max_sequences = 128) {
    const StagingLayout cap = LayoutFor(max_elements, max_elements, max_sequences, max_elements / 64);
    host_in.resize(cap.in_end);
    dev_in.resize(cap.in_end);
    host_out.resize(cap.out_end);
    dev_out.resize(cap.out_end);
    ws.resize(4096);
    buffers = SlotBuffers{host_in.data(), dev_in.data(), cap.in_end, host_out.data(), dev_out.data(),
                          cap.out_end,    ws.data(),     ws.size()};
  }
};

// Owns the callers' bytes; every EngineInput it makes points into it (stable addresses).
class Problems {
 public:
  // One problem of `seqs` sequences of `tokens` query and key tokens each.
  EngineInput Make(int64_t tokens, MemoryKind memory, int device = 0, DType dtype = DType::kF16, int seqs = 1) {
    EngineInput in;
    in.q = Tensor(dtype, tokens);
    in.k = Tensor(dtype, tokens);
    in.v = Tensor(dtype, tokens);
    std::vector<int32_t>& cu = ints_.emplace_back();
    for (int s = 0; s <= seqs; ++s) cu.push_back(static_cast<int32_t>(tokens * s / seqs));
    in.cu_seqlens_q = cu;
    in.cu_seqlens_k = cu;
    in.memory = memory;
    in.memory_device = memory == MemoryKind::kDevice ? device : -1;
    return in;
  }

  // Gives `in` its own output buffers of `memory` (kNativeInto), with room for LSE.
  void GiveOutput(EngineInput& in, MemoryKind memory, int device = 0) {
    const size_t rows = static_cast<size_t>(in.q.tokens);
    in.output.form = OutputForm::kNativeInto;
    in.output.memory = memory;
    in.output.o_into = std::span<std::byte>(reinterpret_cast<std::byte*>(Bytes(rows * kRowBytes)), rows * kRowBytes);
    in.output.lse_into = std::span<float>(reinterpret_cast<float*>(Bytes(rows * kLseRowBytes)), rows * kHeads);
    if (memory == MemoryKind::kDevice) in.memory_device = device;
  }

  // The merged description of `parts`: shapes and cu_seqlens only (null data), as the batcher makes.
  EngineInput Merge(const std::vector<const EngineInput*>& parts, bool lse) {
    EngineInput m;
    m.q = parts[0]->q;
    m.k = parts[0]->k;
    m.v = parts[0]->v;
    m.q.data = m.k.data = m.v.data = nullptr;
    m.q.tokens = m.k.tokens = m.v.tokens = 0;
    std::vector<int32_t>& cu = ints_.emplace_back(1, 0);
    for (const EngineInput* p : parts) {
      m.q.tokens += p->q.tokens;
      m.k.tokens += p->k.tokens;
      m.v.tokens += p->v.tokens;
      for (size_t s = 1; s < p->cu_seqlens_q.size(); ++s) cu.push_back(cu.back() + p->cu_seqlens_q[s] - p->cu_seqlens_q[s - 1]);
    }
    m.cu_seqlens_q = cu;
    m.cu_seqlens_k = cu;
    m.lse = lse ? LseMode::kNatural : LseMode::kNone;
    std::vector<const EngineInput*> members(parts.begin(), parts.end());
    m.output = MergeOutputTargets(members, /*concatenated=*/false);
    return m;
  }

  unsigned char* Bytes(size_t n) {
    // 256-aligned storage, so tests can misalign on purpose by adding an offset.
    std::vector<unsigned char>& b = bytes_.emplace_back(n + 512);
    const uintptr_t p = reinterpret_cast<uintptr_t>(b.data());
    return b.data() + ((256 - p % 256) % 256);
  }

 private:
  TensorView Tensor(DType dtype, int64_t tokens) {
    TensorView t;
    t.dtype = dtype;
    t.tokens = tokens;
    t.heads = kHeads;
    t.head_dim = kDim;
    t.data = Bytes(static_cast<size_t>(t.numel()) * DTypeSize(dtype));
    return t;
  }
  std::deque<std::vector<unsigned char>> bytes_;
  std::deque<std::vector<int32_t>> ints_;
};

LaunchFacts Facts(const EngineInput& in, sage_recipe_t recipe = SAGE_RECIPE_INT8_QK_FP16_PV, int device = 0) {
  return LaunchFacts{DType::kF16, in.batch(), in.q.tokens, in.q.heads, recipe, device};
}

StagingLayout LayoutOf(const EngineInput& in) {
  const int64_t lse = in.lse == LseMode::kNatural ? in.q.tokens * in.q.heads : 0;
  return LayoutFor(in.q.numel(), in.k.numel(), in.batch(), lse);
}

void ExpectCopy(const Copy& c, const void* dst, const void* src, size_t bytes) {
  EXPECT_EQ(c.dst, dst);
  EXPECT_EQ(c.src, src);
  EXPECT_EQ(c.bytes, bytes);
}

void ExpectSegment(const sage_copy_segment_t& s, const void* src, const void* dst, size_t bytes) {
  EXPECT_EQ(s.src, src);
  EXPECT_EQ(s.dst, dst);
  EXPECT_EQ(s.bytes, bytes);
}

TEST(LayoutFor, AlignsEveryTensorTo256BytesAndLeavesTableRoom) {
  // q: 10 tokens x 2 x 64 x 2 B = 2560; k/v: 3 tokens = 768 each; 2 sequences: 12 B of cu_seqlens.
  const StagingLayout l = LayoutFor(10 * kHeads * kDim, 3 * kHeads * kDim, 2, 10 * kHeads);
  EXPECT_EQ(l.q, 0u);
  EXPECT_EQ(l.k, 2560u);
  EXPECT_EQ(l.v, 2560u + 768u);
  EXPECT_EQ(l.cu_q, 4096u);
  EXPECT_EQ(l.cu_k, 4096u + 256u);
  EXPECT_EQ(l.seg, 4096u + 512u);
  EXPECT_EQ(l.in_end, l.seg + 2 * kSegmentsPerSequence * kSeg);
  EXPECT_EQ(l.o, 0u);
  EXPECT_EQ(l.lse, 2560u);
  EXPECT_EQ(l.out_end, 2560u + 20 * sizeof(float));
}

TEST(AddCopy, ExtendsTheLastCopyOnlyWhenBothEndsContinueIt) {
  unsigned char a[64] = {}, b[64] = {};
  std::vector<Copy> copies;
  AddCopy(copies, a, b, 16);
  AddCopy(copies, a + 16, b + 16, 8);  // continues both: one copy
  AddCopy(copies, a + 24, b + 32, 8);  // source jumps: a new one
  AddCopy(copies, a + 40, b + 40, 0);  // nothing
  ASSERT_EQ(copies.size(), 2u);
  ExpectCopy(copies[0], a, b, 24);
  ExpectCopy(copies[1], a + 24, b + 32, 8);
}

TEST(TransferPlan, LoneDeviceProblemOnThisDeviceIsReadInPlaceWithCuSeqlensInParams) {
  FakeSlot slot;
  Problems p;
  EngineInput in = p.Make(16, MemoryKind::kDevice, /*device=*/0);
  const EngineInput* parts[] = {&in};
  absl::StatusOr<TransferPlan> plan = PlanTransfers(in, parts, Facts(in), slot.buffers);
  ASSERT_TRUE(plan.ok()) << plan.status();
  const StagingLayout l = LayoutOf(in);
  EXPECT_EQ(plan->input, InputRoute::kReadInPlace);
  EXPECT_TRUE(plan->in_segments.empty());
  EXPECT_TRUE(plan->h2d.empty());
  EXPECT_TRUE(plan->gather.empty());
  EXPECT_TRUE(plan->cu_in_params);
  EXPECT_FALSE(plan->has_h2d);  // no upload stage, no H2D event
  // O is returned (no kNativeInto): the whole output staging comes back in one copy.
  EXPECT_EQ(plan->output, OutputRoute::kReturned);
  ASSERT_EQ(plan->d2h.size(), 1u);
  ExpectCopy(plan->d2h[0], slot.host_out.data(), slot.dev_out.data(), l.out_end);
  EXPECT_TRUE(plan->has_d2h);

  sage_attn_params_t params{};
  FillKernelParams(*plan, params);
  EXPECT_EQ(params.q, in.q.data);
  EXPECT_EQ(params.k, in.k.data);
  EXPECT_EQ(params.v, in.v.data);
  EXPECT_EQ(params.cu_seqlens_q, reinterpret_cast<const int32_t*>(slot.dev_in.data() + l.cu_q));
  EXPECT_EQ(params.cu_seqlens_k, reinterpret_cast<const int32_t*>(slot.dev_in.data() + l.cu_k));
  EXPECT_EQ(params.host_cu_seqlens_q, reinterpret_cast<const int32_t*>(slot.host_in.data() + l.cu_q));
  EXPECT_EQ(params.host_cu_seqlens_k, reinterpret_cast<const int32_t*>(slot.host_in.data() + l.cu_k));
  EXPECT_EQ(params.o, slot.dev_out.data() + l.o);
  EXPECT_EQ(params.lse, nullptr);
  EXPECT_EQ(params.workspace, slot.ws.data());
  EXPECT_EQ(params.workspace_bytes, slot.ws.size());

  StageHostTables(*plan, in);
  EXPECT_EQ(std::memcmp(slot.host_in.data() + l.cu_q, in.cu_seqlens_q.data(), 2 * sizeof(int32_t)), 0);
  EXPECT_EQ(std::memcmp(slot.host_in.data() + l.cu_k, in.cu_seqlens_k.data(), 2 * sizeof(int32_t)), 0);
}

TEST(TransferPlan, UnquantizedOrLargeBatchUploadsCuSeqlensByCopy) {
  FakeSlot slot;
  Problems p;
  for (const auto& [recipe, seqs] : {std::pair{SAGE_RECIPE_UNQUANTIZED, 1},
                                     std::pair{SAGE_RECIPE_INT8_QK_FP16_PV, SAGE_INLINE_CU_SEQLENS_MAX + 1}}) {
    EngineInput in = p.Make(SAGE_INLINE_CU_SEQLENS_MAX + 1, MemoryKind::kDevice, 0, DType::kF16, seqs);
    const EngineInput* parts[] = {&in};
    absl::StatusOr<TransferPlan> plan = PlanTransfers(in, parts, Facts(in, recipe), slot.buffers);
    ASSERT_TRUE(plan.ok()) << plan.status();
    const StagingLayout l = LayoutOf(in);
    EXPECT_EQ(plan->input, InputRoute::kReadInPlace);
    EXPECT_FALSE(plan->cu_in_params);
    EXPECT_EQ(plan->table_end, l.seg);
    ASSERT_EQ(plan->h2d.size(), 1u);
    ExpectCopy(plan->h2d[0], slot.dev_in.data() + l.cu_q, slot.host_in.data() + l.cu_q, l.seg - l.cu_q);
    EXPECT_TRUE(plan->has_h2d);
    sage_attn_params_t params{};
    FillKernelParams(*plan, params);
    EXPECT_EQ(params.q, in.q.data);
    EXPECT_EQ(params.host_cu_seqlens_q, nullptr);
    EXPECT_EQ(params.host_cu_seqlens_k, nullptr);
  }
}

TEST(TransferPlan, DeviceProblemOnAnotherDeviceOrMisalignedIsCopied) {
  FakeSlot slot;
  Problems p;
  EngineInput other = p.Make(16, MemoryKind::kDevice, /*device=*/1);
  EngineInput misaligned = p.Make(16, MemoryKind::kDevice, /*device=*/0);
  misaligned.k.data = U(misaligned.k.data) + 8;  // 8-byte aligned only: the kernels read 16 at a time
  for (const EngineInput* in : {&other, &misaligned}) {
    const EngineInput* parts[] = {in};
    absl::StatusOr<TransferPlan> plan = PlanTransfers(*in, parts, Facts(*in), slot.buffers);
    ASSERT_TRUE(plan.ok()) << plan.status();
    const StagingLayout l = LayoutOf(*in);
    const size_t bytes = 16 * kRowBytes;
    unsigned char* dev = slot.dev_in.data();
    EXPECT_EQ(plan->input, InputRoute::kPerTensor);
    EXPECT_TRUE(plan->in_segments.empty());
    EXPECT_TRUE(plan->gather.empty());  // a lone problem: DMA, not the copy kernel
    EXPECT_FALSE(plan->cu_in_params);
    ASSERT_EQ(plan->h2d.size(), 4u);
    ExpectCopy(plan->h2d[0], dev + l.q, in->q.data, bytes);
    ExpectCopy(plan->h2d[1], dev + l.k, in->k.data, bytes);
    ExpectCopy(plan->h2d[2], dev + l.v, in->v.data, bytes);
    ExpectCopy(plan->h2d[3], dev + l.cu_q, slot.host_in.data() + l.cu_q, l.seg - l.cu_q);
    sage_attn_params_t params{};
    FillKernelParams(*plan, params);
    EXPECT_EQ(params.q, dev + l.q);
    EXPECT_EQ(params.k, dev + l.k);
    EXPECT_EQ(params.v, dev + l.v);
    EXPECT_EQ(params.host_cu_seqlens_q, nullptr);
  }
}

TEST(TransferPlan, LargePinnedInputsAreCopiedStraightFromTheirMemory) {
  FakeSlot slot;
  Problems p;
  const int64_t tokens = static_cast<int64_t>(kDirectCopyMinBytes / kRowBytes);  // exactly 64 KiB per tensor
  EngineInput in = p.Make(tokens, MemoryKind::kPinned);
  const EngineInput* parts[] = {&in};
  absl::StatusOr<TransferPlan> plan = PlanTransfers(in, parts, Facts(in), slot.buffers);
  ASSERT_TRUE(plan.ok()) << plan.status();
  const StagingLayout l = LayoutOf(in);
  unsigned char* dev = slot.dev_in.data();
  EXPECT_EQ(plan->input, InputRoute::kPerTensor);
  EXPECT_TRUE(plan->in_segments.empty());
  ASSERT_EQ(plan->h2d.size(), 4u);
  ExpectCopy(plan->h2d[0], dev + l.q, in.q.data, kDirectCopyMinBytes);
  ExpectCopy(plan->h2d[1], dev + l.k, in.k.data, kDirectCopyMinBytes);
  ExpectCopy(plan->h2d[2], dev + l.v, in.v.data, kDirectCopyMinBytes);
  ExpectCopy(plan->h2d[3], dev + l.cu_q, slot.host_in.data() + l.cu_q, l.seg - l.cu_q);
  EXPECT_FALSE(plan->cu_in_params);
}

TEST(TransferPlan, SmallPinnedInputsAreStagedAndUploadedInOneCopy) {
  FakeSlot slot;
  Problems p;
  const int64_t tokens = static_cast<int64_t>(kDirectCopyMinBytes / kRowBytes) - 1;  // just under 64 KiB
  EngineInput in = p.Make(tokens, MemoryKind::kPinned);
  const EngineInput* parts[] = {&in};
  absl::StatusOr<TransferPlan> plan = PlanTransfers(in, parts, Facts(in), slot.buffers);
  ASSERT_TRUE(plan.ok()) << plan.status();
  const StagingLayout l = LayoutOf(in);
  const size_t n = static_cast<size_t>(in.q.numel());
  EXPECT_EQ(plan->input, InputRoute::kAllStaged);
  ASSERT_EQ(plan->in_segments.size(), 3u);
  const size_t at[] = {l.q, l.k, l.v};
  const void* src[] = {in.q.data, in.k.data, in.v.data};
  for (int i = 0; i < 3; ++i) {
    EXPECT_EQ(plan->in_segments[i].src, src[i]);
    EXPECT_EQ(plan->in_segments[i].dst, slot.host_in.data() + at[i]);
    EXPECT_EQ(plan->in_segments[i].src_dtype, DType::kF16);
    EXPECT_EQ(plan->in_segments[i].dst_dtype, DType::kF16);
    EXPECT_EQ(plan->in_segments[i].elements, n);
  }
  // The whole staging prefix, alignment gaps and cu_seqlens included, in one copy.
  ASSERT_EQ(plan->h2d.size(), 1u);
  ExpectCopy(plan->h2d[0], slot.dev_in.data(), slot.host_in.data(), l.seg);
  EXPECT_TRUE(plan->has_h2d);
}

TEST(TransferPlan, Bf16InputsForAnFp16KernelAreStagedWithConversion) {
  FakeSlot slot;
  Problems p;
  // Pinned and large, but of another dtype: converted on the way, so never a direct copy.
  EngineInput in = p.Make(1024, MemoryKind::kPinned, 0, DType::kBF16);
  const EngineInput* parts[] = {&in};
  absl::StatusOr<TransferPlan> plan = PlanTransfers(in, parts, Facts(in), slot.buffers);
  ASSERT_TRUE(plan.ok()) << plan.status();
  EXPECT_EQ(plan->input, InputRoute::kAllStaged);
  ASSERT_EQ(plan->in_segments.size(), 3u);
  for (const StageSegment& s : plan->in_segments) {
    EXPECT_EQ(s.src_dtype, DType::kBF16);
    EXPECT_EQ(s.dst_dtype, DType::kF16);
    EXPECT_EQ(s.elements, static_cast<size_t>(in.q.numel()));
  }
  ASSERT_EQ(plan->h2d.size(), 1u);
  ExpectCopy(plan->h2d[0], slot.dev_in.data(), slot.host_in.data(), LayoutOf(in).seg);
}

TEST(TransferPlan, MergedDevicePartsAreGatheredAndScatteredByTheCopyKernel) {
  FakeSlot slot;
  Problems p;
  EngineInput a = p.Make(3, MemoryKind::kDevice), b = p.Make(5, MemoryKind::kDevice, 0, DType::kF16, 2),
              c = p.Make(7, MemoryKind::kDevice);
  for (EngineInput* e : {&a, &b, &c}) {
    p.GiveOutput(*e, MemoryKind::kDevice);
    e->lse = LseMode::kNatural;
  }
  EngineInput in = p.Merge({&a, &b, &c}, /*lse=*/true);
  ASSERT_EQ(in.output.form, OutputForm::kNativeInto);
  in.output.memory = MemoryKind::kDevice;
  const EngineInput* parts[] = {&a, &b, &c};
  absl::StatusOr<TransferPlan> plan = PlanTransfers(in, parts, Facts(in), slot.buffers);
  ASSERT_TRUE(plan.ok()) << plan.status();
  const StagingLayout l = LayoutOf(in);
  EXPECT_EQ(plan->layout.in_end, l.in_end);
  EXPECT_EQ(plan->layout.out_end, l.out_end);
  unsigned char* dev_in = slot.dev_in.data();
  unsigned char* dev_out = slot.dev_out.data();

  EXPECT_EQ(plan->input, InputRoute::kPerTensor);
  EXPECT_TRUE(plan->in_segments.empty());
  ASSERT_EQ(plan->gather.size(), 9u);
  size_t q_at = l.q, k_at = l.k, v_at = l.v;
  for (size_t i = 0; i < 3; ++i) {
    const EngineInput& part = *parts[i];
    const size_t bytes = static_cast<size_t>(part.q.tokens) * kRowBytes;
    ExpectSegment(plan->gather[3 * i + 0], part.q.data, dev_in + q_at, bytes);
    ExpectSegment(plan->gather[3 * i + 1], part.k.data, dev_in + k_at, bytes);
    ExpectSegment(plan->gather[3 * i + 2], part.v.data, dev_in + v_at, bytes);
    q_at += bytes;
    k_at += bytes;
    v_at += bytes;
  }
  // The parts fill the merged tensors exactly.
  EXPECT_EQ(q_at, l.q + 15 * kRowBytes);
  EXPECT_EQ(k_at, l.k + 15 * kRowBytes);
  EXPECT_EQ(v_at, l.v + 15 * kRowBytes);
  EXPECT_EQ(plan->gather_max, 7 * kRowBytes);

  EXPECT_EQ(plan->output, OutputRoute::kIntoCallers);
  EXPECT_TRUE(plan->d2h.empty());
  EXPECT_TRUE(plan->out_segments.empty());
  ASSERT_EQ(plan->scatter.size(), 6u);
  size_t row = 0;
  for (size_t i = 0; i < 3; ++i) {
    const EngineInput& part = *parts[i];
    const size_t rows = static_cast<size_t>(part.q.tokens);
    ExpectSegment(plan->scatter[2 * i], dev_out + l.o + row * kRowBytes, part.output.o_into.data(), rows * kRowBytes);
    ExpectSegment(plan->scatter[2 * i + 1], dev_out + l.lse + row * kLseRowBytes, part.output.lse_into.data(),
                  rows * kLseRowBytes);
    row += rows;
  }
  EXPECT_EQ(plan->scatter_max, 7 * kRowBytes);

  // Only cu_seqlens and the tables go up by copy, together.
  EXPECT_EQ(plan->table_end, l.seg + 15 * kSeg);
  ASSERT_EQ(plan->h2d.size(), 1u);
  ExpectCopy(plan->h2d[0], dev_in + l.cu_q, slot.host_in.data() + l.cu_q, plan->table_end - l.cu_q);
  EXPECT_FALSE(plan->cu_in_params);
  EXPECT_TRUE(plan->has_h2d);
  EXPECT_TRUE(plan->has_d2h);
  EXPECT_EQ(plan->ptrs.copy_table, reinterpret_cast<const sage_copy_segment_t*>(dev_in + l.seg));

  StageHostTables(*plan, in);
  EXPECT_EQ(std::memcmp(slot.host_in.data() + l.cu_q, in.cu_seqlens_q.data(), 5 * sizeof(int32_t)), 0);
  EXPECT_EQ(std::memcmp(slot.host_in.data() + l.seg, plan->gather.data(), 9 * kSeg), 0);
  EXPECT_EQ(std::memcmp(slot.host_in.data() + l.seg + 9 * kSeg, plan->scatter.data(), 6 * kSeg), 0);
}

TEST(TransferPlan, OutputIntoCallersLargePinnedDirectPageableAndSmallPinnedStaged) {
  FakeSlot slot;
  Problems p;
  const int64_t big = static_cast<int64_t>(kDirectCopyMinBytes / kRowBytes);  // O slice of exactly 64 KiB
  EngineInput pinned = p.Make(big, MemoryKind::kPageable), pageable = p.Make(4, MemoryKind::kPageable),
              small_pinned = p.Make(4, MemoryKind::kPageable);
  p.GiveOutput(pinned, MemoryKind::kPinned);
  p.GiveOutput(pageable, MemoryKind::kPageable);
  p.GiveOutput(small_pinned, MemoryKind::kPinned);
  EngineInput in = p.Merge({&pinned, &pageable, &small_pinned}, /*lse=*/true);
  const EngineInput* parts[] = {&pinned, &pageable, &small_pinned};
  absl::StatusOr<TransferPlan> plan = PlanTransfers(in, parts, Facts(in), slot.buffers);
  ASSERT_TRUE(plan.ok()) << plan.status();
  const StagingLayout l = LayoutOf(in);
  unsigned char* host_out = slot.host_out.data();
  unsigned char* dev_out = slot.dev_out.data();
  EXPECT_EQ(plan->output, OutputRoute::kIntoCallers);
  EXPECT_TRUE(plan->into_callers());
  EXPECT_TRUE(plan->scatter.empty());
  ASSERT_EQ(plan->d2h.size(), 6u);
  // Large pinned: straight into the caller's O and LSE.
  ExpectCopy(plan->d2h[0], pinned.output.o_into.data(), dev_out + l.o, big * kRowBytes);
  ExpectCopy(plan->d2h[1], pinned.output.lse_into.data(), dev_out + l.lse, big * kLseRowBytes);
  // Pageable and small pinned: into the output staging at their rows, then a host copy each.
  size_t row = big;
  for (size_t i = 0; i < 2; ++i, row += 4) {
    const EngineInput& part = *parts[i + 1];
    ExpectCopy(plan->d2h[2 + 2 * i], host_out + l.o + row * kRowBytes, dev_out + l.o + row * kRowBytes, 4 * kRowBytes);
    ExpectCopy(plan->d2h[3 + 2 * i], host_out + l.lse + row * kLseRowBytes, dev_out + l.lse + row * kLseRowBytes,
               4 * kLseRowBytes);
    const StageSegment& o = plan->out_segments[2 * i];
    const StageSegment& lse = plan->out_segments[2 * i + 1];
    EXPECT_EQ(o.src, host_out + l.o + row * kRowBytes);
    EXPECT_EQ(o.dst, part.output.o_into.data());
    EXPECT_EQ(o.elements, 4 * kRowBytes / 2);
    EXPECT_EQ(lse.src, host_out + l.lse + row * kLseRowBytes);
    EXPECT_EQ(lse.dst, part.output.lse_into.data());
    EXPECT_EQ(lse.src_dtype, DType::kF32);
    EXPECT_EQ(lse.elements, size_t{4} * kHeads);
  }
  ASSERT_EQ(plan->out_segments.size(), 4u);
  EXPECT_TRUE(plan->has_d2h);
  sage_attn_params_t params{};
  FillKernelParams(*plan, params);
  EXPECT_EQ(params.o, dev_out + l.o);
  EXPECT_EQ(params.lse, reinterpret_cast<float*>(dev_out + l.lse));
}

TEST(TransferPlan, StagedOutputCopiesOfNeighbouringPartsMerge) {
  FakeSlot slot;
  Problems p;
  EngineInput a = p.Make(4, MemoryKind::kPageable), b = p.Make(6, MemoryKind::kPageable);
  p.GiveOutput(a, MemoryKind::kPageable);
  p.GiveOutput(b, MemoryKind::kPageable);
  EngineInput in = p.Merge({&a, &b}, /*lse=*/false);
  const EngineInput* parts[] = {&a, &b};
  absl::StatusOr<TransferPlan> plan = PlanTransfers(in, parts, Facts(in), slot.buffers);
  ASSERT_TRUE(plan.ok()) << plan.status();
  // Without LSE the two O slices are neighbours on both ends: one DMA.
  ASSERT_EQ(plan->d2h.size(), 1u);
  ExpectCopy(plan->d2h[0], slot.host_out.data(), slot.dev_out.data(), 10 * kRowBytes);
  ASSERT_EQ(plan->out_segments.size(), 2u);
  EXPECT_EQ(plan->out_segments[1].src, slot.host_out.data() + 4 * kRowBytes);
  EXPECT_EQ(plan->out_segments[1].dst, b.output.o_into.data());
  // Inputs: pageable, so all staged: one upload.
  EXPECT_EQ(plan->input, InputRoute::kAllStaged);
  ASSERT_EQ(plan->h2d.size(), 1u);
}

TEST(TransferPlan, LoneDeviceOutputOnThisDeviceIsWrittenInPlace) {
  FakeSlot slot;
  Problems p;
  EngineInput in = p.Make(8, MemoryKind::kPageable);
  p.GiveOutput(in, MemoryKind::kDevice, /*device=*/0);
  in.lse = LseMode::kNatural;
  const EngineInput* parts[] = {&in};
  absl::StatusOr<TransferPlan> plan = PlanTransfers(in, parts, Facts(in), slot.buffers);
  ASSERT_TRUE(plan.ok()) << plan.status();
  EXPECT_EQ(plan->output, OutputRoute::kWriteInPlace);
  EXPECT_TRUE(plan->into_callers());
  EXPECT_TRUE(plan->d2h.empty());
  EXPECT_TRUE(plan->scatter.empty());
  EXPECT_TRUE(plan->out_segments.empty());
  EXPECT_FALSE(plan->has_d2h);  // no D2H stage, no event for it
  sage_attn_params_t params{};
  FillKernelParams(*plan, params);
  EXPECT_EQ(params.o, in.output.o_into.data());
  EXPECT_EQ(params.lse, in.output.lse_into.data());
  // The inputs are pageable: staged.
  EXPECT_EQ(plan->input, InputRoute::kAllStaged);
  EXPECT_EQ(params.q, slot.dev_in.data() + LayoutOf(in).q);

  // On another device, or misaligned, the same output is copied back by DMA (a lone launch).
  EngineInput other = in;
  other.memory_device = 1;
  EngineInput misaligned = in;
  // 2-byte aligned (the buffer has room past its end): O needs element pairs, 4 bytes.
  misaligned.output.o_into = std::span<std::byte>(in.output.o_into.data() + 2, in.output.o_into.size());
  for (const EngineInput* e : {&other, &misaligned}) {
    const EngineInput* parts2[] = {e};
    absl::StatusOr<TransferPlan> copied = PlanTransfers(*e, parts2, Facts(*e), slot.buffers);
    ASSERT_TRUE(copied.ok()) << copied.status();
    EXPECT_EQ(copied->output, OutputRoute::kIntoCallers);
    ASSERT_EQ(copied->d2h.size(), 2u);
    ExpectCopy(copied->d2h[0], e->output.o_into.data(), slot.dev_out.data(), 8 * kRowBytes);
    EXPECT_TRUE(copied->scatter.empty());
  }
}

TEST(TransferPlan, OutputInAnotherDtypeThanTheKernelsIsReturned) {
  FakeSlot slot;
  Problems p;
  EngineInput in = p.Make(8, MemoryKind::kPageable, 0, DType::kBF16);
  p.GiveOutput(in, MemoryKind::kPinned);
  const EngineInput* parts[] = {&in};
  absl::StatusOr<TransferPlan> plan = PlanTransfers(in, parts, Facts(in), slot.buffers);  // fp16 kernel
  ASSERT_TRUE(plan.ok()) << plan.status();
  EXPECT_EQ(plan->output, OutputRoute::kReturned);
  EXPECT_FALSE(plan->into_callers());
}

TEST(TransferPlan, PartsThatDoNotAddUpAreRefused) {
  FakeSlot slot;
  Problems p;
  EngineInput a = p.Make(4, MemoryKind::kPageable), b = p.Make(4, MemoryKind::kPageable);
  EngineInput in = p.Merge({&a, &b}, false);
  in.k.tokens += 1;
  in.v.tokens += 1;
  const EngineInput* parts[] = {&a, &b};
  absl::StatusOr<TransferPlan> plan = PlanTransfers(in, parts, Facts(in), slot.buffers);
  EXPECT_EQ(plan.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(plan.status().message(), "cuda backend: the parts' tensors do not add up to the merged shapes");
}

TEST(TransferPlan, TooSmallCallerOutputsAreRefused) {
  FakeSlot slot;
  Problems p;
  EngineInput a = p.Make(4, MemoryKind::kPageable), b = p.Make(6, MemoryKind::kPageable);
  p.GiveOutput(a, MemoryKind::kPinned);
  p.GiveOutput(b, MemoryKind::kPinned);
  b.output.o_into = b.output.o_into.first(6 * kRowBytes - 2);
  EngineInput in = p.Merge({&a, &b}, /*lse=*/true);
  const EngineInput* parts[] = {&a, &b};
  absl::StatusOr<TransferPlan> plan = PlanTransfers(in, parts, Facts(in), slot.buffers);
  EXPECT_EQ(plan.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(plan.status().message(), "cuda backend: part 1: o_into/lse_into too small for 6 rows");

  p.GiveOutput(b, MemoryKind::kPinned);
  b.output.lse_into = b.output.lse_into.first(6 * kHeads - 1);
  plan = PlanTransfers(in, parts, Facts(in), slot.buffers);
  EXPECT_EQ(plan.status().message(), "cuda backend: part 1: o_into/lse_into too small for 6 rows");
  // Without LSE the short lse_into does not matter.
  in.lse = LseMode::kNone;
  plan = PlanTransfers(in, parts, Facts(in), slot.buffers);
  EXPECT_TRUE(plan.ok()) << plan.status();
}

TEST(TransferPlan, DeviceMemoryOfAnotherDtypeOrFormIsRefused) {
  FakeSlot slot;
  Problems p;
  EngineInput bf16 = p.Make(4, MemoryKind::kDevice, 0, DType::kBF16);
  const EngineInput* parts[] = {&bf16};
  absl::StatusOr<TransferPlan> plan = PlanTransfers(bf16, parts, Facts(bf16), slot.buffers);
  EXPECT_EQ(plan.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(plan.status().message(),
            "cuda backend: part 0: device-memory tensors need the kernel's own dtype and layout");

  // A device-memory output that the launch would not write into (its form is not kNativeInto).
  EngineInput a = p.Make(4, MemoryKind::kPageable), b = p.Make(4, MemoryKind::kPageable);
  p.GiveOutput(b, MemoryKind::kDevice);
  a.output.form = OutputForm::kNativeAllowed;
  EngineInput in = p.Merge({&a, &b}, false);  // a returns O: the merged form is kNativeAllowed
  ASSERT_EQ(in.output.form, OutputForm::kNativeAllowed);
  const EngineInput* merged[] = {&a, &b};
  plan = PlanTransfers(in, merged, Facts(in), slot.buffers);
  EXPECT_EQ(plan.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(plan.status().message(),
            "cuda backend: part 1: device-memory tensors need the kernel's own dtype and layout");
}

TEST(TransferPlan, LaunchLargerThanTheSlotsStagingIsRefused) {
  FakeSlot slot(/*max_elements=*/4096, /*max_sequences=*/4);
  Problems p;
  EngineInput in = p.Make(64, MemoryKind::kPageable);  // 8192 elements per tensor
  const EngineInput* parts[] = {&in};
  absl::StatusOr<TransferPlan> plan = PlanTransfers(in, parts, Facts(in), slot.buffers);
  EXPECT_EQ(plan.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(plan.status().message(), "cuda backend: launch exceeds the slot's staging (CheckFits not called)");
}

TEST(TransferPlan, CopySegmentsBeyondTheTableRoomAreAnInternalError) {
  FakeSlot slot;
  Problems p;
  // Three device-memory parts but one sequence in the merged launch: 9 gather entries, room for 5.
  EngineInput a = p.Make(2, MemoryKind::kDevice), b = p.Make(2, MemoryKind::kDevice), c = p.Make(2, MemoryKind::kDevice);
  EngineInput in = p.Merge({&a, &b, &c}, false);
  static const int32_t one_sequence[] = {0, 6};
  in.cu_seqlens_q = one_sequence;
  in.cu_seqlens_k = one_sequence;
  const EngineInput* parts[] = {&a, &b, &c};
  absl::StatusOr<TransferPlan> plan = PlanTransfers(in, parts, Facts(in), slot.buffers);
  EXPECT_EQ(plan.status().code(), absl::StatusCode::kInternal);
  EXPECT_EQ(plan.status().message(), "cuda backend: 9 copy segments exceed the table room for 1 sequences");
}

TEST(TransferPlan, ARecycledPlanIsPlannedAfresh) {
  FakeSlot slot;
  Problems p;
  EngineInput a = p.Make(3, MemoryKind::kDevice), b = p.Make(3, MemoryKind::kDevice);
  EngineInput merged = p.Merge({&a, &b}, false);
  const EngineInput* parts[] = {&a, &b};
  absl::StatusOr<TransferPlan> first = PlanTransfers(merged, parts, Facts(merged), slot.buffers);
  ASSERT_TRUE(first.ok()) << first.status();
  ASSERT_EQ(first->gather.size(), 6u);
  EngineInput lone = p.Make(4, MemoryKind::kPageable);
  const EngineInput* lone_parts[] = {&lone};
  absl::StatusOr<TransferPlan> second =
      PlanTransfers(lone, lone_parts, Facts(lone), slot.buffers, *std::move(first));
  ASSERT_TRUE(second.ok()) << second.status();
  EXPECT_TRUE(second->gather.empty());
  EXPECT_EQ(second->gather_max, 0u);
  EXPECT_EQ(second->in_segments.size(), 3u);
  ASSERT_EQ(second->h2d.size(), 1u);
  ExpectCopy(second->h2d[0], slot.dev_in.data(), slot.host_in.data(), LayoutOf(lone).seg);
  ASSERT_EQ(second->d2h.size(), 1u);
  EXPECT_EQ(second->output, OutputRoute::kReturned);
}

TEST(TransferPlan, ALaunchWithoutPartsIsRefused) {
  FakeSlot slot;
  Problems p;
  EngineInput in = p.Make(4, MemoryKind::kPageable);
  absl::StatusOr<TransferPlan> plan = PlanTransfers(in, {}, Facts(in), slot.buffers);
  EXPECT_EQ(plan.status().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace sage::server
