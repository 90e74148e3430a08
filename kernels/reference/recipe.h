// The SageAttention2 recipes: each one a full quantize-then-attend pipeline.
// The GPU kernels and the CPU emulation implement exactly these configurations.
#pragma once

#include <span>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"

namespace sage {

// Named recipes, cheapest-first on hardware where INT4 is native (sm_80/sm_89).
enum class Recipe {
  kInt4QkFp8Pv = 0,   // SageAttn2-4b: INT4 per-thread Q/K, Q+K smoothing, FP8 P̃/V, two-level accumulation.
  kInt8QkFp8Pv = 1,   // SageAttn2-8b: INT8 per-thread Q/K, K smoothing, FP8 P̃/V, two-level accumulation.
  kInt8QkFp16Pv = 2,  // SageAttention1 lineage: INT8 Q/K, K smoothing, FP16 P̃/V, FP32 accumulation.
  kUnquantized = 3,   // 16-bit Q/K/V (as sent), FP32 accumulation: the fallback for sensitive layers.
};
inline constexpr Recipe kAllRecipes[] = {Recipe::kInt4QkFp8Pv, Recipe::kInt8QkFp8Pv,
                                         Recipe::kInt8QkFp16Pv, Recipe::kUnquantized};

enum class QkType { kInt4, kInt8, kF16 };  // kF16: unquantized (input precision).
enum class PvType { kFp8E4M3, kF16 };

// Which tokens share one Q/K scale, with the token groupings of a Hopper tile
// (64-row Q tile of 4 warps × 16 rows, 128-key K tile). See docs/NUMERICS.md.
enum class QuantGranularity {
  kPerBlock,   // Q: 64 consecutive rows; K: 128 consecutive keys.
  kPerWarp,    // Q: 16 consecutive rows (one warp's slice); K: 128 consecutive keys.
  kPerThread,  // Q: rows {w·16+g, w·16+g+8}; K: keys {8i+2t, 8i+2t+1 : i=0..15} of each 128-key block.
};

enum class QkSmoothing {
  kNone,
  kK,   // subtract the per-channel mean of K over tokens (softmax-invariant).
  kQK,  // also subtract per-Q-block means, adding ΔS = q̄·(K−k̄)ᵀ back after dequantization.
};

enum class VSmoothing { kNone, kMean };  // kMean: attend to V − v̄, add v̄ to the output.

enum class PvAccumulation {
  kTwoLevel,  // FP8 MMA accumulator (13 mantissa bits) flushed into FP32 every 128 keys.
  kFp22Only,  // one FP8 accumulator across all keys: shows the error that promotion removes.
};

struct RecipeConfig {
  QkType qk = QkType::kInt8;
  QuantGranularity granularity = QuantGranularity::kPerThread;
  QkSmoothing qk_smoothing = QkSmoothing::kK;
  PvType pv = PvType::kFp8E4M3;
  VSmoothing v_smoothing = VSmoothing::kNone;
  PvAccumulation accumulation = PvAccumulation::kTwoLevel;

  bool operator==(const RecipeConfig&) const = default;
};

// The default configuration of each named recipe.
RecipeConfig ConfigFor(Recipe recipe);

// Stable lowercase names used on the wire, in flags, files and logs:
// "int4_qk_fp8_pv", "int8_qk_fp8_pv", "int8_qk_fp16_pv", "unquantized".
// Declared here for the many callers that name recipes; defined in recipe_names.cc from the one
// name table per enum there. recipe_names.h has the names and parsers of the other switches.
std::string_view RecipeName(Recipe recipe);
absl::StatusOr<Recipe> ParseRecipe(std::string_view name);  // INVALID_ARGUMENT listing the names.

std::string_view GranularityName(QuantGranularity g);  // per_block, per_warp, per_thread

std::string DescribeConfig(const RecipeConfig& config);

}  // namespace sage
