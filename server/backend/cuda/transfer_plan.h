// The host side of one CUDA launch, decided before anything is enqueued: where each input tensor
// and each output slice goes (read in place, staged through the slot's pinned buffers, copied
// straight from or to its own memory, or moved by the copy kernel), the copies in the order they
// are issued, and the device pointers the kernels get. Pure: no CUDA runtime calls, so it is tested
// on the CPU with plain host arrays standing in for the slot's buffers (tests/backend).
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

#include "absl/status/statusor.h"
#include "kernels/include/sageattn.h"
#include "kernels/reference/dtype.h"
#include "server/backend/cuda/host_staging.h"
#include "server/backend/engine_io.h"

namespace sage::server {

inline constexpr size_t kStagingAlign = 256;  // every staged tensor starts at a multiple (kernels need 16/128)

// The kernels read q/k/v 16 bytes at a time (and never write them); O and LSE need element pairs.
inline bool Aligned(const void* p, size_t to) { return reinterpret_cast<uintptr_t>(p) % to == 0; }

// Byte offsets of one launch's tensors inside a slot's input and output staging. The host (pinned)
// and device buffers use the same layout, so each direction is one contiguous copy. After the
// cu_seqlens comes room for the copy-kernel table (kSegmentsPerSequence entries per sequence).
struct StagingLayout {
  size_t q = 0, k = 0, v = 0, cu_q = 0, cu_k = 0, seg = 0, in_end = 0;
  size_t o = 0, lse = 0, out_end = 0;
};

// q, k, v gathered and O, LSE scattered: at most five ranges per part, and a part has >= 1 sequence.
inline constexpr size_t kSegmentsPerSequence = 5;

StagingLayout LayoutFor(int64_t q_elements, int64_t kv_elements, int sequences, int64_t lse_elements);

// One host<->device copy of a launch (cudaMemcpyDefault: either end may be host or device).
struct Copy {
  void* dst = nullptr;
  const void* src = nullptr;
  size_t bytes = 0;
};

// Appends a copy, extending the previous one when both of its ends continue it (one DMA, not two).
void AddCopy(std::vector<Copy>& copies, void* dst, const void* src, size_t bytes);

// A slot's preallocated buffers. The host (pinned) and device input buffers share one layout and
// capacity, and so do the output ones.
struct SlotBuffers {
  unsigned char* host_in = nullptr;
  unsigned char* dev_in = nullptr;
  size_t in_bytes = 0;
  unsigned char* host_out = nullptr;
  unsigned char* dev_out = nullptr;
  size_t out_bytes = 0;
  void* workspace = nullptr;  // device
  size_t workspace_bytes = 0;
};

// What the plan needs of the kernel parameters and of the executor.
struct LaunchFacts {
  DType kernel_dtype = DType::kF16;  // the 16-bit type the kernels read and write
  int32_t batch = 0;                 // sequences (params.batch)
  int64_t total_q = 0;               // params.total_q
  int32_t num_q_heads = 0;           // params.num_q_heads
  sage_recipe_t recipe = SAGE_RECIPE_UNQUANTIZED;
  int device = 0;                    // CUDA ordinal of the executor
};

// How q/k/v reach the device buffers the kernels read.
//   kReadInPlace: a lone problem already in this GPU's memory, aligned: the kernels read it there.
//   kAllStaged:   every tensor was gathered (and converted) into the pinned staging: one copy of the
//                 staging's prefix, alignment gaps, cu_seqlens and tables included.
//   kPerTensor:   some tensor moves straight from its own memory (DMA, or the gather kernel); the
//                 staged ones and the cu_seqlens/table range are copied piece by piece.
enum class InputRoute : uint8_t { kReadInPlace, kAllStaged, kPerTensor };

// Where O (and LSE) end up.
//   kWriteInPlace: the kernels write the lone caller's device buffers directly; nothing comes back.
//   kIntoCallers:  copied (DMA, scatter kernel, or staging then a host copy) into each part's o_into.
//   kReturned:     one copy of the output staging back; the executor returns O as codes or float.
enum class OutputRoute : uint8_t { kWriteInPlace, kIntoCallers, kReturned };

// The device (and, with cu_seqlens in the params, host) pointers of sage_attn_params_t.
struct KernelPointers {
  const void* q = nullptr;
  const void* k = nullptr;
  const void* v = nullptr;
  void* o = nullptr;
  float* lse = nullptr;  // null without LSE
  const int32_t* cu_seqlens_q = nullptr;
  const int32_t* cu_seqlens_k = nullptr;
  const int32_t* host_cu_seqlens_q = nullptr;  // set only with TransferPlan::cu_in_params
  const int32_t* host_cu_seqlens_k = nullptr;
  const sage_copy_segment_t* copy_table = nullptr;  // device: gather entries, then scatter ones
  void* workspace = nullptr;
  size_t workspace_bytes = 0;
};

struct TransferPlan {
  StagingLayout layout;
  SlotBuffers slot;
  bool want_lse = false;
  int64_t lse_elements = 0;  // total_q * num_q_heads with LSE, else 0
  size_t cu_bytes = 0;       // of each cu_seqlens array: (batch + 1) int32
  InputRoute input = InputRoute::kAllStaged;
  OutputRoute output = OutputRoute::kReturned;
  // Host -> device: caller tensors staged (and converted) into host_in, then h2d, then the gather
  // kernel over the first gather.size() table entries.
  std::vector<StageSegment> in_segments;
  std::vector<Copy> h2d;
  std::vector<sage_copy_segment_t> gather;
  uint64_t gather_max = 0;  // largest gather entry (sizes the copy kernel's grid)
  // Device -> host: the scatter kernel over the next scatter.size() entries, then d2h, then (after
  // the stream syncs) out_segments from host_out into the callers' pageable buffers.
  std::vector<sage_copy_segment_t> scatter;
  uint64_t scatter_max = 0;
  std::vector<Copy> d2h;
  std::vector<StageSegment> out_segments;
  size_t table_end = 0;       // end of the copy tables in the input staging
  bool cu_in_params = false;  // cu_seqlens ride in the first kernel's parameters: nothing to upload
  bool has_h2d = false;       // the host -> device stage exists (copies or the gather kernel)
  bool has_d2h = false;       // the device -> host stage exists (the scatter kernel or copies)
  KernelPointers ptrs;

  bool into_callers() const { return output != OutputRoute::kReturned; }
};

// Plans one launch on a slot. `in` describes it (shapes, cu_seqlens, LSE, output target); `parts`
// hold the bytes ({&in} for a lone problem). `recycled` is a previous plan whose vectors keep their
// capacity (the executor hands each slot's last plan back in). Errors: RESOURCE_EXHAUSTED when the
// launch exceeds the slot's staging, INVALID_ARGUMENT for device memory of another dtype or form,
// parts that do not add up to `in`, or o_into/lse_into too small; INTERNAL when the copy tables
// outgrow their room.
absl::StatusOr<TransferPlan> PlanTransfers(const EngineInput& in, std::span<const EngineInput* const> parts,
                                           const LaunchFacts& launch, const SlotBuffers& slot,
                                           TransferPlan recycled = {});

// Writes what the plan uploads besides the staged tensors into the host input staging: cu_seqlens
// and the copy kernels' tables. CPU only; in_segments are the executor's (RunStaging).
void StageHostTables(const TransferPlan& plan, const EngineInput& in);

// Puts the plan's pointers into the kernel parameters (host cu_seqlens only with cu_in_params).
void FillKernelParams(const TransferPlan& plan, sage_attn_params_t& params);

}  // namespace sage::server
