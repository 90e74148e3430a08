#include "server/frontend/grpc/registry_service.h"

#include <atomic>
#include <chrono>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "server/frontend/grpc/registry_codec.h"
#include "server/frontend/grpc/status_mapping.h"
#include "server/frontend/grpc/unary_reactors.h"
#include "server/registry/calibrate_model.h"
#include "server/registry/cost_table.h"
#include "server/util/log_field.h"
#include "spdlog/spdlog.h"

namespace sage::server {
namespace v1 = ::sageserve::v1;
namespace reg = ::sage::registry;

namespace {

int64_t SampleBytes(const v1::CalibrationSample& s) {
  return static_cast<int64_t>(s.q().data().size() + s.k().data().size() + s.v().data().size());
}

}  // namespace

// Collects the streamed samples (cheap: moves messages), then hands decoding and calibration to
// the calibration worker. The call is finished exactly once, by the worker or by an early error.
class RegistryService::CalibrateReactor final : public grpc::ServerReadReactor<v1::CalibrateRequest> {
 public:
  CalibrateReactor(RegistryService* service, grpc::CallbackServerContext* context, v1::CalibrateResponse* response)
      : service_(service), context_(context), response_(response) {
    StartRead(&incoming_);
  }

  void OnReadDone(bool ok) override {
    if (!ok) {
      if (cancelled_.load()) {
        Finish(ToGrpcStatus(absl::CancelledError("calibrate: cancelled by the client")));
        return;
      }
      StartCalibration();
      return;
    }
    if (absl::Status s = Accept(); !s.ok()) {
      Finish(ToGrpcStatus(s));
      return;
    }
    incoming_.Clear();
    StartRead(&incoming_);
  }

  void OnCancel() override { cancelled_.store(true); }
  void OnDone() override { delete this; }

 private:
  absl::Status Accept() {
    const bool first = messages_++ == 0;
    if (first) {
      if (incoming_.model().empty()) {
        return absl::InvalidArgumentError("model: the first CalibrateRequest must name the model");
      }
      header_ = incoming_;
      header_.clear_sample();
    } else if (!incoming_.model().empty() && incoming_.model() != header_.model()) {
      return absl::InvalidArgumentError(absl::StrCat("model: message ", messages_ - 1, " names '",
                                                     incoming_.model(), "', the stream is for '",
                                                     header_.model(), "'"));
    }
    if (!incoming_.has_sample()) return absl::OkStatus();
    bytes_ += SampleBytes(incoming_.sample());
    if (bytes_ > service_->options_.max_calibration_bytes) {
      return absl::ResourceExhaustedError(absl::StrCat("calibrate: samples exceed ",
                                                       service_->options_.max_calibration_bytes, " bytes"));
    }
    if (static_cast<int>(samples_.size()) >= service_->options_.max_calibration_samples) {
      return absl::ResourceExhaustedError(absl::StrCat("calibrate: more than ",
                                                       service_->options_.max_calibration_samples, " samples"));
    }
    samples_.push_back(std::move(*incoming_.mutable_sample()));
    return absl::OkStatus();
  }

  void StartCalibration() {
    if (messages_ == 0) {
      Finish(ToGrpcStatus(absl::InvalidArgumentError("calibrate: empty stream (no model, no samples)")));
      return;
    }
    absl::Status queued = service_->calibrations_.Submit([this] { Run(); });
    if (!queued.ok()) Finish(ToGrpcStatus(queued));
  }

