// AttendRequest / AttendResponse on the wire without protobuf's copies of the tensor bytes.
//
// Reading: the request's small fields are parsed by protobuf as usual (into `header`, whose q/k/v
// keep dtype and shape but no data), while the three tensor payloads are copied exactly once, from
// gRPC's receive slices into one block leased from a HostBufferPool. With the CUDA backend's pinned
// pool, the device copies read that block directly. Writing: the response's small fields are
// serialized by protobuf and O/LSE go out as slices that point into the same block (no copy); the
// slices keep the block alive until gRPC has sent them.
//
// The result is exactly what protobuf's own parse would give (same merge rules for repeated
// fields, unknown fields kept); a tensor field (or its data) sent twice, which protobuf merges, takes
// protobuf's full parse, and the payloads are then moved into the block the same way.
//
// attend_wire.cc holds only AttendRequest/AttendResponse's layout; the generic wire-format reading
// and framing it builds on are in protobuf_wire_reader.h.
#pragma once

#include <cstddef>
#include <span>

#include "absl/status/statusor.h"
#include "grpcpp/support/byte_buffer.h"
#include "sageserve/v1/attention_service.pb.h"
#include "server/backend/host_buffer_pool.h"

namespace sage::server {

// Alignment of every region inside a request block (the kernels need 16 bytes; 256 keeps DMA fast).
inline constexpr size_t kPayloadAlignment = 256;

// One request's bytes inside its block: q, k, v as sent (exact lengths), then room for the result.
// Offsets: q at 0, k, v, o and lse each at the next multiple of kPayloadAlignment after the previous
// region's end.
struct RequestPayloads {
  HostBlockRef storage;
  std::span<const std::byte> q, k, v;
  std::span<std::byte> o;    // q.size() bytes: O as 16-bit codes of q's dtype
  std::span<std::byte> lse;  // header.return_lse(): q.size() / 32 bytes (>= tokens * heads * 4 for
                             // any head_dim >= 64), else empty
};

struct WireAttendRequest {
  sageserve::v1::AttendRequest header;  // every field as sent, except q/k/v.data (empty)
  RequestPayloads payloads;             // a tensor that was not sent has an empty payload
  size_t wire_bytes = 0;                // the serialized request's length
};

// INVALID_ARGUMENT ("AttendRequest: malformed protobuf ...") where protobuf's parse would fail;
// RESOURCE_EXHAUSTED when the block cannot be allocated.
absl::StatusOr<WireAttendRequest> ParseAttendRequest(const grpc::ByteBuffer& buffer, HostBufferPool& pool);

// The serialized response: `header` (o and lse carrying dtype/shape but no data; lse absent when
// not requested) with `o_data` as o.data and `lse_data` as lse.data. The two spans are referenced,
// not copied; `keep_alive` is held until gRPC releases the slices. Parsing the result with protobuf
// gives `header` with the data filled in.
grpc::ByteBuffer EncodeAttendResponse(const sageserve::v1::AttendResponse& header, std::span<const std::byte> o_data,
                                      std::span<const std::byte> lse_data, HostBlockRef keep_alive);

// The length EncodeAttendResponse's result will have (for the bytes-out metric).
size_t AttendResponseWireSize(const sageserve::v1::AttendResponse& header, size_t o_bytes, size_t lse_bytes);

}  // namespace sage::server
