// The kernels' recipe configuration (sageattn C API) for a reference RecipeConfig.
#pragma once

#include "absl/status/statusor.h"
#include "kernels/include/sageattn.h"
#include "kernels/reference/recipe.h"

namespace sage::server {

// UNIMPLEMENTED for combinations no kernel runs (e.g. 16-bit Q·Kᵀ with FP8 P·V).
absl::StatusOr<sage_recipe_config_t> ToKernelConfig(const RecipeConfig& c);

}  // namespace sage::server
