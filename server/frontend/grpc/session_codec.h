// SessionService's messages to and from the protobuf-free types (core/session_attend.h,
// session/session_store.h): a new session's shape, session info, and AttendSession's steps (views
// into the request message, inline 16-bit bytes only) and results, for the unary call and the stream.
#pragma once

#include "absl/status/statusor.h"
#include "sageserve/v1/session.pb.h"
#include "server/core/session_attend.h"

namespace sage::server {

// CreateSession's shape; INVALID_ARGUMENT naming the field (the store checks the rest).
absl::StatusOr<SessionShape> ShapeFromWire(const sageserve::v1::CreateSessionRequest& request);
void InfoToWire(const SessionInfo& info, sageserve::v1::SessionInfo* out);

// Views into `request`, which must outlive the result. INVALID_ARGUMENT naming the field.
absl::StatusOr<SessionAttendRequest> DecodeAttendSession(const sageserve::v1::AttendSessionRequest& request);

void ResultToWire(const SessionAttendResult& result, bool want_lse, sageserve::v1::AttendSessionResponse* out);

}  // namespace sage::server
