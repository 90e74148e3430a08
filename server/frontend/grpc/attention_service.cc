#include "server/frontend/grpc/attention_service.h"

#include <utility>

#include "server/backend/backend_factory.h"
#include "server/frontend/grpc/attend_stream_reactor.h"
#include "server/frontend/grpc/deadline.h"
#include "server/frontend/grpc/load_report.h"
#include "server/frontend/grpc/request_codec.h"
#include "server/frontend/grpc/status_mapping.h"
#include "server/util/log_field.h"
#include "server/util/version.h"
#include "spdlog/spdlog.h"

namespace sage::server {
namespace v1 = ::sageserve::v1;
namespace {

// An Attend call's answer: a RESOURCE_EXHAUSTED also tells gRPC's retry policy when (or that not)
// to try again (AddRetryPushback); every answer carries the server's load (load_report.h).
void FinishAttend(grpc::ServerUnaryReactor* reactor, grpc::CallbackServerContext& context, const AttendPipeline& pipeline,
                  const absl::Status& status) {
  AddRetryPushback(status, context);
  AddLoadReport(pipeline, context);
  reactor->Finish(ToGrpcStatus(status));
}

}  // namespace

namespace {

void EncodeSelfTestReport(const SelfTestReport& report, v1::SelfTestResponse* response) {
  response->set_problem(report.problem);
  response->set_backend(report.backend);
  for (const RecipeCheck& check : report.results) {
    v1::RecipeAccuracy* acc = response->add_results();
    acc->set_recipe(ToWireRecipe(check.recipe));
    acc->set_compute_us(check.compute_us);
    if (!check.error.empty()) {
      acc->set_error(check.error);
      acc->set_passed(false);
      continue;
    }
    acc->set_cosine_similarity(check.cosine);
    acc->set_relative_l1(check.relative_l1);
    acc->set_rmse(check.rmse);
    acc->set_max_abs_error(check.max_abs_error);
    acc->set_passed(check.passed);
  }
  response->set_passed(report.passed);
  response->set_total_us(report.total_us);
}

}  // namespace

AttentionService::AttentionService(AttendBackends backends, SelfTestRunner* selftest, const BackendInfo* backend,
                                   HostBufferPool* payload_pool, ServiceLimits limits, const CallAuthorizer* auth,
                                   ServerMetrics* metrics)
    : backends_(backends),
      selftest_(selftest),
      backend_(backend),
      payload_pool_(payload_pool),
      limits_(limits),
      auth_(auth),
      stream_totals_(limits.stream.max_server_queued_bytes, metrics) {}


grpc::ServerUnaryReactor* AttentionService::Attend(grpc::CallbackServerContext* context,
                                                   const grpc::ByteBuffer* request, grpc::ByteBuffer* response) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  absl::StatusOr<Principal> caller = auth_->Check(context, RpcMethod::kAttend);
  if (!caller.ok()) {
    FinishAttend(reactor, *context, *backends_.pipeline, caller.status());
    return reactor;
  }
  absl::StatusOr<WireAttendRequest> parsed = ParseAttendRequest(*request, *payload_pool_);
  if (!parsed.ok()) {
    spdlog::warn("Attend request rejected: {}", LogField(parsed.status().ToString(), kLogStatusMaxBytes));
    FinishAttend(reactor, *context, *backends_.pipeline, parsed.status());
    return reactor;
  }
  // Held here as well as by the completion, which the pipeline may drop before Start returns.
  auto state = std::make_shared<WireCallState>();
  state->wire = *std::move(parsed);
  // The context stays valid until Finish, which only the completion below calls. The latency
  // metrics and the response's total_us count from here, after the parse, as they always have.
  absl::Status started = state->Start(
      backends_, RegionCallerOf(*caller), AttendMethod::kUnary, Clock::now(), SteadyDeadline(*context),
      [context] { return context->IsCancelled(); },
      [reactor, response, state, context, pipeline = backends_.pipeline](const absl::Status& status) {
        if (status.ok()) *response = state->SerializeResponse();
        FinishAttend(reactor, *context, *pipeline, status);
      });
  if (!started.ok()) FinishAttend(reactor, *context, *backends_.pipeline, started);
  return reactor;
}

