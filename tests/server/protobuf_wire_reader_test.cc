// The generic protobuf wire reader over gRPC slices: values split across slice boundaries, protobuf's
// limits, malformed framing reported where it is, and each wire type skipped (or copied) exactly.
#include "server/frontend/grpc/protobuf_wire_reader.h"

#include <gtest/gtest.h>

#include <cstdint>
#include <string>
#include <vector>

#include "google/protobuf/io/coded_stream.h"

namespace sage::server::protowire {
namespace {

constexpr absl::string_view kPrefix = "Msg: malformed protobuf";

std::string Varint(uint64_t v) {
  std::string out;
  AppendVarint(&out, v);
  return out;
}
std::string Field(uint32_t number, WireType type) { return Varint(MakeTag(number, type)); }

// `bytes` cut at `cuts` (ascending), with an empty slice at the front and after each cut, which
// the reader must step over.
std::vector<grpc::Slice> Split(const std::string& bytes, const std::vector<size_t>& cuts) {
  std::vector<grpc::Slice> slices = {grpc::Slice()};
  size_t from = 0;
  for (size_t cut : cuts) {
    slices.emplace_back(bytes.substr(from, cut - from));
    slices.emplace_back();
    from = cut;
  }
  slices.emplace_back(bytes.substr(from));
  return slices;
}

std::vector<size_t> EveryByte(size_t n) {
  std::vector<size_t> cuts;
  for (size_t i = 1; i < n; ++i) cuts.push_back(i);
  return cuts;
}

TEST(ProtobufWireReader, VarintAcrossEverySliceBoundary) {
  for (uint64_t value : {uint64_t{0}, uint64_t{127}, uint64_t{128}, uint64_t{300}, uint64_t{1} << 35, UINT64_MAX}) {
    const std::string bytes = Varint(value) + "x";
    const size_t n = bytes.size() - 1;
    std::vector<std::vector<size_t>> splits = {{}, EveryByte(bytes.size())};
    for (size_t at = 1; at < bytes.size(); ++at) splits.push_back({at});
    for (const std::vector<size_t>& cuts : splits) {
      const std::vector<grpc::Slice> slices = Split(bytes, cuts);
      WireReader reader(slices, bytes.size(), kPrefix);
      uint64_t got = 0;
      std::string raw;
      ASSERT_TRUE(reader.ReadVarint({bytes.size(), "Msg"}, kMaxVarintBytes, "varint", 1, &got, &raw).ok());
      EXPECT_EQ(got, value);
      EXPECT_EQ(raw, bytes.substr(0, n)) << "raw bytes as sent";
      EXPECT_EQ(reader.offset(), n);
      EXPECT_EQ(reader.bytes().NextByte(), 'x');
    }
  }
}

TEST(ProtobufWireReader, OverlongVarintsFollowProtobufsLimits) {
  const std::string ten = std::string(9, '\x81') + "\x01";  // 10 bytes: the most protobuf takes
  const std::string eleven = std::string(10, '\x80') + "\x01";
  const std::vector<grpc::Slice> ok_slices = Split(ten, EveryByte(ten.size()));
  WireReader ok(ok_slices, ten.size(), kPrefix);
  uint64_t value = 0;
  EXPECT_TRUE(ok.ReadVarint({ten.size(), "Msg"}, kMaxVarintBytes, "varint", 7, &value, nullptr).ok());

  const std::vector<grpc::Slice> slices = Split(eleven, {3});
  WireReader reader(slices, eleven.size(), kPrefix);
  const absl::Status status = reader.ReadVarint({eleven.size(), "Msg"}, kMaxVarintBytes, "varint", 7, &value, nullptr);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(status.message(), "Msg: malformed protobuf at byte 0: varint of field 7 longer than 10 bytes in Msg");

  const std::string tag = std::string(5, '\x80') + "\x01";
  const std::vector<grpc::Slice> tag_slices = Split(tag, {});
  WireReader tag_reader(tag_slices, tag.size(), kPrefix);
  Tag t;
  EXPECT_EQ(tag_reader.ReadTag({tag.size(), "Msg"}, &t).message(),
            "Msg: malformed protobuf at byte 0: tag longer than 5 bytes in Msg");
}

TEST(ProtobufWireReader, TruncatedLengthDelimitedFields) {
  struct Case {
    std::string bytes;
    std::string message;
  };
  const std::vector<Case> cases = {
      {std::string("ab") + Field(3, kLengthDelimited) + Varint(9) + "abc",
       "Msg: malformed protobuf at byte 3: length 9 of field 3 runs past the end of Msg (3 bytes left)"},
      {std::string("ab") + Field(3, kLengthDelimited) + "\x80", "Msg: malformed protobuf at byte 3: length of field 3 cut off by the end of Msg"},
      {std::string("ab") + Field(3, kLengthDelimited) + std::string("\x80\x80\x80\x80\x08", 5),
       "Msg: malformed protobuf at byte 3: length 2147483648 of field 3 in Msg is over protobuf's 2 GiB limit"},
  };
  for (const Case& c : cases) {
    for (const std::vector<size_t>& cuts : {std::vector<size_t>{}, EveryByte(c.bytes.size())}) {
      const std::vector<grpc::Slice> slices = Split(c.bytes, cuts);
      WireReader reader(slices, c.bytes.size(), kPrefix);
      const Scope scope{c.bytes.size(), "Msg"};
      reader.bytes().Skip(2);
      Tag tag;
      ASSERT_TRUE(reader.ReadTag(scope, &tag).ok());
      const absl::Status status = reader.SkipValue(tag, scope, 0);
      EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
      EXPECT_EQ(status.message(), c.message);
    }
  }
}

TEST(ProtobufWireReader, InvalidTags) {
  struct Case {
    std::string bytes;
    std::string message;
  };
  const std::vector<Case> cases = {
      {std::string("a") + Varint(MakeTag(9, kVarint) + 6), "Msg: malformed protobuf at byte 1: invalid wire type 6 (field 9) in Msg"},
      {std::string("a") + Varint(MakeTag(9, kVarint) + 7), "Msg: malformed protobuf at byte 1: invalid wire type 7 (field 9) in Msg"},
      {std::string("a") + Field(0, kLengthDelimited), "Msg: malformed protobuf at byte 1: field number 0 (tag 2) in Msg"},
      {"a\x80", "Msg: malformed protobuf at byte 1: tag cut off by the end of Msg"},
  };
  for (const Case& c : cases) {
    const std::vector<grpc::Slice> slices = Split(c.bytes, {1});
    WireReader reader(slices, c.bytes.size(), kPrefix);
    reader.bytes().Skip(1);
    Tag tag;
    const absl::Status status = reader.ReadTag({c.bytes.size(), "Msg"}, &tag);
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
    EXPECT_EQ(status.message(), c.message);
  }
}

TEST(ProtobufWireReader, SkipsAndCopiesEachWireType) {
  const std::string group_body = Field(1, kVarint) + Varint(5) + Field(21, kStartGroup) + Field(2, kFixed32) + "abcd" +
                                 Field(21, kEndGroup);
  const std::vector<std::string> fields = {
      Field(1, kVarint) + std::string("\x81\x80\x00", 3),  // non-minimal: copied as sent
      Field(2, kFixed64) + "12345678",
      Field(3, kLengthDelimited) + Varint(300) + std::string(300, 'z'),
      Field(4, kStartGroup) + group_body + Field(4, kEndGroup),
      Field(5, kFixed32) + "wxyz",
  };
  const std::string sentinel = Field(15, kVarint) + Varint(1);
  for (const std::string& field : fields) {
    const std::string bytes = field + sentinel;
    for (const std::vector<size_t>& cuts : {std::vector<size_t>{}, EveryByte(bytes.size())}) {
      const std::vector<grpc::Slice> slices = Split(bytes, cuts);
      const Scope scope{bytes.size(), "Msg"};
      WireReader skipper(slices, bytes.size(), kPrefix);
      Tag tag;
      ASSERT_TRUE(skipper.ReadTag(scope, &tag).ok());
      ASSERT_TRUE(skipper.SkipValue(tag, scope, 0).ok()) << tag.type();
      EXPECT_EQ(skipper.offset(), field.size()) << "wire type " << tag.type();
      Tag next;
      ASSERT_TRUE(skipper.ReadTag(scope, &next).ok());
      EXPECT_EQ(next.number(), 15u);

      WireReader copier(slices, bytes.size(), kPrefix);
      Tag again;
      ASSERT_TRUE(copier.ReadTag(scope, &again).ok());
      std::string copied = again.raw;
      ASSERT_TRUE(copier.CopyValue(again, scope, 0, &copied).ok());
      EXPECT_EQ(copied, field) << "copied as sent, wire type " << again.type();
    }
  }
}

TEST(ProtobufWireReader, GroupErrors) {
  struct Case {
    std::string bytes;
    std::string message;
  };
  const std::vector<Case> cases = {
      {Field(9, kEndGroup), "Msg: malformed protobuf at byte 0: end-group tag (field 9) without a start-group in Msg"},
      {Field(9, kStartGroup) + Field(1, kVarint) + Varint(1),
       "Msg: malformed protobuf at byte 0: group (field 9) in Msg has no end-group tag"},
      {Field(9, kStartGroup) + Field(8, kEndGroup),
       "Msg: malformed protobuf at byte 1: end-group tag of field 8 closes group (field 9) in Msg"},
  };
  for (const Case& c : cases) {
    const std::vector<grpc::Slice> slices = Split(c.bytes, {});
    WireReader reader(slices, c.bytes.size(), kPrefix);
    const Scope scope{c.bytes.size(), "Msg"};
    Tag tag;
    ASSERT_TRUE(reader.ReadTag(scope, &tag).ok());
    EXPECT_EQ(reader.SkipValue(tag, scope, 0).message(), c.message);
  }
  // protobuf's recursion limit: 100 nested groups parse, 101 do not.
  for (int depth : {100, 101}) {
    std::string bytes;
    for (int i = 0; i < depth; ++i) bytes += Field(30, kStartGroup);
    for (int i = 0; i < depth; ++i) bytes += Field(30, kEndGroup);
    const std::vector<grpc::Slice> slices = Split(bytes, {});
    WireReader reader(slices, bytes.size(), kPrefix);
    const Scope scope{bytes.size(), "Msg"};
    Tag tag;
    ASSERT_TRUE(reader.ReadTag(scope, &tag).ok());
    EXPECT_EQ(reader.SkipValue(tag, scope, 0).ok(), depth <= kRecursionLimit) << depth;
  }
}

TEST(ProtobufWireReader, ConsumeHandsOutBytesWhereTheyLie) {
  const std::string bytes = "abcdefgh";
  const std::vector<grpc::Slice> slices = Split(bytes, {3, 5});
  SliceReader reader(slices, bytes.size());
  reader.Skip(2);
  std::vector<std::string> pieces;
  reader.Consume(5, [&](const uint8_t* src, size_t len) {
    pieces.emplace_back(reinterpret_cast<const char*>(src), len);
    bool inside = false;  // no copy: every piece points into a slice
    for (const grpc::Slice& s : slices) inside |= src >= s.begin() && src + len <= s.end() && len > 0;
    EXPECT_TRUE(inside);
  });
  EXPECT_EQ(pieces, (std::vector<std::string>{"c", "de", "fg"}));
  EXPECT_EQ(reader.remaining(), 1u);
}

TEST(ProtobufWireReader, WriterHelpersMatchProtobuf) {
  using google::protobuf::io::CodedOutputStream;
  for (uint32_t number : {1u, 15u, 16u, 2047u, 536870911u}) {
    for (size_t payload : {size_t{0}, size_t{127}, size_t{128}, size_t{1} << 20}) {
      std::string header;
      AppendLengthDelimitedHeader(&header, number, payload);
      EXPECT_EQ(header, Field(number, kLengthDelimited) + Varint(payload));
      EXPECT_EQ(LengthDelimitedFieldSize(number, payload), header.size() + payload);
      EXPECT_EQ(header.size(), CodedOutputStream::VarintSize32(number << 3) + CodedOutputStream::VarintSize64(payload));
    }
  }
  EXPECT_EQ(Varint(300), "\xAC\x02");
}

}  // namespace
}  // namespace sage::server::protowire
