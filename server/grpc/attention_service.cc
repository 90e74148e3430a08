#include "server/grpc/attention_service.h"

#include <utility>

#include "server/backend/backend_factory.h"
#include "server/grpc/attend_stream_reactor.h"
#include "server/grpc/deadline.h"
#include "server/grpc/request_codec.h"
#include "server/grpc/status_mapping.h"
#include "server/version.h"

namespace sage::server {
namespace v1 = ::sageserve::v1;

AttentionService::AttentionService(AttendPipeline* pipeline, sage::server::SelfTestRunner* selftest,
                                   const BackendInfo* backend, ServiceLimits limits)
    : pipeline_(pipeline), selftest_(selftest), backend_(backend), limits_(limits) {}

grpc::ServerUnaryReactor* AttentionService::Attend(grpc::CallbackServerContext* context,
                                                   const v1::AttendRequest* request,
                                                   v1::AttendResponse* response) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  AttendCall call;
  call.method = AttendMethod::kUnary;
  call.request = request;
  call.response = response;
  call.deadline = SteadyDeadline(*context);
  // The context stays valid until Finish, which only the completion below calls.
  call.is_cancelled = [context] { return context->IsCancelled(); };
  call.done = [reactor](const absl::Status& status) { reactor->Finish(ToGrpcStatus(status)); };
  absl::Status started = pipeline_->Start(std::move(call));
  if (!started.ok()) reactor->Finish(ToGrpcStatus(started));
  return reactor;
}

grpc::ServerBidiReactor<v1::AttendRequest, v1::AttendResponse>* AttentionService::AttendStream(
    grpc::CallbackServerContext* context) {
  return new AttendStreamReactor(context, pipeline_);
}

grpc::ServerUnaryReactor* AttentionService::GetServerInfo(grpc::CallbackServerContext* context,
                                                          const v1::GetServerInfoRequest* /*request*/,
                                                          v1::GetServerInfoResponse* response) {
  // Static facts only: cheap enough to answer on the reactor thread.
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
  response->set_default_recipe(ToWireRecipe(backend_->default_recipe));
  response->add_input_dtypes(v1::DTYPE_FP16);
  response->add_input_dtypes(v1::DTYPE_BF16);
  v1::ServerLimits* limits = response->mutable_limits();
  limits->set_max_message_bytes(limits_.max_message_bytes);
  limits->set_max_request_tokens(pipeline_->limits().max_tokens);
  limits->set_queue_capacity(limits_.queue_capacity);
  limits->set_worker_threads(limits_.worker_threads);
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  reactor->Finish(grpc::Status::OK);
  return reactor;
}

grpc::ServerUnaryReactor* AttentionService::SelfTest(grpc::CallbackServerContext* context,
                                                     const v1::SelfTestRequest* request,
                                                     v1::SelfTestResponse* response) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  absl::Status started = selftest_->Start(
      *request, response, [reactor](const absl::Status& status) { reactor->Finish(ToGrpcStatus(status)); });
  if (!started.ok()) reactor->Finish(ToGrpcStatus(started));
  return reactor;
}

}  // namespace sage::server
