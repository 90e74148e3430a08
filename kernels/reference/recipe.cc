#include "kernels/reference/recipe.h"

#include "absl/strings/str_cat.h"
#include "kernels/reference/recipe_names.h"

namespace sage {

RecipeConfig ConfigFor(Recipe recipe) {
  switch (recipe) {
    case Recipe::kInt4QkFp8Pv:
      return {QkType::kInt4, QuantGranularity::kPerThread, QkSmoothing::kQK, PvType::kFp8E4M3,
              VSmoothing::kNone, PvAccumulation::kTwoLevel};
    case Recipe::kInt8QkFp8Pv:
      return {QkType::kInt8, QuantGranularity::kPerThread, QkSmoothing::kK, PvType::kFp8E4M3,
              VSmoothing::kNone, PvAccumulation::kTwoLevel};
    case Recipe::kInt8QkFp16Pv:
      return {QkType::kInt8, QuantGranularity::kPerThread, QkSmoothing::kK, PvType::kF16,
              VSmoothing::kNone, PvAccumulation::kTwoLevel};
    case Recipe::kUnquantized:
      return {QkType::kF16, QuantGranularity::kPerThread, QkSmoothing::kNone, PvType::kF16,
              VSmoothing::kNone, PvAccumulation::kTwoLevel};
  }
  return RecipeConfig{};
}

std::string DescribeConfig(const RecipeConfig& c) {
  const bool quantized_qk = c.qk != QkType::kF16;
  return absl::StrCat(
      "qk=", std::string(QkTypeName(c.qk)),
      quantized_qk ? absl::StrCat("/", std::string(GranularityName(c.granularity))) : "",
      " smooth=", std::string(QkSmoothingName(c.qk_smoothing)), " pv=", std::string(PvTypeName(c.pv)),
      c.v_smoothing == VSmoothing::kMean ? " smooth_v" : "",
      c.pv == PvType::kFp8E4M3 ? absl::StrCat(" accum=", std::string(AccumulationName(c.accumulation))) : "");
}

}  // namespace sage
