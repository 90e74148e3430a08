// Where O goes: the one rule, called by the request pipeline (ChooseOutputTarget), the batcher
// (MergeOutputTargets, OutputMatchesTarget, BatchOutputMemory) and the CUDA transfer plan
// (WritesIntoTarget, HowToCopyOut). It sits with the engine vocabulary, below the scheduler and
// the backends that call it, so no layer reaches up for it.
#pragma once

#include <cstddef>
#include <span>

#include "kernels/reference/dtype.h"
#include "server/backend/engine_io.h"

namespace sage::server {

// What a request offers for its output, as the frontend decoded it.
struct OutputOffer {
  DType q_dtype = DType::kF16;
  DType output_dtype = DType::kF16;  // what the client asked O to be
  size_t o_bytes = 0;                // O in q's dtype: total_q * Hq * D * 2
  size_t lse_bytes = 0;              // 0 without LSE
  // The client's own buffers (shared memory named by o_output / lse_output); empty: none.
  std::span<std::byte> client_o;
  std::span<std::byte> client_lse;
  MemoryKind client_memory = MemoryKind::kPageable;
  // False: no engine may write client_o / client_lse itself. They are a mapping of a POSIX shm
  // object the client can shrink under the write (a SIGBUS for whoever stores to it), so the engine
  // returns O and the encoder copies it there with a fault-tolerant copy (shared_memory/safe_copy.h).
  bool client_direct = true;
  // Room the request's own payload block keeps for the result (the zero-copy wire path); empty: none.
  std::span<std::byte> block_o;
  std::span<std::byte> block_lse;
  MemoryKind block_memory = MemoryKind::kPageable;
};

// The target of one request:
//  - client buffers: O goes there. The engine writes them itself (kNativeInto) when O is wanted in
//    q's dtype and the offer allows it (client_direct); otherwise the engine returns 16-bit codes
//    (kNativeAllowed) and the encoder copies or converts them into place.
//  - else the payload block, when it has room and O is wanted in q's dtype (kNativeInto): the
//    response then leaves from the block with no copy of O on the host.
//  - else 16-bit codes returned (kNativeAllowed), which the encoder copies or converts once.
OutputTarget ChooseOutputTarget(const OutputOffer& offer);

// The target of a launch merging `members`: the most general form every member accepts (float if
// any wants float; the members' own buffers only if all have one and the launch keeps them apart,
// `concatenated` false; else 16-bit codes returned).
OutputTarget MergeOutputTargets(std::span<const EngineInput* const> members, bool concatenated);

// The output memory class a batch key separates: device-memory outputs never share a launch with
// host ones (a device copy and a host copy are different transfer plans).
MemoryKind BatchOutputMemory(const OutputTarget& target);

// Whether an engine's placement is one the target allowed (kCallerBuffers only for kNativeInto).
bool PlacementAllowed(const OutputTarget& target, OutputPlacement placement);

// Whether an engine whose kernel writes O as `kernel_dtype` puts it straight into the target's
// buffers: kNativeInto and O wanted in the kernel's own dtype (q's).
bool WritesIntoTarget(const OutputTarget& target, DType q_dtype, DType kernel_dtype);

// How a GPU engine moves `bytes` between its device buffer and memory of `kind`.
//   kDeviceCopy: device memory, reachable by a device copy only (whatever its size);
//   kDirect:     pinned host memory, large enough that one DMA straight to it beats staging;
//   kStaged:     through the engine's own pinned staging (pageable memory, or too small to pay).
enum class CopyRoute { kDeviceCopy, kDirect, kStaged };
inline constexpr size_t kDirectCopyMinBytes = size_t{64} << 10;
CopyRoute HowToCopy(MemoryKind kind, size_t bytes);

// Whether a host tensor of these facts is moved by a GPU's copy engines alone, never loaded or
// stored by a CPU: pinned, in a 16-bit type the kernels take as it is, and large enough for a DMA
// of its own (HowToCopy). Only such tensors may stay in a client's own POSIX shm mapping: the
// client can shrink the object, and a CPU access past its new end faults (SIGBUS), while the pages
// cudaHostRegister pinned stay valid for DMA (docs/SECURITY.md, "Shared memory").
bool CopiedByDmaOnly(MemoryKind kind, DType dtype, size_t bytes);

}  // namespace sage::server
