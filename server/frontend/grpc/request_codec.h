// AttendRequest (wire) <-> EngineInput/EngineOutput (engine). Decoding copies no tensor bytes from the
// message: the views point into it, which must outlive the decoded request. The one exception is
// system (POSIX) shared memory that no GPU engine page-locked: its inputs are copied into the
// request (AttendRequest::staged_inputs) and its outputs copied out by the encoder, each with the
// fault-tolerant copies of shared_memory/safe_copy.h, so a client shrinking its object cannot fault
// the server.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <vector>

#include "absl/status/statusor.h"
#include "kernels/reference/attention_problem.h"
#include "kernels/reference/kv_pages.h"
#include "kernels/reference/recipe.h"
#include "sageserve/v1/attention_service.pb.h"
#include "server/backend/backend.h"
#include "server/core/attend_request.h"
#include "server/frontend/grpc/shared_memory_refs.h"
#include "server/shared_memory/shared_memory_registry.h"

namespace sage::server {

// The q/k/v bytes of a request whose tensors arrived beside the message rather than in it (the
// zero-copy wire path, attend_wire.h); the message's q/k/v then carry dtype and shape only.
struct ExternalTensors {
  std::span<const std::byte> q, k, v;
  MemoryKind memory = MemoryKind::kPageable;
  // Room the same block keeps for the result (O in q's dtype, LSE); empty: none.
  std::span<std::byte> o, lse;
};

// The core's request, plus what only the wire needs back: the shared-memory references the
// response echoes.
struct DecodedRequest {
  AttendRequest core;
  sageserve::v1::SharedMemoryRef o_output_ref, lse_output_ref;
};

// INVALID_ARGUMENT naming the field for malformed input, RESOURCE_EXHAUSTED for too large.
// Tensors and outputs in shared memory are resolved through `shared_memory` (null: refused with
// FAILED_PRECONDITION; unknown regions, and other identities' regions, are NOT_FOUND; a system region whose object shrank before or
// while its inputs were copied is FAILED_PRECONDITION naming the field and region). Returned by pointer so the spans into
// default_cu_* stay valid.
absl::StatusOr<std::unique_ptr<DecodedRequest>> DecodeAttendRequest(
    const sageserve::v1::AttendRequest& request, const BackendInfo& backend,
    const RequestLimits& limits, const ExternalTensors* external = nullptr,
    const SharedMemoryAccess* shared_memory = nullptr);

// Fills o (converted to the requested dtype, from EngineOutput::o or, when the engine returned it,
// EngineOutput::o_native) and lse of `response`. When the engine wrote into the caller's buffers
// (OutputPlacement::kCallerBuffers) only their dtype and shape are set: the bytes go out beside the
// message (EncodeAttendResponse in attend_wire.h), or are already in the client's shared memory.
// A request with o_output gets its O and LSE written there (unless the engine did), and the response
// carries dtype, shape and the request's reference; host shared memory is written only with
// CopyToClient: FAILED_PRECONDITION "o_output: region '<name>' shrank or was unmapped while the
// request used it" when the client shrank it. INTERNAL only if an engine left device-memory outputs
// unwritten (a bug). Takes the output by value: 16-bit O already in the requested dtype is
// moved into the response.
absl::Status EncodeAttendOutput(EngineOutput output, const DecodedRequest& request,
                                sageserve::v1::AttendResponse* response);

// Enum mirrors between the wire and the engine.
sageserve::v1::Recipe ToWireRecipe(Recipe recipe);
absl::StatusOr<Recipe> FromWireRecipe(sageserve::v1::Recipe recipe);
sageserve::v1::DType ToWireDType(DType dtype);
absl::StatusOr<DType> FromWireDType(sageserve::v1::DType dtype);
sageserve::v1::KvStorage KvStorageToWire(KvStorage storage);
std::optional<KvStorage> KvStorageFromWire(sageserve::v1::KvStorage storage);  // nullopt: UNSPECIFIED or unknown

}  // namespace sage::server
