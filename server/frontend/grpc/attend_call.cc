#include "server/frontend/grpc/attend_call.h"

#include <chrono>
#include <string>
#include <utility>

#include "grpcpp/impl/codegen/proto_utils.h"
#include "kernels/reference/recipe.h"

namespace sage::server {
namespace {

int64_t Micros(Clock::duration d) { return std::chrono::duration_cast<std::chrono::microseconds>(d).count(); }

}  // namespace

absl::Status WireCallState::Start(const AttendBackends& backends, const RegionCaller& caller,
                                  AttendMethod method, Clock::time_point accepted,
                                  std::optional<Clock::time_point> deadline, std::function<bool()> is_cancelled,
                                  absl::AnyInvocable<void(const absl::Status&)> done) {
  AttendPipeline& pipeline = *backends.pipeline;
  const RequestPayloads& p = wire.payloads;
  if (p.storage == nullptr) return absl::InternalError("attend call: wire payloads without storage");
  const ExternalTensors external{p.q, p.k, p.v, p.storage->memory(), p.o, p.lse};
  const SharedMemoryAccess shared_memory{backends.shared_memory, caller};
  absl::StatusOr<std::unique_ptr<DecodedRequest>> d =
      DecodeAttendRequest(wire.header, pipeline.backend(), pipeline.limits(), &external, &shared_memory);
  if (!d.ok()) {
    pipeline.Reject(method, wire.header.request_id(), d.status(), accepted, wire.wire_bytes);
    return d.status();
  }
  decoded = *std::move(d);
  AttendCall call;
  call.method = method;
  call.request = &decoded->core;
  call.bytes_in = wire.wire_bytes;
  call.accepted = accepted;
  call.deadline = deadline;
  call.is_cancelled = std::move(is_cancelled);
  call.encode = [this](AttendResult answer) { return Encode(std::move(answer)); };
  call.done = std::move(done);
  return pipeline.Start(std::move(call));
}

absl::StatusOr<size_t> WireCallState::Encode(AttendResult answer) {
  const AttendRequest& request = decoded->core;
  response.set_request_id(request.id);
  response.set_recipe(ToWireRecipe(answer.recipe));
  if (request.writes_client_memory()) {
    result.placement = OutputPlacement::kInOutput;  // the bytes are in shared memory, not the response
  } else {
    result.placement = answer.output.placement;
    if (answer.output.placement == OutputPlacement::kCallerBuffers) {
      result.o = request.input.output.o_into;
      result.lse = std::as_bytes(request.input.output.lse_into);
    }
  }
  const std::optional<DeviceTimings> device = answer.output.device_timings;
  if (absl::Status encoded = EncodeAttendOutput(std::move(answer.output), *decoded, &response); !encoded.ok()) {
    return encoded;
  }
  sageserve::v1::Timings* t = response.mutable_timings();
  t->set_queued_us(Micros(answer.timings.queued));
  t->set_compute_us(Micros(answer.timings.compute));
  if (device) {
    t->set_kernel_us(static_cast<int64_t>(device->kernel_us));
    t->set_device_us(static_cast<int64_t>(device->h2d_us + device->kernel_us + device->d2h_us));
  }
  t->set_prepare_us(Micros(answer.submitted - answer.accepted));
  t->set_total_us(Micros(Clock::now() - answer.accepted));
  if (result.placement == OutputPlacement::kCallerBuffers) {
    return AttendResponseWireSize(response, result.o.size(), result.lse.size());
  }
  return response.ByteSizeLong();
}

grpc::ByteBuffer WireCallState::SerializeResponse() const {
  if (result.placement == OutputPlacement::kCallerBuffers) {
    return EncodeAttendResponse(response, result.o, result.lse, wire.payloads.storage);
  }
  grpc::ByteBuffer out;
  bool own_buffer = false;
  // Serializing a message this process built fails only when memory runs out; gRPC would then
  // send an empty message, which the client reports as a bad response.
  (void)grpc::SerializationTraits<sageserve::v1::AttendResponse>::Serialize(response, &out, &own_buffer);
  return out;
}

}  // namespace sage::server
