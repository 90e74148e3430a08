// Shared-memory tensors end to end on the CPU engine: a client registers a POSIX shm object, sends
// q/k/v by reference and has O/LSE written into it. Results must equal the bytes path bit for bit;
// every misuse gets its own status code and message, and the server keeps serving.
#include <sys/mman.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <fcntl.h>
#include <functional>
#include <future>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "sageserve/client/shared_memory.h"
#include "sageserve/client/tensor.h"
#include "sageserve/v1/shared_memory.grpc.pb.h"
#include "tests/server/test_support.h"

namespace sage::testing {
namespace {
namespace v1 = ::sageserve::v1;

constexpr size_t kAlign = 256;
size_t AlignUp(size_t x) { return (x + kAlign - 1) / kAlign * kAlign; }

server::ServerOptions AllowingOptions() {
  server::ServerOptions o = TestServerOptions();
  o.shared_memory.policy = server::SharedMemoryPolicy::kAllow;
  return o;
}

std::unique_ptr<sageserve::SystemSharedMemory> MakeShm(size_t bytes) {
  auto shm = sageserve::SystemSharedMemory::Create(sageserve::SystemSharedMemory::UniqueKey("e2e"), bytes);
  EXPECT_TRUE(shm.ok()) << shm.status();
  return shm.ok() ? *std::move(shm) : nullptr;
}

// Where one request's tensors sit in the region.
struct Layout {
  size_t q = 0, k = 0, v = 0, o = 0, lse = 0, end = 0;
};

// Moves the q/k/v bytes of `request` to `at` onwards in `shm` (region `region`), replacing them by
// references, and points O (of `o_bytes`) and, with return_lse, LSE after them.
Layout ToShared(v1::AttendRequest& request, sageserve::SystemSharedMemory& shm, const std::string& region,
                size_t at, size_t o_bytes) {
  Layout l;
  const auto place = [&](v1::Tensor* t, size_t* offset) {
    *offset = at;
    std::memcpy(shm.data() + at, t->data().data(), t->data().size());
    *t->mutable_shared_memory() = sageserve::SharedMemoryRange(region, at, t->data().size());
    at = AlignUp(at + t->data().size());
    t->clear_data();
  };
  place(request.mutable_q(), &l.q);
  place(request.mutable_k(), &l.k);
  place(request.mutable_v(), &l.v);
  l.o = at;
  std::memset(shm.data() + at, 0xA5, o_bytes);  // poison: the server must overwrite every byte
  *request.mutable_o_output() = sageserve::SharedMemoryRange(region, at, o_bytes);
  at = AlignUp(at + o_bytes);
  if (request.return_lse()) {
    const size_t lse_bytes = static_cast<size_t>(request.q().shape(0) * request.q().shape(1)) * sizeof(float);
    l.lse = at;
    std::memset(shm.data() + at, 0xA5, lse_bytes);
    *request.mutable_lse_output() = sageserve::SharedMemoryRange(region, at, lse_bytes);
    at = AlignUp(at + lse_bytes);
  }
  l.end = at;
  return l;
}

size_t OutputBytes(const v1::AttendRequest& r) {
  const v1::DType dt = r.output_dtype() == v1::DTYPE_UNSPECIFIED ? r.q().dtype() : r.output_dtype();
  return static_cast<size_t>(r.q().shape(0) * r.q().shape(1) * r.q().shape(2)) * sageserve::DTypeSize(dt);
}

std::string Bytes(const sageserve::SystemSharedMemory& shm, size_t at, size_t n) {
  return std::string(reinterpret_cast<const char*>(shm.data() + at), n);
}

class SharedMemoryE2E : public ::testing::Test {
 protected:
  void SetUp() override { StartServer(AllowingOptions(), nullptr, &s_); }
  RunningServer s_;
};

// O (in q's dtype and in fp32), with and without LSE: the region holds the bytes the bytes path
// would have sent, and the response carries shape and the reference but no data.
// GetServerInfo tells clients that regions are taken, how many, and that CUDA ones need the cuda
// backend (these tests run the CPU engine).
TEST_F(SharedMemoryE2E, ServerInfoAdvertisesIt) {
  absl::StatusOr<v1::GetServerInfoResponse> info = s_.client->GetServerInfo();
  ASSERT_TRUE(info.ok()) << info.status();
  EXPECT_TRUE(info->shared_memory().enabled());
  EXPECT_EQ(info->shared_memory().max_regions(), AllowingOptions().shared_memory.max_regions);
  EXPECT_FALSE(info->shared_memory().cuda());
}

TEST_F(SharedMemoryE2E, OutputsEqualTheBytesPath) {
  auto shm = MakeShm(8 << 20);
  ASSERT_NE(shm, nullptr);
  ASSERT_TRUE(s_.client->RegisterSystemSharedMemory("r", shm->key(), 0, shm->size()).ok());
  int i = 0;
  for (v1::DType out : {v1::DTYPE_FP16, v1::DTYPE_FP32, v1::DTYPE_BF16}) {
    for (bool lse : {false, true}) {
      ProblemShape shape;
      shape.cu_q = {0, 40, 96};
      shape.cu_k = {0, 64, 160};
      shape.output_dtype = out;
      shape.lse = lse;
      shape.causal = lse;
      shape.seed = 100 + i;
      const v1::AttendRequest bytes_request = MakeRequest(shape, absl::StrCat("bytes-", i));
      absl::StatusOr<v1::AttendResponse> want = s_.client->Attend(bytes_request);
      ASSERT_TRUE(want.ok()) << want.status();

      v1::AttendRequest shared = bytes_request;
      shared.set_request_id(absl::StrCat("shared-", i));
      const Layout l = ToShared(shared, *shm, "r", 4096, OutputBytes(shared));
      absl::StatusOr<v1::AttendResponse> got = s_.client->Attend(shared);
      ASSERT_TRUE(got.ok()) << got.status();
      EXPECT_TRUE(got->o().data().empty());
      EXPECT_EQ(got->o().shared_memory().region(), "r");
      EXPECT_EQ(got->o().shared_memory().offset(), l.o);
      EXPECT_EQ(got->o().dtype(), want->o().dtype());
      EXPECT_EQ(got->o().shape_size(), 3);
      EXPECT_EQ(Bytes(*shm, l.o, want->o().data().size()), want->o().data()) << "output dtype " << out;
      if (lse) {
        EXPECT_TRUE(got->lse().data().empty());
        EXPECT_EQ(got->lse().shared_memory().offset(), l.lse);
        EXPECT_EQ(Bytes(*shm, l.lse, want->lse().data().size()), want->lse().data());
      } else {
        EXPECT_FALSE(got->has_lse());
      }
      ++i;
    }
  }
}

// Inputs by reference with O in the response, and a mix of referenced and inline inputs.
TEST_F(SharedMemoryE2E, InputsByReferenceOutputInline) {
  auto shm = MakeShm(1 << 20);
  ASSERT_NE(shm, nullptr);
  ASSERT_TRUE(s_.client->RegisterSystemSharedMemory("in", shm->key(), 0, shm->size()).ok());
  ProblemShape shape;
  shape.lse = true;
  const v1::AttendRequest bytes_request = MakeRequest(shape, "bytes");
  absl::StatusOr<v1::AttendResponse> want = s_.client->Attend(bytes_request);
  ASSERT_TRUE(want.ok()) << want.status();

  v1::AttendRequest shared = bytes_request;
  ToShared(shared, *shm, "in", 0, OutputBytes(shared));
  shared.clear_o_output();
  shared.clear_lse_output();
  absl::StatusOr<v1::AttendResponse> got = s_.client->Attend(shared);
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(got->o().data(), want->o().data());
  EXPECT_EQ(got->lse().data(), want->lse().data());
  EXPECT_FALSE(got->o().has_shared_memory());

  v1::AttendRequest mixed = bytes_request;
  std::memcpy(shm->data() + 65536, mixed.k().data().data(), mixed.k().data().size());
  *mixed.mutable_k()->mutable_shared_memory() = sageserve::SharedMemoryRange("in", 65536, mixed.k().data().size());
  mixed.mutable_k()->clear_data();
  got = s_.client->Attend(mixed);
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(got->o().data(), want->o().data());
}

// Many shared-memory requests in flight on one stream: the batcher merges them (the CPU engine
// copies the members out of the region) and each result lands in its own output range.
TEST_F(SharedMemoryE2E, StreamedRequestsLandInTheirOwnRanges) {
  constexpr int kRequests = 24;
  auto shm = MakeShm(16 << 20);
  ASSERT_NE(shm, nullptr);
  ASSERT_TRUE(s_.client->RegisterSystemSharedMemory("s", shm->key(), 0, shm->size()).ok());
  std::vector<v1::AttendRequest> bytes_requests, shared(kRequests);
  std::vector<Layout> layouts;
  size_t at = 0;
  for (int i = 0; i < kRequests; ++i) {
    ProblemShape shape;
    shape.cu_q = {0, 16 + i};
    shape.cu_k = {0, 48 + 2 * i};
    shape.output_dtype = v1::DTYPE_UNSPECIFIED;
    shape.seed = 500 + i;
    bytes_requests.push_back(MakeRequest(shape, absl::StrCat("r", i)));
    shared[i] = bytes_requests[i];
    layouts.push_back(ToShared(shared[i], *shm, "s", at, OutputBytes(shared[i])));
    at = layouts.back().end;
  }
  std::unique_ptr<sageserve::StreamSession> stream = s_.client->OpenStream();
  std::vector<std::future<absl::StatusOr<v1::AttendResponse>>> results;
  for (auto& r : shared) results.push_back(stream->Send(r));
  for (int i = 0; i < kRequests; ++i) {
    absl::StatusOr<v1::AttendResponse> got = results[i].get();
    ASSERT_TRUE(got.ok()) << got.status();
    ASSERT_TRUE(got->status().code() == 0) << got->status().message();
    absl::StatusOr<v1::AttendResponse> want = s_.client->Attend(bytes_requests[i]);
    ASSERT_TRUE(want.ok()) << want.status();
    EXPECT_EQ(Bytes(*shm, layouts[i].o, want->o().data().size()), want->o().data()) << "request " << i;
  }
  EXPECT_TRUE(stream->Close().ok());
  absl::StatusOr<v1::GetSharedMemoryStatusResponse> status = s_.client->GetSharedMemoryStatus("s");
  ASSERT_TRUE(status.ok()) << status.status();
  ASSERT_EQ(status->regions_size(), 1);
  EXPECT_EQ(status->regions(0).requests(), kRequests);
  EXPECT_EQ(status->regions(0).kind(), v1::SHARED_MEMORY_KIND_SYSTEM);
  EXPECT_EQ(status->regions(0).key(), shm->key());
  EXPECT_EQ(status->regions(0).byte_size(), shm->size());
  EXPECT_FALSE(status->regions(0).pinned());  // the CPU engine needs no page-locking
}

// Registration errors, each with its code and a message naming the problem.
TEST_F(SharedMemoryE2E, RegistrationErrors) {
  auto shm = MakeShm(1 << 16);
  ASSERT_NE(shm, nullptr);
  ASSERT_TRUE(s_.client->RegisterSystemSharedMemory("a", shm->key(), 0, 4096).ok());
  absl::Status s = s_.client->RegisterSystemSharedMemory("a", shm->key(), 4096, 4096);
  EXPECT_EQ(s.code(), absl::StatusCode::kAlreadyExists) << s;
  s = s_.client->RegisterSystemSharedMemory("b", "/sage-no-such-object-xyz", 0, 4096);
  EXPECT_EQ(s.code(), absl::StatusCode::kNotFound) << s;
  s = s_.client->RegisterSystemSharedMemory("b", shm->key(), 4096, shm->size());
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  EXPECT_NE(s.message().find("runs past the end"), std::string::npos) << s;
  s = s_.client->RegisterSystemSharedMemory("b", "no-slash", 0, 16);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  s = s_.client->RegisterSystemSharedMemory("b", "/a/b", 0, 16);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  s = s_.client->RegisterSystemSharedMemory("b", shm->key(), 0, 0);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  s = s_.client->RegisterSystemSharedMemory("", shm->key(), 0, 16);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  s = s_.client->RegisterCudaSharedMemory("c", std::string(64, '\0'), 0, 1024);
  EXPECT_EQ(s.code(), absl::StatusCode::kUnimplemented) << s;
  auto gone = s_.client->UnregisterSharedMemory("never-registered");
  EXPECT_EQ(gone.status().code(), absl::StatusCode::kNotFound);
  auto status = s_.client->GetSharedMemoryStatus("never-registered");
  EXPECT_EQ(status.status().code(), absl::StatusCode::kNotFound);
  // Only the first registration took.
  status = s_.client->GetSharedMemoryStatus();
  ASSERT_TRUE(status.ok());
  ASSERT_EQ(status->regions_size(), 1);
  EXPECT_EQ(status->regions(0).name(), "a");
}

// Request errors: each refused with its own code and field, and the server goes on serving.
TEST_F(SharedMemoryE2E, RequestErrors) {
  auto shm = MakeShm(1 << 20);
  ASSERT_NE(shm, nullptr);
  ASSERT_TRUE(s_.client->RegisterSystemSharedMemory("r", shm->key(), 0, shm->size()).ok());
  ProblemShape shape;
  shape.output_dtype = v1::DTYPE_UNSPECIFIED;
  const v1::AttendRequest base = MakeRequest(shape, "base");
  v1::AttendRequest good = base;
  const Layout l = ToShared(good, *shm, "r", 0, OutputBytes(good));
  ASSERT_TRUE(s_.client->Attend(good).ok());

  struct Case {
    std::string what;
    std::function<void(v1::AttendRequest&)> edit;
    absl::StatusCode code;
    std::string needle;
  };
  const std::vector<Case> cases = {
      {"unknown region", [](v1::AttendRequest& r) { r.mutable_q()->mutable_shared_memory()->set_region("nope"); },
       absl::StatusCode::kNotFound, "q.shared_memory.region"},
      {"size mismatch", [](v1::AttendRequest& r) { r.mutable_k()->mutable_shared_memory()->set_byte_size(10); },
       absl::StatusCode::kInvalidArgument, "k.shared_memory.byte_size"},
      {"past the end",
       [&](v1::AttendRequest& r) { r.mutable_v()->mutable_shared_memory()->set_offset(shm->size() - 64); },
       absl::StatusCode::kInvalidArgument, "runs past the end"},
      {"huge offset", [](v1::AttendRequest& r) { r.mutable_v()->mutable_shared_memory()->set_offset(~uint64_t{0}); },
       absl::StatusCode::kInvalidArgument, "v.shared_memory"},
      {"odd offset", [&](v1::AttendRequest& r) { r.mutable_q()->mutable_shared_memory()->set_offset(l.end + 1); },
       absl::StatusCode::kInvalidArgument, "q.shared_memory.offset"},
      {"data and reference", [&](v1::AttendRequest& r) { r.mutable_q()->set_data(base.q().data()); },
       absl::StatusCode::kInvalidArgument, "not both"},
      {"output overlaps q", [&](v1::AttendRequest& r) { r.mutable_o_output()->set_offset(l.q); },
       absl::StatusCode::kInvalidArgument, "o_output: overlaps q"},
      {"output wrong size", [](v1::AttendRequest& r) { r.mutable_o_output()->set_byte_size(8); },
       absl::StatusCode::kInvalidArgument, "o_output.byte_size"},
      {"lse_output without lse", [&](v1::AttendRequest& r) { *r.mutable_lse_output() = r.o_output(); },
       absl::StatusCode::kInvalidArgument, "lse_output"},
      {"lse without lse_output", [](v1::AttendRequest& r) { r.set_return_lse(true); },
       absl::StatusCode::kInvalidArgument, "lse_output: required"},
      {"lse_output alone", [](v1::AttendRequest& r) {
         *r.mutable_lse_output() = r.o_output();
         r.clear_o_output();
       },
       absl::StatusCode::kInvalidArgument, "together with o_output"},
  };
  for (const Case& c : cases) {
    v1::AttendRequest bad = good;
    c.edit(bad);
    absl::StatusOr<v1::AttendResponse> r = s_.client->Attend(bad);
    EXPECT_EQ(r.status().code(), c.code) << c.what << ": " << r.status();
    EXPECT_NE(r.status().message().find(c.needle), std::string::npos) << c.what << ": " << r.status();
  }
  // Unregistered: refused by name; the bytes path still works.
  ASSERT_TRUE(s_.client->UnregisterSharedMemory("r").ok());
  EXPECT_EQ(s_.client->Attend(good).status().code(), absl::StatusCode::kNotFound);
  EXPECT_TRUE(s_.client->Attend(base).ok());
}

// A client that shrinks its object under a registered region is refused, not crashed into.
TEST_F(SharedMemoryE2E, ShrunkObjectIsRefused) {
  auto shm = MakeShm(1 << 20);
  ASSERT_NE(shm, nullptr);
  ASSERT_TRUE(s_.client->RegisterSystemSharedMemory("r", shm->key(), 0, shm->size()).ok());
  ProblemShape shape;
  v1::AttendRequest req = MakeRequest(shape, "shrunk");
  ToShared(req, *shm, "r", 0, OutputBytes(req));
  ASSERT_TRUE(s_.client->Attend(req).ok());
  const int fd = shm_open(shm->key().c_str(), O_RDWR, 0);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(ftruncate(fd, 4096), 0);
  close(fd);
  absl::StatusOr<v1::AttendResponse> r = s_.client->Attend(req);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kFailedPrecondition) << r.status();
  EXPECT_NE(r.status().message().find("shrunk"), std::string::npos) << r.status();
  EXPECT_TRUE(s_.client->Attend(MakeRequest(shape, "after")).ok());
}

// A client that truncates its object while requests that read (q/k/v) and write (O, LSE) it are
// in flight: every request is answered OK or FAILED_PRECONDITION naming the region, never with a
// crash (the server runs in this process: a SIGBUS in it would end the test), and the server goes on
// serving, shared memory included.
TEST_F(SharedMemoryE2E, TruncatedWhileInUseNeverCrashes) {
  constexpr size_t kBytes = 4 << 20;
  auto shm = MakeShm(kBytes);
  ASSERT_NE(shm, nullptr);
  ASSERT_TRUE(s_.client->RegisterSystemSharedMemory("t", shm->key(), 0, shm->size()).ok());
  // O in q's dtype (the engine's own output path) and O in FP32 with LSE (the encoder's).
  std::vector<v1::AttendRequest> requests;
  size_t at = 0;
  for (int i = 0; i < 2; ++i) {
    ProblemShape shape;
    shape.cu_q = {0, 128, 256};
    shape.cu_k = {0, 512, 1024};
    shape.output_dtype = i == 0 ? v1::DTYPE_UNSPECIFIED : v1::DTYPE_FP32;
    shape.lse = i == 1;
    shape.seed = 900 + i;
    requests.push_back(MakeRequest(shape, absl::StrCat("trunc-", i)));
    at = ToShared(requests.back(), *shm, "t", at, OutputBytes(requests.back())).end;
  }
  ASSERT_LE(at, kBytes);
  for (const v1::AttendRequest& r : requests) ASSERT_TRUE(s_.client->Attend(r).ok());

  // From here on this process must not touch shm->data(): the object keeps shrinking under it.
  const int fd = shm_open(shm->key().c_str(), O_RDWR, 0);
  ASSERT_GE(fd, 0);
  std::atomic<bool> stop{false};
  std::thread shrinker([&] {
    while (!stop.load()) {
      ASSERT_EQ(ftruncate(fd, 0), 0);
      std::this_thread::sleep_for(std::chrono::microseconds(300));
      ASSERT_EQ(ftruncate(fd, static_cast<off_t>(kBytes)), 0);  // the bytes come back as zeros
      std::this_thread::sleep_for(std::chrono::microseconds(300));
    }
  });
  constexpr int kSenders = 3;
  std::atomic<int> ok{0}, refused{0}, other{0};
  std::vector<std::string> unexpected;
  std::mutex mu;
  std::vector<std::thread> senders;
  const auto until = std::chrono::steady_clock::now() + std::chrono::milliseconds(1500);
  for (int t = 0; t < kSenders; ++t) {
    senders.emplace_back([&, t] {
      for (int n = 0; std::chrono::steady_clock::now() < until; ++n) {
        absl::StatusOr<v1::AttendResponse> r = s_.client->Attend(requests[(t + n) % requests.size()]);
        if (r.ok()) {
          ++ok;
        } else if (r.status().code() == absl::StatusCode::kFailedPrecondition &&
                   r.status().message().find("region 't'") != std::string::npos) {
          ++refused;
        } else {
          ++other;
          std::lock_guard<std::mutex> lock(mu);
          unexpected.push_back(r.status().ToString());
        }
      }
    });
  }
  for (std::thread& t : senders) t.join();
  stop = true;
  shrinker.join();
  ASSERT_EQ(ftruncate(fd, static_cast<off_t>(kBytes)), 0);
  close(fd);
  EXPECT_EQ(other.load(), 0) << (unexpected.empty() ? "" : unexpected.front());
  EXPECT_GT(refused.load(), 0) << "no request saw the object shrunk (ok: " << ok.load() << ")";
  std::printf("truncation race: %d OK, %d FAILED_PRECONDITION\n", ok.load(), refused.load());

  // The server still serves, shared memory included: a fresh region gives the bytes path's O.
  auto fresh = MakeShm(1 << 20);
  ASSERT_NE(fresh, nullptr);
  ASSERT_TRUE(s_.client->RegisterSystemSharedMemory("fresh", fresh->key(), 0, fresh->size()).ok());
  ProblemShape shape;
  shape.output_dtype = v1::DTYPE_UNSPECIFIED;
  const v1::AttendRequest bytes_request = MakeRequest(shape, "after-bytes");
  absl::StatusOr<v1::AttendResponse> want = s_.client->Attend(bytes_request);
  ASSERT_TRUE(want.ok()) << want.status();
  v1::AttendRequest shared = bytes_request;
  shared.set_request_id("after-shared");
  const Layout l = ToShared(shared, *fresh, "fresh", 0, OutputBytes(shared));
  absl::StatusOr<v1::AttendResponse> got = s_.client->Attend(shared);
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(Bytes(*fresh, l.o, want->o().data().size()), want->o().data());
}

// Unregistering a region that a queued request uses: new requests are refused at once, the queued
// one still completes into the (still mapped) region.
TEST(SharedMemoryLifetime, UnregisterWhileInFlight) {
  auto gate = std::make_unique<GateBackend>();
  GateBackend* backend = gate.get();
  RunningServer s;
  StartServer(AllowingOptions(), std::move(gate), &s);
  auto shm = MakeShm(1 << 20);
  ASSERT_NE(shm, nullptr);
  ASSERT_TRUE(s.client->RegisterSystemSharedMemory("r", shm->key(), 0, shm->size()).ok());
  ProblemShape shape;
  shape.output_dtype = v1::DTYPE_FP32;
  v1::AttendRequest req = MakeRequest(shape, "inflight");
  const Layout l = ToShared(req, *shm, "r", 0, OutputBytes(req));
  auto pending = std::async(std::launch::async, [&] { return s.client->Attend(req); });
  backend->WaitForCalls(1);
  absl::StatusOr<std::vector<std::string>> gone = s.client->UnregisterSharedMemory();
  ASSERT_TRUE(gone.ok()) << gone.status();
  EXPECT_EQ(*gone, std::vector<std::string>{"r"});
  v1::AttendRequest again = req;
  again.set_request_id("again");
  EXPECT_EQ(s.client->Attend(again).status().code(), absl::StatusCode::kNotFound);
  backend->Release();
  absl::StatusOr<v1::AttendResponse> done = pending.get();
  ASSERT_TRUE(done.ok()) << done.status();
  // The gate backend answers zeros: the poison must be gone from the whole output range.
  const std::string o = Bytes(*shm, l.o, OutputBytes(req));
  EXPECT_EQ(o, std::string(o.size(), '\0'));
}

// A backend that "pins" every host region (as the CUDA backend does, without a GPU) and records,
// per call, whether the engine was handed q/k/v or the O target inside a client's mapping. Answers
// zeros, as float O.
class PinningRecorder final : public server::AttentionBackend {
 public:
  struct Seen {
    bool inputs_in_client_memory = false;
    server::MemoryKind input_memory = server::MemoryKind::kPageable;
    bool o_into_client_memory = false;
  };
  PinningRecorder() : info_(TestBackendInfo("pinning recorder (test)")) {}
  const server::BackendInfo& info() const override { return info_; }
  absl::StatusOr<std::unique_ptr<server::EngineMemory>> PinHostMemory(std::byte* data, size_t bytes) override {
    std::lock_guard<std::mutex> lock(mu_);
    pinned_.emplace_back(data, bytes);
    return std::make_unique<server::EngineMemory>();
  }
  absl::StatusOr<EngineOutput> Attend(const EngineInput& in, const RecipeConfig&) override {
    std::lock_guard<std::mutex> lock(mu_);
    Seen s;
    s.inputs_in_client_memory = InClient(in.q.data) || InClient(in.k.data) || InClient(in.v.data);
    s.input_memory = in.memory;
    s.o_into_client_memory = !in.output.o_into.empty() && InClient(in.output.o_into.data());
    seen_.push_back(s);
    EngineOutput out;
    out.o.assign(static_cast<size_t>(in.q.numel()), 0.0f);
    if (in.lse == LseMode::kNatural) out.lse.assign(static_cast<size_t>(in.q.tokens * in.q.heads), 0.0f);
    return out;
  }
  Seen last() {
    std::lock_guard<std::mutex> lock(mu_);
    return seen_.empty() ? Seen{} : seen_.back();
  }

