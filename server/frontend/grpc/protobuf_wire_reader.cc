#include "server/frontend/grpc/protobuf_wire_reader.h"

#include "absl/strings/str_cat.h"
#include "google/protobuf/io/coded_stream.h"

namespace sage::server::protowire {

// --- writing ---

void AppendVarint(std::string* out, uint64_t value) {
  for (; value >= 0x80; value >>= 7) out->push_back(static_cast<char>((value & 0x7F) | 0x80));
  out->push_back(static_cast<char>(value));
}

void AppendLengthDelimitedHeader(std::string* out, uint32_t number, uint64_t length) {
  AppendVarint(out, MakeTag(number, kLengthDelimited));
  AppendVarint(out, length);
}

size_t LengthDelimitedFieldSize(uint32_t number, size_t payload) {
  using google::protobuf::io::CodedOutputStream;
  return CodedOutputStream::VarintSize32(MakeTag(number, kLengthDelimited)) + CodedOutputStream::VarintSize64(payload) +
         payload;
}

// --- SliceReader ---

SliceReader::SliceReader(const std::vector<grpc::Slice>& slices, size_t total) : slices_(slices), total_(total) {
  SkipEmptySlices();
}

uint8_t SliceReader::NextByte() {
  const uint8_t byte = slices_[index_].begin()[pos_];
  Skip(1);
  return byte;
}

void SliceReader::Skip(size_t n) {
  Consume(n, [](const uint8_t*, size_t) {});
}

void SliceReader::AppendTo(std::string* out, size_t n) {
  if (out == nullptr) return Skip(n);
  Consume(n, [out](const uint8_t* src, size_t len) { out->append(reinterpret_cast<const char*>(src), len); });
}

void SliceReader::SkipEmptySlices() {
  while (index_ < slices_.size() && slices_[index_].size() == 0) ++index_;
}

// --- WireReader ---

WireReader::WireReader(const std::vector<grpc::Slice>& slices, size_t total, absl::string_view error_prefix)
    : bytes_(slices, total), error_prefix_(error_prefix) {}

absl::Status WireReader::Error(size_t offset, absl::string_view what) const {
  return absl::InvalidArgumentError(absl::StrCat(error_prefix_, " at byte ", offset, ": ", what));
}

absl::Status WireReader::ReadVarint(const Scope& scope, size_t max_bytes, absl::string_view what, uint32_t number,
                                    uint64_t* value, std::string* raw) {
  const size_t start = offset();
  uint64_t result = 0;
  for (size_t i = 0;; ++i) {
    if (i == max_bytes || offset() >= scope.end) {
      const std::string field = number == 0 ? std::string() : absl::StrCat(" of field ", number);
      return Error(start, i == max_bytes ? absl::StrCat(what, field, " longer than ", max_bytes, " bytes in ", scope.name)
                                         : absl::StrCat(what, field, " cut off by the end of ", scope.name));
    }
    const uint8_t byte = bytes_.NextByte();
    if (raw != nullptr) raw->push_back(static_cast<char>(byte));
    result |= uint64_t{byte & 0x7Fu} << (7 * i);
    if (byte < 0x80) break;
  }
  *value = result;
  return absl::OkStatus();
}

absl::Status WireReader::ReadTag(const Scope& scope, Tag* tag) {
  tag->offset = offset();
  uint64_t value = 0;
  if (absl::Status s = ReadVarint(scope, kMaxTagBytes, "tag", 0, &value, &tag->raw); !s.ok()) return s;
  tag->value = static_cast<uint32_t>(value);  // protobuf drops a 5-byte tag's bits above 32
  if (tag->number() == 0) {
    return Error(tag->offset, absl::StrCat("field number 0 (tag ", tag->value, ") in ", scope.name));
  }
  if (tag->type() > kFixed32) {
    return Error(tag->offset,
                 absl::StrCat("invalid wire type ", tag->type(), " (field ", tag->number(), ") in ", scope.name));
  }
  return absl::OkStatus();
}

absl::Status WireReader::ReadLength(const Scope& scope, uint32_t number, uint64_t* length, std::string* raw) {
  const size_t start = offset();
  if (absl::Status s = ReadVarint(scope, kMaxLengthBytes, "length", number, length, raw); !s.ok()) return s;
  if (*length > kMaxLength) {
    return Error(start, absl::StrCat("length ", *length, " of field ", number, " in ", scope.name,
                                     " is over protobuf's 2 GiB limit"));
  }
  const size_t left = scope.end - offset();
  if (*length > left) {
    return Error(start, absl::StrCat("length ", *length, " of field ", number, " runs past the end of ", scope.name,
                                     " (", left, " bytes left)"));
  }
  return absl::OkStatus();
}

absl::Status WireReader::CopyValue(const Tag& tag, const Scope& scope, int depth, std::string* out) {
  switch (tag.type()) {
    case kVarint: {
      uint64_t value = 0;
      return ReadVarint(scope, kMaxVarintBytes, "varint", tag.number(), &value, out);
    }
    case kFixed64:
    case kFixed32: {
      const size_t size = tag.type() == kFixed64 ? 8 : 4;
      if (scope.end - offset() < size) {
        return Error(offset(),
                     absl::StrCat(size, "-byte value of field ", tag.number(), " cut off by the end of ", scope.name));
      }
      bytes_.AppendTo(out, size);
      return absl::OkStatus();
    }
    case kLengthDelimited: {
      uint64_t length = 0;
      if (absl::Status s = ReadLength(scope, tag.number(), &length, out); !s.ok()) return s;
      bytes_.AppendTo(out, static_cast<size_t>(length));
      return absl::OkStatus();
    }
    case kStartGroup:
      return CopyGroup(tag, scope, depth + 1, out);
    default:  // kEndGroup: ReadTag lets through only wire types 0-5
      return Error(tag.offset,
                   absl::StrCat("end-group tag (field ", tag.number(), ") without a start-group in ", scope.name));
  }
}

// An unknown group: fields up to the end-group tag of the same number. It has no length prefix, so
// it ends where its enclosing scope does at the latest.
absl::Status WireReader::CopyGroup(const Tag& start, const Scope& outer, int depth, std::string* out) {
  if (depth > kRecursionLimit) {
    return Error(start.offset, absl::StrCat("groups nested deeper than protobuf's recursion limit (", kRecursionLimit,
                                            ") in ", outer.name));
  }
  const std::string name = absl::StrCat("group (field ", start.number(), ") in ", outer.name);
  const Scope group{outer.end, name};
  for (;;) {
    if (offset() >= group.end) return Error(start.offset, absl::StrCat(name, " has no end-group tag"));
    Tag tag;
    if (absl::Status s = ReadTag(group, &tag); !s.ok()) return s;
    if (out != nullptr) out->append(tag.raw);
    if (tag.type() == kEndGroup) {
      if (tag.number() != start.number()) {
        return Error(tag.offset, absl::StrCat("end-group tag of field ", tag.number(), " closes ", name));
      }
      return absl::OkStatus();
    }
    if (absl::Status s = CopyValue(tag, group, depth, out); !s.ok()) return s;
  }
}

}  // namespace sage::server::protowire
