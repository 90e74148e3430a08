#include "server/frontend/grpc/status_mapping.h"

#include <string>

#include "google/rpc/error_details.pb.h"
#include "google/rpc/status.pb.h"
#include "server/util/status_details.h"

namespace sage::server {
namespace {

grpc::StatusCode ToGrpcCode(absl::StatusCode code) {
  switch (code) {
    case absl::StatusCode::kOk: return grpc::StatusCode::OK;
    case absl::StatusCode::kCancelled: return grpc::StatusCode::CANCELLED;
    case absl::StatusCode::kUnknown: return grpc::StatusCode::UNKNOWN;
    case absl::StatusCode::kInvalidArgument: return grpc::StatusCode::INVALID_ARGUMENT;
    case absl::StatusCode::kDeadlineExceeded: return grpc::StatusCode::DEADLINE_EXCEEDED;
    case absl::StatusCode::kNotFound: return grpc::StatusCode::NOT_FOUND;
    case absl::StatusCode::kAlreadyExists: return grpc::StatusCode::ALREADY_EXISTS;
    case absl::StatusCode::kPermissionDenied: return grpc::StatusCode::PERMISSION_DENIED;
    case absl::StatusCode::kResourceExhausted: return grpc::StatusCode::RESOURCE_EXHAUSTED;
    case absl::StatusCode::kFailedPrecondition: return grpc::StatusCode::FAILED_PRECONDITION;
    case absl::StatusCode::kAborted: return grpc::StatusCode::ABORTED;
    case absl::StatusCode::kOutOfRange: return grpc::StatusCode::OUT_OF_RANGE;
    case absl::StatusCode::kUnimplemented: return grpc::StatusCode::UNIMPLEMENTED;
    case absl::StatusCode::kInternal: return grpc::StatusCode::INTERNAL;
    case absl::StatusCode::kUnavailable: return grpc::StatusCode::UNAVAILABLE;
    case absl::StatusCode::kDataLoss: return grpc::StatusCode::DATA_LOSS;
    case absl::StatusCode::kUnauthenticated: return grpc::StatusCode::UNAUTHENTICATED;
    default: return grpc::StatusCode::UNKNOWN;
  }
}

bool IsFieldChar(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_';
}

// The request field an INVALID_ARGUMENT/OUT_OF_RANGE message names by the validators' "field: what"
// convention: a lower-case path of names, dots and [index]es before the first ": ". Anything else
// ("AttendRequest: cannot read...", "key '/x' ...") names no field.
absl::string_view FieldOf(absl::string_view message) {
  const size_t colon = message.find(": ");
  if (colon == absl::string_view::npos || colon == 0) return {};
  const absl::string_view path = message.substr(0, colon);
  if (!(path[0] >= 'a' && path[0] <= 'z')) return {};
  for (char c : path) {
    if (!IsFieldChar(c) && c != '.' && c != '[' && c != ']') return {};
  }
  return path;
}

}  // namespace

void AppendErrorDetails(const absl::Status& status, google::protobuf::RepeatedPtrField<google::protobuf::Any>* out) {
  const std::string message(status.message());
  if (status.code() == absl::StatusCode::kInvalidArgument || status.code() == absl::StatusCode::kOutOfRange) {
    if (const absl::string_view field = FieldOf(message); !field.empty()) {
      google::rpc::BadRequest bad;
      google::rpc::BadRequest::FieldViolation* v = bad.add_field_violations();
      v->set_field(std::string(field));
      v->set_description(std::string(absl::string_view(message).substr(field.size() + 2)));
      out->Add()->PackFrom(bad);
    }
  }
  if (std::optional<std::chrono::milliseconds> delay = RetryDelayOf(status)) {
    google::rpc::RetryInfo retry;
    retry.mutable_retry_delay()->set_seconds(delay->count() / 1000);
    retry.mutable_retry_delay()->set_nanos(static_cast<int32_t>(delay->count() % 1000) * 1000000);
    out->Add()->PackFrom(retry);
  }
  if (std::optional<std::pair<std::string, std::string>> resource = ResourceOf(status)) {
    google::rpc::ResourceInfo info;
    info.set_resource_type(resource->first);
    info.set_resource_name(resource->second);
    out->Add()->PackFrom(info);
  }
}

void AddRetryPushback(const absl::Status& status, grpc::ServerContextBase& context) {
  if (status.code() != absl::StatusCode::kResourceExhausted) return;
  const std::optional<std::chrono::milliseconds> delay = RetryDelayOf(status);
  context.AddTrailingMetadata("grpc-retry-pushback-ms", delay ? std::to_string(delay->count()) : "-1");
}

grpc::Status ToGrpcStatus(const absl::Status& status) {
  if (status.ok()) return grpc::Status::OK;
  const grpc::StatusCode code = ToGrpcCode(status.code());
  std::string message(status.message());
  google::rpc::Status rich;
  AppendErrorDetails(status, rich.mutable_details());
  if (rich.details_size() == 0) return grpc::Status(code, message);
  rich.set_code(static_cast<int32_t>(code));
  rich.set_message(message);
  return grpc::Status(code, message, rich.SerializeAsString());
}

}  // namespace sage::server
