#include "server/registry/cost_table.h"

#include <algorithm>
#include <limits>

namespace sage::registry {
namespace {

std::string PrimaryArchitecture(const server::BackendInfo& info) {
  return info.devices.empty() ? std::string("unknown") : info.devices.front().architecture;
}

bool Int4IsNative(const server::BackendInfo& info) {
  if (info.kind != server::BackendKind::kCuda) return false;
  const std::string arch = PrimaryArchitecture(info);
  // Ampere and Ada (and consumer Blackwell) have INT4 mma.sync; Hopper dropped INT4 from wgmma.
  return arch == "sm_80" || arch == "sm_86" || arch == "sm_87" || arch == "sm_89" ||
         arch == "sm_120" || arch == "sm_121";
}

// Relative costs. Attention is two GEMMs of equal FLOPs (Q·Kᵀ and P·V), so a recipe's cost is
// about the mean of its two GEMMs' inverse tensor-core rates, normalised to INT8 + FP8 = 1.0.
//  - INT8 and FP8 run at the same dense rate on sm_89/sm_90 (1979 TOPS on H100).
//  - FP16 runs at half that rate: FP16 P·V makes the recipe (1 + 2) / 2 = 1.5; both GEMMs in
//    FP16 make it 2.0.
//  - Native INT4 doubles the Q·Kᵀ rate: (0.5 + 1) / 2 = 0.75.
//  - Emulated INT4 on sm_90 / CPU: the INT8 GEMM plus unpacking plus the smooth-Q ΔS pass (the
//    paper measures ΔS at 3.7%); declared 1.1, so it ranks after INT8 + FP8 and before any
//    16-bit recipe, and is chosen only when it meets the target where INT8 + FP8 does not.
constexpr double kInt4NativeCost = 0.75;
constexpr double kInt4EmulatedCost = 1.1;
constexpr double kInt8Fp8Cost = 1.0;
constexpr double kInt8Fp16Cost = 1.5;
constexpr double kUnquantizedCost = 2.0;

}  // namespace

std::vector<Recipe> CostTable::Order(const std::vector<Recipe>& candidates) const {
  std::vector<Recipe> order;
  for (const RecipeCost& c : costs) {
    if (candidates.empty() ||
        std::find(candidates.begin(), candidates.end(), c.recipe) != candidates.end()) {
      order.push_back(c.recipe);
    }
  }
  return order;
}

double CostTable::CostOf(Recipe recipe) const {
  for (const RecipeCost& c : costs) {
    if (c.recipe == recipe) return c.relative_cost;
  }
  return std::numeric_limits<double>::infinity();
}

CostTable CostTableFor(const server::BackendInfo& info) {
  CostTable table;
  table.architecture = PrimaryArchitecture(info);
  table.int4 = Int4IsNative(info) ? Int4Support::kNative : Int4Support::kEmulated;
  const bool native = table.int4 == Int4Support::kNative;
  const RecipeCost all[] = {
      {Recipe::kInt4QkFp8Pv, native ? kInt4NativeCost : kInt4EmulatedCost,
       native ? "INT4 mma.sync at 2x the INT8 rate" : "no INT4 tensor cores here: INT8 GEMM + unpack + ΔS"},
      {Recipe::kInt8QkFp8Pv, kInt8Fp8Cost, "INT8 and FP8 GEMMs at the full 8-bit rate"},
      {Recipe::kInt8QkFp16Pv, kInt8Fp16Cost, "FP16 P·V at half the 8-bit rate"},
      {Recipe::kUnquantized, kUnquantizedCost, "both GEMMs at the 16-bit rate"},
  };
  for (const RecipeCost& c : all) {
    if (std::find(info.recipes.begin(), info.recipes.end(), c.recipe) != info.recipes.end()) {
      table.costs.push_back(c);
    }
  }
  // Stable: equal costs keep the order of Recipe (more accurate last).
  std::stable_sort(table.costs.begin(), table.costs.end(), [](const RecipeCost& a, const RecipeCost& b) {
    return a.relative_cost < b.relative_cost;
  });
  return table;
}

HardwareDescription DescribeHardware(const server::BackendInfo& info) {
  HardwareDescription hw;
  hw.backend = info.kind == server::BackendKind::kCuda ? "cuda" : "cpu";
  if (!info.devices.empty()) {
    hw.device = info.devices.front().name;
    hw.architecture = info.devices.front().architecture;
  }
  return hw;
}

Recipe DefaultRecipeFor(const server::BackendInfo& info) {
  if (info.default_recipe == Recipe::kInt4QkFp8Pv && !Int4IsNative(info)) {
    return Recipe::kInt8QkFp8Pv;
  }
  return info.default_recipe;
}

Plan DefaultPlanFor(const server::BackendInfo& info, const ModelSpec& spec) {
  Plan plan;
  plan.source = PlanSource::kDefault;
  plan.calibrated_on = DescribeHardware(info);
  plan.accuracy_target = spec.accuracy_target;
  return plan;
}

}  // namespace sage::registry
