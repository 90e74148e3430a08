#include "kernels/reference/recipe.h"

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace sage {
namespace {

const char* QkTypeName(QkType t) {
  switch (t) {
    case QkType::kInt4: return "int4";
    case QkType::kInt8: return "int8";
    case QkType::kF16: return "f16";
  }
  return "unknown";
}

const char* PvTypeName(PvType t) {
  switch (t) {
    case PvType::kFp8E4M3: return "fp8_e4m3";
    case PvType::kF16: return "f16";
  }
  return "unknown";
}

const char* SmoothingName(QkSmoothing s) {
  switch (s) {
    case QkSmoothing::kNone: return "none";
    case QkSmoothing::kK: return "k";
    case QkSmoothing::kQK: return "qk";
  }
  return "unknown";
}

}  // namespace

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

std::string_view RecipeName(Recipe recipe) {
  switch (recipe) {
    case Recipe::kInt4QkFp8Pv: return "int4_qk_fp8_pv";
    case Recipe::kInt8QkFp8Pv: return "int8_qk_fp8_pv";
    case Recipe::kInt8QkFp16Pv: return "int8_qk_fp16_pv";
    case Recipe::kUnquantized: return "unquantized";
  }
  return "unknown";
}

absl::StatusOr<Recipe> ParseRecipe(std::string_view name) {
  for (Recipe r : kAllRecipes) {
    if (RecipeName(r) == name) return r;
  }
  return absl::InvalidArgumentError(
      absl::StrCat("recipe: unknown name '", std::string(name),
                   "' (expected int4_qk_fp8_pv, int8_qk_fp8_pv, int8_qk_fp16_pv or unquantized)"));
}

std::string_view GranularityName(QuantGranularity g) {
  switch (g) {
    case QuantGranularity::kPerBlock: return "per_block";
    case QuantGranularity::kPerWarp: return "per_warp";
    case QuantGranularity::kPerThread: return "per_thread";
  }
  return "unknown";
}

std::string DescribeConfig(const RecipeConfig& c) {
  const bool quantized_qk = c.qk != QkType::kF16;
  return absl::StrCat(
      "qk=", QkTypeName(c.qk), quantized_qk ? absl::StrCat("/", std::string(GranularityName(c.granularity))) : "",
      " smooth=", SmoothingName(c.qk_smoothing), " pv=", PvTypeName(c.pv),
      c.v_smoothing == VSmoothing::kMean ? " smooth_v" : "",
      c.pv == PvType::kFp8E4M3
          ? (c.accumulation == PvAccumulation::kTwoLevel ? " accum=two_level" : " accum=fp22_only")
          : "");
}

}  // namespace sage
