// sageserve.v1.AttentionService on the callback API. Handlers only decode, validate and queue;
// computation happens on the scheduler's workers.
#pragma once

#include <string>

#include "sageserve/v1/attention_service.grpc.pb.h"
#include "server/backend/backend.h"
#include "server/grpc/attend_pipeline.h"
#include "server/selftest.h"

namespace sage::server {

// Static facts GetServerInfo reports besides the backend's.
struct ServiceLimits {
  int64_t max_message_bytes = 0;
  int32_t queue_capacity = 0;
  int32_t worker_threads = 0;
};

class AttentionService final : public sageserve::v1::AttentionService::CallbackService {
 public:
  AttentionService(AttendPipeline* pipeline, SelfTestRunner* selftest, const BackendInfo* backend,
                   ServiceLimits limits);

  grpc::ServerUnaryReactor* Attend(grpc::CallbackServerContext* context,
                                   const sageserve::v1::AttendRequest* request,
                                   sageserve::v1::AttendResponse* response) override;
  grpc::ServerBidiReactor<sageserve::v1::AttendRequest, sageserve::v1::AttendResponse>* AttendStream(
      grpc::CallbackServerContext* context) override;
  grpc::ServerUnaryReactor* GetServerInfo(grpc::CallbackServerContext* context,
                                          const sageserve::v1::GetServerInfoRequest* request,
                                          sageserve::v1::GetServerInfoResponse* response) override;
  grpc::ServerUnaryReactor* SelfTest(grpc::CallbackServerContext* context,
                                     const sageserve::v1::SelfTestRequest* request,
                                     sageserve::v1::SelfTestResponse* response) override;

 private:
  AttendPipeline* const pipeline_;
  SelfTestRunner* const selftest_;
  const BackendInfo* const backend_;
  const ServiceLimits limits_;
};

}  // namespace sage::server
