#include "server/registry/calibrator.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <limits>
#include <map>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "kernels/reference/metrics.h"
#include "kernels/reference/oracle.h"
#include "server/registry/score_stats.h"

namespace sage::registry {
namespace {

using CellKey = std::pair<int, int>;  // (layer, timestep or -1)

constexpr int kNoTimestep = -1;

absl::Status CheckSample(const ModelSpec& spec, const CalibrationSample& s, size_t index) {
  const std::string where = absl::StrCat("samples[", index, "]");
  if (absl::Status v = CheckLayerKey(spec, s.layer, s.timestep); !v.ok()) {
    return absl::InvalidArgumentError(absl::StrCat(where, ".", v.message()));
  }
  if (absl::Status v = ValidateInput(s.input); !v.ok()) {
    return absl::InvalidArgumentError(absl::StrCat(where, ".", v.message()));
  }
  if (s.input.q.heads != spec.q_heads || s.input.k.heads != spec.kv_heads ||
      s.input.q.head_dim != spec.head_dim) {
    return absl::InvalidArgumentError(absl::StrCat(
        where, ": shape (Hq=", s.input.q.heads, ", Hkv=", s.input.k.heads, ", D=", s.input.q.head_dim,
        ") does not match model '", spec.name, "' (Hq=", spec.q_heads, ", Hkv=", spec.kv_heads,
        ", D=", spec.head_dim, ")"));
  }
  return absl::OkStatus();
}

// More accurate = larger Recipe value (int4 < int8+fp8 < int8+fp16 < unquantized). Used where
// two calibrated neighbours disagree about an uncalibrated timestep between them.
Recipe MoreAccurate(Recipe a, Recipe b) { return static_cast<int>(a) >= static_cast<int>(b) ? a : b; }

// Writes every timestep of each calibrated layer into `grid`.
void FillCalibratedLayers(const std::vector<CellReport>& cells, PlanGrid& grid) {
  std::map<int, std::map<int, Recipe>> by_layer;  // layer -> timestep -> choice
  for (const CellReport& c : cells) by_layer[c.layer][c.timestep.value_or(0)] = c.chosen;
  for (const auto& [layer, steps] : by_layer) {
    for (int t = 0; t < grid.num_timesteps(); ++t) {
      auto next = steps.lower_bound(t);
      Recipe choice;
      if (next != steps.end() && next->first == t) {
        choice = next->second;
      } else if (next == steps.begin()) {
        choice = next->second;  // Before the first calibrated timestep.
      } else if (next == steps.end()) {
        choice = std::prev(next)->second;  // After the last one.
      } else {
        choice = MoreAccurate(std::prev(next)->second, next->second);
      }
      grid.at(layer, t) = PlanCell{choice, ConfigFor(choice)};
    }
  }
}

}  // namespace

absl::StatusOr<CalibrationReport> Calibrator::Calibrate(const ModelSpec& spec,
                                                        const std::optional<Plan>& existing,
                                                        std::span<const CalibrationSample> samples,
                                                        const CalibrationOptions& options) const {
  const auto start = std::chrono::steady_clock::now();
  if (samples.empty()) return absl::InvalidArgumentError("samples: calibration needs at least one sample");
  const server::BackendInfo& info = backend_->info();
  CalibrationReport report;
  report.model = spec.name;
  report.accuracy_target = options.accuracy_target.value_or(spec.accuracy_target);
  if (!(report.accuracy_target > 0.0 && report.accuracy_target <= 1.0)) {
    return absl::InvalidArgumentError(
        absl::StrCat("accuracy_target: must be in (0, 1], got ", report.accuracy_target));
  }
  report.hardware = DescribeHardware(info);
  report.sample_count = static_cast<int>(samples.size());

  const CostTable costs = CostTableFor(info);
  for (Recipe r : options.candidates) {
    if (std::find(info.recipes.begin(), info.recipes.end(), r) == info.recipes.end()) {
      return absl::InvalidArgumentError(
          absl::StrCat("candidates: the running backend does not run ", std::string(RecipeName(r))));
    }
  }
  report.cost_order = costs.Order(options.candidates);
  if (report.cost_order.empty()) return absl::InvalidArgumentError("candidates: no recipe to try");

  // KV storage per layer: for models without timesteps (their sessions' layers), among the storages
  // asked for and run by the backend.
  std::vector<KvStorage> kv_candidates;
  if (!spec.num_timesteps.has_value()) {
    for (KvStorage s : options.kv_storages) {
      if (std::find(info.kv_storages.begin(), info.kv_storages.end(), s) == info.kv_storages.end()) {
        return absl::InvalidArgumentError(
            absl::StrCat("kv_storage_candidates: the running backend does not run ", std::string(KvStorageName(s))));
      }
    }
    kv_candidates = options.kv_storages.empty() ? info.kv_storages : options.kv_storages;
  }

  std::map<CellKey, std::vector<size_t>> cells;
  for (size_t i = 0; i < samples.size(); ++i) {
    if (absl::Status s = CheckSample(spec, samples[i], i); !s.ok()) return s;
    cells[{samples[i].layer, samples[i].timestep.value_or(kNoTimestep)}].push_back(i);
  }

  for (const auto& [key, indices] : cells) {
    std::map<Recipe, ScoreStats> stats;
    std::map<Recipe, std::string> errors;
    std::vector<ExactOutput> exacts;  // kept for the KV storage scores (models without timesteps)
    for (size_t i : indices) {
      // The exact result is computed once per sample and shared by every candidate.
      absl::StatusOr<ExactOutput> exact = AttendExact(samples[i].input);
      if (!exact.ok()) {
        return absl::Status(exact.status().code(),
                            absl::StrCat("samples[", i, "]: exact attention: ", exact.status().message()));
      }
      for (Recipe r : report.cost_order) {
        if (options.is_cancelled && options.is_cancelled()) {
          return absl::CancelledError("calibration cancelled");
        }
        if (errors.contains(r)) continue;
        const auto t0 = std::chrono::steady_clock::now();
        absl::StatusOr<server::EngineOutput> out = backend_->Attend(server::EngineInput{samples[i].input}, ConfigFor(r));
        const double us =
            std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - t0).count();
        if (!out.ok()) {
          errors[r] = std::string(out.status().message());
          continue;
        }
        stats[r].Add(CompareToReference(out->o, exact->o), us);
      }
      if (!kv_candidates.empty()) exacts.push_back(*std::move(exact));
    }

    CellReport cell;
    cell.layer = key.first;
    if (key.second != kNoTimestep) cell.timestep = key.second;
    cell.samples = static_cast<int>(indices.size());
    for (Recipe r : report.cost_order) {
      RecipeScore score;
      score.recipe = r;
      score.relative_cost = costs.CostOf(r);
      if (auto e = errors.find(r); e != errors.end()) {
        score.error = e->second;
      } else {
        const ScoreStats& s = stats[r];
        score.samples = s.n;
        score.mean_score = s.mean;
        score.min_score = s.min;
        score.std_score = s.n > 0 ? std::sqrt(s.m2 / s.n) : 0.0;
        score.mean_cosine = s.cos_sum / s.n;
        score.mean_relative_l1 = s.l1_sum / s.n;
        score.max_relative_l1 = s.l1_max;
        score.mean_compute_us = s.us_sum / s.n;
        score.meets_target = s.min >= report.accuracy_target;
      }
      cell.scores.push_back(score);
    }
    if (options.cost_model == CostModel::kMeasured) {
      // Failed recipes last; among the rest the faster one first.
      std::stable_sort(cell.scores.begin(), cell.scores.end(), [](const RecipeScore& a, const RecipeScore& b) {
        if (a.error.empty() != b.error.empty()) return a.error.empty();
        return a.mean_compute_us < b.mean_compute_us;
      });
    }
    const RecipeScore* pick = nullptr;
    for (const RecipeScore& s : cell.scores) {
      if (s.meets_target) {
        pick = &s;
        break;
      }
    }
    if (pick != nullptr) {
      cell.chosen = pick->recipe;
      cell.met_target = true;
      cell.reason = absl::StrFormat("cheapest whose worst sample %.4f >= target %.4f", pick->min_score,
                                    report.accuracy_target);
    } else {
      // Nothing is good enough: run the most accurate thing measured rather than refuse, and say so.
      for (const RecipeScore& s : cell.scores) {
        if (s.error.empty() && (pick == nullptr || s.min_score > pick->min_score)) pick = &s;
      }
      if (pick == nullptr) {
        return absl::InternalError(absl::StrCat("layer ", cell.layer, ": every candidate recipe failed to run: ",
                                                cell.scores.front().error));
      }
      cell.chosen = pick->recipe;
      cell.met_target = false;
      cell.reason = absl::StrFormat("no candidate meets target %.4f; best worst-sample %.4f",
                                    report.accuracy_target, pick->min_score);
    }
    if (!kv_candidates.empty()) {
      std::vector<KvSample> kv_samples;
      for (size_t j = 0; j < indices.size(); ++j) kv_samples.push_back(KvSample{&samples[indices[j]].input, &exacts[j]});
      KvCalibrationPlan kv{cell.layer, cell.chosen, report.accuracy_target, kv_candidates, options.is_cancelled};
      absl::StatusOr<LayerKvReport> layer = CalibrateLayerKvStorage(*backend_, kv_samples, kv);
      if (!layer.ok()) return layer.status();
      report.kv_layers.push_back(*std::move(layer));
    }
    report.cells.push_back(std::move(cell));
  }

