// grpc::Status and RequestStatus -> absl::Status for the client library, error details included.
#include "status_conversion.h"

#include "absl/strings/cord.h"
#include "sageserve/client/client.h"
#include "sageserve/client/session.h"

namespace sageserve {

absl::Status FromRequestStatus(const v1::RequestStatus& status) {
  absl::Status out(static_cast<absl::StatusCode>(status.code()), status.message());
  for (const google::protobuf::Any& d : status.details()) {
    if (!d.type_url().empty()) out.SetPayload(d.type_url(), absl::Cord(d.value()));
  }
  return out;
}

absl::Status SessionOwnerGone(std::string_view message, std::string_view session_ids) {
  absl::Status gone = absl::UnavailableError(std::string(message));
  gone.SetPayload(kSessionOwnerGonePayload, absl::Cord(std::string(session_ids)));
  return gone;
}

absl::Status FromGrpcStatus(const grpc::Status& status) {
  if (status.ok()) return absl::OkStatus();
  // The trailer is a google.rpc.Status, which RequestStatus matches field for field, so the library
  // needs no google.rpc definitions of its own (they would clash with a program's googleapis copy).
  // Malformed details are dropped: the code and message stand.
  v1::RequestStatus rich;
  if (status.error_details().empty() || !rich.ParseFromString(status.error_details())) rich.Clear();
  rich.set_code(static_cast<int>(status.error_code()));
  rich.set_message(status.error_message());
  return FromRequestStatus(rich);
}

}  // namespace sageserve
