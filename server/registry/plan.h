// A precision plan: which recipe (with which granularity and smoothing switches) runs for each
// (layer, timestep) of a model, and where that decision came from.
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "kernels/reference/kv_pages.h"
#include "kernels/reference/recipe.h"
#include "server/registry/model.h"

namespace sage::registry {

struct Range {
  int first = 0;
  int last = 0;  // inclusive
  bool Contains(int i) const { return i >= first && i <= last; }
  friend bool operator==(const Range&, const Range&) = default;
};

struct PlanEntry {
  Range layers;
  // Absent: every timestep (always absent for models without timesteps).
  std::optional<Range> timesteps;
  Recipe recipe = Recipe::kInt8QkFp8Pv;
  RecipeConfig config;  // Must be a variant of `recipe`: same Q·Kᵀ and P·V types.
};

// How a session's layers store their K/V (sessions have no timesteps, so this is per layer only).
// A layer no entry covers stores 16-bit K/V unless the session asks otherwise.
struct KvStorageEntry {
  Range layers;
  KvStorage storage = KvStorage::k16Bit;
  friend bool operator==(const KvStorageEntry&, const KvStorageEntry&) = default;
};

// The hardware a plan was measured on: a plan calibrated on an sm_89 card says little about an
// sm_90 one (different INT4/FP8 paths), so operators must be able to see it.
struct HardwareDescription {
  std::string backend;       // "cpu", "cuda"
  std::string device;        // "NVIDIA H100 80GB HBM3", "cpu (16 threads)"
  std::string architecture;  // "sm_90", "x86_64"
  friend bool operator==(const HardwareDescription&, const HardwareDescription&) = default;
};

enum class PlanSource {
  kDefault,     // Not stored: derived from the running hardware for a model without a plan.
  kCalibrated,  // Chosen by Calibrate from measured accuracy.
  kManual,      // Set by an operator through SetPlan.
};
std::string_view PlanSourceName(PlanSource source);
absl::StatusOr<PlanSource> ParsePlanSource(std::string_view name);

struct Plan {
  // Non-overlapping. A cell no entry covers runs the running hardware's default recipe, so a
  // plan may cover only the layers that were calibrated.
  std::vector<PlanEntry> entries;
  PlanSource source = PlanSource::kDefault;
  HardwareDescription calibrated_on;
  double accuracy_target = kDefaultAccuracyTarget;
  int64_t version = 0;   // 1 for the first stored plan of a model, +1 on every replacement.
  absl::Time created_at = absl::UnixEpoch();
  int sample_count = 0;  // Calibration samples behind the plan (0 unless calibrated).
  // Non-overlapping; the storage a session created for the model gives each layer (CreateSession
  // without kv_storage). Calibrate picks, per layer, the fewest bytes whose worst sample meets the
  // target (calibrator.h).
  std::vector<KvStorageEntry> kv_storages;
};

bool ConfigsEqual(const RecipeConfig& a, const RecipeConfig& b);
bool EntriesEqual(const PlanEntry& a, const PlanEntry& b);
bool PlansEqual(const Plan& a, const Plan& b);

// INVALID_ARGUMENT naming the entry and field: ranges inside the model, timesteps present only for
// models that have them, no two entries covering the same cell, config consistent with recipe.
absl::Status ValidatePlan(const ModelSpec& spec, const Plan& plan);

// The entry covering (layer, timestep), or null when the plan leaves that cell to the default.
// `timestep` is ignored for models without timesteps. The address must already be checked.
const PlanEntry* FindEntry(const Plan& plan, int layer, std::optional<int> timestep);

// The storage the plan gives `layer`, or nullopt when no entry covers it.
std::optional<KvStorage> FindKvStorage(const Plan& plan, int layer);

// Consecutive layers with the same storage as one entry each: per-layer choices (nullopt: none)
// in the fewest entries.
std::vector<KvStorageEntry> KvStorageEntries(std::span<const std::optional<KvStorage>> per_layer);

// "layers 0-3: KV_STORAGE_INT8_K_FP8_V" for logs and sagectl.
std::string DescribeKvStorageEntry(const KvStorageEntry& entry);

// One cell of a dense layer × timestep table (used to merge and compress plans).
struct PlanCell {
  Recipe recipe = Recipe::kInt8QkFp8Pv;
  RecipeConfig config;
};

// Dense [layer][timestep] view of a plan; timestep dimension is 1 for models without timesteps.
class PlanGrid {
 public:
  // RESOURCE_EXHAUSTED when layers × timesteps is unreasonably large to hold densely.
  static absl::StatusOr<PlanGrid> Create(const ModelSpec& spec);
  static absl::StatusOr<PlanGrid> FromPlan(const ModelSpec& spec, const Plan& plan);

  int num_layers() const { return num_layers_; }
  int num_timesteps() const { return num_timesteps_; }
  std::optional<PlanCell>& at(int layer, int timestep) {
    return cells_[static_cast<size_t>(layer) * num_timesteps_ + timestep];
  }
  const std::optional<PlanCell>& at(int layer, int timestep) const {
    return cells_[static_cast<size_t>(layer) * num_timesteps_ + timestep];
  }
  // Run-length encodes timesteps per layer, then merges adjacent layers with identical runs: the
  // smallest entry list a human can still read for the usual "layers 0-11 one way, 12-15 another".
  std::vector<PlanEntry> ToEntries() const;

 private:
  PlanGrid(int layers, int timesteps, bool has_timesteps)
      : num_layers_(layers), num_timesteps_(timesteps), has_timesteps_(has_timesteps),
        cells_(static_cast<size_t>(layers) * timesteps) {}
  int num_layers_;
  int num_timesteps_;
  bool has_timesteps_;
  std::vector<std::optional<PlanCell>> cells_;
};

// "layers 0-3 × timesteps 10-49: int8_qk_fp8_pv (qk=int8/per_thread ...)" for logs and sagectl.
std::string DescribeEntry(const PlanEntry& entry);

}  // namespace sage::registry
