// Counts every RPC the server answers, whatever its service (sageserve's, health, reflection):
// one gRPC server interceptor per call records the method, the status code and the call's time,
// and keeps the open-streams gauge. AttendStream, the one hot stream, records the same itself
// (attend_stream_reactor.cc) and gets no interceptor. Method labels come from rpc_methods.h, so a client naming
// methods the server lacks cannot grow the label set ("other").
#pragma once

#include <memory>

#include "grpcpp/support/server_interceptor.h"
#include "server/metrics/server_metrics.h"

namespace sage::server {

// `metrics` must outlive the server the factory is given to.
std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface> MakeRpcMetricsInterceptorFactory(
    ServerMetrics* metrics);

}  // namespace sage::server