  // The plan: start from the previous plan when it was made on this hardware (so layers can be
  // calibrated a few at a time), then overwrite every calibrated layer completely.
  // "Same hardware" = same backend and architecture; the device string also carries the thread
  // count or the exact board name, which may differ between restarts of the same box.
  const bool same_hardware = existing.has_value() &&
                             existing->calibrated_on.backend == report.hardware.backend &&
                             existing->calibrated_on.architecture == report.hardware.architecture;
  absl::StatusOr<PlanGrid> grid = same_hardware ? PlanGrid::FromPlan(spec, *existing) : PlanGrid::Create(spec);
  if (!grid.ok()) return grid.status();
  FillCalibratedLayers(report.cells, *grid);
  report.plan.entries = grid->ToEntries();
  std::vector<std::optional<KvStorage>> kv(static_cast<size_t>(spec.num_layers));
  for (int l = 0; same_hardware && l < spec.num_layers; ++l) kv[static_cast<size_t>(l)] = FindKvStorage(*existing, l);
  for (const LayerKvReport& l : report.kv_layers) kv[static_cast<size_t>(l.layer)] = l.chosen;
  report.plan.kv_storages = KvStorageEntries(kv);
  report.plan.source = PlanSource::kCalibrated;
  report.plan.calibrated_on = report.hardware;
  report.plan.accuracy_target = report.accuracy_target;
  report.plan.sample_count = report.sample_count;
  report.elapsed = absl::FromChrono(std::chrono::steady_clock::now() - start);
  return report;
}

