#include "server/backend/cuda/transfer_plan.h"

#include <algorithm>
#include <cstring>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "server/backend/output_placement.h"

namespace sage::server {
namespace {

size_t AlignUp(size_t x) { return (x + kStagingAlign - 1) / kStagingAlign * kStagingAlign; }

void AddSegment(std::vector<sage_copy_segment_t>& list, uint64_t& max, const void* src, void* dst, size_t bytes) {
  if (bytes == 0) return;
  list.push_back(sage_copy_segment_t{src, dst, bytes});
  max = std::max<uint64_t>(max, bytes);
}

// Device memory is only copied, never converted on the way (the request decoder refuses such
// requests; a merged launch keeps device outputs apart, BatchKey::output_memory).
absl::Status CheckDeviceMemory(const EngineInput& in, std::span<const EngineInput* const> parts, DType dtype) {
  for (size_t i = 0; i < parts.size(); ++i) {
    const EngineInput& part = *parts[i];
    if ((part.memory == MemoryKind::kDevice && part.q.dtype != dtype) ||
        (part.output.memory == MemoryKind::kDevice && in.output.form != OutputForm::kNativeInto)) {
      return absl::InvalidArgumentError(absl::StrCat("cuda backend: part ", i,
                                                     ": device-memory tensors need the kernel's own dtype and layout"));
    }
  }
  return absl::OkStatus();
}

// Inputs: a part whose bytes are in device memory, or already pinned and in the kernel's type, is
// copied to the device straight from its own memory; any other part is first gathered (and
// converted) into the slot's pinned staging at the same offsets the device buffer uses. A pinned
// tensor (HowToCopy: at least kDirectCopyMinBytes) gets its own DMA; smaller ones are gathered
// through the staging by the CPU. Each DMA costs the copy engine a few µs, so a merged launch of 55
// tiny requests spent ~0.8 ms in 166 separate copies; a host memcpy of 16 KB between pinned buffers
// takes ~1-2 µs and the gathered bytes go in one DMA.
absl::Status PlanInputs(const EngineInput& in, std::span<const EngineInput* const> parts, const LaunchFacts& launch,
                        TransferPlan& plan) {
  const StagingLayout& l = plan.layout;
  const SlotBuffers& slot = plan.slot;
  const DType dtype = launch.kernel_dtype;
  // A lone problem whose tensors already sit in this GPU's memory (CUDA shared memory) is read, and
  // its O/LSE written, where they are: no device copies at all, only cu_seqlens go up.
  const EngineInput& lone = *parts.front();
  if (parts.size() == 1 && lone.memory == MemoryKind::kDevice && lone.memory_device == launch.device &&
      Aligned(lone.q.data, 16) && Aligned(lone.k.data, 16) && Aligned(lone.v.data, 16)) {
    plan.input = InputRoute::kReadInPlace;
    return absl::OkStatus();
  }
  // A merged launch moves its parts' device-memory tensors with one copy kernel each way instead of
  // a DMA per tensor: each DMA costs the GPU a few µs, and 16 merged requests need 64 of them.
  const bool copy_kernel = parts.size() > 1;
  bool any_direct = false;
  size_t at_q = l.q, at_k = l.k, at_v = l.v;
  for (const EngineInput* part : parts) {
    const auto add = [&](const TensorView& t, size_t* at) {
      const size_t n = static_cast<size_t>(t.numel());
      const CopyRoute route = HowToCopy(part->memory, n * 2);
      if (route == CopyRoute::kDeviceCopy && copy_kernel) {
        AddSegment(plan.gather, plan.gather_max, t.data, slot.dev_in + *at, n * 2);
        any_direct = true;
      } else if (route == CopyRoute::kDeviceCopy || (route == CopyRoute::kDirect && t.dtype == dtype)) {
        AddCopy(plan.h2d, slot.dev_in + *at, t.data, n * 2);
        any_direct = true;
      } else {
        plan.in_segments.push_back(StageSegment{t.data, t.dtype, slot.host_in + *at, dtype, n});
        AddCopy(plan.h2d, slot.dev_in + *at, slot.host_in + *at, n * 2);
      }
      *at += n * 2;
    };
    add(part->q, &at_q);
    add(part->k, &at_k);
    add(part->v, &at_v);
  }
  if (at_q != l.q + static_cast<size_t>(in.q.numel()) * 2 || at_k != l.k + static_cast<size_t>(in.k.numel()) * 2 ||
      at_v != l.v + static_cast<size_t>(in.v.numel()) * 2) {
    return absl::InvalidArgumentError("cuda backend: the parts' tensors do not add up to the merged shapes");
  }
  plan.input = any_direct ? InputRoute::kPerTensor : InputRoute::kAllStaged;
  return absl::OkStatus();
}

// One part's O (and LSE) rows into its own buffers: device memory (CUDA shared memory) is only
// reachable by a device copy, whatever its size (the scatter kernel in a merged launch); pinned
// memory straight from the device when large enough; anything else through the output staging.
void PlanOutputSlice(const EngineInput& part, size_t row, size_t o_row_bytes, size_t lse_row_bytes, DType dtype,
                     bool copy_kernel, int32_t heads, TransferPlan& plan) {
  const SlotBuffers& slot = plan.slot;
  const size_t rows = static_cast<size_t>(part.q.tokens);
  const size_t o_at = plan.layout.o + row * o_row_bytes, lse_at = plan.layout.lse + row * lse_row_bytes;
  void* o_dst = part.output.o_into.data();
  float* lse_dst = part.output.lse_into.data();
  const CopyRoute route = HowToCopy(part.output.memory, rows * o_row_bytes);
  if (route == CopyRoute::kDeviceCopy && copy_kernel) {
    AddSegment(plan.scatter, plan.scatter_max, slot.dev_out + o_at, o_dst, rows * o_row_bytes);
    if (plan.want_lse) AddSegment(plan.scatter, plan.scatter_max, slot.dev_out + lse_at, lse_dst, rows * lse_row_bytes);
  } else if (route != CopyRoute::kStaged) {
    AddCopy(plan.d2h, o_dst, slot.dev_out + o_at, rows * o_row_bytes);
    if (plan.want_lse) AddCopy(plan.d2h, lse_dst, slot.dev_out + lse_at, rows * lse_row_bytes);
  } else {
    AddCopy(plan.d2h, slot.host_out + o_at, slot.dev_out + o_at, rows * o_row_bytes);
    plan.out_segments.push_back(StageSegment{slot.host_out + o_at, dtype, o_dst, dtype, rows * o_row_bytes / 2});
    if (plan.want_lse) {
      AddCopy(plan.d2h, slot.host_out + lse_at, slot.dev_out + lse_at, rows * lse_row_bytes);
      plan.out_segments.push_back(
          StageSegment{slot.host_out + lse_at, DType::kF32, lse_dst, DType::kF32, rows * static_cast<size_t>(heads)});
    }
  }
}

// Output: into the callers' own buffers when they asked for it (kNativeInto, O in q's type):
// pinned ones straight from the device, pageable ones through the slot's staging.
absl::Status PlanOutputs(const EngineInput& in, std::span<const EngineInput* const> parts, const LaunchFacts& launch,
                         TransferPlan& plan) {
  const DType dtype = launch.kernel_dtype;
  bool into = true;
  for (const EngineInput* part : parts) into = into && WritesIntoTarget(in.output, part->q.dtype, dtype);
  if (!into) {
    plan.output = OutputRoute::kReturned;
    plan.d2h.assign(1, Copy{plan.slot.host_out, plan.slot.dev_out, plan.layout.out_end});
    return absl::OkStatus();
  }
  const size_t o_row_bytes = static_cast<size_t>(in.q.heads) * in.q.head_dim * 2;
  const size_t lse_row_bytes = static_cast<size_t>(in.q.heads) * sizeof(float);
  for (size_t i = 0; i < parts.size(); ++i) {
    const EngineInput& part = *parts[i];
    const size_t rows = static_cast<size_t>(part.q.tokens);
    if (part.output.o_into.size() < rows * o_row_bytes ||
        (plan.want_lse && part.output.lse_into.size() * sizeof(float) < rows * lse_row_bytes)) {
      return absl::InvalidArgumentError(absl::StrCat("cuda backend: part ", i, ": o_into/lse_into too small for ",
                                                     rows, " rows"));
    }
  }
  const EngineInput& lone = *parts.front();
  if (parts.size() == 1 && lone.output.memory == MemoryKind::kDevice && lone.memory_device == launch.device &&
      Aligned(lone.output.o_into.data(), 4) && Aligned(lone.output.lse_into.data(), 4)) {
    // The kernels write the client's device buffers directly; nothing comes back.
    plan.output = OutputRoute::kWriteInPlace;
    return absl::OkStatus();
  }
  plan.output = OutputRoute::kIntoCallers;
  size_t row = 0;
  for (const EngineInput* part : parts) {
    PlanOutputSlice(*part, row, o_row_bytes, lse_row_bytes, dtype, parts.size() > 1, in.q.heads, plan);
    row += static_cast<size_t>(part->q.tokens);
  }
  return absl::OkStatus();
}

// The copy kernels' tables ride up with the cu_seqlens, in the same copy. A lone problem read in
// place has nothing to upload but cu_seqlens. With a quantized recipe they ride in the first
// kernel's parameters (sageattn.h, host_cu_seqlens_q/k): no copy, no H2D event, two driver calls
// fewer on the context lock every worker shares.
absl::Status PlanTablesAndCuSeqlens(const LaunchFacts& launch, TransferPlan& plan) {
  const StagingLayout& l = plan.layout;
  const SlotBuffers& slot = plan.slot;
  const size_t segments = plan.gather.size() + plan.scatter.size();
  plan.table_end = l.seg + segments * sizeof(sage_copy_segment_t);
  if (plan.table_end > l.in_end) {
    return absl::InternalError(absl::StrCat("cuda backend: ", segments, " copy segments exceed the table room for ",
                                            launch.batch, " sequences"));
  }
  plan.cu_in_params = plan.input == InputRoute::kReadInPlace && plan.gather.empty() &&
                      launch.recipe != SAGE_RECIPE_UNQUANTIZED && launch.batch <= SAGE_INLINE_CU_SEQLENS_MAX;
  if (plan.cu_in_params) {
    // nothing to copy
  } else if (plan.input != InputRoute::kAllStaged) {
    AddCopy(plan.h2d, slot.dev_in + l.cu_q, slot.host_in + l.cu_q, plan.table_end - l.cu_q);
  } else {
    // Everything is in the staging: one copy, alignment gaps included.
    plan.h2d.assign(1, Copy{slot.dev_in, slot.host_in, plan.table_end});
  }
  // O written in place (CUDA shared memory) leaves nothing to bring back: no D2H stage, and no event
  // for it (every driver call takes the context's lock, which all workers contend for).
  plan.has_h2d = !plan.h2d.empty() || !plan.gather.empty();
  plan.has_d2h = !plan.scatter.empty() || !plan.d2h.empty();
  return absl::OkStatus();
}

void SetKernelPointers(const EngineInput& lone, TransferPlan& plan) {
  const StagingLayout& l = plan.layout;
  const SlotBuffers& slot = plan.slot;
  const bool read_in_place = plan.input == InputRoute::kReadInPlace;
  const bool write_in_place = plan.output == OutputRoute::kWriteInPlace;
  KernelPointers& p = plan.ptrs;
  p.q = read_in_place ? lone.q.data : slot.dev_in + l.q;
  p.k = read_in_place ? lone.k.data : slot.dev_in + l.k;
  p.v = read_in_place ? lone.v.data : slot.dev_in + l.v;
  p.cu_seqlens_q = reinterpret_cast<const int32_t*>(slot.dev_in + l.cu_q);
  p.cu_seqlens_k = reinterpret_cast<const int32_t*>(slot.dev_in + l.cu_k);
  p.host_cu_seqlens_q = plan.cu_in_params ? reinterpret_cast<const int32_t*>(slot.host_in + l.cu_q) : nullptr;
  p.host_cu_seqlens_k = plan.cu_in_params ? reinterpret_cast<const int32_t*>(slot.host_in + l.cu_k) : nullptr;
  p.o = write_in_place ? static_cast<void*>(lone.output.o_into.data()) : slot.dev_out + l.o;
  p.lse = !plan.want_lse     ? nullptr
          : write_in_place ? lone.output.lse_into.data()
                           : reinterpret_cast<float*>(slot.dev_out + l.lse);
  p.copy_table = reinterpret_cast<const sage_copy_segment_t*>(slot.dev_in + l.seg);
  p.workspace = slot.workspace;
  p.workspace_bytes = slot.workspace_bytes;
}

}  // namespace

StagingLayout LayoutFor(int64_t q_elements, int64_t kv_elements, int sequences, int64_t lse_elements) {
  StagingLayout l;
  const size_t q_bytes = static_cast<size_t>(q_elements) * 2, kv_bytes = static_cast<size_t>(kv_elements) * 2;
  const size_t cu_bytes = static_cast<size_t>(sequences + 1) * sizeof(int32_t);
  l.q = 0;
  l.k = AlignUp(l.q + q_bytes);
  l.v = AlignUp(l.k + kv_bytes);
  l.cu_q = AlignUp(l.v + kv_bytes);
  l.cu_k = AlignUp(l.cu_q + cu_bytes);
  l.seg = AlignUp(l.cu_k + cu_bytes);
  l.in_end = l.seg + static_cast<size_t>(sequences) * kSegmentsPerSequence * sizeof(sage_copy_segment_t);
  l.o = 0;
  l.lse = AlignUp(q_bytes);
  l.out_end = l.lse + static_cast<size_t>(lse_elements) * sizeof(float);
  return l;
}

void AddCopy(std::vector<Copy>& copies, void* dst, const void* src, size_t bytes) {
  if (bytes == 0) return;
  if (!copies.empty()) {
    Copy& last = copies.back();
    if (static_cast<unsigned char*>(last.dst) + last.bytes == dst &&
        static_cast<const unsigned char*>(last.src) + last.bytes == src) {
      last.bytes += bytes;
      return;
    }
  }
  copies.push_back(Copy{dst, src, bytes});
}

absl::StatusOr<TransferPlan> PlanTransfers(const EngineInput& in, std::span<const EngineInput* const> parts,
                                           const LaunchFacts& launch, const SlotBuffers& slot, TransferPlan recycled) {
  if (parts.empty()) return absl::InvalidArgumentError("cuda backend: a launch without parts");
  TransferPlan plan = std::move(recycled);  // its vectors keep their capacity across launches
  plan.in_segments.clear();
  plan.h2d.clear();
  plan.gather.clear();
  plan.scatter.clear();
  plan.d2h.clear();
  plan.out_segments.clear();
  plan.gather_max = plan.scatter_max = 0;
  plan.ptrs = KernelPointers{};
  plan.slot = slot;
  plan.want_lse = in.lse == LseMode::kNatural;
  plan.lse_elements = plan.want_lse ? launch.total_q * launch.num_q_heads : 0;
  plan.cu_bytes = static_cast<size_t>(launch.batch + 1) * sizeof(int32_t);
  plan.layout = LayoutFor(in.q.numel(), in.k.numel(), launch.batch, plan.lse_elements);
  if (plan.layout.in_end > slot.in_bytes || plan.layout.out_end > slot.out_bytes) {
    return absl::ResourceExhaustedError("cuda backend: launch exceeds the slot's staging (CheckFits not called)");
  }
  if (absl::Status s = CheckDeviceMemory(in, parts, launch.kernel_dtype); !s.ok()) return s;
  plan.in_segments.reserve(parts.size() * 3);
  if (absl::Status s = PlanInputs(in, parts, launch, plan); !s.ok()) return s;
  if (absl::Status s = PlanOutputs(in, parts, launch, plan); !s.ok()) return s;
  if (absl::Status s = PlanTablesAndCuSeqlens(launch, plan); !s.ok()) return s;
  SetKernelPointers(*parts.front(), plan);
  return plan;
}

void StageHostTables(const TransferPlan& plan, const EngineInput& in) {
  unsigned char* host_in = plan.slot.host_in;
  const StagingLayout& l = plan.layout;
  std::memcpy(host_in + l.cu_q, in.cu_seqlens_q.data(), plan.cu_bytes);
  std::memcpy(host_in + l.cu_k, in.cu_seqlens_k.data(), plan.cu_bytes);
  const size_t seg_bytes = sizeof(sage_copy_segment_t);
  if (!plan.gather.empty()) std::memcpy(host_in + l.seg, plan.gather.data(), plan.gather.size() * seg_bytes);
  if (!plan.scatter.empty()) {
    std::memcpy(host_in + l.seg + plan.gather.size() * seg_bytes, plan.scatter.data(), plan.scatter.size() * seg_bytes);
  }
}

void FillKernelParams(const TransferPlan& plan, sage_attn_params_t& params) {
  const KernelPointers& p = plan.ptrs;
  params.q = p.q;
  params.k = p.k;
  params.v = p.v;
  params.cu_seqlens_q = p.cu_seqlens_q;
  params.cu_seqlens_k = p.cu_seqlens_k;
  if (plan.cu_in_params) {
    params.host_cu_seqlens_q = p.host_cu_seqlens_q;
    params.host_cu_seqlens_k = p.host_cu_seqlens_k;
  }
  params.o = p.o;
  params.lse = p.lse;
  params.workspace = p.workspace;
  params.workspace_bytes = p.workspace_bytes;
}

}  // namespace sage::server
