// A GPU's KV pool memory (backend/cuda/device_kv_memory.cc): small writes return before their copy
// has run, so what matters is order. Many small writes (some rewriting bytes of earlier ones) mixed
// with large writes and page copies, then every byte read back through Read, and through a stream
// of our own after OrderAfterWrites, against a host mirror of what each call wrote in turn. Writes
// and 8-bit quantized appends whose sources lie in device memory (a client's CUDA buffer, read in
// place) land as the host ones do, and WaitForWrites returns only once they have read them.
#include <gtest/gtest.h>
#include <cuda_runtime.h>

#include <cstring>
#include <mutex>
#include <random>
#include <thread>
#include <span>
#include <string>
#include <vector>

#include "kernels/reference/kv_pages.h"
#include "kernels/reference/numerics.h"
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

// Pieces from device memory beside host ones (small calls and one large one), and quantized tokens
// whose K/V rows are on the device or the host, several sessions' means, more than a slot holds.
TEST(DeviceKvMemory, DeviceSourcesAreReadInPlaceAndWaitedFor) {
  SAGE_SKIP_WITHOUT_GPU();
  auto memory = server::CreateDeviceKvMemory(0, kPoolBytes);
  ASSERT_TRUE(memory.ok()) << memory.status();
  server::KvMemory& m = **memory;
  Stream stream;
  std::vector<std::byte> mirror(kPoolBytes, std::byte{0});
  {
    const KvWrite all{0, mirror.data(), kPoolBytes};
    ASSERT_TRUE(m.Write(std::span<const KvWrite>(&all, 1)).ok());
  }
  std::mt19937_64 rng(11);
  for (size_t piece_max : {size_t{4096}, size_t{2} << 20}) {  // the slot path, then the lane path
    std::vector<std::byte> host(16 * piece_max);
    for (auto& b : host) b = static_cast<std::byte>(rng());
    DeviceBuffer device_src;
    ASSERT_TRUE(device_src.Upload(host, stream.get()).ok());
    ASSERT_EQ(cudaStreamSynchronize(stream.get()), cudaSuccess);
    std::vector<KvWrite> writes;
    for (size_t i = 0; i < 16; ++i) {  // odd pieces from the device copy
      const size_t bytes = 1 + rng() % piece_max, offset = i * (kPoolBytes / 16) + rng() % (kPoolBytes / 16 - bytes);
      const bool on_device = i % 2 == 1;
      const std::byte* src = (on_device ? device_src.as<std::byte>() : host.data()) + i * piece_max;
      writes.push_back(KvWrite{offset, src, bytes, on_device ? server::MemoryKind::kDevice : server::MemoryKind::kPageable});
      std::memcpy(mirror.data() + offset, host.data() + i * piece_max, bytes);
    }
    ASSERT_TRUE(m.Write(writes).ok());
    ASSERT_TRUE(m.WaitForWrites().ok());
    ASSERT_TRUE(device_src.Poison(stream.get()).ok());  // the sources reused once waited for
    ASSERT_EQ(cudaStreamSynchronize(stream.get()), cudaSuccess);
  }
  std::vector<std::byte> got(kPoolBytes);
  ASSERT_TRUE(m.Read(0, got.data(), kPoolBytes).ok());
  EXPECT_EQ(std::memcmp(got.data(), mirror.data(), kPoolBytes), 0);

  // Tokens of 8-bit and of 16-bit pages: 300 at 8 heads x 128 (more than one slot's run), 8-bit
  // means changing every 7 tokens, some rows on the device and some on the host.
  constexpr int kTokens = 300, kHeads = 8, kD = 128, kPageTokens = 16;
  const size_t row = static_cast<size_t>(kHeads) * kD;
  std::normal_distribution<float> nd;
  std::vector<uint16_t> kv(2 * kTokens * row);
  for (size_t i = 0; i < kv.size(); ++i) kv[i] = EncodeFp16(nd(rng) + (i % row == 3 ? 6.0f : 0.0f));
  std::vector<float> means(((kTokens + 6) / 7) * row);
  for (float& x : means) x = 0.5f * nd(rng);
  DeviceBuffer device_kv;
  ASSERT_TRUE(device_kv.Upload(kv, stream.get()).ok());
  ASSERT_EQ(cudaStreamSynchronize(stream.get()), cudaSuccess);
  for (KvStorage storage : {KvStorage::kInt8KFp8V, KvStorage::k16Bit}) {
    SCOPED_TRACE(std::string(KvStorageName(storage)));
    const KvPageLayout layout{storage, DType::kF16, kPageTokens, kHeads, kD};
    std::vector<server::KvTokenWrite> tokens;
    std::vector<std::byte> want(kPoolBytes, std::byte{0});
    for (int t = 0; t < kTokens; ++t) {
      const bool on_device = t % 3 != 0;
      const uint16_t* base = on_device ? device_kv.as<uint16_t>() : kv.data();
      const int place = t * 37 % kTokens;  // (page, slot) places in a shuffled order
      tokens.push_back(server::KvTokenWrite{static_cast<size_t>(place / kPageTokens) * layout.page_bytes(),
                                            place % kPageTokens, base + t * row, base + (kTokens + t) * row,
                                            HasKMean(storage) ? means.data() + (t / 7) * row : nullptr,
                                            on_device ? server::MemoryKind::kDevice : server::MemoryKind::kPageable});
    }
    std::vector<server::KvTokenWrite> host_tokens = tokens;
    for (server::KvTokenWrite& t : host_tokens) {  // the same tokens from the host copy
      const size_t at = static_cast<size_t>(static_cast<const uint16_t*>(t.k) -
                                            (t.kv_memory == server::MemoryKind::kDevice ? device_kv.as<uint16_t>() : kv.data()));
      t.k = kv.data() + at;
      t.v = kv.data() + at + kTokens * row;
      t.kv_memory = server::MemoryKind::kPageable;
    }
    ASSERT_TRUE(server::EncodeOnHost(layout, want.data(), host_tokens).ok());
    ASSERT_TRUE(m.WriteTokens(layout, tokens).ok());
    ASSERT_TRUE(m.WaitForWrites().ok());
    const size_t span = (static_cast<size_t>(kTokens) / kPageTokens + 1) * layout.page_bytes();
    ASSERT_TRUE(m.Read(0, got.data(), span).ok());
    // Only the tokens' own rows: the rest of each page is what the earlier writes left.
    const struct {
      size_t offset, row_bytes;
    } parts[] = {{0, layout.k_code_bytes()},
                 {layout.v_codes_offset(), layout.v_code_bytes()},
                 {layout.k_scales_offset(), layout.k_scales_per_token_head() * 4},
                 {layout.v_scales_offset(), layout.v_scales_per_token_head() * 4}};
    int mismatches = 0;
    for (int t = 0; t < kTokens; ++t) {
      const std::byte* w = want.data() + tokens[t].page_offset;
      const std::byte* g = got.data() + tokens[t].page_offset;
      for (int h = 0; h < kHeads; ++h) {
        for (const auto& part : parts) {
          const size_t at = part.offset + layout.row(tokens[t].slot, h) * part.row_bytes;
          if (std::memcmp(w + at, g + at, part.row_bytes) != 0 && mismatches++ < 5) {
            ADD_FAILURE() << "token " << t << " head " << h << " differs from the host encode";
          }
        }
      }
    }
    EXPECT_EQ(mismatches, 0);
  }
}

}  // namespace
}  // namespace sage::gputest