std::string FormatReport(const CalibrationReport& report) {
  std::string out = absl::StrFormat("model %s: target cos·(1-relL1) >= %.4f on %s %s (%s), %d samples, %.2f s\n",
                                    report.model, report.accuracy_target, report.hardware.backend,
                                    report.hardware.architecture, report.hardware.device,
                                    report.sample_count, absl::ToDoubleSeconds(report.elapsed));
  absl::StrAppend(&out, absl::StrFormat("%-6s %-5s %-16s %5s %8s %8s %8s %8s %6s\n", "layer", "step",
                                        "recipe", "cost", "mean", "min", "std", "relL1", "ok"));
  for (const CellReport& c : report.cells) {
    for (const RecipeScore& s : c.scores) {
      const std::string step = c.timestep.has_value() ? absl::StrCat(*c.timestep) : "-";
      if (!s.error.empty()) {
        absl::StrAppend(&out, absl::StrFormat("%-6d %-5s %-16s %5.2f error: %s\n", c.layer, step,
                                              RecipeName(s.recipe), s.relative_cost, s.error));
        continue;
      }
      absl::StrAppend(&out, absl::StrFormat("%-6d %-5s %-16s %5.2f %8.5f %8.5f %8.5f %8.5f %6s%s\n", c.layer,
                                            step, RecipeName(s.recipe), s.relative_cost, s.mean_score,
                                            s.min_score, s.std_score, s.mean_relative_l1,
                                            s.meets_target ? "yes" : "no",
                                            s.recipe == c.chosen ? "  <- chosen" : ""));
    }
  }
  if (!report.kv_layers.empty()) {
    absl::StrAppend(&out, absl::StrFormat("%-6s %-24s %5s %8s %8s %8s %8s %8s %6s\n", "layer", "kv storage", "bytes",
                                          "dec mean", "dec min", "pre mean", "pre min", "max L1", "ok"));
  }
  for (const LayerKvReport& l : report.kv_layers) {
    for (const KvStorageScore& s : l.scores) {
      if (!s.error.empty()) {
        absl::StrAppend(&out, absl::StrFormat("%-6d %-24s %5.2f error: %s\n", l.layer, KvStorageName(s.storage),
                                              s.relative_bytes, s.error));
        continue;
      }
      absl::StrAppend(&out, absl::StrFormat("%-6d %-24s %5.2f %8.5f %8.5f %8.5f %8.5f %8.5f %6s%s\n", l.layer,
                                            KvStorageName(s.storage), s.relative_bytes, s.mean_decode_score,
                                            s.min_decode_score, s.mean_prefill_score, s.min_prefill_score,
                                            s.max_relative_l1, s.meets_target ? "yes" : "no",
                                            s.storage == l.chosen ? "  <- chosen" : ""));
    }
  }
  absl::StrAppend(&out, "plan:\n");
  for (const PlanEntry& e : report.plan.entries) absl::StrAppend(&out, "  ", DescribeEntry(e), "\n");
  for (const KvStorageEntry& e : report.plan.kv_storages) absl::StrAppend(&out, "  KV ", DescribeKvStorageEntry(e), "\n");
  return out;
}

}  // namespace sage::registry
