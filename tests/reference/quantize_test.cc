#include "kernels/reference/quantize.h"

#include <cmath>
#include <random>
#include <map>
#include <set>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/reference/numerics.h"

namespace sage {
namespace {

std::vector<float> RandomVector(size_t n, uint64_t seed, float offset_sigma = 0.0f, int d = 1) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<float> offset(d);
  for (auto& o : offset) o = offset_sigma * normal(rng);
  std::vector<float> x(n);
  for (size_t i = 0; i < n; ++i) x[i] = normal(rng) + offset[i % d];
  return x;
}

TEST(Granularity, PerThreadGroupsFollowTheAccumulatorLayout) {
  std::set<int> q_groups;
  for (int r = 0; r < kQTileRows; ++r) {
    const int g = QGroupOfRow(QuantGranularity::kPerThread, r);
    q_groups.insert(g);
    const int w = r / 16, lane_row = r % 16;
    EXPECT_EQ(g, QGroupOfRow(QuantGranularity::kPerThread, w * 16 + (lane_row % 8)));      // row g
    EXPECT_EQ(g, QGroupOfRow(QuantGranularity::kPerThread, w * 16 + (lane_row % 8) + 8));  // row g+8
    EXPECT_EQ(QGroupOfRow(QuantGranularity::kPerWarp, r), w);
    EXPECT_EQ(QGroupOfRow(QuantGranularity::kPerBlock, r), 0);
  }
  EXPECT_EQ(q_groups.size(), 32u);
  for (int j = 0; j < kKBlockKeys; ++j) {
    EXPECT_EQ(KGroupOfKey(QuantGranularity::kPerThread, j), (j % 8) / 2);
    EXPECT_EQ(KGroupOfKey(QuantGranularity::kPerWarp, j), 0);
  }
}

// Independent restatement of the integer quantizer for one group.
void CheckGroup(const std::vector<float>& x, int d, const std::vector<int>& rows, int qmax,
                const std::vector<int8_t>& values, const std::vector<float>& scales) {
  float amax = 0.0f;
  for (int r : rows) {
    for (int c = 0; c < d; ++c) amax = std::max(amax, std::fabs(x[r * d + c]));
  }
  if (amax == 0.0f) amax = 1.0f;
  const float inv = static_cast<float>(qmax) / amax;
  for (int r : rows) {
    EXPECT_EQ(scales[r], amax / static_cast<float>(qmax));
    for (int c = 0; c < d; ++c) {
      const float expect = std::clamp(std::nearbyint(x[r * d + c] * inv), static_cast<float>(-qmax),
                                      static_cast<float>(qmax));
      ASSERT_EQ(values[r * d + c], static_cast<int8_t>(expect)) << r << "," << c;
    }
  }
}

TEST(QuantizeTile, MatchesTheDefinitionForEveryGranularity) {
  const int d = 64;
  for (QkType type : {QkType::kInt8, QkType::kInt4}) {
    for (QuantGranularity g : {QuantGranularity::kPerBlock, QuantGranularity::kPerWarp, QuantGranularity::kPerThread}) {
      for (TileKind kind : {TileKind::kQTile, TileKind::kKBlock}) {
        const int rows = kind == TileKind::kQTile ? 61 : 125;  // partial tail tiles
        std::vector<float> x = RandomVector(static_cast<size_t>(rows) * d, 3);
        for (int c = 0; c < d; ++c) x[5 * d + c] = 0.0f;  // an all-zero row
        std::vector<int8_t> values(x.size());
        std::vector<float> scales(rows);
        QuantizeTile(x.data(), d, rows, d, kind, type, g, values.data(), scales.data());
        std::map<int, std::vector<int>> groups;
        for (int r = 0; r < rows; ++r) {
          groups[kind == TileKind::kQTile ? QGroupOfRow(g, r) : KGroupOfKey(g, r)].push_back(r);
        }
        for (const auto& [id, members] : groups) CheckGroup(x, d, members, QkMax(type), values, scales);
      }
    }
  }
}

TEST(QuantizeTile, Int4StaysInSymmetricRangeAndZeroGroupIsExact) {
  const int d = 64;
  std::vector<float> x(static_cast<size_t>(16) * d, 0.0f);
  std::vector<int8_t> values(x.size(), 99);
  std::vector<float> scales(16);
  QuantizeTile(x.data(), d, 16, d, TileKind::kQTile, QkType::kInt4, QuantGranularity::kPerWarp, values.data(),
               scales.data());
  for (int8_t v : values) EXPECT_EQ(v, 0);
  EXPECT_EQ(scales[0], 1.0f / 7.0f);
  x = RandomVector(x.size(), 4);
  QuantizeTile(x.data(), d, 16, d, TileKind::kQTile, QkType::kInt4, QuantGranularity::kPerBlock, values.data(),
               scales.data());
  int seen_max = 0;
  for (int8_t v : values) {
    EXPECT_LE(std::abs(v), 7);
    seen_max = std::max(seen_max, std::abs(static_cast<int>(v)));
  }
  EXPECT_EQ(seen_max, 7);
}

// Smoothing algebra in double: Q Kᵀ = γ(Q)γ(K)ᵀ + ΔS + q·k̄, so restoring ΔS leaves only a per-row
// constant, and the softmax is unchanged.
TEST(Smoothing, DeltaSRestoresScoresAndSoftmaxIsInvariant) {
  const int d = 128, n_q = 64, n_k = 200;
  const std::vector<float> q = RandomVector(static_cast<size_t>(n_q) * d, 11, 3.0f, d);
  const std::vector<float> k = RandomVector(static_cast<size_t>(n_k) * d, 12, 8.0f, d);
  std::vector<float> q_mean(d), k_mean(d);
  ChannelMean(q.data(), d, n_q, d, q_mean.data());
  ChannelMean(k.data(), d, n_k, d, k_mean.data());
  std::vector<float> k_smoothed(k.size());
  for (int j = 0; j < n_k; ++j) {
    for (int c = 0; c < d; ++c) k_smoothed[j * d + c] = k[j * d + c] - k_mean[c];
  }
  std::vector<float> delta_s(n_k);
  DeltaS(q_mean.data(), k_smoothed.data(), d, n_k, d, delta_s.data());
  for (int i = 0; i < n_q; ++i) {
    std::vector<double> original(n_k), restored(n_k);
    double row_bias = 0.0;
    for (int c = 0; c < d; ++c) row_bias += static_cast<double>(q[i * d + c]) * k_mean[c];
    for (int j = 0; j < n_k; ++j) {
      double s = 0.0, smooth = 0.0, ds = 0.0;
      for (int c = 0; c < d; ++c) {
        const double gq = static_cast<double>(q[i * d + c]) - q_mean[c];
        const double gk = static_cast<double>(k[j * d + c]) - k_mean[c];
        s += static_cast<double>(q[i * d + c]) * k[j * d + c];
        smooth += gq * gk;
        ds += static_cast<double>(q_mean[c]) * gk;
      }
      original[j] = s;
      restored[j] = smooth + ds;
      EXPECT_NEAR(restored[j] + row_bias, original[j], 1e-12 * (1.0 + std::fabs(original[j])));
      EXPECT_NEAR(ds, delta_s[j], 1e-3 * (1.0 + std::fabs(ds)));  // fp32 ΔS tracks the exact one
    }
    // Softmax of the K-smoothed-and-ΔS-restored scores equals the original softmax.
    auto softmax = [](std::vector<double> s) {
      double mx = -INFINITY, sum = 0.0;
      for (double x : s) mx = std::max(mx, x);
      for (double& x : s) sum += (x = std::exp(x - mx));
      for (double& x : s) x /= sum;
      return s;
    };
    const auto p0 = softmax(original);
    const auto p1 = softmax(restored);
    for (int j = 0; j < n_k; ++j) ASSERT_NEAR(p0[j], p1[j], 1e-12);
  }
}

TEST(QuantizeK, MeansArePerSequenceAndBatchInvariant) {
  const int heads = 2, d = 64;
  const std::vector<int32_t> cu = {0, 100, 300};
  const std::vector<float> k = RandomVector(static_cast<size_t>(300) * heads * d, 21, 5.0f, d);
  auto packed = QuantizeK(k, heads, d, cu, QkType::kInt8, QuantGranularity::kPerThread, QkSmoothing::kK);
  ASSERT_TRUE(packed.ok());
  const std::vector<int32_t> cu_alone = {0, 200};
  const std::vector<float> second(k.begin() + 100 * heads * d, k.end());
  auto alone = QuantizeK(second, heads, d, cu_alone, QkType::kInt8, QuantGranularity::kPerThread, QkSmoothing::kK);
  ASSERT_TRUE(alone.ok());
  EXPECT_TRUE(std::equal(alone->values.begin(), alone->values.end(), packed->values.begin() + 100 * heads * d));
  EXPECT_TRUE(std::equal(alone->means.begin(), alone->means.end(), packed->means.begin() + heads * d));
  // Smoothing removes the channel offset: smoothed magnitudes are centred.
  double mean_of_means = 0.0;
  for (float m : packed->means) mean_of_means += std::fabs(m);
  EXPECT_GT(mean_of_means / static_cast<double>(packed->means.size()), 1.0);
}

TEST(QuantizeQ, TileMeansRestartAtEachSequence) {
  const int heads = 2, d = 64;
  const std::vector<int32_t> cu = {0, 70, 134};  // tiles: 64 + 6 rows, then 64 rows
  const std::vector<float> q = RandomVector(static_cast<size_t>(134) * heads * d, 41, 3.0f, d);
  auto r = QuantizeQ(q, heads, d, cu, QkType::kInt4, QuantGranularity::kPerThread, QkSmoothing::kQK);
  ASSERT_TRUE(r.ok());
  ASSERT_EQ(r->means.size(), static_cast<size_t>(3) * heads * d);
  std::vector<float> mean(d);
  const int64_t stride = static_cast<int64_t>(heads) * d;
  // Tile 1 of sequence 0 (rows 64..69), head 1; then tile 0 of sequence 1 (rows 70..133), head 0.
  ChannelMean(q.data() + 64 * stride + d, stride, 6, d, mean.data());
  EXPECT_TRUE(std::equal(mean.begin(), mean.end(), r->means.begin() + (1 * heads + 1) * d));
  ChannelMean(q.data() + 70 * stride, stride, 64, d, mean.data());
  EXPECT_TRUE(std::equal(mean.begin(), mean.end(), r->means.begin() + (2 * heads + 0) * d));
  for (int8_t v : r->values) ASSERT_LE(std::abs(v), 7);
  EXPECT_EQ(QuantizeQ(q, heads, d, cu, QkType::kF16, QuantGranularity::kPerThread, QkSmoothing::kQK).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(QuantizeV, PerChannelScalesAndCodes) {
  const int heads = 1, d = 64;
  const std::vector<int32_t> cu = {0, 90};
  const std::vector<float> v = RandomVector(static_cast<size_t>(90) * d, 31, 4.0f, d);
  for (VSmoothing smoothing : {VSmoothing::kNone, VSmoothing::kMean}) {
    auto q = QuantizeV(v, heads, d, cu, smoothing);
    ASSERT_TRUE(q.ok());
    for (int c = 0; c < d; ++c) {
      const float mean = q->means[c];
      if (smoothing == VSmoothing::kNone) {
        EXPECT_EQ(mean, 0.0f);
      }
      float amax = 0.0f;
      for (int t = 0; t < 90; ++t) amax = std::max(amax, std::fabs(v[t * d + c] - mean));
      EXPECT_EQ(q->scales[c], amax / 448.0f);
      bool hit_max = false;
      for (int t = 0; t < 90; ++t) {
        const uint8_t code = q->codes[t * d + c];
        ASSERT_EQ(code, EncodeFp8E4M3((v[t * d + c] - mean) * (448.0f / amax)));
        hit_max |= (code & 0x7F) == 0x7E;
      }
      EXPECT_TRUE(hit_max) << "the channel's amax maps to 448";
    }
  }
}

}  // namespace
}  // namespace sage
