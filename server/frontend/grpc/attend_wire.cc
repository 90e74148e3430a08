#include "server/frontend/grpc/attend_wire.h"

#include <algorithm>
#include <array>
#include <atomic>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "grpcpp/support/slice.h"
#include "server/backend/dma_copy.h"
#include "server/frontend/grpc/protobuf_wire_reader.h"

namespace sage::server {

// Not in the header: the tests read these to see that the scanner, not protobuf's full parse,
// handled a request (the two give the same result, so nothing else can tell).
namespace attend_wire_internal {
std::atomic<int64_t> full_parse_results{0};  // requests answered from protobuf's full parse
std::atomic<int64_t> scanner_overruled{0};   // of those: the scanner said malformed, protobuf did not
}  // namespace attend_wire_internal

namespace {

using sageserve::v1::AttendRequest;
using sageserve::v1::AttendResponse;
using sageserve::v1::Tensor;

using protowire::kLengthDelimited;
using protowire::LengthDelimitedFieldSize;
using protowire::Scope;
using protowire::SliceReader;
using protowire::Tag;
using protowire::WireReader;

constexpr absl::string_view kMalformed = "AttendRequest: malformed protobuf";

// AttendRequest's tensor fields (q, k, v) and Tensor's bytes field.
constexpr uint32_t kFirstTensorField = 2;
constexpr uint32_t kLastTensorField = 4;
constexpr uint32_t kTensorDataField = 3;
// AttendResponse's tensor fields.
constexpr uint32_t kResponseOField = 2;
constexpr uint32_t kResponseLseField = 3;

constexpr std::array<absl::string_view, 3> kTensorScopes = {"q (field 2)", "k (field 3)", "v (field 4)"};

// Copies `n` bytes at the reader's position into `dst`; the block is DMA'd to the GPU next.
void CopyForDmaFrom(SliceReader& reader, std::byte* dst, size_t n) {
  reader.Consume(n, [&dst](const uint8_t* src, size_t len) {
    CopyForDma(dst, src, len);
    dst += len;
  });
}

// Where one tensor's data lies in the message (absolute offset, length).
struct Extent {
  size_t offset = 0;
  size_t size = 0;
};

// One top-level field: where it was sent and where its (stripped) bytes are in the header buffer.
struct TopField {
  size_t offset;
  uint32_t number;
  size_t begin;
  size_t end;
};

// Walks the AttendRequest wire format over the slices: q/k/v.data are located but not copied, every
// other byte goes, as sent, into `stripped` (each tensor re-framed without its data). Framing errors
// are reported with their offset; field contents (UTF-8, nested messages, packed values) are left
// to protobuf's parse of `stripped`, which sees them unchanged.
class RequestScanner {
 public:
  RequestScanner(const std::vector<grpc::Slice>& slices, size_t total)
      : reader_(slices, total, kMalformed), total_(total) {}

  // Not ok: malformed framing, INVALID_ARGUMENT saying where.
  absl::Status Scan() {
    const Scope top{total_, "AttendRequest"};
    while (reader_.offset() < total_) {
      const size_t field_offset = reader_.offset();
      const size_t begin = stripped_.size();
      Tag tag;
      if (absl::Status s = reader_.ReadTag(top, &tag); !s.ok()) return s;
      if (tag.type() == kLengthDelimited && tag.number() >= kFirstTensorField && tag.number() <= kLastTensorField) {
        if (absl::Status s = ScanTensor(tag, top); !s.ok()) return s;
      } else {
        stripped_.append(tag.raw);
        if (absl::Status s = reader_.CopyValue(tag, top, 0, &stripped_); !s.ok()) return s;
      }
      fields_.push_back({field_offset, tag.number(), begin, stripped_.size()});
    }
    return absl::OkStatus();
  }

  // A tensor field sent twice, or a data field twice in one tensor: protobuf's merge decides.
  bool needs_full_parse() const { return needs_full_parse_; }
  const std::string& stripped() const { return stripped_; }
  const std::array<Extent, 3>& payloads() const { return payloads_; }
  const std::vector<TopField>& fields() const { return fields_; }