 private:
  bool InClient(const void* p) const {
    const auto* b = static_cast<const std::byte*>(p);
    for (const auto& [data, bytes] : pinned_) {
      if (b >= data && b < data + bytes) return true;
    }
    return false;
  }
  server::BackendInfo info_;
  std::mutex mu_;
  std::vector<std::pair<std::byte*, size_t>> pinned_;
  std::vector<Seen> seen_;
};

// A client's pinned mapping is handed to an engine in place only where the GPU's copy engines
// alone would touch it (16-bit, each tensor big enough for its own DMA); anything the CPU would
// gather or copy (small tensors, O in another dtype) is staged through the
// fault-tolerant copy first, so a client shrinking its object cannot fault the server.
TEST(SharedMemoryPinned, ClientMappingsReachTheEngineOnlyForDmaAlone) {
  auto recorder = std::make_unique<PinningRecorder>();
  PinningRecorder* backend = recorder.get();
  RunningServer s;
  StartServer(AllowingOptions(), std::move(recorder), &s);
  auto shm = MakeShm(8 << 20);
  ASSERT_NE(shm, nullptr);
  ASSERT_TRUE(s.client->RegisterSystemSharedMemory("p", shm->key(), 0, shm->size()).ok());
  struct Case {
    const char* what;
    int tokens;
    int heads_kv;
    v1::DType dtype;
    v1::DType output_dtype;
    bool inputs_in_place;
    bool o_in_place;
  };
  // 64 heads x 64 dims x 2 bytes = 8 KiB per token: 8 tokens are 64 KiB, the direct-DMA minimum.
  const Case cases[] = {
      {"small fp16", 4, 64, v1::DTYPE_FP16, v1::DTYPE_UNSPECIFIED, false, false},
      {"large fp16", 16, 64, v1::DTYPE_FP16, v1::DTYPE_UNSPECIFIED, true, true},
      {"large bf16", 16, 64, v1::DTYPE_BF16, v1::DTYPE_UNSPECIFIED, true, true},
      {"large fp16, O fp32", 16, 64, v1::DTYPE_FP16, v1::DTYPE_FP32, true, false},
      // K and V under the DMA minimum: the launch would gather them by CPU, so all three are staged.
      {"large q, small k and v", 16, 4, v1::DTYPE_FP16, v1::DTYPE_UNSPECIFIED, false, true},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.what);
    ProblemShape shape;
    shape.cu_q = {0, c.tokens};
    shape.cu_k = {0, c.tokens};
    shape.heads_q = 64;
    shape.heads_kv = c.heads_kv;
    shape.dtype = c.dtype;
    shape.output_dtype = c.output_dtype;
    v1::AttendRequest req = MakeRequest(shape, c.what);
    ToShared(req, *shm, "p", 0, OutputBytes(req));
    absl::StatusOr<v1::AttendResponse> r = s.client->Attend(req);
    ASSERT_TRUE(r.ok()) << r.status();
    const PinningRecorder::Seen seen = backend->last();
    EXPECT_EQ(seen.inputs_in_client_memory, c.inputs_in_place);
    EXPECT_EQ(seen.input_memory == server::MemoryKind::kPinned, c.inputs_in_place);
    EXPECT_EQ(seen.o_into_client_memory, c.o_in_place);
  }
}

