// The one place where internal absl::Status values become gRPC statuses.
#pragma once

#include "absl/status/status.h"
#include "grpcpp/support/status.h"

namespace sage::server {

// Same canonical code (the two enums share numbering, but we map explicitly so a mismatch cannot
// slip through) and the same message.
grpc::Status ToGrpcStatus(const absl::Status& status);

}  // namespace sage::server
