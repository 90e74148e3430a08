#include "server/backend/output_placement.h"

namespace sage::server {

OutputTarget ChooseOutputTarget(const OutputOffer& offer) {
  OutputTarget t;
  // The encoder takes O in the kernel's 16-bit type as well: no decode to float and encode again.
  t.form = OutputForm::kNativeAllowed;
  const bool same_dtype = offer.output_dtype == offer.q_dtype;
  if (!offer.client_o.empty()) {
    if (!offer.client_direct) return t;  // the encoder writes them: the engine gets no client buffer
    t.memory = offer.client_memory;
    if (same_dtype) {
      t.form = OutputForm::kNativeInto;
      t.o_into = offer.client_o;
      t.lse_into = std::span<float>(reinterpret_cast<float*>(offer.client_lse.data()),
                                    offer.client_lse.size() / sizeof(float));
    }
    return t;
  }
  if (same_dtype && !offer.block_o.empty() && offer.block_o.size() >= offer.o_bytes &&
      offer.block_lse.size() >= offer.lse_bytes) {
    t.form = OutputForm::kNativeInto;
    t.memory = offer.block_memory;
    t.o_into = offer.block_o.first(offer.o_bytes);
    t.lse_into = std::span<float>(reinterpret_cast<float*>(offer.block_lse.data()), offer.lse_bytes / sizeof(float));
  }
  return t;
}

OutputTarget MergeOutputTargets(std::span<const EngineInput* const> members, bool concatenated) {
  OutputTarget t;
  t.form = OutputForm::kNativeInto;
  for (const EngineInput* m : members) {
    if (m->output.form == OutputForm::kFloat) {
      t.form = OutputForm::kFloat;
    } else if (m->output.form == OutputForm::kNativeAllowed && t.form == OutputForm::kNativeInto) {
      t.form = OutputForm::kNativeAllowed;
    }
  }
  // A concatenated copy has no per-member destinations to write into.
  if (concatenated && t.form == OutputForm::kNativeInto) t.form = OutputForm::kNativeAllowed;
  return t;
}

MemoryKind BatchOutputMemory(const OutputTarget& target) {
  return target.memory == MemoryKind::kDevice ? MemoryKind::kDevice : MemoryKind::kPageable;
}

bool PlacementAllowed(const OutputTarget& target, OutputPlacement placement) {
  return placement == OutputPlacement::kInOutput || target.form == OutputForm::kNativeInto;
}

bool WritesIntoTarget(const OutputTarget& target, DType q_dtype, DType kernel_dtype) {
  return target.form == OutputForm::kNativeInto && q_dtype == kernel_dtype;
}

CopyRoute HowToCopy(MemoryKind kind, size_t bytes) {
  if (kind == MemoryKind::kDevice) return CopyRoute::kDeviceCopy;
  if (kind == MemoryKind::kPinned && bytes >= kDirectCopyMinBytes) return CopyRoute::kDirect;
  return CopyRoute::kStaged;
}

bool CopiedByDmaOnly(MemoryKind kind, DType dtype, size_t bytes) {
  return kind == MemoryKind::kPinned && (dtype == DType::kF16 || dtype == DType::kBF16) &&
         HowToCopy(kind, bytes) == CopyRoute::kDirect;
}

}  // namespace sage::server
