// ParseAttendRequest against protobuf itself: for any bytes (valid, cut, damaged, merged) cut into
// any slices, the parse succeeds exactly when protobuf's does and then gives protobuf's message
// with q/k/v data moved into one pooled block.
#include "tests/server/attend_wire_test_util.h"

namespace sage::server {
namespace {

using namespace wiretest;  // NOLINT: test helpers

// ---------------------------------------------------------------------------------------------
// Valid requests.

TEST(ParseAttendRequest, RandomRequestsInRandomSlicesMatchProtobuf) {
  Rng rng(20240611);
  TestPool pool;
  for (int i = 0; i < 300; ++i) {
    const std::string bytes = RandomRequest(rng).SerializeAsString();
    const Cut cut = RandomCut(rng, bytes.size());
    SCOPED_TRACE(testing::Message() << "request " << i << ", " << bytes.size() << " bytes, cut "
                                    << static_cast<int>(cut));
    ExpectSameAsProtobuf(bytes, rng, cut, pool, Path::kScanner);
    if (HasFatalFailure()) return;
  }
  EXPECT_EQ(pool.live_blocks(), 0) << "every block is released with its request";
}

TEST(ParseAttendRequest, EveryCutOfSmallRequestsMatchesProtobuf) {
  // All single-cut positions: each varint and length is split once at every byte.
  Rng rng(7);
  TestPool pool;
  const int64_t full_before = attend_wire_internal::full_parse_results.load();
  for (int i = 0; i < 20; ++i) {
    const std::string bytes = RandomRequest(rng, 40).SerializeAsString();
    for (size_t at = 0; at <= bytes.size(); ++at) {
      const grpc::Slice parts[] = {OwnedSlice(std::string_view(bytes).substr(0, at)),
                                   OwnedSlice(std::string_view(bytes).substr(at))};
      const grpc::ByteBuffer buffer(parts, 2);
      const absl::StatusOr<WireAttendRequest> got = ParseAttendRequest(buffer, pool);
      const Oracle oracle = ProtobufParse(bytes);
      ASSERT_TRUE(got.ok()) << got.status();
      EXPECT_EQ(got->header.SerializeAsString(), oracle.header.SerializeAsString()) << "cut at " << at;
      EXPECT_EQ(AsString(got->payloads.q) + AsString(got->payloads.k) + AsString(got->payloads.v),
                oracle.q + oracle.k + oracle.v)
          << "cut at " << at;
    }
  }
  EXPECT_EQ(attend_wire_internal::full_parse_results.load(), full_before) << "the scanner handled every cut";
}

TEST(ParseAttendRequest, EmptyAndUninitializedBuffersAreEmptyRequests) {
  TestPool pool;
  for (const grpc::ByteBuffer& buffer : {grpc::ByteBuffer(), grpc::ByteBuffer(nullptr, 0)}) {
    const absl::StatusOr<WireAttendRequest> got = ParseAttendRequest(buffer, pool);
    ASSERT_TRUE(got.ok()) << got.status();
    EXPECT_EQ(got->header.ByteSizeLong(), 0u);
    EXPECT_FALSE(got->header.has_q());
    EXPECT_TRUE(got->payloads.q.empty() && got->payloads.k.empty() && got->payloads.v.empty());
    EXPECT_TRUE(got->payloads.o.empty() && got->payloads.lse.empty());
    EXPECT_EQ(got->wire_bytes, 0u);
    EXPECT_EQ(pool.last_bytes(), 1u) << "a block is never empty";
  }
}

TEST(ParseAttendRequest, LseRoomOnlyWhenRequested) {
  TestPool pool;
  Rng rng(1);
  AttendRequest r;
  r.mutable_q()->set_data(std::string(4096, 'q'));
  r.mutable_k()->set_data(std::string(100, 'k'));
  r.mutable_v()->set_data(std::string(300, 'v'));
  for (bool lse : {false, true}) {
    r.set_return_lse(lse);
    const absl::StatusOr<WireAttendRequest> got =
        ParseAttendRequest(MakeBuffer(r.SerializeAsString(), rng, Cut::kRandom), pool);
    ASSERT_TRUE(got.ok()) << got.status();
    const std::byte* base = got->payloads.storage->data();
    EXPECT_EQ(got->payloads.k.data() - base, 4096);
    EXPECT_EQ(got->payloads.v.data() - base, 4096 + 256);
    EXPECT_EQ(got->payloads.o.data() - base, 4096 + 256 + 512);
    EXPECT_EQ(got->payloads.o.size(), 4096u);
    EXPECT_EQ(got->payloads.lse.data() - base, 2 * 4096 + 256 + 512);
    EXPECT_EQ(got->payloads.lse.size(), lse ? 128u : 0u);
    EXPECT_EQ(pool.last_bytes(), 2 * 4096 + 256 + 512 + (lse ? 128u : 0u));
  }
}

// ---------------------------------------------------------------------------------------------
// Damaged and unusual input: the outcome is always protobuf's.

std::vector<std::string> SmallRequests(Rng& rng, int count) {
  std::vector<std::string> out;
  for (int i = 0; i < count; ++i) out.push_back(RandomRequest(rng, 60).SerializeAsString());
  return out;
}

TEST(ParseAttendRequest, TruncatedRequestsMatchProtobuf) {
  google::protobuf::LogSilencer quiet;  // protobuf logs each invalid UTF-8 string it refuses
  Rng rng(11);
  TestPool pool;
  for (const std::string& bytes : SmallRequests(rng, 40)) {
    for (size_t len = 0; len < bytes.size(); ++len) {
      SCOPED_TRACE(testing::Message() << "truncated to " << len << " of " << bytes.size());
      // A prefix of one message never repeats a tensor: the scanner answers or protobuf refuses.
      ExpectSameAsProtobuf(bytes.substr(0, len), rng, Coin(rng) ? Cut::kBytes : Cut::kRandom, pool, Path::kScanner);
      if (HasFatalFailure()) return;
    }
  }
}

TEST(ParseAttendRequest, DamagedRequestsMatchProtobuf) {
  google::protobuf::LogSilencer quiet;  // protobuf logs each invalid UTF-8 string it refuses
  Rng rng(12);
  TestPool pool;
  const std::vector<std::string> originals = SmallRequests(rng, 60);
  int refused = 0;
  int accepted = 0;
  for (int i = 0; i < 6000; ++i) {
    std::string bytes = originals[Uniform(rng, 0, originals.size() - 1)];
    if (bytes.empty()) continue;
    for (size_t edits = Uniform(rng, 1, 3); edits > 0; --edits) {
      // Mostly near the front, where tags and lengths are dense.
      const size_t at = Coin(rng) ? Uniform(rng, 0, std::min<size_t>(bytes.size() - 1, 48))
                                  : Uniform(rng, 0, bytes.size() - 1);
      static constexpr char kValues[] = {'\x00', '\x80', '\xFF', '\x7F', '\x08', '\x0B', '\x0C',
                                         '\x12', '\x1A', '\x22', '\x06', '\x07', '\x0F'};
      switch (Uniform(rng, 0, 4)) {
        case 0: bytes[at] = static_cast<char>(bytes[at] ^ (1 << Uniform(rng, 0, 7))); break;
        case 1: bytes[at] = kValues[Uniform(rng, 0, sizeof(kValues) - 1)]; break;
        case 2: bytes[at] = static_cast<char>(rng()); break;
        case 3: bytes.insert(at, 1, kValues[Uniform(rng, 0, sizeof(kValues) - 1)]); break;
        default: bytes.erase(at, 1); break;
      }
      if (bytes.empty()) break;
    }
    SCOPED_TRACE(testing::Message() << "damaged request " << i);
    ExpectSameAsProtobuf(bytes, rng, Coin(rng) ? Cut::kBytes : Cut::kRandom, pool, Path::kAny);
    if (HasFatalFailure()) return;
    (ProtobufParse(bytes).ok ? accepted : refused)++;
  }
  // Both outcomes are well represented, or the comparison proves little.
  EXPECT_GT(refused, 1000);
  EXPECT_GT(accepted, 1000);
}

TEST(ParseAttendRequest, ConcatenatedRequestsMergeLikeProtobuf) {
  google::protobuf::LogSilencer quiet;  // protobuf logs each invalid UTF-8 string it refuses
  // Two messages back to back are one message merged by protobuf's rules: repeated fields append,
  // q/k/v merge (shape appends, the last data wins), scalars take the last value.
  Rng rng(13);
  TestPool pool;
  const int64_t full_before = attend_wire_internal::full_parse_results.load();
  for (int i = 0; i < 200; ++i) {
    std::string bytes = RandomRequest(rng, i % 4 == 0 ? 110000 : 2000).SerializeAsString();
    bytes += RandomRequest(rng, 2000).SerializeAsString();
    if (i % 5 == 0) bytes += RandomRequest(rng, 300).SerializeAsString();
    if (i % 7 == 0) bytes.resize(bytes.size() - Uniform(rng, 1, std::min<size_t>(bytes.size(), 20)));
    SCOPED_TRACE(testing::Message() << "concatenation " << i);
    ExpectSameAsProtobuf(bytes, rng, RandomCut(rng, bytes.size()), pool, Path::kAny);
    if (HasFatalFailure()) return;
  }
  EXPECT_GT(attend_wire_internal::full_parse_results.load() - full_before, 100) << "merges went to protobuf";
}

// Hand-built wire bytes.
std::string Varint(uint64_t v) {
  std::string out;
  for (; v >= 0x80; v >>= 7) out.push_back(static_cast<char>((v & 0x7F) | 0x80));
  out.push_back(static_cast<char>(v));
  return out;
}
std::string Field(uint32_t number, uint32_t type) { return Varint((uint64_t{number} << 3) | type); }
std::string Bytes(uint32_t number, const std::string& value) { return Field(number, 2) + Varint(value.size()) + value; }

TEST(ParseAttendRequest, UnusualButValidEncodingsMatchProtobuf) {
  const std::string dtype = Field(1, 0) + Varint(2);
  const std::string shape = Bytes(2, Varint(5) + Varint(3) + Varint(64));
  struct Case {
    std::string bytes;
    Path path;
  };
  const std::vector<Case> cases = {
      // data twice in one tensor (the last wins), also an empty last one.
      {Bytes(2, dtype + Bytes(3, "abc") + shape + Bytes(3, "de")), Path::kFullParse},
      {Bytes(2, Bytes(3, "abc") + Bytes(3, "")), Path::kFullParse},
      // v, q, k out of order, each once (copied from the slices in wire order).
      {Bytes(4, dtype + Bytes(3, std::string(700, 'v'))) + Bytes(1, "id") + Bytes(2, Bytes(3, "qq") + shape) +
           Bytes(3, Bytes(3, std::string(300, 'k'))),
       Path::kScanner},
      // q twice, k between: protobuf merges the two q.
      {Bytes(2, dtype + Bytes(3, "first")) + Bytes(3, Bytes(3, "kk")) + Bytes(2, shape + Bytes(3, "second")),
       Path::kFullParse},
      {Bytes(2, Bytes(3, "first")) + Bytes(2, shape), Path::kFullParse},
      // data in the wrong wire type is an unknown field of the tensor; q as a varint is unknown too.
      {Bytes(2, Field(3, 0) + Varint(7) + Bytes(3, "real")) + Field(2, 0) + Varint(1), Path::kScanner},
      // Non-minimal varints: a 2-byte tag, a 3-byte length, a 10-byte varint value.
      {std::string("\x92\x00", 2) + std::string("\x84\x80\x00", 3) + Bytes(3, "xy") + Field(7, 0) +
           std::string("\x81\x80\x80\x80\x80\x80\x80\x80\x80\x01", 10),
       Path::kScanner},
      // A 5-byte tag whose bits above 32 protobuf drops: this is q.
      {std::string("\x92\x80\x80\x80\x70", 5) + Varint(4) + Bytes(3, "zz"), Path::kScanner},
      // A 5-byte length (5th byte < 8).
      {Field(2, 2) + std::string("\x84\x80\x80\x80\x00", 5) + Bytes(3, "ab"), Path::kScanner},
      // Groups, at the top and inside q, nested; a group numbered like q is unknown.
      {Field(20, 3) + Field(1, 0) + Varint(5) + Field(21, 3) + Bytes(3, "in") + Field(21, 4) + Field(20, 4) +
           Bytes(2, Field(9, 3) + Bytes(3, "not data") + Field(9, 4) + Bytes(3, "data")),
       Path::kScanner},
      {Field(2, 3) + Bytes(3, "x") + Field(2, 4) + Bytes(2, Bytes(3, "q")), Path::kScanner},
      // Maximal field number; fixed32/fixed64 unknowns inside k.
      {Field(536870911, 0) + Varint(1) + Bytes(3, Field(40, 5) + "abcd" + Field(41, 1) + "abcdefgh" + Bytes(3, "k")),
       Path::kScanner},
  };
  Rng rng(14);
  TestPool pool;
  for (size_t i = 0; i < cases.size(); ++i) {
    for (Cut cut : {Cut::kWhole, Cut::kBytes, Cut::kRandom}) {
      SCOPED_TRACE(testing::Message() << "case " << i);
      ASSERT_TRUE(ProtobufParse(cases[i].bytes).ok) << "case " << i << " should be valid protobuf";
      ExpectSameAsProtobuf(cases[i].bytes, rng, cut, pool, cases[i].path);
    }
  }
}

TEST(ParseAttendRequest, DeepGroupsFollowProtobufsRecursionLimit) {
  Rng rng(15);
  TestPool pool;
  for (int depth : {99, 100, 101}) {
    std::string open, close;
    for (int i = 0; i < depth; ++i) {
      open += Field(30, 3);
      close += Field(30, 4);
    }
    ExpectSameAsProtobuf(open + close + Bytes(2, Bytes(3, "q")), rng, Cut::kRandom, pool, Path::kScanner);
    ExpectSameAsProtobuf(Bytes(2, open + close + Bytes(3, "q")), rng, Cut::kRandom, pool, Path::kScanner);
  }
}

struct BadCase {
  std::string bytes;
  std::string where;  // "at byte N" expected in the message
  std::string what;
};

TEST(ParseAttendRequest, MalformedInputSaysWhereAndWhat) {
  google::protobuf::LogSilencer quiet;  // protobuf logs each invalid UTF-8 string it refuses
  const std::string id = Bytes(1, "id");  // 4 bytes
  const std::vector<BadCase> cases = {
      {id + Field(2, 2) + Varint(5) + "ab", "at byte 5", "runs past the end of AttendRequest"},
      {id + Field(7, 0) + "\x80\x80", "at byte 5", "cut off"},
      {id + std::string("\x80", 1), "at byte 4", "tag cut off"},
      {id + Bytes(2, Bytes(3, "abc") + Field(1, 0)), "at byte 12", "varint of field 1 cut off by the end of q"},
      {id + Bytes(3, Field(3, 2) + Varint(9) + "abc"), "at byte 7", "runs past the end of k (field 3)"},
      {id + Field(9, 6), "at byte 4", "invalid wire type 6"},
      {id + Field(9, 7), "at byte 4", "invalid wire type 7"},
      {id + std::string(1, '\0'), "at byte 4", "field number 0"},
      {id + Field(0, 2) + Varint(0), "at byte 4", "field number 0"},
      {id + Bytes(4, std::string(1, '\0')), "at byte 6", "field number 0"},
      {id + Field(9, 4), "at byte 4", "end-group tag"},
      {id + Field(9, 3) + Field(1, 0) + Varint(1), "at byte 4", "no end-group tag"},
      {id + Field(9, 3) + Field(8, 4), "at byte 5", "closes group"},
      {id + Field(7, 0) + std::string(10, '\x80') + "\x01", "at byte 5", "longer than 10 bytes"},
      {id + std::string(5, '\x80') + "\x01", "at byte 4", "tag longer than 5 bytes"},
      {id + Field(9, 2) + std::string("\x80\x80\x80\x80\x08", 5), "at byte 5", "2 GiB"},
      {id + Field(9, 5) + "abc", "at byte 5", "cut off"},
      // Framing is fine but protobuf refuses the contents: not UTF-8, a bad layer_key.
      {Bytes(1, "\xC3\x28") + Bytes(2, ""), "at byte 0", "field 1 does not parse"},
      {id + Bytes(11, Field(1, 2) + Varint(9)), "at byte 4", "field 11 does not parse"},
  };
  Rng rng(16);
  TestPool pool;
  for (const BadCase& c : cases) {
    SCOPED_TRACE(c.what);
    ASSERT_FALSE(ProtobufParse(c.bytes).ok) << "protobuf accepts the bad case";
    for (Cut cut : {Cut::kWhole, Cut::kBytes}) {
      const absl::StatusOr<WireAttendRequest> got = ParseAttendRequest(MakeBuffer(c.bytes, rng, cut), pool);
      ASSERT_FALSE(got.ok());
      EXPECT_EQ(got.status().code(), absl::StatusCode::kInvalidArgument);
      const std::string message(got.status().message());
      EXPECT_TRUE(absl::StartsWith(message, kMalformedPrefix)) << message;
      EXPECT_TRUE(absl::StrContains(message, c.where)) << message;
      EXPECT_TRUE(absl::StrContains(message, c.what)) << message;
    }
  }
  EXPECT_EQ(pool.acquired(), 0);
}

}  // namespace
}  // namespace sage::server
