// Host-side checks of the paged decode's helpers (no GPU needed; runs with the CPU tests).
#include <gtest/gtest.h>

#include <cstdint>

#include "kernels/cuda/decode/int4_nibbles.cuh"
#include "kernels/cuda/decode/paged_decode.h"
#include "kernels/reference/kv_pages.h"

namespace sage::cuda {
namespace {

// FastDivmod against / and % for every divisor up to 4096, over small n and around multiples of d
// near 2^31 (where a multiplier one short would first go wrong).
TEST(FastDivmod, EqualsIntegerDivision) {
  for (int d = 1; d <= 4096; ++d) {
    const FastDivmod f = FastDivmod::For(d);
    auto check = [&](int64_t n) {
      if (n < 0 || n > INT32_MAX) return;
      const int x = static_cast<int>(n);
      ASSERT_EQ(f.Div(x), x / d) << "n " << x << " d " << d;
      ASSERT_EQ(f.Mod(x), x % d) << "n " << x << " d " << d;
    };
    for (int64_t n = 0; n < 3 * d + 70; ++n) check(n);
    for (int64_t k = INT32_MAX / d - 2; k <= INT32_MAX / d + 1; ++k) {
      for (int64_t e = -2; e <= 2; ++e) check(k * d + e);
    }
    check(INT32_MAX);
  }
}

// The kernels' INT4 nibble placement (quantize, gather) is the CPU scheme's, for every head_dim an
// INT4 layout allows.
TEST(Int4NibbleOf, IsTheSchemesOrder) {
  for (int d : {64, 128, 192, 256}) {
    for (int c = 0; c < d; ++c) {
      ASSERT_EQ(Int4NibbleOf(c, d), Int4ChannelNibble(c, d)) << "channel " << c << " D " << d;
      ASSERT_EQ(Int4NibbleChannel(Int4NibbleOf(c, d), d), c) << "channel " << c << " D " << d;
    }
  }
  EXPECT_EQ(kInt4GroupChannels, sage::kInt4GroupChannels);
}

}  // namespace
}  // namespace sage::cuda
