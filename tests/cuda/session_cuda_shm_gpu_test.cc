// Session steps whose new K and V come from a client's CUDA memory (a CUDA IPC region; the server
// runs as a child process, since a process cannot open its own IPC handles): on a cuda server they
// give the inline twins' O, LSE and lengths bit for bit, with 16-bit and 8-bit storage, for a
// prefill chunk and decode steps; the decode steps also take q and O from the same region (the
// paged launch reads and writes those in place while K/V are copied to the host for the append).
// A third set of sessions gets the same steps as packed calls (AttendSessionRequest.packed), whose
// K, V and Q are one range each of the region.
#include <cuda_runtime.h>

#include <chrono>
#include <cstring>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "gtest/gtest.h"
#include "sageserve/client/client.h"
#include "sageserve/client/session.h"
#include "sageserve/client/shared_memory.h"
#include "sageserve/client/tensor.h"
#include "tests/cuda/gpu_test_util.h"
#include "tests/server/child_server.h"
#include "tests/server/test_support.h"

namespace sage::testing {
namespace {
namespace v1 = ::sageserve::v1;
using namespace std::chrono_literals;

constexpr int kHq = 8, kHkv = 2, kD = 128;
// The region: K/V of a call (k0, v0, k1, v1, ...) from kKvAt, its Q from kQAt, its O from kOAt.
// The packed calls: K from kPackedKAt, V from kPackedVAt, Q from kPackedQAt, O from kPackedOAt.
constexpr size_t kKvAt = 0, kQAt = 1 << 20, kOAt = 2 << 20, kPackedKAt = 3 << 20, kPackedVAt = kPackedKAt + (256 << 10),
                 kPackedQAt = kPackedVAt + (256 << 10), kPackedOAt = kPackedQAt + (256 << 10), kRegionBytes = 4 << 20;

std::vector<uint16_t> Values(int64_t n, int heads, uint32_t seed) { return ChannelBiasedFp16(n, heads, kD, seed, 1.0f, 5); }

// Device memory of this process that the child server opens by IPC handle.
class DeviceRegion {
 public:
  ~DeviceRegion() {
    if (data_ != nullptr) (void)cudaFree(data_);
  }
  std::byte* data_ = nullptr;
  // `values` at offset `at`; returns the range that names them.
  v1::SharedMemoryRef Put(size_t at, const std::vector<uint16_t>& values) const {
    const size_t bytes = values.size() * sizeof(uint16_t);
    EXPECT_EQ(cudaMemcpy(data_ + at, values.data(), bytes, cudaMemcpyHostToDevice), cudaSuccess);
    return sageserve::SharedMemoryRange("kv", at, bytes);
  }
  std::string Get(size_t at, size_t bytes) const {
    std::string out(bytes, '\0');
    EXPECT_EQ(cudaMemcpy(out.data(), data_ + at, bytes, cudaMemcpyDeviceToHost), cudaSuccess);
    return out;
  }
};

TEST(SessionCudaSharedMemory, KvFromCudaMemoryEqualsTheInlinePath) {
  SAGE_SKIP_WITHOUT_GPU();
  ChildServer child(SAGESERVE_BINARY, {"--backend=cuda", "--cuda_device=0", "--allow_shared_memory",
                                       "--kv_pool_bytes=268435456"});
  ASSERT_NE(child.port(), 0) << child.output();
  sageserve::ClientOptions options;
  options.target = child.target();
  options.deadline = 60s;
  absl::StatusOr<std::unique_ptr<sageserve::Client>> client = sageserve::Client::Create(options);
  ASSERT_TRUE(client.ok()) << client.status();
  DeviceRegion region;
  SAGE_CUDA_ASSERT(cudaSetDevice(0));
  SAGE_CUDA_ASSERT(cudaMalloc(reinterpret_cast<void**>(&region.data_), kRegionBytes));
  cudaIpcMemHandle_t handle;
  SAGE_CUDA_ASSERT(cudaIpcGetMemHandle(&handle, region.data_));
  absl::Status registered = (*client)->RegisterCudaSharedMemory(
      "kv", std::string_view(reinterpret_cast<const char*>(&handle), sizeof(handle)), 0, kRegionBytes);
  ASSERT_TRUE(registered.ok()) << registered;
  sageserve::SessionClient sessions(**client);

  for (v1::KvStorage storage : {v1::KV_STORAGE_16BIT, v1::KV_STORAGE_INT8_K_FP8_V}) {
    SCOPED_TRACE(static_cast<int>(storage));
    sageserve::SessionOptions so;
    so.heads_q = kHq;
    so.heads_kv = kHkv;
    so.head_dim = kD;
    so.kv_storage = storage;
    so.max_tokens = 256;
    std::vector<sageserve::Session> inline_s, shared_s, packed_s;
    for (int i = 0; i < 2; ++i) {
      absl::StatusOr<sageserve::Session> a = sessions.Create(so), b = sessions.Create(so), c = sessions.Create(so);
      ASSERT_TRUE(a.ok() && b.ok() && c.ok()) << a.status() << " " << b.status() << " " << c.status();
      inline_s.push_back(*std::move(a));
      shared_s.push_back(*std::move(b));
      packed_s.push_back(*std::move(c));
    }
    for (int step = 0; step < 4; ++step) {
      const int64_t n = step == 0 ? 40 : 1;
      const bool q_in_region = step > 0;  // decode-shaped: q and O in CUDA memory too
      v1::AttendSessionRequest want_req, got_req, packed_req;
      std::vector<uint16_t> all_k, all_v, all_q;
      want_req.set_return_lse(true);
      got_req.set_return_lse(!q_in_region);  // LSE goes beside O: into the region, or inline
      size_t kv_at = kKvAt, q_at = kQAt;
      for (int i = 0; i < 2; ++i) {
        const uint32_t seed = static_cast<uint32_t>(static_cast<int>(storage) * 1000 + step * 10 + i);
        const std::vector<uint16_t> k = Values(n, kHkv, seed), v = Values(n, kHkv, seed + 100),
                                    q = Values(n, kHq, seed + 200);
        *want_req.add_steps() = inline_s[static_cast<size_t>(i)].MakeStep(0, k, v, q);
        *packed_req.add_steps() = packed_s[static_cast<size_t>(i)].MakePackedStep(0);
        all_k.insert(all_k.end(), k.begin(), k.end());
        all_v.insert(all_v.end(), v.begin(), v.end());
        all_q.insert(all_q.end(), q.begin(), q.end());
        const v1::SharedMemoryRef k_ref = region.Put(kv_at, k);
        kv_at += k_ref.byte_size();
        const v1::SharedMemoryRef v_ref = region.Put(kv_at, v);
        kv_at += v_ref.byte_size();
        v1::SessionStep s;
        if (q_in_region) {
          const v1::SharedMemoryRef q_ref = region.Put(q_at, q);
          q_at += q_ref.byte_size();
          s = shared_s[static_cast<size_t>(i)].MakeStep(0, n, k_ref, v_ref, n, q_ref);
        } else {
          s = shared_s[static_cast<size_t>(i)].MakeStep(0, n, k_ref, v_ref, 0, {});
          ASSERT_TRUE(sageserve::SetTensorFp16(q, sageserve::Shape3{n, kHq, kD}, s.mutable_q()).ok());
        }
        *got_req.add_steps() = std::move(s);
      }
      const uint64_t o_bytes = sageserve::SessionOBytes(so, 2 * n);
      if (q_in_region) *got_req.mutable_o_output() = sageserve::SharedMemoryRange("kv", kOAt, o_bytes);
      const std::vector<int64_t> counts = {n, n};
      sageserve::SetPackedShared(so, counts, counts, region.Put(kPackedKAt, all_k), region.Put(kPackedVAt, all_v),
                                 region.Put(kPackedQAt, all_q), &packed_req);
      if (q_in_region) {
        *packed_req.mutable_o_output() = sageserve::SharedMemoryRange("kv", kPackedOAt, o_bytes);
      } else {  // a prefill chunk: q inline
        packed_req.mutable_packed()->clear_q();
        ASSERT_TRUE(sageserve::SetTensorFp16(all_q, sageserve::Shape3{2 * n, kHq, kD}, packed_req.mutable_packed()->mutable_q()).ok());
      }
      absl::StatusOr<v1::AttendSessionResponse> packed = sessions.Attend(packed_req);
      ASSERT_TRUE(packed.ok()) << "step " << step << ": " << packed.status();
      absl::StatusOr<v1::AttendSessionResponse> want = sessions.Attend(want_req);
      ASSERT_TRUE(want.ok()) << want.status();
      absl::StatusOr<v1::AttendSessionResponse> got = sessions.Attend(got_req);
      ASSERT_TRUE(got.ok()) << "step " << step << ": " << got.status();
      ASSERT_EQ(got->results_size(), 2);
      std::string want_o;
      for (int i = 0; i < 2; ++i) {
        const v1::SessionStepResult& g = got->results(i);
        const v1::SessionStepResult& w = want->results(i);
        EXPECT_EQ(g.length(), w.length()) << "step " << step;
        want_o += w.o().data();
        if (!q_in_region) {
          EXPECT_EQ(g.o().data(), w.o().data()) << "step " << step << ", session " << i;
          EXPECT_EQ(g.lse().data(), w.lse().data()) << "step " << step << ", session " << i;
        }
        EXPECT_EQ(packed->results(i).length(), w.length()) << "step " << step;
        inline_s[static_cast<size_t>(i)].Commit(0, w);
        shared_s[static_cast<size_t>(i)].Commit(0, g);
        packed_s[static_cast<size_t>(i)].Commit(0, packed->results(i));
      }
      if (q_in_region) {
        EXPECT_EQ(region.Get(kOAt, o_bytes), want_o) << "step " << step;
        EXPECT_EQ(region.Get(kPackedOAt, o_bytes), want_o) << "step " << step << ", packed";
      } else {
        EXPECT_EQ(packed->o().data(), want_o) << "step " << step << ", packed";
      }
    }
  }
}

}  // namespace
}  // namespace sage::testing
