// A model known to the precision registry: the attention shape every one of its layers shares, how
// many layers and diffusion timesteps it has, and the accuracy its plan must reach.
#pragma once

#include <optional>
#include <string>

#include "absl/status/status.h"
#include "absl/time/time.h"

namespace sage::registry {

// Default minimum of the calibration score cos·(1 − relL1). INT8 Q·Kᵀ + FP8 P·V scores about 0.96
// on well-behaved (Gaussian) attention and the paper's per-layer averages for the 8-bit kernel sit
// around cos 0.99 / relL1 0.03-0.06, so 0.95 accepts 8-bit on ordinary layers and rejects it
// where outliers make it lose several percent. Targets outside (0, 1] are refused (a typo such as
// 99 for 0.99 could never be met).
inline constexpr double kDefaultAccuracyTarget = 0.95;

struct ModelSpec {
  std::string name;  // [A-Za-z0-9._-]{1,128}: used in logs, files and sagectl arguments.
  int num_layers = 0;
  int q_heads = 0;
  int kv_heads = 0;
  int head_dim = 0;
  // Diffusion models: number of sampling steps the plan covers (timesteps 0..n-1). Absent for
  // models without timesteps (LLMs); requests for those must not name a timestep.
  std::optional<int> num_timesteps;
  // Minimum calibration score cos·(1 − relL1) the worst calibration sample of every (layer,
  // timestep) must reach with the recipe the plan picks.
  double accuracy_target = kDefaultAccuracyTarget;
};

// INVALID_ARGUMENT naming the field ("model.q_heads: ...").
absl::Status ValidateModelSpec(const ModelSpec& spec);

bool SameSpec(const ModelSpec& a, const ModelSpec& b);

// Checks a (layer, timestep) address against the model. INVALID_ARGUMENT naming the model and the
// allowed range; a timestep is required exactly when the model has timesteps.
absl::Status CheckLayerKey(const ModelSpec& spec, int layer, std::optional<int> timestep);

// Timestamps in files and on the wire: RFC 3339 UTC with seconds ("2026-11-25T21:40:03Z").
std::string FormatTimestamp(absl::Time t);

}  // namespace sage::registry
