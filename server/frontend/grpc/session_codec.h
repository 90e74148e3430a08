// SessionService's messages to and from the protobuf-free types (core/session_attend.h,
// session/session_store.h): a new session's shape, session info, and AttendSession's steps (views
// into the request message, or into registered shared memory for q) and results, for the unary call
// and the stream.
#pragma once

#include "absl/status/statusor.h"
#include "sageserve/v1/session.pb.h"
#include "server/core/session_attend.h"
#include "server/frontend/grpc/shared_memory_refs.h"

namespace sage::server {

// CreateSession's shape; INVALID_ARGUMENT naming the field (the store checks the rest).
absl::StatusOr<SessionShape> ShapeFromWire(const sageserve::v1::CreateSessionRequest& request);
void InfoToWire(const SessionInfo& info, sageserve::v1::SessionInfo* out);

// Views into `request`, which must outlive the result. INVALID_ARGUMENT naming the field. Steps' q
// in shared memory, and o_output / lse_output, are resolved through `shared_memory` (null:
// FAILED_PRECONDITION), with Attend's rules (shared_memory_refs.h); CUDA q must lie back to back,
// step after step, in one region.
absl::StatusOr<SessionAttendRequest> DecodeAttendSession(const sageserve::v1::AttendSessionRequest& request,
                                                         const SharedMemoryAccess* shared_memory);

// The answer to `request`: each step's O/LSE bytes, or, with o_output, its rows' references.
void ResultToWire(const SessionAttendResult& result, const sageserve::v1::AttendSessionRequest& request,
                  sageserve::v1::AttendSessionResponse* out);

}  // namespace sage::server
