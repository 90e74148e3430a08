#include "sageserve/client/client.h"

#include <climits>
#include <utility>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "grpcpp/create_channel.h"
#include "grpcpp/security/credentials.h"
#include "grpcpp/support/channel_arguments.h"
#include "grpcpp/support/client_interceptor.h"
#include "grpcpp/support/interceptor.h"

namespace sageserve {
namespace {

// Adds `authorization: Bearer <token>` to every call's initial metadata, so stubs of any service
// made on the client's channels (Client::channel()) carry the token as well.
class TokenInterceptor final : public grpc::experimental::Interceptor {
 public:
  explicit TokenInterceptor(const std::string* header) : header_(header) {}
  void Intercept(grpc::experimental::InterceptorBatchMethods* methods) override {
    if (methods->QueryInterceptionHookPoint(grpc::experimental::InterceptionHookPoints::PRE_SEND_INITIAL_METADATA)) {
      methods->GetSendInitialMetadata()->insert({"authorization", *header_});
    }
    methods->Proceed();
  }

 private:
  const std::string* header_;
};

class TokenInterceptorFactory final : public grpc::experimental::ClientInterceptorFactoryInterface {
 public:
  explicit TokenInterceptorFactory(const std::string& token) : header_("Bearer " + token) {}
  grpc::experimental::Interceptor* CreateClientInterceptor(grpc::experimental::ClientRpcInfo* /*info*/) override {
    return new TokenInterceptor(&header_);
  }

 private:
  const std::string header_;  // Lives as long as the channel, which owns the factory.
};

// Hands the server's reported load (trailing metadata `sageserve-load`) to ClientOptions.on_load.
class LoadInterceptor final : public grpc::experimental::Interceptor {
 public:
  explicit LoadInterceptor(const std::function<void(int)>* on_load) : on_load_(on_load) {}
  void Intercept(grpc::experimental::InterceptorBatchMethods* methods) override {
    if (methods->QueryInterceptionHookPoint(grpc::experimental::InterceptionHookPoints::POST_RECV_STATUS)) {
      const auto* trailers = methods->GetRecvTrailingMetadata();
      if (trailers != nullptr) {
        auto it = trailers->find("sageserve-load");
        if (it != trailers->end()) {
          int load = 0;
          if (absl::SimpleAtoi(absl::string_view(it->second.data(), it->second.size()), &load)) (*on_load_)(load);
        }
      }
    }
    methods->Proceed();
  }

 private:
  const std::function<void(int)>* on_load_;
};

class LoadInterceptorFactory final : public grpc::experimental::ClientInterceptorFactoryInterface {
 public:
  explicit LoadInterceptorFactory(std::function<void(int)> on_load) : on_load_(std::move(on_load)) {}
  grpc::experimental::Interceptor* CreateClientInterceptor(grpc::experimental::ClientRpcInfo* /*info*/) override {
    return new LoadInterceptor(&on_load_);
  }

