#include "server/registry/plan.h"

#include <algorithm>

#include "absl/strings/str_cat.h"

namespace sage::registry {
namespace {

// A dense grid of 16M cells is ~0.5 GB; anything near that is a malformed model, not a plan.
constexpr size_t kMaxGridCells = size_t{1} << 24;

std::string RangeText(const Range& r) {
  return r.first == r.last ? absl::StrCat(r.first) : absl::StrCat(r.first, "-", r.last);
}

bool CellsEqual(const std::optional<PlanCell>& a, const std::optional<PlanCell>& b) {
  if (a.has_value() != b.has_value()) return false;
  return !a.has_value() || (a->recipe == b->recipe && ConfigsEqual(a->config, b->config));
}

struct Run {
  Range timesteps;
  std::optional<PlanCell> cell;
};

bool RunsEqual(const std::vector<Run>& a, const std::vector<Run>& b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i) {
    if (!(a[i].timesteps == b[i].timesteps) || !CellsEqual(a[i].cell, b[i].cell)) return false;
  }
  return true;
}

// INVALID_ARGUMENT "<where>.layers: ..." unless `layers` is a range inside the model's layers.
absl::Status CheckLayers(const ModelSpec& spec, const std::string& where, const Range& layers) {
  if (layers.first >= 0 && layers.last >= layers.first && layers.last < spec.num_layers) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrCat(where, ".layers: [", layers.first, ", ", layers.last,
                                                 "] is not inside layers 0..", spec.num_layers - 1, " of model '",
                                                 spec.name, "'"));
}

}  // namespace

std::string_view PlanSourceName(PlanSource source) {
  switch (source) {
    case PlanSource::kDefault: return "default";
    case PlanSource::kCalibrated: return "calibrated";
    case PlanSource::kManual: return "manual";
  }
  return "unknown";
}

absl::StatusOr<PlanSource> ParsePlanSource(std::string_view name) {
  for (PlanSource s : {PlanSource::kDefault, PlanSource::kCalibrated, PlanSource::kManual}) {
    if (PlanSourceName(s) == name) return s;
  }
  return absl::InvalidArgumentError(absl::StrCat("plan.source: unknown value '", std::string(name),
                                                 "' (expected default, calibrated or manual)"));
}

bool ConfigsEqual(const RecipeConfig& a, const RecipeConfig& b) {
  return a.qk == b.qk && a.granularity == b.granularity && a.qk_smoothing == b.qk_smoothing &&
         a.pv == b.pv && a.v_smoothing == b.v_smoothing && a.accumulation == b.accumulation;
}

bool EntriesEqual(const PlanEntry& a, const PlanEntry& b) {
  return a.layers == b.layers && a.timesteps == b.timesteps && a.recipe == b.recipe &&
         ConfigsEqual(a.config, b.config);
}

bool PlansEqual(const Plan& a, const Plan& b) {
  if (a.entries.size() != b.entries.size()) return false;
  for (size_t i = 0; i < a.entries.size(); ++i) {
    if (!EntriesEqual(a.entries[i], b.entries[i])) return false;
  }
  return a.source == b.source && a.calibrated_on == b.calibrated_on &&
         a.accuracy_target == b.accuracy_target && a.version == b.version &&
         a.created_at == b.created_at && a.sample_count == b.sample_count && a.kv_storages == b.kv_storages;
}

absl::Status ValidatePlan(const ModelSpec& spec, const Plan& plan) {
  if (!(plan.accuracy_target > 0.0 && plan.accuracy_target <= 1.0)) {
    return absl::InvalidArgumentError(
        absl::StrCat("plan.accuracy_target: must be in (0, 1], got ", plan.accuracy_target));
  }
  for (size_t i = 0; i < plan.entries.size(); ++i) {
    const PlanEntry& e = plan.entries[i];
    const std::string where = absl::StrCat("plan.entries[", i, "]");
    if (absl::Status s = CheckLayers(spec, where, e.layers); !s.ok()) return s;
    if (e.timesteps.has_value()) {
      if (!spec.num_timesteps.has_value()) {
        return absl::InvalidArgumentError(
            absl::StrCat(where, ".timesteps: model '", spec.name, "' has no timesteps"));
      }
      const Range& t = *e.timesteps;
      if (t.first < 0 || t.last < t.first || t.last >= *spec.num_timesteps) {
        return absl::InvalidArgumentError(absl::StrCat(where, ".timesteps: [", t.first, ", ", t.last,
                                                       "] is not inside timesteps 0..",
                                                       *spec.num_timesteps - 1));
      }
    }
    const RecipeConfig base = ConfigFor(e.recipe);
    if (e.config.qk != base.qk || e.config.pv != base.pv) {
      return absl::InvalidArgumentError(absl::StrCat(
          where, ".config: '", DescribeConfig(e.config), "' does not match the Q·Kᵀ/P·V types of recipe ",
          std::string(RecipeName(e.recipe))));
    }
    for (size_t j = 0; j < i; ++j) {
      const PlanEntry& o = plan.entries[j];
      const bool layers_overlap = e.layers.first <= o.layers.last && o.layers.first <= e.layers.last;
      const bool steps_overlap = !e.timesteps.has_value() || !o.timesteps.has_value() ||
                                 (e.timesteps->first <= o.timesteps->last &&
                                  o.timesteps->first <= e.timesteps->last);
      if (layers_overlap && steps_overlap) {
        return absl::InvalidArgumentError(absl::StrCat(where, ": overlaps plan.entries[", j,
                                                       "]; each (layer, timestep) needs one recipe"));
      }
    }
  }
  for (size_t i = 0; i < plan.kv_storages.size(); ++i) {
    const KvStorageEntry& e = plan.kv_storages[i];
    const std::string where = absl::StrCat("plan.kv_storages[", i, "]");
    if (absl::Status s = CheckLayers(spec, where, e.layers); !s.ok()) return s;
    if (absl::Status s = CheckKvLayout(e.storage, spec.head_dim); !s.ok()) {
      return absl::InvalidArgumentError(absl::StrCat(where, ".kv_storage: model '", spec.name, "' ", s.message()));
    }
    for (size_t j = 0; j < i; ++j) {
      const Range& o = plan.kv_storages[j].layers;
      if (e.layers.first <= o.last && o.first <= e.layers.last) {
        return absl::InvalidArgumentError(
            absl::StrCat(where, ": overlaps plan.kv_storages[", j, "]; each layer needs one storage"));
      }
    }
  }
  return absl::OkStatus();
}

