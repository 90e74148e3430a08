// Stable lowercase names for the switches of a RecipeConfig, as they appear in the registry file
// and in sagectl's plan syntax. recipe.h names recipes and granularities; this adds the rest.
#pragma once

#include <string_view>

#include "absl/status/statusor.h"
#include "kernels/reference/recipe.h"

namespace sage::registry {

std::string_view QkTypeName(QkType t);                 // int4, int8, f16
std::string_view PvTypeName(PvType t);                 // fp8_e4m3, f16
std::string_view QkSmoothingName(QkSmoothing s);       // none, k, qk
std::string_view VSmoothingName(VSmoothing s);         // none, mean
std::string_view AccumulationName(PvAccumulation a);   // two_level, fp22_only

// INVALID_ARGUMENT listing the accepted names.
absl::StatusOr<QkType> ParseQkType(std::string_view name);
absl::StatusOr<PvType> ParsePvType(std::string_view name);
absl::StatusOr<QuantGranularity> ParseGranularity(std::string_view name);
absl::StatusOr<QkSmoothing> ParseQkSmoothing(std::string_view name);
absl::StatusOr<VSmoothing> ParseVSmoothing(std::string_view name);
absl::StatusOr<PvAccumulation> ParseAccumulation(std::string_view name);

}  // namespace sage::registry
