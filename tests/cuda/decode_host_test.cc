// Host-side checks of the paged decode's helpers (no GPU needed; runs with the CPU tests).
#include <gtest/gtest.h>

#include <cstdint>

#include "kernels/cuda/decode/paged_decode.h"

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

}  // namespace
}  // namespace sage::cuda
