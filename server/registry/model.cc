#include "server/registry/model.h"

#include "absl/strings/str_cat.h"

namespace sage::registry {
namespace {

constexpr size_t kMaxNameLength = 128;
// Upper bounds that catch nonsense early (a negative number parsed as unsigned, a tensor size
// given as a layer count). Real models are far below these.
constexpr int kMaxLayers = 4096;
constexpr int kMaxTimesteps = 100000;
constexpr int kMaxHeads = 1024;

bool ValidNameChar(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' ||
         c == '_' || c == '-';
}

}  // namespace

absl::Status ValidateModelSpec(const ModelSpec& spec) {
  if (spec.name.empty() || spec.name.size() > kMaxNameLength) {
    return absl::InvalidArgumentError(
        absl::StrCat("model.name: must be 1..", kMaxNameLength, " characters, got ", spec.name.size()));
  }
  for (char c : spec.name) {
    if (!ValidNameChar(c)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "model.name: '", spec.name, "' may only contain letters, digits, '.', '_' and '-'"));
    }
  }
  if (spec.num_layers < 1 || spec.num_layers > kMaxLayers) {
    return absl::InvalidArgumentError(
        absl::StrCat("model.num_layers: must be in [1, ", kMaxLayers, "], got ", spec.num_layers));
  }
  if (spec.q_heads < 1 || spec.q_heads > kMaxHeads) {
    return absl::InvalidArgumentError(
        absl::StrCat("model.q_heads: must be in [1, ", kMaxHeads, "], got ", spec.q_heads));
  }
  if (spec.kv_heads < 1 || spec.kv_heads > spec.q_heads || spec.q_heads % spec.kv_heads != 0) {
    return absl::InvalidArgumentError(absl::StrCat("model.kv_heads: must divide q_heads (",
                                                   spec.q_heads, "), got ", spec.kv_heads));
  }
  if (spec.head_dim < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("model.head_dim: must be positive, got ", spec.head_dim));
  }
  if (spec.num_timesteps.has_value() &&
      (*spec.num_timesteps < 1 || *spec.num_timesteps > kMaxTimesteps)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "model.num_timesteps: must be in [1, ", kMaxTimesteps, "] when set, got ", *spec.num_timesteps));
  }
  if (!(spec.accuracy_target > 0.0 && spec.accuracy_target <= 1.0)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "model.accuracy_target: cos·(1-relL1) target must be in (0, 1], got ", spec.accuracy_target));
  }
  return absl::OkStatus();
}

bool SameSpec(const ModelSpec& a, const ModelSpec& b) {
  return a.name == b.name && a.num_layers == b.num_layers && a.q_heads == b.q_heads &&
         a.kv_heads == b.kv_heads && a.head_dim == b.head_dim && a.num_timesteps == b.num_timesteps &&
         a.accuracy_target == b.accuracy_target;
}

absl::Status CheckLayerKey(const ModelSpec& spec, int layer, std::optional<int> timestep) {
  if (layer < 0 || layer >= spec.num_layers) {
    return absl::InvalidArgumentError(absl::StrCat("layer_key.layer: ", layer, " is out of range for model '",
                                                   spec.name, "' (layers 0..", spec.num_layers - 1, ")"));
  }
  if (spec.num_timesteps.has_value()) {
    if (!timestep.has_value()) {
      return absl::InvalidArgumentError(absl::StrCat("layer_key.timestep: model '", spec.name, "' has ",
                                                     *spec.num_timesteps, " timesteps; the request must name one"));
    }
    if (*timestep < 0 || *timestep >= *spec.num_timesteps) {
      return absl::InvalidArgumentError(
          absl::StrCat("layer_key.timestep: ", *timestep, " is out of range for model '", spec.name,
                       "' (timesteps 0..", *spec.num_timesteps - 1, ")"));
    }
  } else if (timestep.has_value()) {
    return absl::InvalidArgumentError(absl::StrCat("layer_key.timestep: model '", spec.name,
                                                   "' has no timesteps, got ", *timestep));
  }
  return absl::OkStatus();
}

std::string FormatTimestamp(absl::Time t) {
  return absl::FormatTime("%Y-%m-%dT%H:%M:%SZ", t, absl::UTCTimeZone());
}

}  // namespace sage::registry
