// The one place where internal absl::Status values become gRPC statuses.
#pragma once

#include "absl/status/status.h"
#include "google/protobuf/any.pb.h"
#include "google/protobuf/repeated_ptr_field.h"
#include "grpcpp/server_context.h"
#include "grpcpp/support/status.h"

namespace sage::server {

// Same canonical code (the two enums share numbering, but we map explicitly so a mismatch cannot
// slip through) and the same message.
// Error details travel as google.rpc.Status details: a BadRequest naming the field of an
// INVALID_ARGUMENT/OUT_OF_RANGE, RetryInfo and ResourceInfo from server/status_details.h payloads.
grpc::Status ToGrpcStatus(const absl::Status& status);

// gRPC's retry pushback (trailer "grpc-retry-pushback-ms"), which clients with a retry policy
// obey: the RetryInfo delay for a full queue, "-1" (do not retry) for any other RESOURCE_EXHAUSTED,
// which sending the same request again cannot cure. Nothing for other codes.
void AddRetryPushback(const absl::Status& status, grpc::ServerContextBase& context);

// The same details, appended to `out` (AttendStream's per-request RequestStatus.details).
void AppendErrorDetails(const absl::Status& status, google::protobuf::RepeatedPtrField<google::protobuf::Any>* out);

}  // namespace sage::server
