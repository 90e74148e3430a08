// EncodeAttendResponse, and the pool behind ParseAttendRequest: responses parse back to the header
// with the data filled in, their data slices point into the block and hold it alive; a pool that
// cannot supply a block fails the parse.
#include "tests/server/attend_wire_test_util.h"

namespace sage::server {
namespace {

using namespace wiretest;  // NOLINT: test helpers

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