grpc::ServerBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer>* AttentionService::AttendStream(
    grpc::CallbackServerContext* context) {
  // Checked once, at the stream's start: every request on it is the same caller's.
  absl::StatusOr<Principal> caller = auth_->Check(context, RpcMethod::kAttendStream);
  if (!caller.ok()) {
    if (ServerMetrics* m = stream_totals_.metrics(); m != nullptr) {
      m->RecordRpc(RpcRecord{StreamMethodLabel(), caller.status().code(), {}});
    }
    return new RefusedBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer>(ToGrpcStatus(caller.status()));
  }
  return new AttendStreamReactor(context, backends_, RegionCallerOf(*caller), payload_pool_, limits_.stream,
                                 &stream_totals_);
}

grpc::ServerUnaryReactor* AttentionService::GetServerInfo(grpc::CallbackServerContext* context,
                                                          const v1::GetServerInfoRequest* /*request*/,
                                                          v1::GetServerInfoResponse* response) {
  if (absl::StatusOr<Principal> caller = auth_->Check(context, RpcMethod::kGetServerInfo);
      !caller.ok()) {
    grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
    reactor->Finish(ToGrpcStatus(caller.status()));
    return reactor;
  }
  // Static facts and one atomic load: cheap enough to answer on the reactor thread.
  response->set_version(std::string(kSageserveVersion));
  response->set_backend(std::string(BackendKindName(backend_->kind)));
  for (const DeviceDescription& d : backend_->devices) {
    v1::DeviceInfo* info = response->add_devices();
    info->set_name(d.name);
    info->set_architecture(d.architecture);
    info->set_memory_bytes(d.memory_bytes);
  }
  for (int d : backend_->head_dims) response->add_head_dims(d);
  for (Recipe r : backend_->recipes) response->add_recipes(ToWireRecipe(r));
  for (KvStorage s : backend_->kv_storages) response->add_kv_storages(KvStorageToWire(s));
  response->set_default_recipe(ToWireRecipe(backend_->default_recipe));
  response->add_input_dtypes(v1::DTYPE_FP16);
  response->add_input_dtypes(v1::DTYPE_BF16);
  v1::ServerLimits* limits = response->mutable_limits();
  limits->set_max_message_bytes(limits_.max_message_bytes);
  limits->set_max_request_tokens(backends_.pipeline->limits().max_tokens);
  limits->set_queue_capacity(limits_.queue_capacity);
  limits->set_worker_threads(limits_.worker_threads);
  v1::SharedMemoryInfo* shm = response->mutable_shared_memory();
  shm->set_enabled(limits_.shared_memory_enabled);
  shm->set_max_regions(limits_.shared_memory_enabled ? limits_.max_shared_memory_regions : 0);
  shm->set_cuda(limits_.shared_memory_enabled && backend_->kind == BackendKind::kCuda);
  v1::AccessControlInfo* access = response->mutable_access_control();
  access->set_tokens_required(auth_->tokens_required());
  access->set_warning(auth_->warning());
  response->set_instance(limits_.instance);
  response->set_load(backends_.pipeline->in_flight());
  AddLoadReport(*backends_.pipeline, *context);
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  reactor->Finish(grpc::Status::OK);
  return reactor;
}

grpc::ServerUnaryReactor* AttentionService::SelfTest(grpc::CallbackServerContext* context,
                                                     const v1::SelfTestRequest* request,
                                                     v1::SelfTestResponse* response) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  if (absl::StatusOr<Principal> caller = auth_->Check(context, RpcMethod::kSelfTest);
      !caller.ok()) {
    reactor->Finish(ToGrpcStatus(caller.status()));
    return reactor;
  }
  std::vector<Recipe> recipes;
  for (int wire : request->recipes()) {
    absl::StatusOr<Recipe> r = FromWireRecipe(static_cast<v1::Recipe>(wire));
    if (!r.ok()) {
      reactor->Finish(ToGrpcStatus(absl::InvalidArgumentError(absl::StrCat("recipes: ", r.status().message()))));
      return reactor;
    }
    recipes.push_back(*r);
  }
  auto report = std::make_shared<SelfTestReport>();
  absl::Status started =
      selftest_->Start(std::move(recipes), report.get(), [reactor, report, response](const absl::Status& status) {
        if (status.ok()) EncodeSelfTestReport(*report, response);
        reactor->Finish(ToGrpcStatus(status));
      });
  if (!started.ok()) reactor->Finish(ToGrpcStatus(started));
  return reactor;
}

}  // namespace sage::server
