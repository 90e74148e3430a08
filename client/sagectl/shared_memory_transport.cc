#include "client/sagectl/shared_memory_transport.h"

#include <algorithm>
#include <cstdio>
#include <tuple>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "sageserve/client/shared_memory.h"
#include "sageserve/client/tensor.h"

namespace sagectl {
namespace v1 = ::sageserve::v1;

namespace {

// Every range starts on a multiple of cudaMalloc's own alignment, so a range is as aligned as a
// separate allocation would be (vector loads, DMA) on either engine.
constexpr uint64_t kRangeAlignment = 256;

uint64_t AlignUp(uint64_t x) { return (x + kRangeAlignment - 1) / kRangeAlignment * kRangeAlignment; }

std::string RefText(const v1::SharedMemoryRef& r) {
  return absl::StrCat(r.region(), "[", r.offset(), ", +", r.byte_size(), ")");
}

// Byte count a tensor's dtype and shape call for.
uint64_t ShapeBytes(const v1::Tensor& t) {
  uint64_t n = sageserve::DTypeSize(t.dtype());
  for (int64_t d : t.shape()) n *= static_cast<uint64_t>(std::max<int64_t>(d, 0));
  return n;
}

absl::Status CompareBytes(const char* what, const std::string& got, const std::string& want) {
  if (got == want) return absl::OkStatus();
  if (got.size() != want.size()) {
    return absl::InternalError(absl::StrCat(what, " in shared memory has ", got.size(), " bytes, the bytes path ",
                                            want.size()));
  }
  size_t first = 0, differ = 0;
  for (size_t i = got.size(); i-- > 0;) {
    if (got[i] != want[i]) {
      first = i;
      ++differ;
    }
  }
  return absl::InternalError(absl::StrCat(what, " in shared memory differs from the bytes path in ", differ, " of ",
                                          got.size(), " bytes (first at byte ", first, ")"));
}

}  // namespace

std::vector<std::string> SharedMemoryFlags() { return {"shared_memory", "cuda_device"}; }

const char* SharedMemoryModeName(SharedMemoryMode mode) {
  switch (mode) {
    case SharedMemoryMode::kNone: return "none";
    case SharedMemoryMode::kSystem: return "system";
    case SharedMemoryMode::kCuda: return "cuda";
  }
  return "?";
}

absl::StatusOr<SharedMemoryOptions> SharedMemoryOptionsFromArgs(const Args& args) {
  SharedMemoryOptions o;
  const std::string mode = args.Str("shared_memory", "none");
  if (mode == "none") {
    o.mode = SharedMemoryMode::kNone;
  } else if (mode == "system") {
    o.mode = SharedMemoryMode::kSystem;
  } else if (mode == "cuda") {
    o.mode = SharedMemoryMode::kCuda;
  } else {
    return absl::InvalidArgumentError(absl::StrCat("--shared_memory: '", mode, "' (none, system, cuda)"));
  }
  if (args.Has("cuda_device") && o.mode != SharedMemoryMode::kCuda) {
    return absl::InvalidArgumentError("--cuda_device needs --shared_memory=cuda");
  }
  absl::StatusOr<int64_t> device = args.Int("cuda_device", 0);
  if (!device.ok()) return device.status();
  if (*device < 0 || *device > 1024) return absl::InvalidArgumentError("--cuda_device must be a CUDA ordinal");
  o.cuda_device = static_cast<int>(*device);
  return o;
}

absl::StatusOr<std::unique_ptr<SharedMemoryTransport>> SharedMemoryTransport::Create(
    const sageserve::Client& client, const SharedMemoryOptions& options, const HostProblem& problem, int slots) {
  if (options.mode == SharedMemoryMode::kNone) return absl::InvalidArgumentError("no shared-memory mode");
  if (slots < 1) return absl::InvalidArgumentError("a shared-memory transport needs at least one slot");
  const ProblemSpec& spec = problem.spec;
  // AttendRequest.output_dtype: unset means q's dtype.
  const v1::DType out_dtype = spec.output_dtype == v1::DTYPE_UNSPECIFIED ? spec.dtype : spec.output_dtype;
  const uint64_t q_bytes = problem.q.size() * sizeof(uint16_t);
  const uint64_t k_bytes = problem.k.size() * sizeof(uint16_t);
  const uint64_t v_bytes = problem.v.size() * sizeof(uint16_t);
  const uint64_t rows = static_cast<uint64_t>(problem.total_q()) * static_cast<uint64_t>(spec.heads_q);
  const uint64_t o_bytes = rows * static_cast<uint64_t>(spec.head_dim) * sageserve::DTypeSize(out_dtype);
  const uint64_t lse_bytes = spec.return_lse ? rows * sizeof(float) : 0;

  std::vector<Slot> layout(static_cast<size_t>(slots));
  uint64_t end = 0;
  auto place = [&](uint64_t bytes) {
    const uint64_t at = end;
    end = AlignUp(end + bytes);
    return at;
  };
  for (Slot& s : layout) {
    s.q = place(q_bytes);
    s.k = place(k_bytes);
    s.v = place(v_bytes);
    s.o = place(o_bytes);
    s.lse = place(lse_bytes);
  }
  const size_t total = static_cast<size_t>(std::max(end, kRangeAlignment));

  // The region is named after the shm key (unique per process and object), for either kind.
  const std::string key = sageserve::SystemSharedMemory::UniqueKey("sagectl");
  absl::StatusOr<std::unique_ptr<RegionBuffer>> buffer =
      options.mode == SharedMemoryMode::kSystem ? MakeSystemBuffer(key, total)
                                                : MakeCudaBuffer(options.cuda_device, total);
  if (!buffer.ok()) return buffer.status();
  std::unique_ptr<SharedMemoryTransport> t(new SharedMemoryTransport(client, std::move(*buffer), key.substr(1)));
  t->o_bytes_ = o_bytes;
  t->lse_bytes_ = lse_bytes;
  t->slots_ = std::move(layout);

  // Requests keep everything the bytes path sends except the tensor bytes.
  v1::AttendRequest base = problem.ToRequest("");
  for (v1::Tensor* x : {base.mutable_q(), base.mutable_k(), base.mutable_v()}) x->clear_data();
  for (const Slot& s : t->slots_) {
    for (auto [offset, src, bytes] : {std::tuple{s.q, problem.q.data(), q_bytes},
                                      std::tuple{s.k, problem.k.data(), k_bytes},
                                      std::tuple{s.v, problem.v.data(), v_bytes}}) {
      if (absl::Status st = t->buffer_->Write(offset, src, bytes); !st.ok()) return st;
    }
    v1::AttendRequest r = base;
    *r.mutable_q()->mutable_shared_memory() = sageserve::SharedMemoryRange(t->name_, s.q, q_bytes);
    *r.mutable_k()->mutable_shared_memory() = sageserve::SharedMemoryRange(t->name_, s.k, k_bytes);
    *r.mutable_v()->mutable_shared_memory() = sageserve::SharedMemoryRange(t->name_, s.v, v_bytes);
    *r.mutable_o_output() = sageserve::SharedMemoryRange(t->name_, s.o, o_bytes);
    if (spec.return_lse) *r.mutable_lse_output() = sageserve::SharedMemoryRange(t->name_, s.lse, lse_bytes);
    t->requests_.push_back(std::move(r));
  }
  if (absl::Status st = t->buffer_->Register(client, t->name_); !st.ok()) {
    return absl::Status(st.code(), absl::StrCat("registering ", t->buffer_->Describe(), ": ", st.message()));
  }
  t->registered_ = true;
  return t;
}

SharedMemoryTransport::~SharedMemoryTransport() {
  if (absl::Status st = Unregister(); !st.ok()) {
    std::fprintf(stderr, "sagectl: unregistering shared-memory region %s: %s\n", name_.c_str(), st.ToString().c_str());
  }
}

absl::Status SharedMemoryTransport::Unregister() {
  if (!registered_) return absl::OkStatus();
  registered_ = false;  // One attempt: a failure is reported, not retried from the destructor.
  return client_.UnregisterSharedMemory(name_).status();
}

absl::StatusOr<std::string> SharedMemoryTransport::ReadOutput(const v1::Tensor& answered,
                                                              const v1::SharedMemoryRef& asked,
                                                              const char* what) const {
  if (!answered.data().empty()) {
    return absl::FailedPreconditionError(
        absl::StrCat("response ", what, " carries ", answered.data().size(), " bytes of data; asked for ",
                     RefText(asked)));
  }
  const v1::SharedMemoryRef& got = answered.shared_memory();
  if (got.region() != asked.region() || got.offset() != asked.offset() || got.byte_size() != asked.byte_size()) {
    return absl::FailedPreconditionError(absl::StrCat("response ", what, " references ", RefText(got), "; asked for ",
                                                      RefText(asked)));
  }
  if (ShapeBytes(answered) != asked.byte_size()) {
    return absl::FailedPreconditionError(absl::StrCat("response ", what, " is ", v1::DType_Name(answered.dtype()),
                                                      " of ", ShapeBytes(answered), " bytes; its range holds ",
                                                      asked.byte_size()));
  }
  std::string bytes(asked.byte_size(), '\0');
  if (absl::Status st = buffer_->Read(asked.offset(), bytes.data(), bytes.size()); !st.ok()) return st;
  return bytes;
}

absl::StatusOr<v1::AttendResponse> SharedMemoryTransport::Resolve(int slot, const v1::AttendResponse& response) const {
  const v1::AttendRequest& asked = requests_[slot];
  v1::AttendResponse out = response;
  absl::StatusOr<std::string> o = ReadOutput(response.o(), asked.o_output(), "o");
  if (!o.ok()) return o.status();
  out.mutable_o()->clear_shared_memory();
  out.mutable_o()->set_data(std::move(*o));
  if (asked.return_lse()) {
    absl::StatusOr<std::string> lse = ReadOutput(response.lse(), asked.lse_output(), "lse");
    if (!lse.ok()) return lse.status();
    out.mutable_lse()->clear_shared_memory();
    out.mutable_lse()->set_data(std::move(*lse));
  }
  return out;
}

absl::Status SharedMemoryTransport::Verify(int slot, const v1::AttendResponse& response,
                                           const v1::AttendResponse& expected) const {
  absl::StatusOr<v1::AttendResponse> got = Resolve(slot, response);
  if (!got.ok()) return got.status();
  auto same_meta = [](const v1::Tensor& a, const v1::Tensor& b) {
    return a.dtype() == b.dtype() && std::equal(a.shape().begin(), a.shape().end(), b.shape().begin(), b.shape().end());
  };
  if (!same_meta(got->o(), expected.o())) {
    return absl::InternalError("O from shared memory has another dtype or shape than from the bytes path");
  }
  if (absl::Status st = CompareBytes("O", got->o().data(), expected.o().data()); !st.ok()) return st;
  if (requests_[slot].return_lse()) {
    if (!same_meta(got->lse(), expected.lse())) {
      return absl::InternalError("LSE from shared memory has another dtype or shape than from the bytes path");
    }
    return CompareBytes("LSE", got->lse().data(), expected.lse().data());
  }
  return absl::OkStatus();
}

absl::Status SharedMemoryTransport::PoisonOutputs() {
  const std::string poison(std::max(o_bytes_, lse_bytes_), '\xff');
  for (const Slot& s : slots_) {
    if (absl::Status st = buffer_->Write(s.o, poison.data(), o_bytes_); !st.ok()) return st;
    if (absl::Status st = buffer_->Write(s.lse, poison.data(), lse_bytes_); !st.ok()) return st;
  }
  return absl::OkStatus();
}

std::string SharedMemoryTransport::Describe() const {
  return absl::StrFormat("%s, region %s, %.2f MB, %d slot(s)", buffer_->Describe(), name_,
                         static_cast<double>(buffer_->size()) / 1e6, static_cast<int>(slots_.size()));
}

}  // namespace sagectl
