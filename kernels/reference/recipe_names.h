// Stable lowercase names for recipes and for every switch of a RecipeConfig, as they appear on the
// wire's text forms, in flags, the registry file, sagectl's plan syntax and logs. Each enum has one
// {value, "name"} table in recipe_names.cc; its Name and Parse functions both read that table.
//
// RecipeName, ParseRecipe and GranularityName are declared in recipe.h (which this includes),
// where most callers look for them; they are defined from the same tables.
#pragma once

#include <string_view>

#include "absl/status/statusor.h"
#include "kernels/reference/recipe.h"

namespace sage {

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

}  // namespace sage
