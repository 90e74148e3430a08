#include "kernels/reference/recipe_names.h"

#include <cstddef>
#include <iterator>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace sage {
namespace {

template <typename E>
struct NameEntry {
  E value;
  std::string_view name;
};

// One table per enum, in enumerator order (which is also the order Parse lists them in).
constexpr NameEntry<Recipe> kRecipeNames[] = {
    {Recipe::kInt4QkFp8Pv, "int4_qk_fp8_pv"},
    {Recipe::kInt8QkFp8Pv, "int8_qk_fp8_pv"},
    {Recipe::kInt8QkFp16Pv, "int8_qk_fp16_pv"},
    {Recipe::kUnquantized, "unquantized"},
};
constexpr NameEntry<QkType> kQkTypeNames[] = {
    {QkType::kInt4, "int4"},
    {QkType::kInt8, "int8"},
    {QkType::kF16, "f16"},
};
constexpr NameEntry<PvType> kPvTypeNames[] = {
    {PvType::kFp8E4M3, "fp8_e4m3"},
    {PvType::kF16, "f16"},
};
constexpr NameEntry<QuantGranularity> kGranularityNames[] = {
    {QuantGranularity::kPerBlock, "per_block"},
    {QuantGranularity::kPerWarp, "per_warp"},
    {QuantGranularity::kPerThread, "per_thread"},
};
constexpr NameEntry<QkSmoothing> kQkSmoothingNames[] = {
    {QkSmoothing::kNone, "none"},
    {QkSmoothing::kK, "k"},
    {QkSmoothing::kQK, "qk"},
};
constexpr NameEntry<VSmoothing> kVSmoothingNames[] = {
    {VSmoothing::kNone, "none"},
    {VSmoothing::kMean, "mean"},
};
constexpr NameEntry<PvAccumulation> kAccumulationNames[] = {
    {PvAccumulation::kTwoLevel, "two_level"},
    {PvAccumulation::kFp22Only, "fp22_only"},
};

// Every table lists its enumerators in order from 0 with no gap (a dropped or reordered row fails
// the build). The recipe table also matches kAllRecipes row for row.
template <typename E, size_t N>
constexpr bool InEnumeratorOrder(const NameEntry<E> (&table)[N]) {
  for (size_t i = 0; i < N; ++i) {
    if (static_cast<size_t>(table[i].value) != i) return false;
  }
  return true;
}
constexpr bool MatchesAllRecipes() {
  if (std::size(kRecipeNames) != std::size(kAllRecipes)) return false;
  for (size_t i = 0; i < std::size(kAllRecipes); ++i) {
    if (kRecipeNames[i].value != kAllRecipes[i]) return false;
  }
  return true;
}
static_assert(InEnumeratorOrder(kRecipeNames) && MatchesAllRecipes());
static_assert(InEnumeratorOrder(kQkTypeNames));
static_assert(InEnumeratorOrder(kPvTypeNames));
static_assert(InEnumeratorOrder(kGranularityNames));
static_assert(InEnumeratorOrder(kQkSmoothingNames));
static_assert(InEnumeratorOrder(kVSmoothingNames));
static_assert(InEnumeratorOrder(kAccumulationNames));

template <typename E, size_t N>
std::string_view NameIn(const NameEntry<E> (&table)[N], E value) {
  for (const NameEntry<E>& e : table) {
    if (e.value == value) return e.name;
  }
  return "unknown";
}

// How the accepted names are listed in Parse's error: "a, b or c" or "one of a, b, c".
enum class ListStyle { kCommasThenOr, kOneOf };

template <typename E, size_t N>
std::string AcceptedNames(const NameEntry<E> (&table)[N], ListStyle style) {
  std::string out = style == ListStyle::kOneOf ? "one of " : "";
  for (size_t i = 0; i < N; ++i) {
    if (i > 0) out += (style == ListStyle::kCommasThenOr && i + 1 == N) ? " or " : ", ";
    out += table[i].name;
  }
  return out;
}

template <typename E, size_t N>
absl::StatusOr<E> ParseIn(const NameEntry<E> (&table)[N], std::string_view what, std::string_view unknown,
                          ListStyle style, std::string_view name) {
  for (const NameEntry<E>& e : table) {
    if (e.name == name) return e.value;
  }
  return absl::InvalidArgumentError(absl::StrCat(std::string(what), ": ", std::string(unknown), " '",
                                                 std::string(name), "' (expected ", AcceptedNames(table, style),
                                                 ")"));
}

// The registry file's / plan syntax's wording for the RecipeConfig switches.
template <typename E, size_t N>
absl::StatusOr<E> ParseConfigField(const NameEntry<E> (&table)[N], std::string_view what, std::string_view name) {
  return ParseIn(table, what, "unknown value", ListStyle::kOneOf, name);
}

}  // namespace

std::string_view RecipeName(Recipe recipe) { return NameIn(kRecipeNames, recipe); }
std::string_view GranularityName(QuantGranularity g) { return NameIn(kGranularityNames, g); }
std::string_view QkTypeName(QkType t) { return NameIn(kQkTypeNames, t); }
std::string_view PvTypeName(PvType t) { return NameIn(kPvTypeNames, t); }
std::string_view QkSmoothingName(QkSmoothing s) { return NameIn(kQkSmoothingNames, s); }
std::string_view VSmoothingName(VSmoothing s) { return NameIn(kVSmoothingNames, s); }
std::string_view AccumulationName(PvAccumulation a) { return NameIn(kAccumulationNames, a); }

// "recipe: unknown name 'x' (expected int4_qk_fp8_pv, int8_qk_fp8_pv, int8_qk_fp16_pv or unquantized)"
absl::StatusOr<Recipe> ParseRecipe(std::string_view name) {
  return ParseIn(kRecipeNames, "recipe", "unknown name", ListStyle::kCommasThenOr, name);
}

// "config.qk: unknown value 'x' (expected one of int4, int8, f16)", and so on.
absl::StatusOr<QkType> ParseQkType(std::string_view name) {
  return ParseConfigField(kQkTypeNames, "config.qk", name);
}
absl::StatusOr<PvType> ParsePvType(std::string_view name) {
  return ParseConfigField(kPvTypeNames, "config.pv", name);
}
absl::StatusOr<QuantGranularity> ParseGranularity(std::string_view name) {
  return ParseConfigField(kGranularityNames, "config.granularity", name);
}
absl::StatusOr<QkSmoothing> ParseQkSmoothing(std::string_view name) {
  return ParseConfigField(kQkSmoothingNames, "config.qk_smoothing", name);
}
absl::StatusOr<VSmoothing> ParseVSmoothing(std::string_view name) {
  return ParseConfigField(kVSmoothingNames, "config.v_smoothing", name);
}
absl::StatusOr<PvAccumulation> ParseAccumulation(std::string_view name) {
  return ParseConfigField(kAccumulationNames, "config.accumulation", name);
}

}  // namespace sage
