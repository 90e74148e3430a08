// Statuses coming back from the server as absl::Status, error details included (internal).
#pragma once

#include <string_view>

#include "absl/status/status.h"
#include "sageserve/v1/attention_service.pb.h"

namespace sageserve {

// A RequestStatus (laid out as google.rpc.Status: an AttendStream answer's status, or the
// grpc-status-details-bin trailer of a unary call) as an absl::Status with the same code and
// message, and each detail as a payload keyed by its type URL holding the serialized message.
absl::Status FromRequestStatus(const v1::RequestStatus& status);

// UNAVAILABLE with `message` and the owner-gone payload naming `session_ids` (session.h,
// IsSessionOwnerGone): the one way the library says a session's server is gone.
absl::Status SessionOwnerGone(std::string_view message, std::string_view session_ids);

}  // namespace sageserve
