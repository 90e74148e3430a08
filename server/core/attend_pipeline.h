// The journey of one Attend request, shared by every frontend and RPC: precision-plan lookup, output
// placement, submission to the scheduler, completion, and the request metrics at one exit. It runs
// on the calling (reactor) thread up to Submit, which is cheap and never blocks; the completion runs
// on a worker. Nothing here knows protobuf: the frontend decodes into an AttendRequest and encodes
// the AttendResult through the call's `encode`.
#pragma once

#include <atomic>
#include <cstddef>
#include <functional>
#include <optional>
#include <string_view>

#include "absl/functional/any_invocable.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "server/backend/backend.h"
#include "server/core/attend_request.h"
#include "server/metrics/server_metrics.h"
#include "server/registry/registry.h"
#include "server/scheduler/scheduler.h"

namespace sage::server {

// What a completed request hands its frontend to encode.
struct AttendResult {
  EngineOutput output;  // placement kCallerBuffers: O/LSE are in the target's buffers
  Recipe recipe = Recipe::kInt8QkFp8Pv;
  WorkTimings timings;
  Clock::time_point accepted;
  Clock::time_point submitted;  // handed to the scheduler
};

struct AttendCall {
  AttendMethod method = AttendMethod::kUnary;
  // Alive, unchanged, until `done` has run (or Start returned an error).
  AttendRequest* request = nullptr;
  size_t bytes_in = 0;  // the request's serialized size (the bytes-in metric)
  Clock::time_point accepted = Clock::now();
  std::optional<Clock::time_point> deadline;
  std::function<bool()> is_cancelled;
  // On the worker, first: the frontend encodes the result and returns the response's size (the
  // bytes-out metric), or the error to answer with instead.
  absl::AnyInvocable<absl::StatusOr<size_t>(AttendResult)> encode;
  // Then, once, with the outcome; the metrics already count it.
  absl::AnyInvocable<void(const absl::Status&)> done;
};

class AttendPipeline {
 public:
  // `metrics` may be null (no request metrics); otherwise it must outlive the pipeline. So must
  // `registry` (the precision registry); null: requests naming a model are refused.
  AttendPipeline(Scheduler* scheduler, const BackendInfo* backend, RequestLimits limits,
                 ServerMetrics* metrics = nullptr, const registry::Registry* registry = nullptr)
      : scheduler_(scheduler), backend_(backend), limits_(limits), metrics_(metrics), registry_(registry) {}

  // OK: the call was queued and `encode` then `done` will run. Error: neither runs, and the caller
  // answers with the status (logged and counted here).
  absl::Status Start(AttendCall call);

  // A request refused before any recipe ran (malformed, too large, no plan, no room): logged and
  // counted like every other outcome, under recipe "none" (kNoRecipeLabel).
  void Reject(AttendMethod method, std::string_view id, const absl::Status& status, Clock::time_point accepted,
              size_t bytes_in) const;

  const RequestLimits& limits() const { return limits_; }
  const BackendInfo& backend() const { return *backend_; }
  const registry::Registry* registry() const { return registry_; }  // null: none
  // Requests accepted and not yet finished (queued or computing): the load this server reports
  // to clients balancing over replicas (frontend/grpc/load_report.h).
  int in_flight() const { return in_flight_.load(std::memory_order_relaxed); }
  // A session drain (ServerOptions::session_drain): from now on Start refuses stateless calls
  // (UNAVAILABLE, so clients retry on another replica); session calls still run.
  void ServeSessionsOnly() { sessions_only_.store(true, std::memory_order_release); }
  bool serving_sessions_only() const { return sessions_only_.load(std::memory_order_acquire); }

 private:
  // A request naming a model and no explicit recipe runs the precision plan's recipe for that
  // (layer, timestep): NOT_FOUND for an unknown model, INVALID_ARGUMENT for an address outside it.
  absl::Status ApplyPrecisionPlan(AttendRequest& request) const;
  void Record(AttendMethod method, std::string_view recipe, const absl::Status& status, Clock::time_point accepted,
              size_t bytes_in, size_t bytes_out) const;

  Scheduler* const scheduler_;
  const BackendInfo* const backend_;
  const RequestLimits limits_;
  ServerMetrics* const metrics_;
  const registry::Registry* const registry_;
  std::atomic<int> in_flight_{0};
  std::atomic<bool> sessions_only_{false};
};

}  // namespace sage::server
