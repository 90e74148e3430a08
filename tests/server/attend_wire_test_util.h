// Shared by the AttendRequest/AttendResponse wire tests: random messages, slicing into gRPC
// buffers, a counting pool, and protobuf's own parse as the oracle.
#pragma once

#include "server/frontend/grpc/attend_wire.h"

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

namespace wiretest {

using sageserve::v1::AttendRequest;
using sageserve::v1::AttendResponse;
using sageserve::v1::Tensor;

inline constexpr char kMalformedPrefix[] = "AttendRequest: malformed protobuf";

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
    return std::make_shared<HostBlock>(data, size, MemoryKind::kPageable, [data, live = live_] {
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

inline size_t Uniform(Rng& rng, size_t lo, size_t hi) { return std::uniform_int_distribution<size_t>(lo, hi)(rng); }
inline bool Coin(Rng& rng, double p = 0.5) { return std::bernoulli_distribution(p)(rng); }

inline std::string RandomBytes(Rng& rng, size_t n) {
  std::string out(n, '\0');
  for (char& c : out) c = static_cast<char>(rng());
  return out;
}

inline std::string RandomAscii(Rng& rng, size_t max_len) {
  std::string out(Uniform(rng, 0, max_len), '\0');
  for (char& c : out) c = static_cast<char>(Uniform(rng, 0x20, 0x7E));
  return out;
}

// Data lengths from empty to ~100 KB; `max_bytes` caps them (small messages for byte-wise damage).
inline size_t RandomDataSize(Rng& rng, size_t max_bytes) {
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
inline void AddUnknownFields(Rng& rng, google::protobuf::UnknownFieldSet* set, const std::vector<int>& low_numbers,
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

inline Tensor RandomTensor(Rng& rng, size_t max_data) {
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

inline AttendRequest RandomRequest(Rng& rng, size_t max_data = 110000) {
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

inline void DeleteString(void* s) { delete static_cast<std::string*>(s); }

// A refcounted slice owning a copy of `bytes`. Not grpc::Slice(buf, len): gRPC inlines small
// copied slices and the buffer merges neighbouring inlined ones, which would hide 1-byte cuts.
inline grpc::Slice OwnedSlice(std::string_view bytes) {
  auto* owned = new std::string(bytes);
  return grpc::Slice(owned->data(), owned->size(), &DeleteString, owned);
}

inline grpc::ByteBuffer MakeBuffer(const std::string& bytes, Rng& rng, Cut cut) {
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

inline Cut RandomCut(Rng& rng, size_t size) {
  switch (Uniform(rng, 0, 2)) {
    case 0: return Cut::kWhole;
    case 1: return size <= 300000 ? Cut::kBytes : Cut::kRandom;
    default: return Cut::kRandom;
  }
}

inline std::string Flatten(const grpc::ByteBuffer& buffer) {
  std::vector<grpc::Slice> slices;
  EXPECT_TRUE(buffer.Dump(&slices).ok());
  std::string out;
  for (const grpc::Slice& s : slices) out.append(reinterpret_cast<const char*>(s.begin()), s.size());
  return out;
}

inline std::string AsString(std::span<const std::byte> bytes) {
  return std::string(reinterpret_cast<const char*>(bytes.data()), bytes.size());
}

inline size_t AlignUp(size_t n) { return (n + kPayloadAlignment - 1) / kPayloadAlignment * kPayloadAlignment; }

// ---------------------------------------------------------------------------------------------
// The oracle: protobuf's own parse of the bytes.

// Field by field, unknown fields included; a damaged float can be NaN, equal to itself here.
inline bool SameMessage(const google::protobuf::Message& a, const google::protobuf::Message& b) {
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

inline Oracle ProtobufParse(const std::string& bytes) {
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
inline void ExpectSameAsProtobuf(const std::string& bytes, Rng& rng, Cut cut, TestPool& pool, Path path) {
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

}  // namespace wiretest
}  // namespace sage::server
