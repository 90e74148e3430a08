// A GPU's KV pool memory (backend/cuda/device_kv_memory.cc): small writes return before their copy
// has run, so what matters is order. Many small writes (some rewriting bytes of earlier ones) mixed
// with large writes and page copies, then every byte read back through Read, and through a stream
// of our own after OrderAfterWrites, against a host mirror of what each call wrote in turn.
#include <gtest/gtest.h>
#include <cuda_runtime.h>

#include <cstring>
#include <mutex>
#include <random>
#include <thread>
#include <span>
#include <vector>

#include "server/backend/cuda/device_kv_memory.h"
#include "tests/cuda/gpu_test_util.h"

namespace sage::gputest {
namespace {

using server::KvWrite;

constexpr size_t kPoolBytes = size_t{64} << 20;

struct Mirror {
  std::vector<std::byte> bytes = std::vector<std::byte>(kPoolBytes, std::byte{0});
};

// `n` random ranges of up to `max_bytes` each (distinct within one call), their bytes random; the
// mirror gets them in order.
void RandomWrite(server::KvMemory& memory, Mirror& mirror, std::mt19937_64& rng, int n, size_t max_bytes) {
  std::vector<std::vector<std::byte>> data(static_cast<size_t>(n));
  std::vector<KvWrite> writes;
  std::uniform_int_distribution<size_t> len(1, max_bytes);
  // Disjoint ranges within the call: one random base per piece in its own stretch of the pool.
  const size_t stretch = kPoolBytes / static_cast<size_t>(n);
  for (int i = 0; i < n; ++i) {
    const size_t bytes = std::min(len(rng), stretch);
    const size_t offset = static_cast<size_t>(i) * stretch + rng() % (stretch - bytes + 1);
    auto& d = data[static_cast<size_t>(i)];
    d.resize(bytes);
    for (auto& b : d) b = static_cast<std::byte>(rng());
    writes.push_back(KvWrite{offset, d.data(), bytes});
  }
  ASSERT_TRUE(memory.Write(writes).ok());
  for (const KvWrite& w : writes) std::memcpy(mirror.bytes.data() + w.offset, w.src, w.bytes);
  // The sources may be reused at once: scribble over them.
  for (auto& d : data) std::fill(d.begin(), d.end(), std::byte{0xEE});
}

TEST(DeviceKvMemory, SmallWritesLandInIssueOrderBeforeEveryReader) {
  SAGE_SKIP_WITHOUT_GPU();
  auto memory = server::CreateDeviceKvMemory(0, kPoolBytes);
  ASSERT_TRUE(memory.ok()) << memory.status();
  server::KvMemory& m = **memory;
  Mirror mirror;
  std::mutex mirror_mu;
  {
    std::vector<std::byte> zeros(kPoolBytes);
    const KvWrite all{0, zeros.data(), kPoolBytes};
    ASSERT_TRUE(m.Write(std::span<const KvWrite>(&all, 1)).ok());  // large: a lane, synchronous
  }
  std::mt19937_64 rng(7);
  for (int round = 0; round < 300; ++round) {
    if (round % 50 == 25) {
      RandomWrite(m, mirror, rng, 8, size_t{1} << 20);  // a large write between small ones
    } else if (round % 40 == 10) {
      // A page copy of bytes small writes just changed.
      const size_t src = rng() % (kPoolBytes / 2), dst = kPoolBytes / 2 + rng() % (kPoolBytes / 2 - 65536);
      ASSERT_TRUE(m.Copy(dst, src, 65536).ok());
      std::memcpy(mirror.bytes.data() + dst, mirror.bytes.data() + src, 65536);
    } else {
      RandomWrite(m, mirror, rng, 1 + static_cast<int>(rng() % 256), 2048);  // a decode call's pieces
    }
  }
  // Through a stream of our own, ordered after the writes only by OrderAfterWrites.
  cudaStream_t stream;
  ASSERT_EQ(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking), cudaSuccess);
  std::vector<std::byte> got(kPoolBytes);
  void* pinned = nullptr;
  ASSERT_EQ(cudaHostAlloc(&pinned, kPoolBytes, cudaHostAllocDefault), cudaSuccess);
  ASSERT_TRUE(m.OrderAfterWrites(stream).ok());
  ASSERT_EQ(cudaMemcpyAsync(pinned, m.base(), kPoolBytes, cudaMemcpyDeviceToHost, stream), cudaSuccess);
  ASSERT_EQ(cudaStreamSynchronize(stream), cudaSuccess);
  EXPECT_EQ(std::memcmp(pinned, mirror.bytes.data(), kPoolBytes), 0);
  // Small writes right before a Read.
  RandomWrite(m, mirror, rng, 64, 4096);
  ASSERT_TRUE(m.Read(0, got.data(), kPoolBytes).ok());
  EXPECT_EQ(std::memcmp(got.data(), mirror.bytes.data(), kPoolBytes), 0);
  // Eight threads appending at once (one holds the write stream, the others take lanes), each to its
  // own stretch of the pool, then everything read back.
  std::vector<std::thread> writers;
  std::vector<std::vector<std::byte>> expect(8);
  for (int w = 0; w < 8; ++w) {
    writers.emplace_back([&, w] {
      std::mt19937_64 r(100 + w);
      const size_t base = static_cast<size_t>(w) * (kPoolBytes / 8);
      for (int i = 0; i < 200; ++i) {
        std::vector<std::byte> data(64 + r() % 4000);
        for (auto& b : data) b = static_cast<std::byte>(r());
        const size_t offset = base + r() % (kPoolBytes / 8 - data.size());
        const KvWrite piece{offset, data.data(), data.size()};
        if (!m.Write(std::span<const KvWrite>(&piece, 1)).ok()) return;
        std::lock_guard<std::mutex> lock(mirror_mu);
        std::memcpy(mirror.bytes.data() + offset, data.data(), data.size());
      }
    });
  }
  for (std::thread& t : writers) t.join();
  ASSERT_TRUE(m.Read(0, got.data(), kPoolBytes).ok());
  EXPECT_EQ(std::memcmp(got.data(), mirror.bytes.data(), kPoolBytes), 0);
  (void)cudaFreeHost(pinned);
  (void)cudaStreamDestroy(stream);
}

}  // namespace
}  // namespace sage::gputest
