#include "server/frontend/grpc/shared_memory_refs.h"

#include <algorithm>
#include <cstdint>

#include "absl/strings/str_cat.h"

namespace sage::server {
namespace {

absl::Status Invalid(const std::string& field, absl::string_view what) {
  return absl::InvalidArgumentError(absl::StrCat(field, ": ", what));
}

}  // namespace

bool IsSystem(const SharedRange& r) { return r.region->info().kind == SharedMemoryKind::kSystem; }

bool UsableInPlace(const SharedRange& r, DType dtype, size_t bytes) {
  return !IsSystem(r) || CopiedByDmaOnly(r.memory(), dtype, bytes);
}

bool Overlap(std::span<const std::byte> a, std::span<const std::byte> b) {
  if (a.empty() || b.empty()) return false;
  const auto a0 = reinterpret_cast<uintptr_t>(a.data()), b0 = reinterpret_cast<uintptr_t>(b.data());
  return a0 < b0 + b.size() && b0 < a0 + a.size();
}

absl::StatusOr<SharedRange> ResolveRef(const std::string& field, const sageserve::v1::SharedMemoryRef& ref,
                                       size_t expected, size_t alignment, const SharedMemoryAccess* shm,
                                       HeldRegions& held) {
  if (shm == nullptr || shm->registry == nullptr) {
    // Calls decoded without a registry (calibration samples) take their bytes inline only.
    return absl::FailedPreconditionError(absl::StrCat(field, ": this call takes tensor bytes inline, not shared memory"));
  }
  absl::StatusOr<SharedRange> range =
      shm->registry->Resolve(shm->caller, field, ref.region(), ref.offset(), ref.byte_size(), expected);
  if (!range.ok()) return range.status();
  if (reinterpret_cast<uintptr_t>(range->bytes.data()) % alignment != 0) {
    return Invalid(absl::StrCat(field, ".offset"), absl::StrCat(ref.offset(), " is not a multiple of the element size (",
                                                               alignment, ")"));
  }
  if (std::find(held.begin(), held.end(), range->region) == held.end()) held.push_back(range->region);
  return range;
}

absl::Status ResolveOutputs(const OutputRefs& refs, const OutputShape& shape, std::span<const NamedBytes> inputs,
                            const SharedMemoryAccess* shm, HeldRegions& held, OutputOffer& offer,
                            ClientOutputRegions& regions, int& memory_device) {
  if (refs.o == nullptr) {
    if (refs.lse != nullptr) return Invalid("lse_output", "set only together with o_output");
    return absl::OkStatus();
  }
  if (refs.lse != nullptr && !refs.return_lse) return Invalid("lse_output", "set only with return_lse");
  if (refs.return_lse && refs.lse == nullptr) {
    return Invalid("lse_output", "required with o_output and return_lse (LSE goes beside O)");
  }
  const size_t values = static_cast<size_t>(shape.rows) * shape.heads * shape.head_dim;
  const size_t o_bytes = values * DTypeSize(shape.output_dtype);
  absl::StatusOr<SharedRange> o = ResolveRef("o_output", *refs.o, o_bytes, DTypeSize(shape.output_dtype), shm, held);
  if (!o.ok()) return o.status();
  offer.client_o = o->bytes;
  offer.client_memory = o->memory();
  // O in q's dtype is what an engine writes in place; anything else goes through the encoder.
  offer.client_direct = shape.output_dtype == shape.q_dtype && UsableInPlace(*o, shape.output_dtype, o_bytes);
  regions.o = o->region->info().name;
  if (refs.lse != nullptr) {
    const size_t lse_bytes = static_cast<size_t>(shape.rows) * shape.heads * sizeof(float);
    absl::StatusOr<SharedRange> lse = ResolveRef("lse_output", *refs.lse, lse_bytes, sizeof(float), shm, held);
    if (!lse.ok()) return lse.status();
    if ((lse->memory() == MemoryKind::kDevice) != (o->memory() == MemoryKind::kDevice) ||
        (o->memory() == MemoryKind::kDevice && lse->region->device() != o->region->device())) {
      return Invalid("lse_output", "must be in the same kind of memory (and CUDA device) as o_output");
    }
    if (Overlap(lse->bytes, o->bytes)) return Invalid("lse_output", "overlaps o_output");
    if (o->memory() == MemoryKind::kPinned && lse->memory() != MemoryKind::kPinned) {
      offer.client_memory = MemoryKind::kPageable;  // direct copies only when both are pinned
    }
    // LSE follows O's route (the transfer plan copies both the way O's size says).
    if (IsSystem(*lse) && lse->memory() != MemoryKind::kPinned) offer.client_direct = false;
    offer.client_lse = lse->bytes;
    regions.lse = lse->region->info().name;
  }
  if (offer.client_memory == MemoryKind::kDevice) {
    const int device = o->region->device();
    if (memory_device >= 0 && memory_device != device) {
      return Invalid("o_output", absl::StrCat("on CUDA device ", device, ", but the inputs are on device ",
                                              memory_device, " (one request runs on one GPU)"));
    }
    memory_device = device;
    if (shape.output_dtype != shape.q_dtype) {
      return Invalid("output_dtype", "must equal q's dtype when O goes to CUDA shared memory (no conversion on the GPU)");
    }
  }
  for (const NamedBytes& in : inputs) {
    if (Overlap(offer.client_o, in.bytes)) return Invalid("o_output", absl::StrCat("overlaps ", in.name, "'s bytes"));
    if (Overlap(offer.client_lse, in.bytes)) return Invalid("lse_output", absl::StrCat("overlaps ", in.name, "'s bytes"));
  }
  return absl::OkStatus();
}

}  // namespace sage::server
