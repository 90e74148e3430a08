// CopyForDma is memcpy with streaming stores: same bytes for every size and both alignments, and
// nothing outside [dst, dst + n) touched.
#include "server/backend/dma_copy.h"

#include <cstddef>
#include <random>
#include <vector>

#include "gtest/gtest.h"

namespace sage::server {
namespace {

TEST(CopyForDma, SameBytesAsMemcpyForAnySizeAndAlignment) {
  std::mt19937 rng(7);
  std::vector<unsigned char> src(70000), dst(70000 + 64);
  for (auto& b : src) b = static_cast<unsigned char>(rng());
  const std::vector<size_t> sizes = {0, 1, 15, 16, 17, 63, 64, 65, 255, 256, 257, 1000, 4096, 65537, 69000};
  for (size_t n : sizes) {
    for (size_t src_off : {0u, 1u, 7u, 16u}) {
      for (size_t dst_off : {0u, 3u, 8u, 16u, 31u}) {
        std::fill(dst.begin(), dst.end(), 0xAB);
        CopyForDma(dst.data() + dst_off, src.data() + src_off, n);
        for (size_t i = 0; i < dst_off; ++i) ASSERT_EQ(dst[i], 0xAB) << "before, n " << n;
        for (size_t i = 0; i < n; ++i) {
          ASSERT_EQ(dst[dst_off + i], src[src_off + i]) << "n " << n << " src+" << src_off << " dst+" << dst_off;
        }
        for (size_t i = dst_off + n; i < dst.size(); ++i) ASSERT_EQ(dst[i], 0xAB) << "after, n " << n;
      }
    }
  }
}

}  // namespace
}  // namespace sage::server