// Off by default: registration and requests that name shared memory are refused with
// FAILED_PRECONDITION naming the flag.
TEST(SharedMemoryPolicy, OffByDefault) {
  RunningServer s;
  StartServer(TestServerOptions(), nullptr, &s);
  auto shm = MakeShm(1 << 20);
  ASSERT_NE(shm, nullptr);
  absl::Status reg = s.client->RegisterSystemSharedMemory("r", shm->key(), 0, shm->size());
  EXPECT_EQ(reg.code(), absl::StatusCode::kFailedPrecondition) << reg;
  EXPECT_NE(reg.message().find("--allow_shared_memory"), std::string::npos) << reg;
  EXPECT_EQ(s.client->RegisterCudaSharedMemory("c", std::string(64, '\0'), 0, 64).code(),
            absl::StatusCode::kFailedPrecondition);
  ProblemShape shape;
  v1::AttendRequest req = MakeRequest(shape, "off");
  ToShared(req, *shm, "r", 0, OutputBytes(req));
  absl::StatusOr<v1::AttendResponse> r = s.client->Attend(req);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kFailedPrecondition) << r.status();
  EXPECT_NE(r.status().message().find("--allow_shared_memory"), std::string::npos) << r.status();
  absl::StatusOr<v1::GetServerInfoResponse> info = s.client->GetServerInfo();
  ASSERT_TRUE(info.ok()) << info.status();
  EXPECT_FALSE(info->shared_memory().enabled());
  EXPECT_EQ(info->shared_memory().max_regions(), 0);
}

}  // namespace
}  // namespace sage::testing
