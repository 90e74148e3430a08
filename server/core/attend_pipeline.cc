#include "server/core/attend_pipeline.h"

#include <chrono>
#include <memory>
#include <string>
#include <utility>

#include "absl/strings/string_view.h"
#include "kernels/reference/recipe.h"
#include "server/backend/output_placement.h"
#include "server/util/log_field.h"
#include "spdlog/spdlog.h"

namespace sage::server {
namespace {

absl::string_view MethodName(AttendMethod method) {
  switch (method) {
    case AttendMethod::kUnary: return "Attend";
    case AttendMethod::kStream: return "AttendStream";
    case AttendMethod::kSession: return "AttendSession";
  }
  return "Attend";
}

absl::string_view Label(std::string_view s) { return absl::string_view(s.data(), s.size()); }

// Counts one request in the in-flight gauge for as long as it lives: moved into the work item's
// completion, it ends with the item (answered, failed, or refused by the scheduler).
class InFlightMark {
 public:
  InFlightMark(ServerMetrics* metrics, std::atomic<int>* count) : metrics_(metrics), count_(count) {
    if (metrics_ != nullptr) metrics_->AddInFlight(1);
    count_->fetch_add(1, std::memory_order_relaxed);
  }
  InFlightMark(InFlightMark&& other) noexcept
      : metrics_(std::exchange(other.metrics_, nullptr)), count_(std::exchange(other.count_, nullptr)) {}
  InFlightMark& operator=(InFlightMark&&) = delete;
  ~InFlightMark() { Release(); }
  // Before the answer goes out, so the load it reports (load_report.h) counts only other requests.
  void Release() {
    if (metrics_ != nullptr) metrics_->AddInFlight(-1);
    if (count_ != nullptr) count_->fetch_sub(1, std::memory_order_relaxed);
    metrics_ = nullptr;
    count_ = nullptr;
  }

