#include "server/registry/recipe_names.h"

#include <string>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace sage::registry {
namespace {

// One generic parser over an enum's value list and its name function.
template <typename E, size_t N, typename NameFn>
absl::StatusOr<E> ParseByName(std::string_view what, std::string_view name, const E (&values)[N],
                              NameFn name_of) {
  std::vector<std::string> accepted;
  for (E v : values) {
    if (name_of(v) == name) return v;
    accepted.emplace_back(name_of(v));
  }
  return absl::InvalidArgumentError(absl::StrCat(std::string(what), ": unknown value '", std::string(name),
                                                 "' (expected one of ", absl::StrJoin(accepted, ", "), ")"));
}

constexpr QkType kQkTypes[] = {QkType::kInt4, QkType::kInt8, QkType::kF16};
constexpr PvType kPvTypes[] = {PvType::kFp8E4M3, PvType::kF16};
constexpr QuantGranularity kGranularities[] = {QuantGranularity::kPerBlock, QuantGranularity::kPerWarp,
                                               QuantGranularity::kPerThread};
constexpr QkSmoothing kQkSmoothings[] = {QkSmoothing::kNone, QkSmoothing::kK, QkSmoothing::kQK};
constexpr VSmoothing kVSmoothings[] = {VSmoothing::kNone, VSmoothing::kMean};
constexpr PvAccumulation kAccumulations[] = {PvAccumulation::kTwoLevel, PvAccumulation::kFp22Only};

}  // namespace

std::string_view QkTypeName(QkType t) {
  switch (t) {
    case QkType::kInt4: return "int4";
    case QkType::kInt8: return "int8";
    case QkType::kF16: return "f16";
  }
  return "unknown";
}

std::string_view PvTypeName(PvType t) {
  switch (t) {
    case PvType::kFp8E4M3: return "fp8_e4m3";
    case PvType::kF16: return "f16";
  }
  return "unknown";
}

std::string_view QkSmoothingName(QkSmoothing s) {
  switch (s) {
    case QkSmoothing::kNone: return "none";
    case QkSmoothing::kK: return "k";
    case QkSmoothing::kQK: return "qk";
  }
  return "unknown";
}

std::string_view VSmoothingName(VSmoothing s) {
  switch (s) {
    case VSmoothing::kNone: return "none";
    case VSmoothing::kMean: return "mean";
  }
  return "unknown";
}

std::string_view AccumulationName(PvAccumulation a) {
  switch (a) {
    case PvAccumulation::kTwoLevel: return "two_level";
    case PvAccumulation::kFp22Only: return "fp22_only";
  }
  return "unknown";
}

absl::StatusOr<QkType> ParseQkType(std::string_view name) {
  return ParseByName("config.qk", name, kQkTypes, QkTypeName);
}
absl::StatusOr<PvType> ParsePvType(std::string_view name) {
  return ParseByName("config.pv", name, kPvTypes, PvTypeName);
}
absl::StatusOr<QuantGranularity> ParseGranularity(std::string_view name) {
  return ParseByName("config.granularity", name, kGranularities, GranularityName);
}
absl::StatusOr<QkSmoothing> ParseQkSmoothing(std::string_view name) {
  return ParseByName("config.qk_smoothing", name, kQkSmoothings, QkSmoothingName);
}
absl::StatusOr<VSmoothing> ParseVSmoothing(std::string_view name) {
  return ParseByName("config.v_smoothing", name, kVSmoothings, VSmoothingName);
}
absl::StatusOr<PvAccumulation> ParseAccumulation(std::string_view name) {
  return ParseByName("config.accumulation", name, kAccumulations, AccumulationName);
}

}  // namespace sage::registry
