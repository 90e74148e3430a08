// The CPU side of every GPU test: the emulation of the same recipe (kernels/reference), kept behind
// one function so the harness does not depend on which reference entry point runs it.
#pragma once

#include "absl/status/statusor.h"
#include "kernels/reference/attention_problem.h"
#include "kernels/reference/quantized_attention.h"
#include "kernels/reference/recipe.h"

namespace sage::gputest {

inline absl::StatusOr<AttnOutput> CpuEmulation(const AttnInput& in, const RecipeConfig& config) {
  return AttendQuantized(in, config);
}

}  // namespace sage::gputest
