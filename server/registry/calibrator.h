// Calibration (SageAttention2 technical report, §4 of docs' brief): run every candidate recipe on
// the running backend for sample Q/K/V of each (layer, timestep), score it against the exact
// double-precision result with cos·(1 − relL1), and pick per cell the cheapest recipe whose WORST
// sample meets the model's target. Picking on the worst sample rather than the mean is what makes
// a fixed offline table safe: the paper's premise is that the spread over inputs is small, and the
// report shows the spread so an operator can check that premise.
#pragma once

#include <functional>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "kernels/reference/attention_problem.h"
#include "server/backend/backend.h"
#include "server/registry/cost_table.h"
#include "server/registry/kv_storage_calibration.h"
#include "server/registry/model.h"
#include "server/registry/plan.h"

namespace sage::registry {

struct CalibrationSample {
  int layer = 0;
  std::optional<int> timestep;  // Required exactly when the model has timesteps.
  AttnInput input;              // Views; the caller keeps the tensors alive during Calibrate.
};

enum class CostModel {
  kDeclared,  // CostTableFor(backend): tensor-core rates of the hardware (default).
  kMeasured,  // Mean compute time measured during this calibration, per cell. On the CPU backend
              // this ranks the emulation's cost, which says little about a GPU.
};

struct CalibrationOptions {
  std::vector<Recipe> candidates;          // Empty: every recipe the backend runs.
  std::optional<double> accuracy_target;   // Overrides the model's target for this run.
  CostModel cost_model = CostModel::kDeclared;
  // KV storages to score per layer (models without timesteps): empty, every one the backend runs.
  std::vector<KvStorage> kv_storages;
  std::function<bool()> is_cancelled;      // Polled between backend calls; CANCELLED when true.
};

struct RecipeScore {
  Recipe recipe = Recipe::kUnquantized;
  double relative_cost = 0.0;  // From the cost table (declared) for this hardware.
  int samples = 0;
  double mean_score = 0.0;     // cos·(1 − relL1) over the cell's samples ...
  double min_score = 0.0;      // ... its worst sample (what the choice is made on) ...
  double std_score = 0.0;      // ... and its population standard deviation.
  double mean_cosine = 0.0;
  double mean_relative_l1 = 0.0;
  double max_relative_l1 = 0.0;
  double mean_compute_us = 0.0;
  bool meets_target = false;
  std::string error;  // Set when the backend failed to run the recipe.
};

struct CellReport {
  int layer = 0;
  std::optional<int> timestep;
  int samples = 0;
  std::vector<RecipeScore> scores;  // In cost order, cheapest first.
  Recipe chosen = Recipe::kUnquantized;
  bool met_target = false;  // False: no candidate met the target; `chosen` is the most accurate.
  std::string reason;
};

struct CalibrationReport {
  std::string model;
  double accuracy_target = 0.0;
  HardwareDescription hardware;
  std::vector<Recipe> cost_order;  // The order in which recipes were considered.
  std::vector<CellReport> cells;   // Sorted by (layer, timestep).
  // Per calibrated layer of a model without timesteps: the KV storage its sessions get
  // (kv_storage_calibration.h). Empty for models with timesteps.
  std::vector<LayerKvReport> kv_layers;
  int sample_count = 0;
  // The plan to store: calibrated cells, timesteps between calibrated ones take the more accurate
  // neighbour's recipe, layers not calibrated now keep the previous plan's entries when that plan
  // was made on the same hardware (their KV storages likewise). version/created_at are set by
  // Registry::SetPlan.
  Plan plan;
  absl::Duration elapsed;
};

class Calibrator {
 public:
  explicit Calibrator(server::AttentionBackend* backend) : backend_(backend) {}

  // INVALID_ARGUMENT naming the sample ("samples[3].q.heads ...") when a sample does not fit the
  // model; CANCELLED when options.is_cancelled fires. Blocking: call from a worker thread.
  absl::StatusOr<CalibrationReport> Calibrate(const ModelSpec& spec, const std::optional<Plan>& existing,
                                              std::span<const CalibrationSample> samples,
                                              const CalibrationOptions& options) const;

 private:
  server::AttentionBackend* const backend_;
};

// A fixed-width text table of a report, for logs, sagectl and docs.
std::string FormatReport(const CalibrationReport& report);

}  // namespace sage::registry
