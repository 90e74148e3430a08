#include "server/backend/cuda/kernel_config.h"

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace sage::server {

absl::StatusOr<sage_recipe_config_t> ToKernelConfig(const RecipeConfig& c) {
  sage_recipe_config_t k{};
  if (c.qk == QkType::kInt4 && c.pv == PvType::kFp8E4M3) k.recipe = SAGE_RECIPE_INT4_QK_FP8_PV;
  else if (c.qk == QkType::kInt8 && c.pv == PvType::kFp8E4M3) k.recipe = SAGE_RECIPE_INT8_QK_FP8_PV;
  else if (c.qk == QkType::kInt8 && c.pv == PvType::kF16) k.recipe = SAGE_RECIPE_INT8_QK_FP16_PV;
  else if (c.qk == QkType::kF16 && c.pv == PvType::kF16) k.recipe = SAGE_RECIPE_UNQUANTIZED;
  else return absl::UnimplementedError(absl::StrCat("cuda backend: no kernel for ", DescribeConfig(c)));
  switch (c.granularity) {
    case QuantGranularity::kPerBlock: k.granularity = SAGE_GRAN_PER_BLOCK; break;
    case QuantGranularity::kPerWarp: k.granularity = SAGE_GRAN_PER_WARP; break;
    case QuantGranularity::kPerThread: k.granularity = SAGE_GRAN_PER_THREAD; break;
  }
  switch (c.qk_smoothing) {
    case QkSmoothing::kNone: k.qk_smoothing = SAGE_SMOOTH_NONE; break;
    case QkSmoothing::kK: k.qk_smoothing = SAGE_SMOOTH_K; break;
    case QkSmoothing::kQK: k.qk_smoothing = SAGE_SMOOTH_QK; break;
  }
  k.v_smoothing = c.v_smoothing == VSmoothing::kMean ? SAGE_VSMOOTH_MEAN : SAGE_VSMOOTH_NONE;
  k.accumulation = c.accumulation == PvAccumulation::kFp22Only ? SAGE_ACCUM_FP22_ONLY : SAGE_ACCUM_TWO_LEVEL;
  return k;
}

}  // namespace sage::server
