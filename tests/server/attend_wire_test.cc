// ParseAttendRequest / EncodeAttendResponse against protobuf itself: for any bytes (valid, cut,
// damaged, merged) cut into any slices, the parse succeeds exactly when protobuf's does and then
// gives protobuf's message with q/k/v data moved into one pooled block; responses parse back to the
// header with the data filled in, their data slices point into the block and hold it alive.
#include "server/grpc/attend_wire.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <memory>
#include <new>
#include <random>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/strings/match.h"
#include "google/protobuf/stubs/logging.h"
#include "google/protobuf/unknown_field_set.h"
#include "google/protobuf/util/field_comparator.h"
#include "google/protobuf/util/message_differencer.h"
#include "grpcpp/support/slice.h"

namespace sage::server {

// Defined in attend_wire.cc, outside the header: which path answered (see there).
namespace attend_wire_internal {
extern std::atomic<int64_t> full_parse_results;
extern std::atomic<int64_t> scanner_overruled;
}  // namespace attend_wire_internal

namespace {

using sageserve::v1::AttendRequest;
using sageserve::v1::AttendResponse;
using sageserve::v1::Tensor;

constexpr char kMalformedPrefix[] = "AttendRequest: malformed protobuf";

// ---------------------------------------------------------------------------------------------
// A heap pool that counts what it hands out, fills blocks with a marker and can refuse.

class TestPool final : public HostBufferPool {
 public:
  absl::StatusOr<HostBlockRef> Acquire(size_t bytes) override {
    ++acquired_;
    last_bytes_ = bytes;
    if (fail_) return absl::ResourceExhaustedError("test pool: out of memory");
    const size_t size = std::max<size_t>(bytes, 1);
    auto* data = static_cast<std::byte*>(::operator new(size, std::align_val_t{kPayloadAlignment}));
    std::memset(data, 0xA5, size);
    live_->fetch_add(1);
    return std::make_shared<HostBlock>(data, size, HostMemory::kPageable, [data, live = live_] {
      ::operator delete(data, std::align_val_t{kPayloadAlignment});
      live->fetch_sub(1);
    });
  }
  HostBufferPoolStats Stats() const override { return {.acquired = acquired_}; }

  void set_fail(bool fail) { fail_ = fail; }
  int64_t acquired() const { return acquired_; }
  size_t last_bytes() const { return last_bytes_; }
  int live_blocks() const { return live_->load(); }

