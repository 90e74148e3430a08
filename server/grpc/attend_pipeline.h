// The path of one Attend request, shared by the unary and the streaming RPC: decode and validate
// on the calling (reactor) thread, which is cheap and never blocks, then queue the work; the worker
// runs the backend, encodes the response and reports back.
#pragma once

#include <functional>
#include <optional>

#include "absl/functional/any_invocable.h"
#include "absl/status/status.h"
#include "sageserve/v1/attention_service.pb.h"
#include "server/backend/backend.h"
#include "server/grpc/attend_wire.h"
#include "server/grpc/request_codec.h"
#include "server/metrics/server_metrics.h"
#include "server/registry/registry.h"
#include "server/scheduler/scheduler.h"

namespace sage::server {

// Which RPC a call came in on (the `method` label of the request metrics).
enum class AttendMethod { kUnary, kStream };

// Where a wire-path call's result went (AttendCall::result), filled before `done` runs. With
// kCallerBuffers the response holds O's (and LSE's) dtype and shape only, and the bytes are these
// spans of the request's block, to be sent with EncodeAttendResponse.
struct WireResult {
  OutputPlacement placement = OutputPlacement::kInOutput;
  std::span<const std::byte> o;
  std::span<const std::byte> lse;
};

struct AttendCall {
  AttendMethod method = AttendMethod::kUnary;
  const sageserve::v1::AttendRequest* request = nullptr;  // Alive until `done` runs.
  sageserve::v1::AttendResponse* response = nullptr;      // Filled before `done` runs.
  // The zero-copy wire path (attend_wire.h): the tensors' bytes are in `payloads` (alive until
  // `done` runs), not in `request`, and O may be written back into the same block (see `result`).
  // Null for a request parsed by protobuf.
  const RequestPayloads* payloads = nullptr;
  WireResult* result = nullptr;  // required with `payloads`
  size_t wire_bytes = 0;         // the request's serialized size (0: computed from `request`)
  std::optional<Clock::time_point> deadline;
  std::function<bool()> is_cancelled;
  // Called once on a worker thread with the outcome; `response` holds the result when OK.
  absl::AnyInvocable<void(const absl::Status&)> done;
};

// The response of a completed wire-path call: O/LSE as slices of `storage` when the engine wrote them
// there (no copy), else the whole message serialized by protobuf.
grpc::ByteBuffer SerializeAttendResponse(const sageserve::v1::AttendResponse& response, const WireResult& result,
                                         const HostBlockRef& storage);

// One wire-path call's state, shared by the unary and the streaming RPC: the parsed request, the
// response being built and where its tensor bytes went. Alive until the call's `done` has run.
struct WireCallState {
  WireAttendRequest wire;
  sageserve::v1::AttendResponse response;
  WireResult result;

  // A call over this state (request, response, payloads, result, wire size); the caller adds the
  // deadline, cancellation and completion.
  AttendCall MakeCall(AttendMethod method);
  // The response of the completed call (SerializeAttendResponse over this state).
  grpc::ByteBuffer SerializeResponse() const {
    return SerializeAttendResponse(response, result, wire.payloads.storage);
  }
};

class AttendPipeline {
 public:
  // `metrics` may be null (no request metrics); otherwise it must outlive the pipeline. So must
  // `registry` (the precision registry); null: requests naming a model are refused.
  // `shared_memory` (may be null: requests naming shared memory are refused) must outlive it too.
  AttendPipeline(Scheduler* scheduler, const BackendInfo* backend, RequestLimits limits,
                 ServerMetrics* metrics = nullptr, const registry::Registry* registry = nullptr,
                 const SharedMemoryRegistry* shared_memory = nullptr)
      : scheduler_(scheduler),
        backend_(backend),
        limits_(limits),
        metrics_(metrics),
        registry_(registry),
        shared_memory_(shared_memory) {}

  // OK: the call was queued and `done` will run. Error: `done` is not called, the caller reports
  // the status (logged here at warn).
  absl::Status Start(AttendCall call);

  const RequestLimits& limits() const { return limits_; }

 private:
  // A request naming layer_key.model and no explicit recipe runs the precision plan's recipe for
  // that (layer, timestep): NOT_FOUND for an unknown model, INVALID_ARGUMENT for an address
  // outside it. An explicit recipe overrides the plan.
  absl::Status ApplyPrecisionPlan(const sageserve::v1::AttendRequest& request, DecodedRequest& problem) const;

  Scheduler* const scheduler_;
  const BackendInfo* const backend_;
  const RequestLimits limits_;
  ServerMetrics* const metrics_;
  const registry::Registry* const registry_;
  const SharedMemoryRegistry* const shared_memory_;
};

}  // namespace sage::server
