#include "kernels/reference/metrics.h"

#include <algorithm>
#include <cmath>

namespace sage {

ErrorMetrics CompareToReference(std::span<const float> actual, std::span<const double> reference) {
  const size_t n = std::min(actual.size(), reference.size());
  double dot = 0.0, norm_a = 0.0, norm_r = 0.0, abs_diff = 0.0, abs_ref = 0.0, sq_diff = 0.0, max_abs = 0.0;
  for (size_t i = 0; i < n; ++i) {
    const double a = actual[i];
    const double r = reference[i];
    const double diff = a - r;
    dot += a * r;
    norm_a += a * a;
    norm_r += r * r;
    abs_diff += std::fabs(diff);
    abs_ref += std::fabs(r);
    sq_diff += diff * diff;
    max_abs = std::max(max_abs, std::fabs(diff));
  }
  ErrorMetrics m;
  if (norm_a == 0.0 && norm_r == 0.0) {
    m.cosine = 1.0;
  } else if (norm_a > 0.0 && norm_r > 0.0) {
    m.cosine = dot / (std::sqrt(norm_a) * std::sqrt(norm_r));
  }
  m.relative_l1 = abs_ref > 0.0 ? abs_diff / abs_ref : (abs_diff > 0.0 ? INFINITY : 0.0);
  m.rmse = n > 0 ? std::sqrt(sq_diff / static_cast<double>(n)) : 0.0;
  m.max_abs = max_abs;
  return m;
}

double CalibrationScore(const ErrorMetrics& m) { return m.cosine * (1.0 - m.relative_l1); }

}  // namespace sage
