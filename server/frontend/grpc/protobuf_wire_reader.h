// The protobuf wire format read straight from gRPC's receive slices, and the few writer helpers
// that hand-framed messages need. Generic: nothing here knows a message's field numbers; a message
// layout (attend_wire.cc) is written on top of it.
//
// Reading never flattens the slices: values that span a slice boundary are read piece by piece, and
// bulk bytes can be handed to a sink where they lie, so a caller can copy them exactly once. The
// limits are protobuf's own, so what is accepted here is what protobuf's parse accepts.
#pragma once

#include <algorithm>
#include <climits>
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "grpcpp/support/slice.h"

namespace sage::server::protowire {

// protobuf 3.21's own parse limits (parse_context.h), so the reader accepts what it accepts: a tag
// is at most 5 bytes (kept to 32 bits), any varint at most 10, a length at most 5 bytes and
// INT_MAX - kSlopBytes, and messages plus groups nest at most 100 deep.
inline constexpr size_t kMaxTagBytes = 5;
inline constexpr size_t kMaxLengthBytes = 5;
inline constexpr size_t kMaxVarintBytes = 10;
inline constexpr uint64_t kMaxLength = INT_MAX - 16;
inline constexpr int kRecursionLimit = 100;

enum WireType : uint32_t {
  kVarint = 0,
  kFixed64 = 1,
  kLengthDelimited = 2,
  kStartGroup = 3,
  kEndGroup = 4,
  kFixed32 = 5,
};

// --- writing ---

constexpr uint32_t MakeTag(uint32_t number, WireType type) { return (number << 3) | type; }

void AppendVarint(std::string* out, uint64_t value);

// Tag and length prefix of a length-delimited field; its `length` payload bytes follow.
void AppendLengthDelimitedHeader(std::string* out, uint32_t number, uint64_t length);

// Bytes of a whole length-delimited field numbered `number` around `payload` bytes.
size_t LengthDelimitedFieldSize(uint32_t number, size_t payload);

// --- reading ---

// Sequential reads over gRPC's slices at an absolute offset. Callers bound every read by the bytes
// left (lengths on the wire are untrusted; WireReader checks them), so no read runs past the last
// slice.
class SliceReader {
 public:
  // `slices` must outlive the reader; `total` is the sum of their sizes.
  SliceReader(const std::vector<grpc::Slice>& slices, size_t total);

  size_t offset() const { return offset_; }
  size_t remaining() const { return total_ - offset_; }

  uint8_t NextByte();
  void Skip(size_t n);
  // Appends `n` bytes as sent; skips them when `out` is null.
  void AppendTo(std::string* out, size_t n);

  // Hands `n` bytes (n <= remaining()) to `sink(const uint8_t* piece, size_t len)` one slice piece
  // at a time, where they lie: the caller decides how to copy (e.g. for DMA).
  template <typename Sink>
  void Consume(size_t n, Sink&& sink) {
    while (n > 0) {
      const grpc::Slice& slice = slices_[index_];
      const size_t take = std::min(n, slice.size() - pos_);
      sink(slice.begin() + pos_, take);
      pos_ += take;
      offset_ += take;
      n -= take;
      if (pos_ == slice.size()) {
        ++index_;
        pos_ = 0;
        SkipEmptySlices();
      }
    }
  }

 private:
  // Keeps the invariant: while bytes remain, slices_[index_] has one at pos_.
  void SkipEmptySlices();

  const std::vector<grpc::Slice>& slices_;
  size_t total_;
  size_t index_ = 0;
  size_t pos_ = 0;
  size_t offset_ = 0;
};

// The part of the message being read, for bounds and error messages: a message, a nested message
// (its length prefix sets `end`) or a group (the enclosing end).
struct Scope {
  size_t end;             // absolute offset, exclusive
  absl::string_view name;  // e.g. "AttendRequest", "q (field 2)"
};

struct Tag {
  uint32_t value = 0;
  size_t offset = 0;  // absolute offset of its first byte
  std::string raw;    // as sent (a non-minimal varint stays so), to copy the field unchanged
  uint32_t number() const { return value >> 3; }
  uint32_t type() const { return value & 7; }
};

// Framed reads with protobuf's checks. Every failure is INVALID_ARGUMENT
// "<error_prefix> at byte <offset>: <what>", the offset absolute in the message. Each method that
// takes `raw`/`out` appends the bytes it consumed, as sent, when that pointer is not null.
class WireReader {
 public:
  // `error_prefix` must outlive the reader (a literal in practice).
  WireReader(const std::vector<grpc::Slice>& slices, size_t total, absl::string_view error_prefix);

  size_t offset() const { return bytes_.offset(); }
  // Unframed access, for bytes whose bounds a ReadLength has already checked.
  SliceReader& bytes() { return bytes_; }

  // One varint of at most `max_bytes` inside `scope`, low 64 bits kept (protobuf's arithmetic).
  // `what` and `number` (0: none) only name it in errors.
  absl::Status ReadVarint(const Scope& scope, size_t max_bytes, absl::string_view what, uint32_t number,
                          uint64_t* value, std::string* raw);
  // A tag with a non-zero field number and wire type 0-5 (an end-group tag is returned as such).
  absl::Status ReadTag(const Scope& scope, Tag* tag);
  // A length prefix of field `number`, checked against protobuf's limit and the bytes left in
  // `scope`, so the `*length` bytes after it can be read unchecked.
  absl::Status ReadLength(const Scope& scope, uint32_t number, uint64_t* length, std::string* raw);
  // The value after `tag` (already read), appended to `out` as sent (a group through its end-group
  // tag). `depth`: messages and groups around it, for protobuf's recursion limit. Nested messages
  // and packed fields are not looked into: they are just length-delimited bytes here.
  absl::Status CopyValue(const Tag& tag, const Scope& scope, int depth, std::string* out);
  absl::Status SkipValue(const Tag& tag, const Scope& scope, int depth) { return CopyValue(tag, scope, depth, nullptr); }

  // The error for `what` at absolute `offset`, in the format above.
  absl::Status Error(size_t offset, absl::string_view what) const;

 private:
  absl::Status CopyGroup(const Tag& start, const Scope& outer, int depth, std::string* out);

  SliceReader bytes_;
  absl::string_view error_prefix_;
};

}  // namespace sage::server::protowire
