// AttendSession's messages to and from the core's types (core/session_attend.h): the steps' tensors
// decoded as views into the request message (inline 16-bit bytes only), the results encoded. Shared
// by the unary call and the stream.
#pragma once

#include "absl/status/statusor.h"
#include "sageserve/v1/session.pb.h"
#include "server/core/session_attend.h"

namespace sage::server {

// Views into `request`, which must outlive the result. INVALID_ARGUMENT naming the field.
absl::StatusOr<SessionAttendRequest> DecodeAttendSession(const sageserve::v1::AttendSessionRequest& request);

void ResultToWire(const SessionAttendResult& result, bool want_lse, sageserve::v1::AttendSessionResponse* out);

}  // namespace sage::server
