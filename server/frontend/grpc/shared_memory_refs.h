// A request's references into registered shared memory (Tensor.shared_memory, o_output,
// lse_output) resolved into byte ranges, with the checks Attend and AttendSession share: the
// caller's own region, in bounds, the exact size, aligned; outputs beside each other and apart
// from every input; one GPU per request.
#pragma once

#include <cstddef>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "kernels/reference/dtype.h"
#include "sageserve/v1/tensor.pb.h"
#include "server/backend/output_placement.h"
#include "server/core/client_output.h"
#include "server/shared_memory/shared_memory_registry.h"

namespace sage::server {

// The shared-memory regions a request may name: `caller`'s own (every owner's for sees_all).
struct SharedMemoryAccess {
  const SharedMemoryRegistry* registry = nullptr;
  RegionCaller caller;
};

// The regions a decoded request names, each once: held (mapped) until it is answered.
using HeldRegions = std::vector<std::shared_ptr<const SharedMemoryRegion>>;

// The `expected` bytes `ref` names, for the request field `field` (named in errors), its region
// kept once in `held`. FAILED_PRECONDITION when `shm` is null (a call that takes bytes inline only)
// or shared memory is off; NOT_FOUND for a region the caller may not see; INVALID_ARGUMENT for a
// range outside the region, a size other than `expected`, an offset not a multiple of `alignment`.
absl::StatusOr<SharedRange> ResolveRef(const std::string& field, const sageserve::v1::SharedMemoryRef& ref,
                                       size_t expected, size_t alignment, const SharedMemoryAccess* shm,
                                       HeldRegions& held);

bool IsSystem(const SharedRange& r);
// Whether a range of a client's region may be used in place by an engine: CUDA memory always; a
// system (POSIX shm) range only when the GPU's copy engines alone will touch it (CopiedByDmaOnly),
// since a CPU touching a page past the object's new end gets SIGBUS (docs/SECURITY.md).
bool UsableInPlace(const SharedRange& r, DType dtype, size_t bytes);
bool Overlap(std::span<const std::byte> a, std::span<const std::byte> b);

// o_output / lse_output of a request, as the message has them (null: unset).
struct OutputRefs {
  const sageserve::v1::SharedMemoryRef* o = nullptr;
  const sageserve::v1::SharedMemoryRef* lse = nullptr;
  bool return_lse = false;
};

// The O they must hold: [rows, heads, head_dim] of output_dtype (LSE: rows * heads fp32).
struct OutputShape {
  int64_t rows = 0;
  int heads = 0;
  int head_dim = 0;
  DType q_dtype = DType::kF16;
  DType output_dtype = DType::kF16;
};

// An input's bytes, which no output may overlap, and its name in errors ("q", "steps[2].q").
struct NamedBytes {
  std::string name;
  std::span<const std::byte> bytes;
};

// Resolves the outputs (nothing when o_output is unset) into offer.client_o / client_lse /
// client_memory / client_direct and `regions`, holding them in `held`. `memory_device` is the GPU
// the inputs are on (-1: none); O in CUDA memory sets it, and must be on the same one.
// INVALID_ARGUMENT naming o_output / lse_output / output_dtype: lse_output without o_output or
// return_lse, missing beside o_output with return_lse, in another kind of memory or GPU than O,
// overlapping O or an input; O in CUDA memory in another dtype than q's. ResolveRef's errors too.
absl::Status ResolveOutputs(const OutputRefs& refs, const OutputShape& shape, std::span<const NamedBytes> inputs,
                            const SharedMemoryAccess* shm, HeldRegions& held, OutputOffer& offer,
                            ClientOutputRegions& regions, int& memory_device);

}  // namespace sage::server
