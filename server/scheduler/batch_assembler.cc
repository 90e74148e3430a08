#include "server/scheduler/batch_assembler.h"

#include <algorithm>
#include <bit>
#include <cstring>
#include <limits>

#include "absl/strings/str_cat.h"
#include "server/backend/output_placement.h"

namespace sage::server {
namespace {

void AppendBytes(std::vector<std::byte>& dst, const TensorView& t) {
  const size_t at = dst.size();
  dst.resize(at + t.bytes());
  std::memcpy(dst.data() + at, t.data, t.bytes());
}

TensorView ViewOf(const std::vector<std::byte>& buf, const TensorView& like, int64_t tokens) {
  TensorView v = like;
  v.data = buf.data();
  v.tokens = tokens;
  return v;
}

}  // namespace

BatchKey MakeBatchKey(const EngineInput& in, const RecipeConfig& config) {
  BatchKey key;
  key.q_dtype = in.q.dtype;
  key.k_dtype = in.k.dtype;
  key.v_dtype = in.v.dtype;
  key.head_dim = in.q.head_dim;
  key.q_heads = in.q.heads;
  key.kv_heads = in.k.heads;
  key.mask = in.mask;
  key.lse = in.lse;
  key.scale_bits = std::bit_cast<uint32_t>(in.scale());
  key.config = config;
  key.output_memory = BatchOutputMemory(in.output);
  key.memory_device = in.memory_device;
  if (in.paged.has_value()) {
    key.kv_pool = in.paged->pool;
    key.kv_storage = in.paged->layout.storage;
    key.page_tokens = in.paged->layout.page_tokens;
  }
  return key;
}

bool MergesWithOthers(const EngineInput& in) {
  return !in.paged.has_value() || (in.memory != MemoryKind::kDevice && in.output.memory != MemoryKind::kDevice);
}

ProblemSize MeasureProblem(const EngineInput& in) {
  ProblemSize size;
  size.tokens = std::max(in.q.tokens, in.k.tokens);
  size.q_elements = in.q.numel();
  size.kv_elements = in.k.numel();
  size.sequences = in.batch();
  for (int s = 0; s < in.batch(); ++s) {
    const int64_t q_len = in.cu_seqlens_q[s + 1] - in.cu_seqlens_q[s];
    const int64_t k_len = in.cu_seqlens_k[s + 1] - in.cu_seqlens_k[s];
    size.work += q_len * k_len;
  }
  if (in.paged.has_value()) {
    // Paged K/V (session steps) is read where it lies, not carried with the launch: only Q counts
    // as its tokens and elements, and the work still bounds what one launch computes. A decode step
    // over 2k cached tokens is 1 token here, not 2k, so hundreds of clients' steps share a launch.
    // (A backend that stages paged K/V checks its own buffers; a merged launch it refuses is split.)
    size.tokens = in.q.tokens;
    size.kv_elements = 0;
  }
  return size;
}

absl::StatusOr<AssembledBatch> AssembleBatch(std::span<const EngineInput* const> members, AssembleMode mode) {
  if (members.empty()) return absl::InvalidArgumentError("AssembleBatch: no members");
  const EngineInput& first = *members[0];
  int64_t total_q = 0;
  int64_t total_k = 0;
  size_t total_seqs = 0;
  for (size_t i = 0; i < members.size(); ++i) {
    const EngineInput& m = *members[i];
    // The key compares the recipe too; only the tensor-side fields can be checked here.
    if (m.q.dtype != first.q.dtype || m.k.dtype != first.k.dtype || m.v.dtype != first.v.dtype ||
        m.q.head_dim != first.q.head_dim || m.q.heads != first.q.heads || m.k.heads != first.k.heads ||
        m.mask != first.mask || m.lse != first.lse ||
        std::bit_cast<uint32_t>(m.scale()) != std::bit_cast<uint32_t>(first.scale()) ||
        m.paged.has_value() != first.paged.has_value() ||
        (m.paged.has_value() && (m.paged->pool != first.paged->pool || m.paged->layout.storage != first.paged->layout.storage ||
                                 m.paged->layout.page_tokens != first.paged->layout.page_tokens))) {
      return absl::InvalidArgumentError(
          absl::StrCat("AssembleBatch: member ", i, " is not compatible with member 0"));
    }
    total_q += m.q.tokens;
    total_k += m.k.tokens;
    total_seqs += static_cast<size_t>(m.batch());
  }
  if (total_q > std::numeric_limits<int32_t>::max() || total_k > std::numeric_limits<int32_t>::max()) {
    return absl::ResourceExhaustedError("AssembleBatch: merged token count exceeds int32 cu_seqlens");
  }

  AssembledBatch batch;
  const bool paged = first.paged.has_value();
  const bool copy = mode == AssembleMode::kCopyTensors;
  if (copy) {
    for (size_t i = 0; i < members.size(); ++i) {
      if (members[i]->memory == MemoryKind::kDevice) {
        // The host cannot read device memory; only a gathering GPU engine takes such members.
        return absl::InvalidArgumentError(
            absl::StrCat("AssembleBatch: member ", i, " has its tensors in device memory; they cannot be copied"));
      }
    }
    batch.q_.reserve(static_cast<size_t>(total_q) * first.q.heads * first.q.head_dim * DTypeSize(first.q.dtype));
    if (!paged) {
      batch.k_.reserve(static_cast<size_t>(total_k) * first.k.heads * first.k.head_dim * DTypeSize(first.k.dtype));
      batch.v_.reserve(static_cast<size_t>(total_k) * first.v.heads * first.v.head_dim * DTypeSize(first.v.dtype));
    }
  }
  if (paged) batch.cu_pages_.push_back(0);
  batch.cu_q_.reserve(total_seqs + 1);
  batch.cu_k_.reserve(total_seqs + 1);
  batch.members_.reserve(members.size());
  batch.cu_q_.push_back(0);
  batch.cu_k_.push_back(0);

  int64_t q_offset = 0;
  int64_t k_offset = 0;
  for (const EngineInput* m : members) {
    if (copy) AppendBytes(batch.q_, m->q);
    if (copy && !paged) {
      AppendBytes(batch.k_, m->k);
      AppendBytes(batch.v_, m->v);
    }
    if (paged) {
      const int32_t base = static_cast<int32_t>(batch.page_table_.size());
      batch.page_table_.insert(batch.page_table_.end(), m->paged->page_table.begin(), m->paged->page_table.end());
      for (int s = 1; s <= m->batch(); ++s) batch.cu_pages_.push_back(base + m->paged->cu_pages[static_cast<size_t>(s)]);
    }
    for (int s = 1; s <= m->batch(); ++s) {
      batch.cu_q_.push_back(static_cast<int32_t>(q_offset + m->cu_seqlens_q[s]));
      batch.cu_k_.push_back(static_cast<int32_t>(k_offset + m->cu_seqlens_k[s]));
    }
    batch.members_.push_back(MemberSlice{q_offset, m->q.tokens});
    q_offset += m->q.tokens;
    k_offset += m->k.tokens;
  }

  EngineInput& in = batch.input_;
  in.q = ViewOf(batch.q_, first.q, total_q);
  in.k = ViewOf(batch.k_, first.k, total_k);
  in.v = ViewOf(batch.v_, first.v, total_k);
  if (!copy) in.q.data = in.k.data = in.v.data = nullptr;
  if (paged) {
    in.k.data = in.v.data = first.k.data;  // the pool, as every member's
    in.paged = first.paged;
    in.paged->page_table = batch.page_table_;
    in.paged->cu_pages = batch.cu_pages_;
  }
  in.cu_seqlens_q = batch.cu_q_;
  in.cu_seqlens_k = batch.cu_k_;
  in.mask = first.mask;
  in.softmax_scale = first.softmax_scale;
  in.lse = first.lse;
  in.memory_device = first.memory_device;
  in.output = MergeOutputTargets(members, copy);
  // kPinned only when every member is (the executor decides per member anyway).
  in.memory = MemoryKind::kPinned;
  for (const EngineInput* m : members) {
    if (m->memory != MemoryKind::kPinned || copy) in.memory = MemoryKind::kPageable;
  }
  return batch;
}

EngineOutput SliceOutput(const EngineOutput& merged, const AssembledBatch& batch, size_t index) {
  const EngineInput& in = batch.input();
  const MemberSlice& slice = batch.members()[index];
  const size_t o_row = static_cast<size_t>(in.q.heads) * in.q.head_dim;
  const size_t lse_row = static_cast<size_t>(in.q.heads);
  const size_t first_row = static_cast<size_t>(slice.q_token_offset);
  const size_t rows = static_cast<size_t>(slice.q_tokens);
  EngineOutput out;
  if (merged.placement == OutputPlacement::kCallerBuffers) {
    // The engine already wrote this member's rows into its own o_into / lse_into.
    out.placement = OutputPlacement::kCallerBuffers;
    out.device_timings = merged.device_timings;
    return out;
  }
  if (merged.has_native_o()) {
    out.o_native_dtype = merged.o_native_dtype;
    out.o_native.assign(merged.o_native, first_row * o_row * 2, rows * o_row * 2);
  } else {
    out.o.assign(merged.o.begin() + first_row * o_row, merged.o.begin() + (first_row + rows) * o_row);
  }
  out.device_timings = merged.device_timings;  // the launch's, shared by every member
  if (!merged.lse.empty()) {
    out.lse.assign(merged.lse.begin() + first_row * lse_row,
                   merged.lse.begin() + (first_row + rows) * lse_row);
  }
  return out;
}

}  // namespace sage::server
