// grpc::Status -> absl::Status for the client library, error details included.
#include <string>

#include "absl/strings/cord.h"
#include "google/protobuf/io/coded_stream.h"
#include "google/protobuf/wire_format_lite.h"
#include "sageserve/client/client.h"

namespace sageserve {
namespace {

using google::protobuf::internal::WireFormatLite;
using google::protobuf::io::CodedInputStream;

// Reads one google.protobuf.Any {1: type_url, 2: value} from `in` (its bytes, up to a limit).
bool ReadAny(CodedInputStream& in, std::string* type_url, std::string* value) {
  for (uint32_t tag = in.ReadTag(); tag != 0; tag = in.ReadTag()) {
    const int field = WireFormatLite::GetTagFieldNumber(tag);
    const bool bytes = WireFormatLite::GetTagWireType(tag) == WireFormatLite::WIRETYPE_LENGTH_DELIMITED;
    if ((field == 1 || field == 2) && bytes) {
      uint32_t n = 0;
      if (!in.ReadVarint32(&n) || !in.ReadString(field == 1 ? type_url : value, static_cast<int>(n))) return false;
    } else if (!WireFormatLite::SkipField(&in, tag)) {
      return false;
    }
  }
  return true;
}

// The details of a serialized google.rpc.Status {1: code, 2: message, 3: repeated Any details} as
// payloads of `status`, keyed by type URL, holding the serialized detail message. Read off the wire
// by hand so that the library carries no google.rpc definitions of its own, which would clash with
// a program's copy from googleapis. Malformed details are dropped: the code and message stand.
void AttachDetails(const std::string& serialized, absl::Status& status) {
  CodedInputStream in(reinterpret_cast<const uint8_t*>(serialized.data()), static_cast<int>(serialized.size()));
  for (uint32_t tag = in.ReadTag(); tag != 0; tag = in.ReadTag()) {
    if (WireFormatLite::GetTagFieldNumber(tag) != 3 ||
        WireFormatLite::GetTagWireType(tag) != WireFormatLite::WIRETYPE_LENGTH_DELIMITED) {
      if (!WireFormatLite::SkipField(&in, tag)) return;
      continue;
    }
    uint32_t n = 0;
    if (!in.ReadVarint32(&n)) return;
    const CodedInputStream::Limit limit = in.PushLimit(static_cast<int>(n));
    std::string type_url, value;
    const bool ok = ReadAny(in, &type_url, &value);
    in.PopLimit(limit);
    if (!ok) return;
    if (!type_url.empty()) status.SetPayload(type_url, absl::Cord(value));
  }
}

}  // namespace

absl::Status FromGrpcStatus(const grpc::Status& status) {
  if (status.ok()) return absl::OkStatus();
  absl::Status out(static_cast<absl::StatusCode>(status.error_code()), status.error_message());
  if (!status.error_details().empty()) AttachDetails(status.error_details(), out);
  return out;
}

}  // namespace sageserve
