// ParseAttendRequest (server/frontend/grpc/attend_wire.h), the hand-written wire reader, over
// arbitrary bytes cut into gRPC slices at fuzzer-chosen points. attend_wire.h promises protobuf's
// own outcome: the same success or failure (failure is INVALID_ARGUMENT "AttendRequest: malformed
// protobuf ..."), and on success the same header (q/k/v data cleared, unknown fields kept) with
// the tensor bytes in the block, laid out as RequestPayloads documents.
//
// Input: byte 0 = n (low 4 bits: number of cuts), then n 16-bit little-endian cut positions
// (taken modulo the message length; repeats make empty slices), then the message.
#include <algorithm>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "grpcpp/support/byte_buffer.h"
#include "server/frontend/grpc/attend_wire.h"
#include "tests/fuzz/fuzz_check.h"

namespace sage::server::attend_wire_internal {
// Defined in attend_wire.cc: answers from protobuf's full parse, and of those the ones where the
// scanner had called the message malformed (it must never refuse what protobuf accepts).
extern std::atomic<int64_t> full_parse_results;
extern std::atomic<int64_t> scanner_overruled;
}  // namespace sage::server::attend_wire_internal

namespace {

using sage::fuzz::OwnedSlice;
using sageserve::v1::AttendRequest;

std::string_view AsView(std::span<const std::byte> bytes) {
  return {reinterpret_cast<const char*>(bytes.data()), bytes.size()};
}

size_t AlignUp(size_t n) {
  using sage::server::kPayloadAlignment;
  return (n + kPayloadAlignment - 1) / kPayloadAlignment * kPayloadAlignment;
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int* /*argc*/, char*** /*argv*/) {
  sage::fuzz::SilenceProtobufLogs();
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const std::unique_ptr<sage::server::HostBufferPool> pool = sage::server::MakeHeapBufferPool();
  if (size == 0) return 0;
  const size_t cuts_wanted = data[0] & 0x0f;
  size_t pos = 1;
  std::vector<uint16_t> raw_cuts;
  for (size_t i = 0; i < cuts_wanted && pos + 2 <= size; ++i, pos += 2) {
    raw_cuts.push_back(static_cast<uint16_t>(data[pos] | (data[pos + 1] << 8)));
  }
  const std::string message(reinterpret_cast<const char*>(data + pos), size - pos);

  // Slices at the cut points (sorted; repeats and 0/end give empty slices).
  std::vector<size_t> cuts;
  for (const uint16_t c : raw_cuts) cuts.push_back(message.empty() ? 0 : c % (message.size() + 1));
  std::sort(cuts.begin(), cuts.end());
  cuts.push_back(message.size());
  std::vector<grpc::Slice> slices;
  size_t begin = 0;
  for (const size_t end : cuts) {
    slices.push_back(OwnedSlice(std::string_view(message).substr(begin, end - begin)));
    begin = end;
  }
  const grpc::ByteBuffer buffer(slices.data(), slices.size());

  AttendRequest oracle;
  const bool oracle_ok = oracle.ParseFromString(message);

  const int64_t overruled_before = sage::server::attend_wire_internal::scanner_overruled.load();
  const absl::StatusOr<sage::server::WireAttendRequest> got = sage::server::ParseAttendRequest(buffer, *pool);
  FUZZ_CHECK(sage::server::attend_wire_internal::scanner_overruled.load() == overruled_before,
             "the scanner called malformed what protobuf accepts");
  FUZZ_CHECK(got.ok() == oracle_ok,
             got.ok() ? std::string("parsed what protobuf refuses") : absl::StrCat("refused what protobuf parses: ",
                                                                                   got.status().ToString()));
  if (!got.ok()) {
    FUZZ_CHECK(got.status().code() == absl::StatusCode::kInvalidArgument, got.status().ToString());
    FUZZ_CHECK(absl::StartsWith(got.status().message(), "AttendRequest: malformed protobuf"),
               got.status().ToString());
    return 0;
  }

  // Same payloads and header as protobuf's parse.
  const sage::server::RequestPayloads& p = got->payloads;
  FUZZ_CHECK(AsView(p.q) == oracle.q().data(), "q payload differs");
  FUZZ_CHECK(AsView(p.k) == oracle.k().data(), "k payload differs");
  FUZZ_CHECK(AsView(p.v) == oracle.v().data(), "v payload differs");
  if (oracle.has_q()) oracle.mutable_q()->clear_data();
  if (oracle.has_k()) oracle.mutable_k()->clear_data();
  if (oracle.has_v()) oracle.mutable_v()->clear_data();
  // Known fields in number order, then unknown ones as sent: equal bytes mean equal messages.
  FUZZ_CHECK(got->header.SerializeAsString() == oracle.SerializeAsString(), "header differs from protobuf's");
  FUZZ_CHECK(got->header.has_q() == oracle.has_q() && got->header.has_k() == oracle.has_k() &&
                 got->header.has_v() == oracle.has_v(),
             "tensor presence differs");
  FUZZ_CHECK(got->wire_bytes == message.size(), "wire_bytes");

  // The documented block layout, inside the block.
  FUZZ_CHECK(p.storage != nullptr, "no block");
  const std::byte* base = p.storage->data();
  const size_t k_at = AlignUp(p.q.size());
  const size_t v_at = AlignUp(k_at + p.k.size());
  const size_t o_at = AlignUp(v_at + p.v.size());
  const size_t lse_at = AlignUp(o_at + p.q.size());
  FUZZ_CHECK(p.q.data() == base && p.k.data() == base + k_at && p.v.data() == base + v_at, "q/k/v offsets");
  FUZZ_CHECK(p.o.data() == base + o_at && p.o.size() == p.q.size(), "o room");
  FUZZ_CHECK(p.lse.data() == base + lse_at && p.lse.size() == (oracle.return_lse() ? p.q.size() / 32 : 0), "lse");
  FUZZ_CHECK(lse_at + p.lse.size() <= p.storage->size(), "block too small");
  // Touch the result room (ASan: inside the block).
  if (!p.o.empty()) std::memset(p.o.data(), 0, p.o.size());
  if (!p.lse.empty()) std::memset(p.lse.data(), 0, p.lse.size());
  return 0;
}
