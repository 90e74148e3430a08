#include "kernels/reference/metrics.h"

#include <cmath>
#include <vector>

#include "gtest/gtest.h"

namespace sage {
namespace {

TEST(Metrics, IdenticalOutputsAreExact) {
  const std::vector<double> ref = {1.0, -2.0, 3.0, 0.5};
  const std::vector<float> got = {1.0f, -2.0f, 3.0f, 0.5f};
  const ErrorMetrics m = CompareToReference(got, ref);
  EXPECT_DOUBLE_EQ(m.cosine, 1.0);
  EXPECT_EQ(m.relative_l1, 0.0);
  EXPECT_EQ(m.rmse, 0.0);
  EXPECT_EQ(m.max_abs, 0.0);
  EXPECT_DOUBLE_EQ(CalibrationScore(m), 1.0);
}

TEST(Metrics, KnownValues) {
  const std::vector<double> ref = {1.0, 0.0, 0.0, 1.0};
  const std::vector<float> got = {1.0f, 1.0f, 0.0f, 0.0f};
  const ErrorMetrics m = CompareToReference(got, ref);
  EXPECT_NEAR(m.cosine, 0.5, 1e-15);          // (1) / (sqrt2 · sqrt2)
  EXPECT_NEAR(m.relative_l1, 1.0, 1e-15);     // (0 + 1 + 0 + 1) / 2
  EXPECT_NEAR(m.rmse, std::sqrt(0.5), 1e-15);  // sqrt(2 / 4)
  EXPECT_EQ(m.max_abs, 1.0);
  EXPECT_NEAR(CalibrationScore(m), 0.0, 1e-15);
  const ErrorMetrics opposite = CompareToReference(std::vector<float>{-1.0f, -2.0f}, std::vector<double>{1.0, 2.0});
  EXPECT_NEAR(opposite.cosine, -1.0, 1e-15);
  EXPECT_NEAR(opposite.relative_l1, 2.0, 1e-15);
}

TEST(Metrics, AllZeroBothSidesIsPerfect) {
  const ErrorMetrics m = CompareToReference(std::vector<float>(3, 0.0f), std::vector<double>(3, 0.0));
  EXPECT_EQ(m.cosine, 1.0);
  EXPECT_EQ(m.relative_l1, 0.0);
}

}  // namespace
}  // namespace sage
