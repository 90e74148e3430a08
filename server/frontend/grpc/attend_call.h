// One Attend call on the wire path, shared by the unary and the streaming RPC: the parsed message,
// the core request decoded from it, the response being built and where its tensor bytes went.
// Start decodes and hands the request to the core's pipeline; the pipeline's completion encodes
// the response here. Alive until the call's `done` has run.
#pragma once

#include <functional>
#include <memory>
#include <optional>
#include <span>

#include "absl/functional/any_invocable.h"
#include "absl/status/status.h"
#include "grpcpp/support/byte_buffer.h"
#include "sageserve/v1/attention_service.pb.h"
#include "server/core/attend_pipeline.h"
#include "server/frontend/grpc/attend_wire.h"
#include "server/frontend/grpc/request_codec.h"
#include "server/shared_memory/shared_memory_registry.h"

namespace sage::server {

// What the Attend RPCs need from the layers below: the pipeline, and the shared-memory regions
// requests may name (null: such requests are refused).
struct AttendBackends {
  AttendPipeline* pipeline = nullptr;
  const SharedMemoryRegistry* shared_memory = nullptr;
};

// Where a call's result went, filled before `done` runs. With kCallerBuffers the response holds O's
// (and LSE's) dtype and shape only, and the bytes are these spans of the request's block, sent
// beside the message by EncodeAttendResponse.
struct WireResult {
  OutputPlacement placement = OutputPlacement::kInOutput;
  std::span<const std::byte> o;
  std::span<const std::byte> lse;
};

struct WireCallState {
  WireAttendRequest wire;
  std::unique_ptr<DecodedRequest> decoded;
  sageserve::v1::AttendResponse response;
  WireResult result;

  // Decodes `wire` and starts it through the pipeline. OK: `done` will run once, on a worker, after
  // `response`/`result` are filled. Error: `done` will not run (the refusal is logged and counted).
  // `caller`: whose shared-memory regions the request may name.
  absl::Status Start(const AttendBackends& backends, const RegionCaller& caller,
                     AttendMethod method, Clock::time_point accepted,
                     std::optional<Clock::time_point> deadline, std::function<bool()> is_cancelled,
                     absl::AnyInvocable<void(const absl::Status&)> done);

  // The response of the completed call: O/LSE as slices of the request's block when the engine
  // wrote them there (no copy), else the whole message serialized by protobuf.
  grpc::ByteBuffer SerializeResponse() const;

 private:
  // Fills `response` and `result` from the core's answer; returns the response's wire size.
  absl::StatusOr<size_t> Encode(AttendResult answer);
};

}  // namespace sage::server