 private:
  const std::function<void(int)> on_load_;  // Lives as long as the channel, which owns the factory.
};

}  // namespace

absl::StatusOr<std::unique_ptr<Client>> Client::Create(const ClientOptions& options) {
  if (options.target.empty()) return absl::InvalidArgumentError("ClientOptions.target is empty");
  if (options.max_message_bytes <= 0 || options.max_message_bytes > INT_MAX) {
    return absl::InvalidArgumentError(
        absl::StrCat("ClientOptions.max_message_bytes must be in (0, ", INT_MAX, "]"));
  }
  std::shared_ptr<grpc::ChannelCredentials> creds;
  switch (options.security) {
    case TransportSecurity::kInsecure:
      creds = grpc::InsecureChannelCredentials();
      break;
    case TransportSecurity::kTls: {
      grpc::SslCredentialsOptions ssl;
      ssl.pem_root_certs = options.tls.root_certs_pem;
      ssl.pem_private_key = options.tls.client_key_pem;
      ssl.pem_cert_chain = options.tls.client_cert_pem;
      creds = grpc::SslCredentials(ssl);
      break;
    }
  }
  if (options.connections < 1 || options.connections > 256) {
    return absl::InvalidArgumentError(
        absl::StrCat("ClientOptions.connections must be in [1, 256], got ", options.connections));
  }
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(static_cast<int>(options.max_message_bytes));
  args.SetMaxSendMessageSize(static_cast<int>(options.max_message_bytes));
  // Several connections: each channel gets subchannels of its own, or gRPC would share one.
  if (options.connections > 1) args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
  if (options.max_attempts < 1 || options.max_attempts > 5) {
    return absl::InvalidArgumentError(
        absl::StrCat("ClientOptions.max_attempts must be in [1, 5] (gRPC's limit), got ", options.max_attempts));
  }
  if (options.max_attempts > 1) {
    if (options.retry_buffer_bytes < 0 || options.retry_buffer_bytes > INT_MAX) {
      return absl::InvalidArgumentError(absl::StrCat("ClientOptions.retry_buffer_bytes must be in [0, ", INT_MAX, "]"));
    }
    // A full queue asks for a retry (pushback) and other RESOURCE_EXHAUSTED errors forbid one, so
    // only the retryable kind is retried; UNAVAILABLE (draining, a lost connection) backs off.
    args.SetServiceConfigJSON(absl::StrCat(
        R"({"methodConfig": [{"name": [{"service": "sageserve.v1.AttentionService", "method": "Attend"}], )",
        R"("retryPolicy": {"maxAttempts": )", options.max_attempts,
        R"(, "initialBackoff": "0.01s", "maxBackoff": "0.5s", "backoffMultiplier": 2, )",
        R"("retryableStatusCodes": ["RESOURCE_EXHAUSTED", "UNAVAILABLE"]}}]})"));
    args.SetInt(GRPC_ARG_PER_RPC_RETRY_BUFFER_SIZE, static_cast<int>(options.retry_buffer_bytes));
  }
  for (const ChannelArg& a : options.channel_args) {
    if (a.name.empty()) return absl::InvalidArgumentError("ClientOptions.channel_args: an argument has no name");
    args.SetInt(a.name, a.value);
  }
  for (char c : options.token) {
    if (c <= 0x20 || c >= 0x7f) {
      return absl::InvalidArgumentError("ClientOptions.token: must be printable ASCII without spaces");
    }
  }
  std::vector<std::shared_ptr<grpc::Channel>> channels;
  for (int i = 0; i < options.connections; ++i) {
    std::shared_ptr<grpc::Channel> channel;
    if (options.token.empty() && !options.on_load) {
      channel = grpc::CreateCustomChannel(options.target, creds, args);
    } else {
      std::vector<std::unique_ptr<grpc::experimental::ClientInterceptorFactoryInterface>> interceptors;
      if (!options.token.empty()) interceptors.push_back(std::make_unique<TokenInterceptorFactory>(options.token));
      if (options.on_load) interceptors.push_back(std::make_unique<LoadInterceptorFactory>(options.on_load));
      channel = grpc::experimental::CreateCustomChannelWithInterceptors(options.target, creds, args,
                                                                         std::move(interceptors));
    }
    if (channel == nullptr) return absl::InternalError("could not create a gRPC channel");
    channels.push_back(std::move(channel));
  }
  return std::unique_ptr<Client>(new Client(options, std::move(channels)));
}

Client::Client(const ClientOptions& options, std::vector<std::shared_ptr<grpc::Channel>> channels)
    : options_(options), channels_(std::move(channels)) {
  for (const auto& c : channels_) stubs_.push_back(v1::AttentionService::NewStub(c));
  shared_memory_ = v1::SharedMemoryService::NewStub(channels_.front());
}

v1::AttentionService::Stub& Client::NextStub() const {
  return *stubs_[next_.fetch_add(1, std::memory_order_relaxed) % stubs_.size()];
}

namespace {

void ApplyDeadline(const ClientOptions& options, grpc::ClientContext* context) {
  if (options.deadline.count() > 0) {
    context->set_deadline(std::chrono::system_clock::now() + options.deadline);
  }
}

}  // namespace

absl::StatusOr<v1::AttendResponse> Client::Attend(const v1::AttendRequest& request) const {
  grpc::ClientContext context;
  ApplyDeadline(options_, &context);
  v1::AttendResponse response;
  grpc::Status status = NextStub().Attend(&context, request, &response);
  if (!status.ok()) return FromGrpcStatus(status);
  return response;
}

absl::StatusOr<v1::GetServerInfoResponse> Client::GetServerInfo() const {
  grpc::ClientContext context;
  ApplyDeadline(options_, &context);
  v1::GetServerInfoResponse response;
  grpc::Status status = NextStub().GetServerInfo(&context, v1::GetServerInfoRequest(), &response);
  if (!status.ok()) return FromGrpcStatus(status);
  return response;
}

absl::StatusOr<v1::SelfTestResponse> Client::SelfTest(const v1::SelfTestRequest& request) const {
  grpc::ClientContext context;
  ApplyDeadline(options_, &context);
  v1::SelfTestResponse response;
  grpc::Status status = NextStub().SelfTest(&context, request, &response);
  if (!status.ok()) return FromGrpcStatus(status);
  return response;
}

absl::StatusOr<HealthStatus> Client::CheckHealth(const std::string& service) const {
  auto health = grpc::health::v1::Health::NewStub(channel());
  grpc::ClientContext context;
  ApplyDeadline(options_, &context);
  grpc::health::v1::HealthCheckRequest request;
  request.set_service(service);
  grpc::health::v1::HealthCheckResponse response;
  grpc::Status status = health->Check(&context, request, &response);
  if (!status.ok()) return FromGrpcStatus(status);
  switch (response.status()) {
    case grpc::health::v1::HealthCheckResponse::SERVING: return HealthStatus::kServing;
    case grpc::health::v1::HealthCheckResponse::NOT_SERVING: return HealthStatus::kNotServing;
    case grpc::health::v1::HealthCheckResponse::SERVICE_UNKNOWN: return HealthStatus::kServiceUnknown;
    default: return HealthStatus::kUnknown;
  }
}

absl::Status Client::RegisterSystemSharedMemory(const std::string& name, const std::string& key, uint64_t offset,
                                                uint64_t byte_size) const {
  grpc::ClientContext context;
  ApplyDeadline(options_, &context);
  v1::RegisterSystemSharedMemoryRequest request;
  request.set_name(name);
  request.set_key(key);
  request.set_offset(offset);
  request.set_byte_size(byte_size);
  v1::RegisterSharedMemoryResponse response;
  return FromGrpcStatus(shared_memory_->RegisterSystemSharedMemory(&context, request, &response));
}

absl::Status Client::RegisterCudaSharedMemory(const std::string& name, std::string_view raw_handle, int device_id,
                                              uint64_t byte_size) const {
  grpc::ClientContext context;
  ApplyDeadline(options_, &context);
  v1::RegisterCudaSharedMemoryRequest request;
  request.set_name(name);
  request.set_raw_handle(raw_handle.data(), raw_handle.size());
  request.set_device_id(device_id);
  request.set_byte_size(byte_size);
  v1::RegisterSharedMemoryResponse response;
  return FromGrpcStatus(shared_memory_->RegisterCudaSharedMemory(&context, request, &response));
}

absl::StatusOr<std::vector<std::string>> Client::UnregisterSharedMemory(const std::string& name) const {
  grpc::ClientContext context;
  ApplyDeadline(options_, &context);
  v1::UnregisterSharedMemoryRequest request;
  request.set_name(name);
  v1::UnregisterSharedMemoryResponse response;
  grpc::Status status = shared_memory_->UnregisterSharedMemory(&context, request, &response);
  if (!status.ok()) return FromGrpcStatus(status);
  return std::vector<std::string>(response.names().begin(), response.names().end());
}

absl::StatusOr<v1::GetSharedMemoryStatusResponse> Client::GetSharedMemoryStatus(const std::string& name) const {
  grpc::ClientContext context;
  ApplyDeadline(options_, &context);
  v1::GetSharedMemoryStatusRequest request;
  request.set_name(name);
  v1::GetSharedMemoryStatusResponse response;
  grpc::Status status = shared_memory_->GetSharedMemoryStatus(&context, request, &response);
  if (!status.ok()) return FromGrpcStatus(status);
  return response;
}

std::unique_ptr<StreamSession> Client::OpenStream(const StreamOptions& options) const {
  return std::make_unique<StreamSession>(&NextStub(), options);
}

}  // namespace sageserve