  // On the calibration worker.
  void Run() {
    const auto deadline = context_->deadline();
    reg::CalibrationOptions options;
    options.is_cancelled = [this, deadline] {
      return cancelled_.load() || std::chrono::system_clock::now() > deadline;
    };
    for (int r : header_.candidates()) {
      absl::StatusOr<Recipe> recipe = FromWireRecipe(static_cast<v1::Recipe>(r));
      if (!recipe.ok()) {
        Finish(ToGrpcStatus(absl::InvalidArgumentError(absl::StrCat("candidates: ", recipe.status().message()))));
        return;
      }
      options.candidates.push_back(*recipe);
    }
    for (int i = 0; i < header_.kv_storage_candidates_size(); ++i) {
      const std::optional<KvStorage> storage = KvStorageFromWire(header_.kv_storage_candidates(i));
      if (!storage.has_value()) {
        Finish(ToGrpcStatus(absl::InvalidArgumentError(absl::StrCat(
            "kv_storage_candidates[", i, "]: unspecified or unknown (", static_cast<int>(header_.kv_storage_candidates(i)), ")"))));
        return;
      }
      options.kv_storages.push_back(*storage);
    }
    if (header_.has_accuracy_target()) options.accuracy_target = header_.accuracy_target();
    absl::StatusOr<std::unique_ptr<DecodedSamples>> decoded =
        DecodeCalibrationSamples(std::move(samples_), service_->backend_->info(), service_->options_.limits);
    if (!decoded.ok()) {
      Finish(ToGrpcStatus(decoded.status()));
      return;
    }
    const reg::CalibrationMode mode = header_.dry_run() ? reg::CalibrationMode::kDryRun : reg::CalibrationMode::kStore;
    absl::StatusOr<reg::CalibrationOutcome> outcome = reg::CalibrateModel(
        *service_->registry_, service_->calibrator_, header_.model(), (*decoded)->samples, options, mode);
    if (!outcome.ok()) {
      spdlog::warn("calibrate {}: {}", LogField(header_.model()), LogField(outcome.status().ToString(), kLogStatusMaxBytes));
      // A deadline that fired inside the calibrator reads as CANCELLED there; report it as such.
      absl::Status s = outcome.status();
      if (s.code() == absl::StatusCode::kCancelled && !cancelled_.load()) {
        s = absl::DeadlineExceededError("calibrate: deadline passed during calibration");
      }
      Finish(ToGrpcStatus(s));
      return;
    }
    int unmet = 0;
    for (const reg::CellReport& c : outcome->report.cells) unmet += c.met_target ? 0 : 1;
    spdlog::info("calibrate {}: {} samples, {} cells, {} plan entries, {}{}", LogField(header_.model()),
                 outcome->report.sample_count, outcome->report.cells.size(), outcome->plan.entries.size(),
                 outcome->stored ? absl::StrCat("stored as version ", outcome->plan.version) : "dry run",
                 unmet > 0 ? absl::StrCat(", ", unmet, " cells below target") : "");
    CalibrationToWire(*outcome, reg::DefaultRecipeFor(service_->backend_->info()), response_);
    Finish(grpc::Status::OK);
  }

