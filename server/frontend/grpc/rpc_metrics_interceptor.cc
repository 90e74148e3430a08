#include "server/frontend/grpc/rpc_metrics_interceptor.h"

#include <string_view>

#include "server/frontend/grpc/rpc_methods.h"

namespace sage::server {
namespace {

// The label of a full method name: itself when the server has that method, else "other".
absl::string_view MethodLabel(const char* method) {
  if (method == nullptr) return "other";
  const std::string_view name(method);
  if (const std::optional<RpcMethod> m = RpcMethodNamed(name)) {
    const std::string_view known = InfoOf(*m).name;  // static storage, unlike `method`
    return absl::string_view(known.data(), known.size());
  }
  for (std::string_view open : kOpenRpcMethods) {
    if (open == name) return absl::string_view(open.data(), open.size());
  }
  return "other";
}

class RpcMetricsInterceptor final : public grpc::experimental::Interceptor {
 public:
  RpcMetricsInterceptor(ServerMetrics* metrics, grpc::experimental::ServerRpcInfo* info)
      : metrics_(metrics),
        method_(MethodLabel(info->method())),
        streaming_(info->type() != grpc::experimental::ServerRpcInfo::Type::UNARY),
        started_(MetricsClock::now()) {
    if (streaming_) metrics_->AddOpenStreams(method_, 1);
  }
  ~RpcMetricsInterceptor() override {
    if (streaming_) metrics_->AddOpenStreams(method_, -1);
  }

  void Intercept(grpc::experimental::InterceptorBatchMethods* methods) override {
    if (methods->QueryInterceptionHookPoint(grpc::experimental::InterceptionHookPoints::PRE_SEND_STATUS)) {
      RpcRecord r;
      r.method = method_;
      r.code = static_cast<absl::StatusCode>(methods->GetSendStatus().error_code());
      r.latency = MetricsClock::now() - started_;
      metrics_->RecordRpc(r);
    }
    methods->Proceed();
  }

 private:
  ServerMetrics* const metrics_;
  const absl::string_view method_;
  const bool streaming_;
  const MetricsClock::time_point started_;
};

class RpcMetricsInterceptorFactory final : public grpc::experimental::ServerInterceptorFactoryInterface {
 public:
  explicit RpcMetricsInterceptorFactory(ServerMetrics* metrics) : metrics_(metrics) {}
  grpc::experimental::Interceptor* CreateServerInterceptor(grpc::experimental::ServerRpcInfo* info) override {
    // The two bidi streams count themselves (attend_stream_reactor.cc, session_stream_reactor.cc): an
    // interceptor puts every message of a call through gRPC's interception path, which cost 5-15 %
    // of the rate of many tiny streamed requests (docs/BENCHMARKS.md). With no interceptor for a
    // call, gRPC skips that path.
    if (info->method() != nullptr && (std::string_view(info->method()) == InfoOf(RpcMethod::kAttendStream).name ||
                                      std::string_view(info->method()) == InfoOf(RpcMethod::kAttendSessionStream).name)) {
      return nullptr;
    }
    return new RpcMetricsInterceptor(metrics_, info);
  }

 private:
  ServerMetrics* const metrics_;
};

}  // namespace

std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface> MakeRpcMetricsInterceptorFactory(
    ServerMetrics* metrics) {
  return std::make_unique<RpcMetricsInterceptorFactory>(metrics);
}

}  // namespace sage::server