 private:
  ServerMetrics* metrics_;
  std::atomic<int>* count_;
};

}  // namespace

void AttendPipeline::Record(AttendMethod method, std::string_view recipe, const absl::Status& status,
                            Clock::time_point accepted, size_t bytes_in, size_t bytes_out) const {
  if (metrics_ == nullptr) return;
  RequestRecord r;
  r.method = MethodName(method);
  r.recipe = Label(recipe);
  r.code = status.code();
  r.latency = Clock::now() - accepted;
  r.bytes_in = static_cast<int64_t>(bytes_in);
  r.bytes_out = static_cast<int64_t>(bytes_out);
  metrics_->RecordRequest(r);
}

void AttendPipeline::Reject(AttendMethod method, std::string_view id, const absl::Status& status,
                            Clock::time_point accepted, size_t bytes_in) const {
  spdlog::warn("request '{}' rejected: {}", LogField(id), LogField(status.ToString(), kLogStatusMaxBytes));
  Record(method, std::string_view(kNoRecipeLabel.data(), kNoRecipeLabel.size()), status, accepted, bytes_in, 0);
}

absl::Status AttendPipeline::ApplyPrecisionPlan(AttendRequest& request) const {
  if (!request.plan.has_value() || request.plan->model.empty()) return absl::OkStatus();
  if (request.recipe_explicit) return absl::OkStatus();
  if (registry_ == nullptr) {
    return absl::FailedPreconditionError("layer_key.model: this server has no precision registry");
  }
  const PlanAddress& key = *request.plan;
  if (!key.layer.has_value()) {
    return absl::InvalidArgumentError("layer_key.layer: required when layer_key.model is set");
  }
  absl::StatusOr<registry::Resolution> r = registry_->Resolve(key.model, *key.layer, key.timestep);
  if (!r.ok()) return r.status();
  request.recipe = r->recipe;
  request.config = r->config;
  if (r->substituted_for.has_value()) {
    spdlog::debug("request '{}': plan of {} names {}, not run here; running {}", LogField(request.id), LogField(key.model),
                  RecipeName(*r->substituted_for), RecipeName(r->recipe));
  }
  return absl::OkStatus();
}

absl::Status AttendPipeline::Start(AttendCall call) {
  AttendRequest* const request = call.request;
  if (request == nullptr || !call.encode || !call.done) {
    return absl::InternalError("attend pipeline: a call without its request, encoder or completion");
  }
  if (call.method != AttendMethod::kSession && serving_sessions_only()) {
    const absl::Status draining = absl::UnavailableError(
        "server draining: it serves its open sessions until they close and takes no other work; send this call "
        "to another replica");
    Reject(call.method, request->id, draining, call.accepted, call.bytes_in);
    return draining;
  }
  if (absl::Status planned = ApplyPrecisionPlan(*request); !planned.ok()) {
    Reject(call.method, request->id, planned, call.accepted, call.bytes_in);
    return planned;
  }
  request->input.output = ChooseOutputTarget(request->output);
  const Clock::time_point handed_over = Clock::now();

  WorkItem item;
  item.input = request->input;
  item.config = request->config;
  item.deadline = call.deadline;
  item.is_cancelled = std::move(call.is_cancelled);
  const AttendMethod method = call.method;
  const Clock::time_point accepted = call.accepted;
  const size_t bytes_in = call.bytes_in;
  item.done = [this, request, method, accepted, handed_over, bytes_in, mark = InFlightMark(metrics_, &in_flight_), encode = std::move(call.encode),
               done = std::move(call.done)](absl::StatusOr<EngineOutput> out, const WorkTimings& timings) mutable {
    const std::string_view recipe = RecipeName(request->recipe);
    if (!out.ok()) {
      spdlog::warn("request '{}' failed: {}", LogField(request->id), LogField(out.status().ToString(), kLogStatusMaxBytes));
      Record(method, recipe, out.status(), accepted, bytes_in, 0);
      mark.Release();
      done(out.status());
      return;
    }
    absl::StatusOr<size_t> bytes_out = encode(AttendResult{*std::move(out), request->recipe, timings, accepted, handed_over});
    if (!bytes_out.ok()) {
      // INTERNAL is ours; anything else (a client's shared memory gone from under O) is theirs.
      if (bytes_out.status().code() == absl::StatusCode::kInternal) {
        spdlog::error("request '{}': {}", LogField(request->id), LogField(bytes_out.status().ToString(), kLogStatusMaxBytes));
      } else {
        spdlog::warn("request '{}' failed: {}", LogField(request->id),
                     LogField(bytes_out.status().ToString(), kLogStatusMaxBytes));
      }
      Record(method, recipe, bytes_out.status(), accepted, bytes_in, 0);
      mark.Release();
      done(bytes_out.status());
      return;
    }
    if (spdlog::default_logger_raw()->should_log(spdlog::level::debug)) {
      const EngineInput& in = request->input;
      spdlog::debug("request '{}' ok: q [{}, {}, {}] k [{}, {}] batch {} recipe {} queued {}us compute {}us total {}us",
                    LogField(request->id), in.q.tokens, in.q.heads, in.q.head_dim, in.k.tokens, in.k.heads, in.batch(), recipe,
                    std::chrono::duration_cast<std::chrono::microseconds>(timings.queued).count(),
                    std::chrono::duration_cast<std::chrono::microseconds>(timings.compute).count(),
                    std::chrono::duration_cast<std::chrono::microseconds>(Clock::now() - accepted).count());
    }
    // Recorded before answering, so a scrape that follows the response already counts it.
    Record(method, recipe, absl::OkStatus(), accepted, bytes_in, *bytes_out);
    mark.Release();
    done(absl::OkStatus());
  };
  // Once queued, the request (and its id) may be gone at any moment: copy the id first if the
  // trace line will need it.
  const bool trace = spdlog::default_logger_raw()->should_log(spdlog::level::trace);
  const std::string trace_id = trace ? request->id : std::string();
  const std::string_view recipe = RecipeName(request->recipe);
  absl::Status submitted = scheduler_->Submit(std::move(item));
  if (!submitted.ok()) {
    // Refused: `done` will not run and the request is still the caller's.
    spdlog::warn("request '{}' not queued: {}", LogField(request->id), LogField(submitted.ToString(), kLogStatusMaxBytes));
    Record(method, recipe, submitted, accepted, bytes_in, 0);
  } else if (trace) {
    spdlog::trace("request '{}' queued", LogField(trace_id));
  }
  return submitted;
}

}  // namespace sage::server
