// Error metrics of an engine's float output against the double-precision oracle.
#pragma once

#include <span>

namespace sage {

struct ErrorMetrics {
  double cosine = 0.0;       // Σ o·r / (|o| |r|); 1 when both are all-zero
  double relative_l1 = 0.0;  // Σ |o - r| / Σ |r|
  double rmse = 0.0;         // sqrt(mean (o - r)²)
  double max_abs = 0.0;      // max |o - r|
};

// `actual` and `reference` must have the same size.
ErrorMetrics CompareToReference(std::span<const float> actual, std::span<const double> reference);

// The calibration score used to rank recipes: cosine · (1 - relative L1).
double CalibrationScore(const ErrorMetrics& m);

}  // namespace sage
