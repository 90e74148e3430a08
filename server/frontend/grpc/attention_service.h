// sageserve.v1.AttentionService on the callback API. Handlers only decode, validate and queue;
// computation happens on the scheduler's workers. Attend and AttendStream take their messages as
// raw bytes (attend_wire.h): tensor payloads are copied once, into a block of the backend's host
// pool (pinned with the CUDA backend), and results leave from that block without a copy.
#pragma once

#include <string>

#include "sageserve/v1/attention_service.grpc.pb.h"
#include "server/backend/backend.h"
#include "server/backend/host_buffer_pool.h"
#include "server/frontend/grpc/attend_call.h"
#include "server/frontend/grpc/attend_stream_reactor.h"
#include "server/frontend/grpc/call_auth.h"
#include "server/core/selftest.h"
#include "server/metrics/server_metrics.h"

namespace sage::server {

// Static facts GetServerInfo reports besides the backend's.
struct ServiceLimits {
  int64_t max_message_bytes = 0;
  int32_t queue_capacity = 0;
  int32_t worker_threads = 0;
  bool shared_memory_enabled = false;  // SharedMemoryPolicy::kAllow
  int32_t max_shared_memory_regions = 0;
  std::string instance;  // the server instance its session ids start with
  // How much AttendStream may buffer for clients that do not read their answers (not reported).
  StreamLimits stream;
};

namespace detail {
using Svc = sageserve::v1::AttentionService;
}  // namespace detail
using AttentionServiceBase = detail::Svc::WithRawCallbackMethod_Attend<detail::Svc::WithRawCallbackMethod_AttendStream<
    detail::Svc::WithCallbackMethod_GetServerInfo<detail::Svc::WithCallbackMethod_SelfTest<detail::Svc::Service>>>>;

class AttentionService final : public AttentionServiceBase {
 public:
  // `payload_pool` (where request tensors are received) and `auth` (every call's check) must outlive
  // the service; so must `metrics` (the stream gauges; null: none).
  AttentionService(AttendBackends backends, SelfTestRunner* selftest, const BackendInfo* backend,
                   HostBufferPool* payload_pool, ServiceLimits limits, const CallAuthorizer* auth,
                   ServerMetrics* metrics = nullptr);

  grpc::ServerUnaryReactor* Attend(grpc::CallbackServerContext* context, const grpc::ByteBuffer* request,
                                   grpc::ByteBuffer* response) override;
  grpc::ServerBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer>* AttendStream(
      grpc::CallbackServerContext* context) override;
  grpc::ServerUnaryReactor* GetServerInfo(grpc::CallbackServerContext* context,
                                          const sageserve::v1::GetServerInfoRequest* request,
                                          sageserve::v1::GetServerInfoResponse* response) override;
  grpc::ServerUnaryReactor* SelfTest(grpc::CallbackServerContext* context,
                                     const sageserve::v1::SelfTestRequest* request,
                                     sageserve::v1::SelfTestResponse* response) override;

 private:
  const AttendBackends backends_;
  SelfTestRunner* const selftest_;
  const BackendInfo* const backend_;
  HostBufferPool* const payload_pool_;
  const ServiceLimits limits_;
  const CallAuthorizer* const auth_;
  StreamQueueTotals stream_totals_;  // Every stream's unwritten answers.
};

}  // namespace sage::server
