// Calibrate a registered model and (unless it is a dry run) store the resulting plan: the one
// operation behind the Calibrate RPC, kept free of gRPC so tests and tools can run it directly.
#pragma once

#include <span>
#include <string>

#include "absl/status/statusor.h"
#include "server/registry/calibrator.h"
#include "server/registry/registry.h"

namespace sage::registry {

enum class CalibrationMode {
  kStore,   // Store the plan (version + 1) and return the report.
  kDryRun,  // Return the report and the plan that would be stored; change nothing.
};

struct CalibrationOutcome {
  CalibrationReport report;
  bool stored = false;
  Plan plan;  // As stored (with its version) or, for a dry run, as it would be stored.
};

// NOT_FOUND for an unknown model; INVALID_ARGUMENT for samples that do not fit it; ABORTED when
// the plan changed while calibration ran (the measured plan would silently overwrite someone
// else's newer plan), so the caller can retry.
absl::StatusOr<CalibrationOutcome> CalibrateModel(Registry& registry, const Calibrator& calibrator,
                                                  const std::string& model,
                                                  std::span<const CalibrationSample> samples,
                                                  const CalibrationOptions& options, CalibrationMode mode);

}  // namespace sage::registry