std::optional<KvStorage> FindKvStorage(const Plan& plan, int layer) {
  for (const KvStorageEntry& e : plan.kv_storages) {
    if (e.layers.Contains(layer)) return e.storage;
  }
  return std::nullopt;
}

std::vector<KvStorageEntry> KvStorageEntries(std::span<const std::optional<KvStorage>> per_layer) {
  std::vector<KvStorageEntry> entries;
  for (size_t l = 0; l < per_layer.size(); ++l) {
    if (!per_layer[l].has_value()) continue;
    const int layer = static_cast<int>(l);
    if (!entries.empty() && entries.back().layers.last == layer - 1 && entries.back().storage == *per_layer[l]) {
      entries.back().layers.last = layer;
    } else {
      entries.push_back(KvStorageEntry{Range{layer, layer}, *per_layer[l]});
    }
  }
  return entries;
}

std::string DescribeKvStorageEntry(const KvStorageEntry& e) {
  return absl::StrCat("layers ", RangeText(e.layers), ": ", std::string(KvStorageName(e.storage)));
}

const PlanEntry* FindEntry(const Plan& plan, int layer, std::optional<int> timestep) {
  for (const PlanEntry& e : plan.entries) {
    if (!e.layers.Contains(layer)) continue;
    if (e.timesteps.has_value() && (!timestep.has_value() || !e.timesteps->Contains(*timestep))) {
      continue;
    }
    return &e;
  }
  return nullptr;
}

absl::StatusOr<PlanGrid> PlanGrid::Create(const ModelSpec& spec) {
  const int steps = spec.num_timesteps.value_or(1);
  if (static_cast<size_t>(spec.num_layers) * static_cast<size_t>(steps) > kMaxGridCells) {
    return absl::ResourceExhaustedError(absl::StrCat("model '", spec.name, "': ", spec.num_layers,
                                                     " layers × ", steps, " timesteps is too many cells"));
  }
  return PlanGrid(spec.num_layers, steps, spec.num_timesteps.has_value());
}

absl::StatusOr<PlanGrid> PlanGrid::FromPlan(const ModelSpec& spec, const Plan& plan) {
  absl::StatusOr<PlanGrid> grid = Create(spec);
  if (!grid.ok()) return grid.status();
  for (const PlanEntry& e : plan.entries) {
    const Range steps = e.timesteps.value_or(Range{0, grid->num_timesteps() - 1});
    for (int l = e.layers.first; l <= e.layers.last; ++l) {
      for (int t = steps.first; t <= steps.last; ++t) grid->at(l, t) = PlanCell{e.recipe, e.config};
    }
  }
  return grid;
}

std::vector<PlanEntry> PlanGrid::ToEntries() const {
  std::vector<std::vector<Run>> per_layer(num_layers_);
  for (int l = 0; l < num_layers_; ++l) {
    std::vector<Run>& runs = per_layer[l];
    for (int t = 0; t < num_timesteps_; ++t) {
      if (!runs.empty() && CellsEqual(runs.back().cell, at(l, t))) {
        runs.back().timesteps.last = t;
      } else {
        runs.push_back(Run{Range{t, t}, at(l, t)});
      }
    }
  }
  std::vector<PlanEntry> entries;
  int l = 0;
  while (l < num_layers_) {
    int end = l;
    while (end + 1 < num_layers_ && RunsEqual(per_layer[end + 1], per_layer[l])) ++end;
    for (const Run& run : per_layer[l]) {
      if (!run.cell.has_value()) continue;
      PlanEntry e;
      e.layers = Range{l, end};
      // A run covering every timestep needs no timestep range; that also keeps plans of models
      // without timesteps free of them.
      if (has_timesteps_ && !(run.timesteps.first == 0 && run.timesteps.last == num_timesteps_ - 1)) {
        e.timesteps = run.timesteps;
      }
      e.recipe = run.cell->recipe;
      e.config = run.cell->config;
      entries.push_back(e);
    }
    l = end + 1;
  }
  return entries;
}

std::string DescribeEntry(const PlanEntry& e) {
  return absl::StrCat("layers ", RangeText(e.layers),
                      e.timesteps.has_value() ? absl::StrCat(" × timesteps ", RangeText(*e.timesteps)) : "",
                      ": ", std::string(RecipeName(e.recipe)), " (", DescribeConfig(e.config), ")");
}

}  // namespace sage::registry