  RegistryService* const service_;
  grpc::CallbackServerContext* const context_;
  v1::CalibrateResponse* const response_;
  v1::CalibrateRequest incoming_;
  v1::CalibrateRequest header_;  // The first message without its sample.
  std::vector<v1::CalibrationSample> samples_;
  int messages_ = 0;
  int64_t bytes_ = 0;
  std::atomic<bool> cancelled_{false};
};

RegistryService::RegistryService(reg::Registry* registry, AttentionBackend* backend,
                                 const RegistryServiceOptions& options, const CallAuthorizer* auth)
    : registry_(registry),
      auth_(auth),
      backend_(backend),
      options_(options),
      calibrator_(backend),
      writes_(SerialWorkerOptions{"registry writes", options.max_queued_writes}),
      calibrations_(SerialWorkerOptions{"calibration", options.max_queued_calibrations}) {}

RegistryService::~RegistryService() { Shutdown(); }

void RegistryService::Shutdown() {
  calibrations_.Shutdown();
  writes_.Shutdown();
}

grpc::ServerUnaryReactor* RegistryService::RegisterModel(grpc::CallbackServerContext* context,
                                                         const v1::RegisterModelRequest* request,
                                                         v1::RegisterModelResponse* response) {
  absl::StatusOr<Principal> caller = auth_->Check(context, RpcMethod::kRegisterModel);
  if (!caller.ok()) return FinishNow(context, caller.status());
  return RunOn(writes_, context, [this, request, response, who = caller->identity]() -> absl::Status {
    absl::StatusOr<reg::ModelSpec> spec = ModelSpecFromWire(request->spec());
    if (!spec.ok()) return spec.status();
    absl::StatusOr<reg::ModelRecord> record = registry_->RegisterModel(
        *spec, request->replace() ? reg::RegisterMode::kReplace : reg::RegisterMode::kCreate);
    if (!record.ok()) return record.status();
    ModelInfoToWire(*record, backend_->info(), response->mutable_model());
    spdlog::info("registry: registered model {} ({} layers) for '{}'", LogField(record->spec.name),
                 record->spec.num_layers, LogField(who));
    return absl::OkStatus();
  });
}

grpc::ServerUnaryReactor* RegistryService::ListModels(grpc::CallbackServerContext* context,
                                                      const v1::ListModelsRequest* /*request*/,
                                                      v1::ListModelsResponse* response) {
  absl::StatusOr<Principal> caller = auth_->Check(context, RpcMethod::kListModels);
  if (!caller.ok()) return FinishNow(context, caller.status());
  for (const reg::ModelRecord& record : registry_->ListModels()) {
    ModelInfoToWire(record, backend_->info(), response->add_models());
  }
  return FinishNow(context, absl::OkStatus());
}

grpc::ServerUnaryReactor* RegistryService::GetModel(grpc::CallbackServerContext* context,
                                                    const v1::GetModelRequest* request,
                                                    v1::GetModelResponse* response) {
  absl::StatusOr<Principal> caller = auth_->Check(context, RpcMethod::kGetModel);
  if (!caller.ok()) return FinishNow(context, caller.status());
  absl::StatusOr<reg::ModelRecord> record = registry_->GetModel(request->name());
  if (record.ok()) ModelInfoToWire(*record, backend_->info(), response->mutable_model());
  return FinishNow(context, record.status());
}

grpc::ServerUnaryReactor* RegistryService::DeleteModel(grpc::CallbackServerContext* context,
                                                       const v1::DeleteModelRequest* request,
                                                       v1::DeleteModelResponse* /*response*/) {
  absl::StatusOr<Principal> caller = auth_->Check(context, RpcMethod::kDeleteModel);
  if (!caller.ok()) return FinishNow(context, caller.status());
  return RunOn(writes_, context, [this, request, who = caller->identity]() -> absl::Status {
    absl::Status s = registry_->DeleteModel(request->name());
    if (s.ok()) spdlog::info("registry: deleted model {} for '{}'", LogField(request->name()), LogField(who));
    return s;
  });
}

grpc::ServerUnaryReactor* RegistryService::GetPlan(grpc::CallbackServerContext* context,
                                                   const v1::GetPlanRequest* request,
                                                   v1::GetPlanResponse* response) {
  absl::StatusOr<Principal> caller = auth_->Check(context, RpcMethod::kGetPlan);
  if (!caller.ok()) return FinishNow(context, caller.status());
  absl::StatusOr<reg::EffectivePlan> plan = registry_->GetPlan(request->model());
  if (plan.ok()) PlanToWire(plan->plan, reg::DefaultRecipeFor(backend_->info()), response->mutable_plan());
  return FinishNow(context, plan.status());
}

grpc::ServerUnaryReactor* RegistryService::SetPlan(grpc::CallbackServerContext* context,
                                                   const v1::SetPlanRequest* request,
                                                   v1::SetPlanResponse* response) {
  absl::StatusOr<Principal> caller = auth_->Check(context, RpcMethod::kSetPlan);
  if (!caller.ok()) return FinishNow(context, caller.status());
  return RunOn(writes_, context, [this, request, response, who = caller->identity]() -> absl::Status {
    absl::StatusOr<reg::Plan> plan = PlanFromWire(request->plan());
    if (!plan.ok()) return plan.status();
    std::optional<int64_t> expected;
    if (request->has_expected_version()) expected = request->expected_version();
    absl::StatusOr<reg::Plan> stored = registry_->SetPlan(request->model(), *std::move(plan), expected);
    if (!stored.ok()) return stored.status();
    PlanToWire(*stored, reg::DefaultRecipeFor(backend_->info()), response->mutable_plan());
    spdlog::info("registry: plan of {} set to version {} ({} entries) for '{}'", LogField(request->model()),
                 stored->version, stored->entries.size(), LogField(who));
    return absl::OkStatus();
  });
}

grpc::ServerReadReactor<v1::CalibrateRequest>* RegistryService::Calibrate(grpc::CallbackServerContext* context,
                                                                          v1::CalibrateResponse* response) {
  absl::StatusOr<Principal> caller = auth_->Check(context, RpcMethod::kCalibrate);
  if (!caller.ok()) return new RefusedReadReactor<v1::CalibrateRequest>(ToGrpcStatus(caller.status()));
  return new CalibrateReactor(this, context, response);
}

}  // namespace sage::server