 private:
  // q, k or v: its fields other than data, re-framed with the new length; data only located.
  absl::Status ScanTensor(const Tag& tag, const Scope& top) {
    const size_t index = tag.number() - kFirstTensorField;
    if (seen_[index]) needs_full_parse_ = true;
    seen_[index] = true;
    uint64_t length = 0;
    if (absl::Status s = reader_.ReadLength(top, tag.number(), &length, nullptr); !s.ok()) return s;
    const Scope scope{reader_.offset() + static_cast<size_t>(length), kTensorScopes[index]};
    tensor_.clear();
    bool has_data = false;
    while (reader_.offset() < scope.end) {
      Tag inner;
      if (absl::Status s = reader_.ReadTag(scope, &inner); !s.ok()) return s;
      if (inner.number() == kTensorDataField && inner.type() == kLengthDelimited) {
        uint64_t size = 0;
        if (absl::Status s = reader_.ReadLength(scope, kTensorDataField, &size, nullptr); !s.ok()) return s;
        if (has_data) needs_full_parse_ = true;
        has_data = true;
        payloads_[index] = {reader_.offset(), static_cast<size_t>(size)};
        reader_.bytes().Skip(static_cast<size_t>(size));  // copied later, once, into the block
      } else {
        tensor_.append(inner.raw);
        // depth 1: inside the tensor message, for protobuf's recursion limit.
        if (absl::Status s = reader_.CopyValue(inner, scope, 1, &tensor_); !s.ok()) return s;
      }
    }
    stripped_.append(tag.raw);  // as sent: a non-minimal tag stays so
    protowire::AppendVarint(&stripped_, tensor_.size());
    stripped_.append(tensor_);
    return absl::OkStatus();
  }

