// The calibration score cos·(1 − relL1) of one candidate over a cell's samples, accumulated as they
// are measured: the recipes' scores (calibrator.cc) and the KV storages' (kv_storage_calibration.cc).
#pragma once

#include <algorithm>
#include <limits>

#include "kernels/reference/metrics.h"

namespace sage::registry {

// Streaming mean / min / variance (Welford), so a cell with many samples needs no score vector.
struct ScoreStats {
  int n = 0;
  double mean = 0.0;
  double m2 = 0.0;
  double min = std::numeric_limits<double>::infinity();
  double cos_sum = 0.0;
  double l1_sum = 0.0;
  double l1_max = 0.0;
  double us_sum = 0.0;

  void Add(const ErrorMetrics& m, double compute_us) {
    const double score = CalibrationScore(m);
    ++n;
    const double delta = score - mean;
    mean += delta / n;
    m2 += delta * (score - mean);
    min = std::min(min, score);
    cos_sum += m.cosine;
    l1_sum += m.relative_l1;
    l1_max = std::max(l1_max, m.relative_l1);
    us_sum += compute_us;
  }
};

}  // namespace sage::registry
