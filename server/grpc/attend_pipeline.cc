#include "server/grpc/attend_pipeline.h"

#include <chrono>
#include <memory>
#include <utility>

#include "absl/strings/string_view.h"
#include "grpcpp/impl/codegen/proto_utils.h"
#include "kernels/reference/recipe.h"
#include "spdlog/spdlog.h"

namespace sage::server {
namespace {

int64_t Micros(Clock::duration d) {
  return std::chrono::duration_cast<std::chrono::microseconds>(d).count();
}

absl::string_view MethodName(AttendMethod method) {
  return method == AttendMethod::kStream ? "AttendStream" : "Attend";
}

absl::string_view Label(std::string_view s) { return absl::string_view(s.data(), s.size()); }

// The recipe label of a request that failed before decoding settled it.
absl::string_view RequestedRecipe(const sageserve::v1::AttendRequest& request, const BackendInfo& backend) {
  if (request.recipe() == sageserve::v1::RECIPE_UNSPECIFIED) return Label(RecipeName(backend.default_recipe));
  absl::StatusOr<Recipe> recipe = FromWireRecipe(request.recipe());
  return recipe.ok() ? Label(RecipeName(*recipe)) : "invalid";
}

// `wire_bytes_in`: the request's serialized size when known (0: computed). `result`: where a
// wire-path response's tensor bytes are, when they are not in `response`.
void Record(ServerMetrics* metrics, AttendMethod method, absl::string_view recipe,
            const absl::Status& status, Clock::time_point accepted, const sageserve::v1::AttendRequest& request,
            size_t wire_bytes_in, const sageserve::v1::AttendResponse* response, const WireResult* result = nullptr) {
  if (metrics == nullptr) return;
  RequestRecord r;
  r.method = MethodName(method);
  r.recipe = recipe;
  r.code = status.code();
  r.latency = Clock::now() - accepted;
  r.bytes_in = static_cast<int64_t>(wire_bytes_in != 0 ? wire_bytes_in : request.ByteSizeLong());
  if (response == nullptr) {
    r.bytes_out = 0;
  } else if (result != nullptr && result->placement == OutputPlacement::kCallerBuffers) {
    r.bytes_out = static_cast<int64_t>(AttendResponseWireSize(*response, result->o.size(), result->lse.size()));
  } else {
    r.bytes_out = static_cast<int64_t>(response->ByteSizeLong());
  }
  metrics->RecordRequest(r);
}

}  // namespace

grpc::ByteBuffer SerializeAttendResponse(const sageserve::v1::AttendResponse& response, const WireResult& result,
                                         const HostBlockRef& storage) {
  if (result.placement == OutputPlacement::kCallerBuffers) {
    return EncodeAttendResponse(response, result.o, result.lse, storage);
  }
  grpc::ByteBuffer out;
  bool own_buffer = false;
  // Serializing a message this process built fails only when memory runs out; gRPC would then
  // send an empty message, which the client reports as a bad response.
  (void)grpc::SerializationTraits<sageserve::v1::AttendResponse>::Serialize(response, &out, &own_buffer);
  return out;
}

AttendCall WireCallState::MakeCall(AttendMethod method) {
  AttendCall call;
  call.method = method;
  call.request = &wire.header;
  call.response = &response;
  call.payloads = &wire.payloads;
  call.result = &result;
  call.wire_bytes = wire.wire_bytes;
  return call;
}

absl::Status AttendPipeline::ApplyPrecisionPlan(const sageserve::v1::AttendRequest& request,
                                                DecodedRequest& problem) const {
  if (!request.has_layer_key() || request.layer_key().model().empty()) return absl::OkStatus();
  if (request.recipe() != sageserve::v1::RECIPE_UNSPECIFIED) return absl::OkStatus();
  if (registry_ == nullptr) {
    return absl::FailedPreconditionError("layer_key.model: this server has no precision registry");
  }
  const sageserve::v1::LayerKey& key = request.layer_key();
  if (!key.has_layer()) {
    return absl::InvalidArgumentError("layer_key.layer: required when layer_key.model is set");
  }
  std::optional<int> timestep;
  if (key.has_timestep()) timestep = key.timestep();
  absl::StatusOr<registry::Resolution> r = registry_->Resolve(key.model(), key.layer(), timestep);
  if (!r.ok()) return r.status();
  problem.recipe = r->recipe;
  problem.config = r->config;
  if (r->substituted_for.has_value()) {
    spdlog::debug("request '{}': plan of {} names {}, not run here; running {}", request.request_id(),
                  key.model(), RecipeName(*r->substituted_for), RecipeName(r->recipe));
  }
  return absl::OkStatus();
}

absl::Status AttendPipeline::Start(AttendCall call) {
  const Clock::time_point accepted = Clock::now();
  const std::string& id = call.request->request_id();
  if (call.payloads != nullptr && (call.result == nullptr || call.payloads->storage == nullptr)) {
    return absl::InternalError("attend pipeline: wire payloads without a result slot or storage");
  }
  std::optional<ExternalTensors> external;
  if (call.payloads != nullptr) {
    external = ExternalTensors{call.payloads->q, call.payloads->k, call.payloads->v,
                               call.payloads->storage->memory()};
  }
  absl::StatusOr<std::unique_ptr<DecodedRequest>> decoded =
      DecodeAttendRequest(*call.request, *backend_, limits_, external ? &*external : nullptr, shared_memory_);
  if (!decoded.ok()) {
    spdlog::warn("request '{}' rejected: {}", id, decoded.status().ToString());
    Record(metrics_, call.method, RequestedRecipe(*call.request, *backend_), decoded.status(), accepted,
           *call.request, call.wire_bytes, nullptr);
    return decoded.status();
  }
  if (absl::Status planned = ApplyPrecisionPlan(*call.request, **decoded); !planned.ok()) {
    spdlog::warn("request '{}' rejected: {}", id, planned.ToString());
    Record(metrics_, call.method, RequestedRecipe(*call.request, *backend_), planned, accepted, *call.request,
           call.wire_bytes, nullptr);
    return planned;
  }
  std::shared_ptr<DecodedRequest> problem = *std::move(decoded);

  WorkItem item;
  item.input = problem->input;
  // The codec takes O in the kernel's 16-bit type as well: no decode here and re-encode there.
  item.input.output_form = OutputForm::kNativeAllowed;
  const RequestPayloads* payloads = call.payloads;
  const bool to_shared = !problem->o_output.empty();
  if (to_shared) {
    // O (and LSE) go to the client's shared memory: written there by the engine when it can (O in
    // q's dtype), else by the codec.
    item.input.out_memory = problem->output_memory;
    if (problem->output_dtype == problem->input.q.dtype) {
      item.input.output_form = OutputForm::kNativeInto;
      item.input.o_into = problem->o_output;
      item.input.lse_into = std::span<float>(reinterpret_cast<float*>(problem->lse_output.data()),
                                             problem->lse_output.size() / sizeof(float));
    }
  } else if (payloads != nullptr && problem->output_dtype == problem->input.q.dtype) {
    // O goes straight into the request's block and leaves from there (no result copy on the host).
    const size_t o_bytes = problem->input.q.bytes();
    const size_t lse_bytes = problem->input.lse == LseMode::kNatural
                                 ? static_cast<size_t>(problem->input.q.tokens) * problem->input.q.heads * sizeof(float)
                                 : 0;
    if (payloads->o.size() >= o_bytes && payloads->lse.size() >= lse_bytes) {
      item.input.output_form = OutputForm::kNativeInto;
      item.input.out_memory = payloads->storage->memory();
      item.input.o_into = payloads->o.first(o_bytes);
      item.input.lse_into =
          std::span<float>(reinterpret_cast<float*>(payloads->lse.data()), lse_bytes / sizeof(float));
    }
  }
  item.config = problem->config;
  item.deadline = call.deadline;
  item.is_cancelled = call.is_cancelled;
  const sageserve::v1::AttendRequest* request = call.request;
  sageserve::v1::AttendResponse* response = call.response;
  const AttendMethod method = call.method;
  ServerMetrics* const metrics = metrics_;
  const size_t wire_bytes = call.wire_bytes;
  WireResult* const result = call.result;
  const std::span<std::byte> o_into = item.input.o_into;
  const std::span<float> lse_into = item.input.lse_into;
  item.done = [problem, request, response, accepted, method, metrics, wire_bytes, result, o_into, lse_into,
               done = std::move(call.done)](
                  absl::StatusOr<AttnOutput> out, const WorkTimings& timings) mutable {
    const std::string& rid = request->request_id();
    const absl::string_view recipe = Label(RecipeName(problem->recipe));
    if (!out.ok()) {
      spdlog::warn("request '{}' failed: {}", rid, out.status().ToString());
      Record(metrics, method, recipe, out.status(), accepted, *request, wire_bytes, nullptr);
      done(out.status());
      return;
    }
    response->set_request_id(rid);
    response->set_recipe(ToWireRecipe(problem->recipe));
    if (result != nullptr && !problem->o_output.empty()) {
      result->placement = OutputPlacement::kInOutput;  // the bytes are in shared memory, not the response
    } else if (result != nullptr) {
      result->placement = out->placement;
      if (out->placement == OutputPlacement::kCallerBuffers) {
        result->o = o_into;
        result->lse = std::as_bytes(lse_into);
      }
    }
    if (absl::Status encoded = EncodeAttendOutput(*std::move(out), *problem, response); !encoded.ok()) {
      spdlog::error("request '{}': {}", rid, encoded.ToString());
      Record(metrics, method, recipe, encoded, accepted, *request, wire_bytes, nullptr);
      done(encoded);
      return;
    }
    sageserve::v1::Timings* t = response->mutable_timings();
    t->set_queued_us(Micros(timings.queued));
    t->set_compute_us(Micros(timings.compute));
    if (out->device_timings) {
      const DeviceTimings& d = *out->device_timings;
      t->set_kernel_us(static_cast<int64_t>(d.kernel_us));
      t->set_device_us(static_cast<int64_t>(d.h2d_us + d.kernel_us + d.d2h_us));
    }
    t->set_total_us(Micros(Clock::now() - accepted));
    spdlog::debug("request '{}' ok: q [{}, {}, {}] k [{}, {}] batch {} recipe {} queued {}us compute {}us total {}us",
                  rid, problem->input.q.tokens, problem->input.q.heads, problem->input.q.head_dim,
                  problem->input.k.tokens, problem->input.k.heads, problem->input.batch(),
                  RecipeName(problem->recipe), t->queued_us(), t->compute_us(), t->total_us());
    // Recorded before answering, so a scrape that follows the response already counts it.
    Record(metrics, method, recipe, absl::OkStatus(), accepted, *request, wire_bytes, response, result);
    done(absl::OkStatus());
  };
  // Once queued, the request (and `id`) may be gone at any moment: copy the id first if the
  // trace line will need it.
  const bool trace = spdlog::default_logger_raw()->should_log(spdlog::level::trace);
  const std::string trace_id = trace ? id : std::string();
  absl::Status submitted = scheduler_->Submit(std::move(item));
  if (!submitted.ok()) {
    // Refused: `done` will not run and the request is still the caller's.
    spdlog::warn("request '{}' not queued: {}", id, submitted.ToString());
    Record(metrics_, method, Label(RecipeName(problem->recipe)), submitted, accepted, *request, wire_bytes, nullptr);
  } else if (trace) {
    spdlog::trace("request '{}' queued", trace_id);
  }
  return submitted;
}

}  // namespace sage::server