  WireReader reader_;
  size_t total_;
  std::string stripped_;
  std::string tensor_;  // the tensor being re-framed
  std::array<Extent, 3> payloads_{};
  std::array<bool, 3> seen_{};
  bool needs_full_parse_ = false;
  std::vector<TopField> fields_;
};

// The scanner found no framing error but protobuf refused the message: name the first top-level
// field protobuf refuses on its own (a string that is not UTF-8, a bad nested message).
std::string DiagnoseContents(const RequestScanner& scanner) {
  const std::string& stripped = scanner.stripped();
  for (const TopField& field : scanner.fields()) {
    AttendRequest probe;
    if (!probe.ParseFromArray(stripped.data() + field.begin, static_cast<int>(field.end - field.begin))) {
      return absl::StrCat(kMalformed, " at byte ", field.offset, ": field ", field.number,
                          " does not parse (a string that is not UTF-8, or a malformed nested message or packed "
                          "field)");
    }
  }
  return absl::StrCat(kMalformed, ": protobuf rejects the message");
}

size_t AlignUp(size_t value) { return (value + kPayloadAlignment - 1) / kPayloadAlignment * kPayloadAlignment; }

// Offsets of k, v, o, lse in the block and its total size; sizes are bounded by the message (at
// most 2 GiB), the checks keep that true for any size_t.
struct BlockLayout {
  size_t k = 0, v = 0, o = 0, lse = 0, lse_size = 0, total = 0;
};

absl::StatusOr<BlockLayout> LayOut(size_t q, size_t k, size_t v, bool return_lse) {
  constexpr size_t kMax = SIZE_MAX / 8;
  if (q > kMax || k > kMax || v > kMax) {
    return absl::ResourceExhaustedError("AttendRequest: tensors too large for one host block");
  }
  BlockLayout layout;
  layout.k = AlignUp(q);
  layout.v = AlignUp(layout.k + k);
  layout.o = AlignUp(layout.v + v);
  layout.lse = AlignUp(layout.o + q);
  layout.lse_size = return_lse ? q / 32 : 0;
  layout.total = std::max<size_t>(layout.lse + layout.lse_size, 1);
  return layout;
}

// One block for the request: q/k/v copied in by `fill(index, destination)`, o and lse reserved.
template <typename Fill>
absl::StatusOr<RequestPayloads> FillBlock(const std::array<size_t, 3>& sizes, bool return_lse, HostBufferPool& pool,
                                          Fill&& fill) {
  absl::StatusOr<BlockLayout> layout = LayOut(sizes[0], sizes[1], sizes[2], return_lse);
  if (!layout.ok()) return layout.status();
  absl::StatusOr<HostBlockRef> block = pool.Acquire(layout->total);
  if (!block.ok()) return block.status();
  if (*block == nullptr || (*block)->size() < layout->total) {
    return absl::InternalError("AttendRequest: host buffer pool returned a block smaller than requested");
  }
  std::byte* base = (*block)->data();
  const std::array<size_t, 3> offsets = {0, layout->k, layout->v};
  for (size_t i = 0; i < 3; ++i) fill(i, base + offsets[i]);
  RequestPayloads payloads;
  payloads.storage = std::move(*block);
  payloads.q = {base, sizes[0]};
  payloads.k = {base + layout->k, sizes[1]};
  payloads.v = {base + layout->v, sizes[2]};
  payloads.o = {base + layout->o, sizes[0]};
  payloads.lse = {base + layout->lse, layout->lse_size};
  return payloads;
}

// protobuf's full parse of the message, for what the scanner leaves to protobuf. Parsing the flat
// bytes (not a stream) keeps ParseFromString's rules, e.g. a 0 tag is an error.
bool ParseFull(const std::vector<grpc::Slice>& slices, size_t total, AttendRequest* message) {
  if (slices.size() == 1) return message->ParseFromArray(slices[0].begin(), static_cast<int>(total));
  std::string flat;
  flat.reserve(total);
  for (const grpc::Slice& slice : slices) flat.append(reinterpret_cast<const char*>(slice.begin()), slice.size());
  return message->ParseFromString(flat);
}

absl::StatusOr<WireAttendRequest> FromFullParse(AttendRequest message, HostBufferPool& pool, size_t wire_bytes) {
  const std::array<const Tensor*, 3> tensors = {&message.q(), &message.k(), &message.v()};
  const std::array<size_t, 3> sizes = {tensors[0]->data().size(), tensors[1]->data().size(),
                                       tensors[2]->data().size()};
  absl::StatusOr<RequestPayloads> payloads =
      FillBlock(sizes, message.return_lse(), pool, [&](size_t i, std::byte* dst) {
        if (sizes[i] > 0) CopyForDma(dst, tensors[i]->data().data(), sizes[i]);
      });
  if (!payloads.ok()) return payloads.status();
  // has_x() guards keep an absent tensor absent.
  if (message.has_q()) message.mutable_q()->clear_data();
  if (message.has_k()) message.mutable_k()->clear_data();
  if (message.has_v()) message.mutable_v()->clear_data();
  WireAttendRequest out;
  out.header = std::move(message);
  out.payloads = std::move(*payloads);
  out.wire_bytes = wire_bytes;
  return out;
}

// --- response ---

// Bytes of `tensor` serialized without its data field.
size_t TensorMetaSize(const Tensor& tensor) {
  size_t size = tensor.ByteSizeLong();
  if (const size_t n = tensor.data().size(); n > 0) size -= LengthDelimitedFieldSize(kTensorDataField, n);
  return size;
}

size_t DataFieldSize(size_t n) { return n == 0 ? 0 : LengthDelimitedFieldSize(kTensorDataField, n); }

size_t TensorFieldSize(uint32_t number, const Tensor& tensor, size_t data_bytes) {
  return LengthDelimitedFieldSize(number, TensorMetaSize(tensor) + DataFieldSize(data_bytes));
}

// The tensor's field is sent when the header has it or there is data for it (never dropped).
bool SendsTensor(bool present, size_t data_bytes) { return present || data_bytes > 0; }

void ReleaseBlockRef(void* user_data) { delete static_cast<HostBlockRef*>(user_data); }

// A slice over `data` that holds its own reference to the block until gRPC drops the slice.
grpc::Slice BorrowSlice(std::span<const std::byte> data, const HostBlockRef& keep_alive) {
  // gRPC's slice constructor takes void*; sent slices are only read.
  return grpc::Slice(const_cast<std::byte*>(data.data()), data.size(), &ReleaseBlockRef, new HostBlockRef(keep_alive));
}

// Appends `tensor` (minus data) as field `number` to `pending`; the data goes out as its own slice.
void AppendTensorField(uint32_t number, const Tensor& tensor, std::span<const std::byte> data,
                       const HostBlockRef& keep_alive, std::string* pending, std::vector<grpc::Slice>* slices) {
  protowire::AppendLengthDelimitedHeader(pending, number, TensorMetaSize(tensor) + DataFieldSize(data.size()));
  if (tensor.data().empty()) {
    tensor.AppendToString(pending);
  } else {  // not expected (the header carries no data), but then `data` must still win
    Tensor meta = tensor;
    meta.clear_data();
    meta.AppendToString(pending);
  }
  if (data.empty()) return;  // proto3: empty bytes are not sent
  protowire::AppendLengthDelimitedHeader(pending, kTensorDataField, data.size());
  slices->emplace_back(*pending);
  pending->clear();
  slices->push_back(BorrowSlice(data, keep_alive));
}

}  // namespace

absl::StatusOr<WireAttendRequest> ParseAttendRequest(const grpc::ByteBuffer& buffer, HostBufferPool& pool) {
  std::vector<grpc::Slice> slices;
  if (buffer.Valid()) {  // a default-constructed buffer is an empty message
    if (const grpc::Status status = buffer.Dump(&slices); !status.ok()) {
      return absl::InternalError(absl::StrCat("AttendRequest: cannot read the message: ", status.error_message()));
    }
  }
  size_t total = 0;
  for (const grpc::Slice& slice : slices) total += slice.size();
  if (total > protowire::kMaxLength) {
    return absl::InvalidArgumentError(
        absl::StrCat(kMalformed, ": ", total, " bytes is over protobuf's 2 GiB message limit"));
  }

  RequestScanner scanner(slices, total);
  const absl::Status framing = scanner.Scan();
  const bool framed = framing.ok();
  if (framed && !scanner.needs_full_parse()) {
    WireAttendRequest out;
    if (out.header.ParseFromString(scanner.stripped())) {
      const std::array<Extent, 3>& extents = scanner.payloads();
      // Copy in wire order with one pass over the slices.
      std::array<size_t, 3> order = {0, 1, 2};
      std::sort(order.begin(), order.end(),
                [&](size_t a, size_t b) { return extents[a].offset < extents[b].offset; });
      std::array<std::byte*, 3> destinations{};
      absl::StatusOr<RequestPayloads> payloads =
          FillBlock({extents[0].size, extents[1].size, extents[2].size}, out.header.return_lse(), pool,
                    [&](size_t i, std::byte* dst) { destinations[i] = dst; });
      if (!payloads.ok()) return payloads.status();
      SliceReader reader(slices, total);
      for (const size_t i : order) {
        if (extents[i].size == 0) continue;
        reader.Skip(extents[i].offset - reader.offset());
        CopyForDmaFrom(reader, destinations[i], extents[i].size);
      }
      out.payloads = std::move(*payloads);
      out.wire_bytes = buffer.Length();
      return out;
    }
  }

  // A tensor or its data sent twice (protobuf's merge rules apply), or input the scanner or the
  // header parse refused: protobuf's parse of the whole message decides, so the outcome is always
  // exactly protobuf's. The scanner's error is kept for the message (it says where).
  AttendRequest full;
  if (!ParseFull(slices, total, &full)) {
    return framed ? absl::InvalidArgumentError(DiagnoseContents(scanner)) : framing;
  }
  attend_wire_internal::full_parse_results.fetch_add(1, std::memory_order_relaxed);
  if (!framed) attend_wire_internal::scanner_overruled.fetch_add(1, std::memory_order_relaxed);
  return FromFullParse(std::move(full), pool, buffer.Length());
}

size_t AttendResponseWireSize(const AttendResponse& header, size_t o_bytes, size_t lse_bytes) {
  size_t size = header.ByteSizeLong();
  // Take out the header's own o/lse fields, then add them back as EncodeAttendResponse sends them.
  if (header.has_o()) size -= LengthDelimitedFieldSize(kResponseOField, header.o().ByteSizeLong());
  if (header.has_lse()) size -= LengthDelimitedFieldSize(kResponseLseField, header.lse().ByteSizeLong());
  if (SendsTensor(header.has_o(), o_bytes)) size += TensorFieldSize(kResponseOField, header.o(), o_bytes);
  if (SendsTensor(header.has_lse(), lse_bytes)) size += TensorFieldSize(kResponseLseField, header.lse(), lse_bytes);
  return size;
}

grpc::ByteBuffer EncodeAttendResponse(const AttendResponse& header, std::span<const std::byte> o_data,
                                      std::span<const std::byte> lse_data, HostBlockRef keep_alive) {
  // The small fields as protobuf serializes them; o and lse follow (field order does not matter
  // to a parser), each with its data as a slice into the block.
  AttendResponse rest = header;
  rest.clear_o();
  rest.clear_lse();
  std::string pending;
  rest.SerializeToString(&pending);
  std::vector<grpc::Slice> slices;
  if (SendsTensor(header.has_o(), o_data.size())) {
    AppendTensorField(kResponseOField, header.o(), o_data, keep_alive, &pending, &slices);
  }
  if (SendsTensor(header.has_lse(), lse_data.size())) {
    AppendTensorField(kResponseLseField, header.lse(), lse_data, keep_alive, &pending, &slices);
  }
  if (!pending.empty()) slices.emplace_back(pending);
  return grpc::ByteBuffer(slices.data(), slices.size());
}

}  // namespace sage::server
