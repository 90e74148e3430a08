// What each recipe costs on the running hardware, relative to INT8 Q·Kᵀ + FP8 P·V. Calibration
// picks the cheapest recipe that meets the accuracy target, so this table decides between two
// recipes that are both accurate enough; it never makes an inaccurate recipe acceptable.
#pragma once

#include <string>
#include <vector>

#include "kernels/reference/recipe.h"
#include "server/backend/backend.h"
#include "server/registry/plan.h"

namespace sage::registry {

enum class Int4Support {
  kNative,    // mma.sync m16n8k64 .s4 runs at twice the INT8 rate (sm_80, sm_86, sm_89, sm_120).
  kEmulated,  // No INT4 tensor-core path (sm_90 wgmma has none; the CPU engine): INT4 costs at
              // least INT8 plus unpacking and the smooth-Q ΔS pass.
};

struct RecipeCost {
  Recipe recipe = Recipe::kInt8QkFp8Pv;
  double relative_cost = 1.0;  // Per attention FLOP, INT8+FP8 = 1.0.
  std::string why;             // One line for reports and docs.
};

struct CostTable {
  std::string architecture;  // What the table was derived for.
  Int4Support int4 = Int4Support::kEmulated;
  std::vector<RecipeCost> costs;  // Cheapest first; only recipes the backend runs.

  // Recipes in cost order, restricted to `candidates` when it is not empty.
  std::vector<Recipe> Order(const std::vector<Recipe>& candidates) const;
  double CostOf(Recipe recipe) const;  // +inf for a recipe the backend does not run.
};

// The table for the running backend. The numbers are declared from tensor-core rates, not
// measured: see cost_table.cc for each entry's reason.
CostTable CostTableFor(const server::BackendInfo& info);

// The hardware description recorded in plans made on this backend.
HardwareDescription DescribeHardware(const server::BackendInfo& info);

// The recipe a model without a plan runs: the backend's declared default, except that INT4 is
// never the default where it is not native (on sm_90 it would be slower and less accurate).
Recipe DefaultRecipeFor(const server::BackendInfo& info);

// The plan a model without a stored plan gets on this hardware: no entries, so every cell runs
// DefaultRecipeFor(info).
Plan DefaultPlanFor(const server::BackendInfo& info, const ModelSpec& spec);

}  // namespace sage::registry