 private:
  bool fail_ = false;
  int64_t acquired_ = 0;
  size_t last_bytes_ = 0;
  std::shared_ptr<std::atomic<int>> live_ = std::make_shared<std::atomic<int>>(0);
};

// ---------------------------------------------------------------------------------------------
// Random messages.

using Rng = std::mt19937_64;

size_t Uniform(Rng& rng, size_t lo, size_t hi) { return std::uniform_int_distribution<size_t>(lo, hi)(rng); }
bool Coin(Rng& rng, double p = 0.5) { return std::bernoulli_distribution(p)(rng); }

std::string RandomBytes(Rng& rng, size_t n) {
  std::string out(n, '\0');
  for (char& c : out) c = static_cast<char>(rng());
  return out;
}

std::string RandomAscii(Rng& rng, size_t max_len) {
  std::string out(Uniform(rng, 0, max_len), '\0');
  for (char& c : out) c = static_cast<char>(Uniform(rng, 0x20, 0x7E));
  return out;
}

// Data lengths from empty to ~100 KB; `max_bytes` caps them (small messages for byte-wise damage).
size_t RandomDataSize(Rng& rng, size_t max_bytes) {
  size_t n = 0;
  switch (Uniform(rng, 0, 5)) {
    case 0: n = 0; break;
    case 1: n = Uniform(rng, 1, 16); break;
    case 2: n = Uniform(rng, 17, 300); break;
    case 3: n = Uniform(rng, 301, 5000); break;
    case 4: n = Uniform(rng, 5001, 40000); break;
    default: n = Uniform(rng, 90000, 110000); break;
  }
  return std::min(n, max_bytes);
}

// Unknown fields of every wire type, groups (nested) included. `low_numbers` are field numbers
// the message knows, used only with a wire type that makes them unknown.
void AddUnknownFields(Rng& rng, google::protobuf::UnknownFieldSet* set, const std::vector<int>& low_numbers,
                      int depth = 0) {
  const size_t count = Uniform(rng, 1, 3);
  for (size_t i = 0; i < count; ++i) {
    const bool low = !low_numbers.empty() && Coin(rng, 0.3);
    const int number = low ? low_numbers[Uniform(rng, 0, low_numbers.size() - 1)]
                           : (Coin(rng, 0.1) ? 536870911 : static_cast<int>(Uniform(rng, 13, 5000)));
    switch (Uniform(rng, 0, 4)) {
      case 0: set->AddVarint(number, rng() >> Uniform(rng, 0, 63)); break;
      case 1: set->AddFixed32(number, static_cast<uint32_t>(rng())); break;
      case 2: set->AddFixed64(number, rng()); break;
      case 3:
        if (low) {
          set->AddVarint(number, Uniform(rng, 0, 300));
        } else {
          set->AddLengthDelimited(number, RandomBytes(rng, Uniform(rng, 0, 200)));
        }
        break;
      default:
        if (depth < 3) {
          AddUnknownFields(rng, set->AddGroup(number), {}, depth + 1);
        } else {
          set->AddVarint(number, 1);
        }
        break;
    }
  }
}

Tensor RandomTensor(Rng& rng, size_t max_data) {
  Tensor t;
  // proto3 enums are open: out-of-range values survive a parse.
  t.set_dtype(static_cast<sageserve::v1::DType>(Coin(rng, 0.9) ? Uniform(rng, 0, 3) : 77));
  const size_t dims = Uniform(rng, 0, 4);
  for (size_t i = 0; i < dims; ++i) {
    t.add_shape(Coin(rng, 0.9) ? static_cast<int64_t>(Uniform(rng, 0, 70000)) : static_cast<int64_t>(rng()));
  }
  t.set_data(RandomBytes(rng, RandomDataSize(rng, max_data)));
  // Tensor knows 1 (dtype), 2 (shape, packed or not) and 3 (data): 1 and 3 as varints are unknown.
  if (Coin(rng, 0.2)) AddUnknownFields(rng, t.GetReflection()->MutableUnknownFields(&t), {1, 3});
  return t;
}

AttendRequest RandomRequest(Rng& rng, size_t max_data = 110000) {
  AttendRequest r;
  r.set_request_id(RandomAscii(rng, Coin(rng, 0.1) ? 300 : 24));
  if (Coin(rng, 0.85)) *r.mutable_q() = RandomTensor(rng, max_data);
  if (Coin(rng, 0.85)) *r.mutable_k() = RandomTensor(rng, max_data);
  if (Coin(rng, 0.85)) *r.mutable_v() = RandomTensor(rng, max_data);
  for (size_t i = Uniform(rng, 0, 6); i > 0; --i) r.add_cu_seqlens_q(static_cast<int32_t>(rng()));
  for (size_t i = Uniform(rng, 0, 6); i > 0; --i) r.add_cu_seqlens_k(static_cast<int32_t>(Uniform(rng, 0, 5000)));
  r.set_mask(static_cast<sageserve::v1::MaskMode>(Uniform(rng, 0, 3)));
  if (Coin(rng)) r.set_softmax_scale(std::uniform_real_distribution<float>(0.0f, 2.0f)(rng));
  r.set_return_lse(Coin(rng));
  r.set_output_dtype(static_cast<sageserve::v1::DType>(Uniform(rng, 0, 3)));
  if (Coin(rng, 0.7)) {
    auto* key = r.mutable_layer_key();
    key->set_model(RandomAscii(rng, 16));
    if (Coin(rng)) key->set_layer(static_cast<int32_t>(Uniform(rng, 0, 80)));
    if (Coin(rng)) key->set_timestep(static_cast<int32_t>(rng()));
  }
  r.set_recipe(static_cast<sageserve::v1::Recipe>(Uniform(rng, 0, 4)));
  // Unknown fields, including 2/3/4 (q/k/v) sent as varints, fixed values or groups.
  if (Coin(rng, 0.4)) AddUnknownFields(rng, r.GetReflection()->MutableUnknownFields(&r), {1, 2, 3, 4, 7, 11});
  return r;
}

// ---------------------------------------------------------------------------------------------
// Slicing: the same bytes as one slice, all 1-byte slices, or random cuts (many tiny ones, so
// varints and lengths straddle slice boundaries), sometimes with empty slices between.

enum class Cut { kWhole, kBytes, kRandom };

void DeleteString(void* s) { delete static_cast<std::string*>(s); }

// A refcounted slice owning a copy of `bytes`. Not grpc::Slice(buf, len): gRPC inlines small
// copied slices and the buffer merges neighbouring inlined ones, which would hide 1-byte cuts.
grpc::Slice OwnedSlice(std::string_view bytes) {
  auto* owned = new std::string(bytes);
  return grpc::Slice(owned->data(), owned->size(), &DeleteString, owned);
}

grpc::ByteBuffer MakeBuffer(const std::string& bytes, Rng& rng, Cut cut) {
  std::vector<grpc::Slice> slices;
  size_t pos = 0;
  while (pos < bytes.size()) {
    size_t n = bytes.size() - pos;
    if (cut == Cut::kBytes) {
      n = 1;
    } else if (cut == Cut::kRandom) {
      switch (Uniform(rng, 0, 9)) {
        case 0: case 1: case 2: case 3: case 4: n = 1; break;
        case 5: case 6: n = Uniform(rng, 2, 16); break;
        case 7: case 8: n = Uniform(rng, 17, 4096); break;
        default: n = Uniform(rng, 4097, 65536); break;
      }
      n = std::min(n, bytes.size() - pos);
      if (Coin(rng, 0.02)) slices.push_back(OwnedSlice({}));
    }
    slices.push_back(OwnedSlice(std::string_view(bytes).substr(pos, n)));
    pos += n;
  }
  grpc::ByteBuffer buffer(slices.data(), slices.size());
  std::vector<grpc::Slice> dumped;
  EXPECT_TRUE(buffer.Dump(&dumped).ok());
  EXPECT_EQ(dumped.size(), slices.size()) << "the parser sees the slices as cut";
  return buffer;
}

Cut RandomCut(Rng& rng, size_t size) {
  switch (Uniform(rng, 0, 2)) {
    case 0: return Cut::kWhole;
    case 1: return size <= 300000 ? Cut::kBytes : Cut::kRandom;
    default: return Cut::kRandom;
  }
}

std::string Flatten(const grpc::ByteBuffer& buffer) {
  std::vector<grpc::Slice> slices;
  EXPECT_TRUE(buffer.Dump(&slices).ok());
  std::string out;
  for (const grpc::Slice& s : slices) out.append(reinterpret_cast<const char*>(s.begin()), s.size());
  return out;
}

std::string AsString(std::span<const std::byte> bytes) {
  return std::string(reinterpret_cast<const char*>(bytes.data()), bytes.size());
}

size_t AlignUp(size_t n) { return (n + kPayloadAlignment - 1) / kPayloadAlignment * kPayloadAlignment; }

// ---------------------------------------------------------------------------------------------
// The oracle: protobuf's own parse of the bytes.

// Field by field, unknown fields included; a damaged float can be NaN, equal to itself here.
bool SameMessage(const google::protobuf::Message& a, const google::protobuf::Message& b) {
  google::protobuf::util::DefaultFieldComparator comparator;
  comparator.set_treat_nan_as_equal(true);
  google::protobuf::util::MessageDifferencer differencer;
  differencer.set_field_comparator(&comparator);
  return differencer.Compare(a, b);
}

struct Oracle {
  bool ok = false;
  AttendRequest header;  // data cleared
  std::string q, k, v;
};

Oracle ProtobufParse(const std::string& bytes) {
  Oracle o;
  o.ok = o.header.ParseFromString(bytes);
  if (!o.ok) return o;
  o.q = o.header.q().data();
  o.k = o.header.k().data();
  o.v = o.header.v().data();
  if (o.header.has_q()) o.header.mutable_q()->clear_data();
  if (o.header.has_k()) o.header.mutable_k()->clear_data();
  if (o.header.has_v()) o.header.mutable_v()->clear_data();
  return o;
}

// Which path must answer a valid request: the scanner (one tensor field each, the usual case),
// protobuf's full parse (a tensor or its data sent twice), or either (random damage).
enum class Path { kScanner, kFullParse, kAny };

// Parses `bytes` cut by `cut` and checks it against protobuf: same success, same header (unknown
// fields and their order included), same payloads, the documented block layout. The scanner must
// never call malformed what protobuf accepts (its error path would hide that otherwise).
void ExpectSameAsProtobuf(const std::string& bytes, Rng& rng, Cut cut, TestPool& pool, Path path) {
  const Oracle oracle = ProtobufParse(bytes);
  const grpc::ByteBuffer buffer = MakeBuffer(bytes, rng, cut);
  const int64_t acquired_before = pool.acquired();
  const int64_t full_before = attend_wire_internal::full_parse_results.load();
  const int64_t overruled_before = attend_wire_internal::scanner_overruled.load();
  const absl::StatusOr<WireAttendRequest> got = ParseAttendRequest(buffer, pool);
  EXPECT_EQ(attend_wire_internal::scanner_overruled.load(), overruled_before)
      << "the scanner refused what protobuf accepts";
  if (oracle.ok && path != Path::kAny) {
    EXPECT_EQ(attend_wire_internal::full_parse_results.load() - full_before, path == Path::kFullParse ? 1 : 0)
        << (path == Path::kScanner ? "the scanner did not handle a plain request"
                                   : "a repeated tensor was not merged by protobuf");
  }
  ASSERT_EQ(got.ok(), oracle.ok) << (got.ok() ? std::string("parsed what protobuf refuses")
                                              : std::string(got.status().message()));
  if (!got.ok()) {
    EXPECT_EQ(got.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_TRUE(absl::StartsWith(got.status().message(), kMalformedPrefix)) << got.status();
    EXPECT_EQ(pool.acquired(), acquired_before) << "no block for a refused request";
    return;
  }
  EXPECT_EQ(pool.acquired(), acquired_before + 1) << "one block per request";
  const WireAttendRequest& w = *got;
  EXPECT_EQ(w.header.SerializeAsString(), oracle.header.SerializeAsString());
  EXPECT_TRUE(SameMessage(w.header, oracle.header));
  EXPECT_EQ(w.header.has_q(), oracle.header.has_q());
  EXPECT_EQ(w.header.has_k(), oracle.header.has_k());
  EXPECT_EQ(w.header.has_v(), oracle.header.has_v());
  EXPECT_TRUE(w.header.q().data().empty() && w.header.k().data().empty() && w.header.v().data().empty());
  EXPECT_EQ(w.wire_bytes, bytes.size());
  ASSERT_EQ(w.payloads.q.size(), oracle.q.size());
  ASSERT_EQ(w.payloads.k.size(), oracle.k.size());
  ASSERT_EQ(w.payloads.v.size(), oracle.v.size());
  EXPECT_TRUE(AsString(w.payloads.q) == oracle.q) << "q payload differs";
  EXPECT_TRUE(AsString(w.payloads.k) == oracle.k) << "k payload differs";
  EXPECT_TRUE(AsString(w.payloads.v) == oracle.v) << "v payload differs";

  // Layout: q at 0, then k, v, o, lse each at the next aligned offset; one block holds all.
  ASSERT_NE(w.payloads.storage, nullptr);
  const std::byte* base = w.payloads.storage->data();
  const size_t k_at = AlignUp(oracle.q.size());
  const size_t v_at = AlignUp(k_at + oracle.k.size());
  const size_t o_at = AlignUp(v_at + oracle.v.size());
  const size_t lse_at = AlignUp(o_at + oracle.q.size());
  const size_t lse_size = oracle.header.return_lse() ? oracle.q.size() / 32 : 0;
  EXPECT_EQ(w.payloads.q.data(), base);
  EXPECT_EQ(w.payloads.k.data(), base + k_at);
  EXPECT_EQ(w.payloads.v.data(), base + v_at);
  EXPECT_EQ(w.payloads.o.data(), base + o_at);
  EXPECT_EQ(w.payloads.lse.data(), base + lse_at);
  EXPECT_EQ(w.payloads.o.size(), oracle.q.size());
  EXPECT_EQ(w.payloads.lse.size(), lse_size);
  EXPECT_EQ(pool.last_bytes(), std::max<size_t>(lse_at + lse_size, 1));
  EXPECT_GE(w.payloads.storage->size(), pool.last_bytes());
  for (size_t offset : {k_at, v_at, o_at, lse_at}) EXPECT_EQ(offset % kPayloadAlignment, 0u);
}

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

// ---------------------------------------------------------------------------------------------
// The pool.

TEST(ParseAttendRequest, PoolFailurePropagates) {
  Rng rng(17);
  TestPool pool;
  pool.set_fail(true);
  AttendRequest r;
  r.mutable_q()->set_data("0123456789");
  const std::string once = r.SerializeAsString();
  for (const std::string& bytes : {once, once + once}) {  // the fast path and protobuf's merge
    const absl::StatusOr<WireAttendRequest> got = ParseAttendRequest(MakeBuffer(bytes, rng, Cut::kRandom), pool);
    ASSERT_FALSE(got.ok());
    EXPECT_EQ(got.status().code(), absl::StatusCode::kResourceExhausted);
    EXPECT_TRUE(absl::StrContains(got.status().message(), "test pool: out of memory")) << got.status();
  }
  EXPECT_EQ(pool.acquired(), 2);
  EXPECT_EQ(pool.live_blocks(), 0);
}

// ---------------------------------------------------------------------------------------------
// Responses.

AttendResponse RandomResponseHeader(Rng& rng) {
  AttendResponse h;
  h.set_request_id(RandomAscii(rng, 20));
  if (Coin(rng, 0.9)) {
    h.mutable_o()->set_dtype(static_cast<sageserve::v1::DType>(Uniform(rng, 0, 3)));
    for (size_t i = Uniform(rng, 0, 3); i > 0; --i) {
      h.mutable_o()->add_shape(static_cast<int64_t>(Uniform(rng, 0, 9999)));
    }
  }
  if (Coin(rng)) {
    h.mutable_lse()->set_dtype(sageserve::v1::DTYPE_FP32);
    for (size_t i = Uniform(rng, 0, 2); i > 0; --i) {
      h.mutable_lse()->add_shape(static_cast<int64_t>(Uniform(rng, 1, 999)));
    }
  }
  h.set_recipe(static_cast<sageserve::v1::Recipe>(Uniform(rng, 0, 4)));
  if (Coin(rng)) {
    h.mutable_timings()->set_queued_us(static_cast<int64_t>(Uniform(rng, 0, 1000000)));
    h.mutable_timings()->set_compute_us(static_cast<int64_t>(Uniform(rng, 0, 1000000)));
  }
  if (Coin(rng, 0.2)) {
    h.mutable_status()->set_code(static_cast<int32_t>(Uniform(rng, 0, 16)));
    h.mutable_status()->set_message(RandomAscii(rng, 40));
  }
  if (Coin(rng, 0.2)) AddUnknownFields(rng, h.GetReflection()->MutableUnknownFields(&h), {});
  if (Coin(rng, 0.1) && h.has_o()) {
    AddUnknownFields(rng, h.mutable_o()->GetReflection()->MutableUnknownFields(h.mutable_o()), {});
  }
  return h;
}

TEST(EncodeAttendResponse, ParsesBackToTheHeaderWithDataWithoutCopyingIt) {
  Rng rng(21);
  TestPool pool;
  for (int i = 0; i < 300; ++i) {
    SCOPED_TRACE(testing::Message() << "response " << i);
    const AttendResponse header = RandomResponseHeader(rng);
    const size_t o_bytes = RandomDataSize(rng, 110000);
    const size_t lse_bytes = header.has_lse() && Coin(rng, 0.8) ? RandomDataSize(rng, 5000) : 0;
    HostBlockRef block = *pool.Acquire(AlignUp(o_bytes) + lse_bytes);
    const std::string o_value = RandomBytes(rng, o_bytes);
    const std::string lse_value = RandomBytes(rng, lse_bytes);
    std::memcpy(block->data(), o_value.data(), o_bytes);
    std::memcpy(block->data() + AlignUp(o_bytes), lse_value.data(), lse_bytes);
    const std::span<const std::byte> o_data(block->data(), o_bytes);
    const std::span<const std::byte> lse_data(block->data() + AlignUp(o_bytes), lse_bytes);

    std::vector<grpc::Slice> dumped;
    {
      const grpc::ByteBuffer buffer = EncodeAttendResponse(header, o_data, lse_data, block);
      const long borrowed = (o_bytes > 0 ? 1 : 0) + (lse_bytes > 0 ? 1 : 0);
      EXPECT_EQ(block.use_count(), 1 + borrowed) << "each data slice holds the block";
      EXPECT_EQ(buffer.Length(), AttendResponseWireSize(header, o_bytes, lse_bytes));

      AttendResponse parsed;
      const std::string wire = Flatten(buffer);
      EXPECT_EQ(wire.size(), buffer.Length());
      ASSERT_TRUE(parsed.ParseFromString(wire));
      AttendResponse expected = header;
      if (header.has_o() || o_bytes > 0) expected.mutable_o()->set_data(o_value);
      if (header.has_lse() || lse_bytes > 0) expected.mutable_lse()->set_data(lse_value);
      EXPECT_EQ(parsed.SerializeAsString(), expected.SerializeAsString());
      EXPECT_TRUE(SameMessage(parsed, expected));
      EXPECT_EQ(parsed.has_lse(), header.has_lse());

      ASSERT_TRUE(buffer.Dump(&dumped).ok());
      const auto points_at = [&dumped](std::span<const std::byte> data) {
        return std::any_of(dumped.begin(), dumped.end(), [&](const grpc::Slice& s) {
          return static_cast<const void*>(s.begin()) == data.data() && s.size() == data.size();
        });
      };
      EXPECT_TRUE(o_bytes == 0 || points_at(o_data)) << "o data is sent from the block";
      EXPECT_TRUE(lse_bytes == 0 || points_at(lse_data)) << "lse data is sent from the block";
    }
    // The buffer is gone; slices dumped from it still hold the block.
    EXPECT_EQ(block.use_count(), 1 + (o_bytes > 0 ? 1 : 0) + (lse_bytes > 0 ? 1 : 0));
    dumped.clear();
    EXPECT_EQ(block.use_count(), 1) << "released with the last slice";
  }
  EXPECT_EQ(pool.live_blocks(), 0);
}

TEST(EncodeAttendResponse, BlockOutlivesTheCallerUntilSent) {
  TestPool pool;
  HostBlockRef block = *pool.Acquire(512);
  std::memset(block->data(), 'o', 512);
  AttendResponse header;
  header.mutable_o()->add_shape(512);
  grpc::ByteBuffer buffer = EncodeAttendResponse(header, std::span<const std::byte>(block->data(), 512), {}, block);
  block.reset();  // the handler is done; gRPC still holds the response
  EXPECT_EQ(pool.live_blocks(), 1);
  AttendResponse parsed;
  ASSERT_TRUE(parsed.ParseFromString(Flatten(buffer)));
  EXPECT_EQ(parsed.o().data(), std::string(512, 'o'));
  EXPECT_FALSE(parsed.has_lse());
  buffer.Clear();  // sent
  EXPECT_EQ(pool.live_blocks(), 0);
}

TEST(EncodeAttendResponse, EmptyResponseAndStaleHeaderData) {
  TestPool pool;
  HostBlockRef block = *pool.Acquire(64);
  std::memset(block->data(), 'n', 64);
  const std::span<const std::byte> data(block->data(), 64);
  // No o/lse at all.
  AttendResponse empty;
  const grpc::ByteBuffer none = EncodeAttendResponse(empty, {}, {}, block);
  EXPECT_EQ(none.Length(), 0u);
  EXPECT_EQ(AttendResponseWireSize(empty, 0, 0), 0u);
  // Data given for an o the header lacks is still sent (never silently dropped).
  const grpc::ByteBuffer implied = EncodeAttendResponse(empty, data, {}, block);
  AttendResponse parsed;
  ASSERT_TRUE(parsed.ParseFromString(Flatten(implied)));
  EXPECT_EQ(parsed.o().data(), std::string(64, 'n'));
  EXPECT_EQ(implied.Length(), AttendResponseWireSize(empty, 64, 0));
  // A header that (against the contract) carries data: the given span wins, or nothing if empty.
  AttendResponse stale;
  stale.mutable_o()->set_data("stale");
  stale.mutable_lse()->set_data("stale lse");
  for (size_t n : {size_t{0}, size_t{64}}) {
    const grpc::ByteBuffer out = EncodeAttendResponse(stale, data.first(n), data.first(n / 2), block);
    ASSERT_TRUE(parsed.ParseFromString(Flatten(out)));
    EXPECT_EQ(parsed.o().data(), std::string(n, 'n'));
    EXPECT_EQ(parsed.lse().data(), std::string(n / 2, 'n'));
    EXPECT_EQ(out.Length(), AttendResponseWireSize(stale, n, n / 2));
  }
}

// ---------------------------------------------------------------------------------------------
// Round trip: a request's block carries the response's O out.

TEST(AttendWire, RequestBlockCarriesTheResponse) {
  Rng rng(31);
  TestPool pool;
  AttendRequest request;
  request.set_request_id("round-trip");
  request.mutable_q()->set_dtype(sageserve::v1::DTYPE_FP16);
  request.mutable_q()->set_data(RandomBytes(rng, 8192));
  request.mutable_k()->set_data(RandomBytes(rng, 4096));
  request.mutable_v()->set_data(RandomBytes(rng, 4096));
  request.set_return_lse(true);
  absl::StatusOr<WireAttendRequest> got =
      ParseAttendRequest(MakeBuffer(request.SerializeAsString(), rng, Cut::kRandom), pool);
  ASSERT_TRUE(got.ok()) << got.status();
  std::memcpy(got->payloads.o.data(), got->payloads.q.data(), got->payloads.q.size());  // "attention"
  std::memset(got->payloads.lse.data(), 0x3F, got->payloads.lse.size());
  AttendResponse header;
  header.set_request_id(got->header.request_id());
  *header.mutable_o() = got->header.q();
  header.mutable_lse()->set_dtype(sageserve::v1::DTYPE_FP32);
  grpc::ByteBuffer response = EncodeAttendResponse(header, got->payloads.o, got->payloads.lse, got->payloads.storage);
  *got = WireAttendRequest{};  // the request is done; the response keeps the block
  EXPECT_EQ(pool.live_blocks(), 1);
  AttendResponse parsed;
  ASSERT_TRUE(parsed.ParseFromString(Flatten(response)));
  EXPECT_EQ(parsed.o().data(), request.q().data());
  EXPECT_EQ(parsed.lse().data(), std::string(8192 / 32, '\x3F'));
  response.Clear();
  EXPECT_EQ(pool.live_blocks(), 0);
}

}  // namespace
}  // namespace sage::server
