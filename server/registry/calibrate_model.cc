#include "server/registry/calibrate_model.h"

namespace sage::registry {

absl::StatusOr<CalibrationOutcome> CalibrateModel(Registry& registry, const Calibrator& calibrator,
                                                  const std::string& model,
                                                  std::span<const CalibrationSample> samples,
                                                  const CalibrationOptions& options, CalibrationMode mode) {
  absl::StatusOr<ModelRecord> record = registry.GetModel(model);
  if (!record.ok()) return record.status();
  const int64_t base_version = record->plan.has_value() ? record->plan->version : 0;
  absl::StatusOr<CalibrationReport> report = calibrator.Calibrate(record->spec, record->plan, samples, options);
  if (!report.ok()) return report.status();
  CalibrationOutcome outcome;
  outcome.plan = report->plan;
  if (mode == CalibrationMode::kStore) {
    // Calibration takes seconds; expected_version turns a concurrent SetPlan into ABORTED instead
    // of a lost update.
    absl::StatusOr<Plan> stored = registry.SetPlan(model, report->plan, base_version);
    if (!stored.ok()) return stored.status();
    outcome.plan = *stored;
    outcome.stored = true;
  }
  outcome.report = *std::move(report);
  return outcome;
}

}  // namespace sage::registry
