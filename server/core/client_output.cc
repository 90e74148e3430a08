#include "server/core/client_output.h"

#include <memory>
#include <span>

#include "server/backend/encode_output.h"
#include "server/shared_memory/safe_copy.h"

namespace sage::server {

absl::Status WriteClientOutputs(const EngineOutput& output, DType dtype, LseMode lse, const OutputOffer& offer,
                                const ClientOutputRegions& regions) {
  if (output.placement == OutputPlacement::kCallerBuffers) return absl::OkStatus();
  if (offer.client_memory == MemoryKind::kDevice) {
    return absl::InternalError("the engine did not write O into the request's CUDA shared memory");
  }
  // Host shared memory is always a system region: only CopyToClient, never a store into the mapping.
  std::span<const std::byte> o;
  std::unique_ptr<std::byte[]> staging;
  if (output.has_native_o() && output.o_native_dtype == dtype) {
    o = std::as_bytes(std::span<const char>(output.o_native));  // the kernel's bytes as they are
  } else {
    const size_t n = output.o_elements();
    staging.reset(new std::byte[n * DTypeSize(dtype)]);
    EncodeO(output, dtype, 0, n, staging.get());
    o = std::span<const std::byte>(staging.get(), n * DTypeSize(dtype));
  }
  absl::Status s = CopyToClient(offer.client_o, o, "o_output", regions.o);
  if (!s.ok() || lse != LseMode::kNatural) return s;
  return CopyToClient(offer.client_lse, std::as_bytes(std::span<const float>(output.lse)), "lse_output", regions.lse);
}

}  // namespace sage::server
