// Merging several attention problems into one packed varlen launch, and splitting the result.
//
// Two problems may share a launch when everything that is not per-sequence agrees: dtypes, head
// dim, head counts, recipe configuration, mask, softmax scale and LSE mode (BatchKey). The engines
// are batch-invariant by construction (smoothing means, quantization scales and tiles all restart
// at every sequence boundary), so a problem's output is the same bits alone or merged.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

#include "absl/status/statusor.h"
#include "server/backend/engine_io.h"
#include "kernels/reference/dtype.h"
#include "kernels/reference/recipe.h"

namespace sage::server {

// Everything two problems must share to run in one launch. Compared field by field.
struct BatchKey {
  DType q_dtype = DType::kF32;
  DType k_dtype = DType::kF32;
  DType v_dtype = DType::kF32;
  int32_t head_dim = 0;
  int32_t q_heads = 0;
  int32_t kv_heads = 0;
  MaskMode mask = MaskMode::kNone;
  LseMode lse = LseMode::kNone;
  uint32_t scale_bits = 0;  // Bit pattern of the effective softmax scale (explicit or default).
  RecipeConfig config;  // Compared whole (RecipeConfig::operator==), so a new switch joins the key.
  // kDevice when O goes to device memory (CUDA shared memory), which only a launch writing every
  // member's rows into its own buffers can serve; any host kind is kPageable here.
  MemoryKind output_memory = MemoryKind::kPageable;
  int32_t memory_device = -1;  // EngineInput::memory_device: a launch runs on one GPU
  // Paged K/V (EngineInput::paged): one pool (so one device) and one page format per launch.
  const std::byte* kv_pool = nullptr;
  KvStorage kv_storage = KvStorage::k16Bit;
  int32_t page_tokens = 0;

  bool operator==(const BatchKey&) const = default;
};

BatchKey MakeBatchKey(const EngineInput& in, const RecipeConfig& config);

// Whether a request may share a launch with others of its key. Paged members (session steps) merge
// by copying their Q on the host into one launch whose O comes back concatenated, so one whose Q
// or O is in device memory (CUDA shared memory) runs alone: the engine reads and writes it in place.
bool MergesWithOthers(const EngineInput& in);

// The size of a problem as the batcher counts it.
struct ProblemSize {
  int64_t tokens = 0;       // max(total_q, total_k): what the launch holds per head.
  int64_t work = 0;         // Σ over sequences of q_len · k_len (attention scores per head).
  int64_t q_elements = 0;   // total_q · Hq · D
  int64_t kv_elements = 0;  // total_k · Hkv · D (each of K and V)
  int64_t sequences = 0;

  ProblemSize& operator+=(const ProblemSize& o) {
    tokens += o.tokens;
    work += o.work;
    q_elements += o.q_elements;
    kv_elements += o.kv_elements;
    sequences += o.sequences;
    return *this;
  }
};

// `in` must have passed ValidateInput (cu_seqlens are trusted). With paged K/V only Q counts as
// tokens and elements (the pages are not part of the launch's payload); work counts as ever.
ProblemSize MeasureProblem(const EngineInput& in);

// Where one member's rows sit inside the merged problem.
struct MemberSlice {
  int64_t q_token_offset = 0;
  int64_t q_tokens = 0;
};

// kCopyTensors: the batch owns one buffer per tensor with the members' rows concatenated.
// kMetadataOnly: only cu_seqlens and member slices are built; input().q/k/v have the merged shapes
// but null data (for AttentionBackend::AttendGathered, which reads the members' own memory).
enum class AssembleMode { kCopyTensors, kMetadataOnly };

// Owns the concatenated tensors and cu_seqlens of a merged launch. Move-only; the views in
// `input()` stay valid across moves (vector buffers move with their storage).
class AssembledBatch {
 public:
  AssembledBatch() = default;
  AssembledBatch(AssembledBatch&&) = default;
  AssembledBatch& operator=(AssembledBatch&&) = default;
  AssembledBatch(const AssembledBatch&) = delete;
  AssembledBatch& operator=(const AssembledBatch&) = delete;

  const EngineInput& input() const { return input_; }
  std::span<const MemberSlice> members() const { return members_; }

 private:
  friend absl::StatusOr<AssembledBatch> AssembleBatch(std::span<const EngineInput* const> members,
                                                      AssembleMode mode);

  std::vector<std::byte> q_, k_, v_;
  std::vector<int32_t> cu_q_, cu_k_;
  std::vector<int32_t> page_table_, cu_pages_;  // paged members: their page tables chained
  std::vector<MemberSlice> members_;
  EngineInput input_;
};

// Concatenates the members' tokens (no padding) and chains their cu_seqlens. Paged members (one
// BatchKey, so one pool) have their Q concatenated and their page tables chained; K/V stay in the
// pages. Every member must be
// valid and share one BatchKey; otherwise INVALID_ARGUMENT (a bug in the caller) or, when the
// merged token count would not fit int32 cu_seqlens, RESOURCE_EXHAUSTED.
absl::StatusOr<AssembledBatch> AssembleBatch(std::span<const EngineInput* const> members,
                                             AssembleMode mode = AssembleMode::kCopyTensors);

// Cuts member `index`'s rows of O (and LSE when present) out of the merged output.
EngineOutput SliceOutput(const EngineOutput& merged, const AssembledBatch& batch, size_t index);

}  // namespace sage::server
