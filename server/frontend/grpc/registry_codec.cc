#include "server/frontend/grpc/registry_codec.h"

#include <optional>
#include <string>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "server/frontend/grpc/wire_enum_table.h"
#include "server/registry/cost_table.h"

namespace sage::server {
namespace v1 = ::sageserve::v1;
namespace reg = ::sage::registry;

namespace {

absl::Status BadEnum(const std::string& field, int value) {
  return absl::InvalidArgumentError(absl::StrCat(field, ": unknown value ", value));
}

// One table per RecipeConfig switch, read in both directions. UNSPECIFIED (0 on the wire) has no
// row: decoding it keeps the recipe's default; any other wire value without a row is refused.
constexpr WirePair<QkType, v1::QkType> kQkTypeWire[] = {
    {QkType::kInt4, v1::QK_TYPE_INT4},
    {QkType::kInt8, v1::QK_TYPE_INT8},
    {QkType::kF16, v1::QK_TYPE_F16},
};
constexpr WirePair<QuantGranularity, v1::QuantGranularity> kGranularityWire[] = {
    {QuantGranularity::kPerBlock, v1::QUANT_GRANULARITY_PER_BLOCK},
    {QuantGranularity::kPerWarp, v1::QUANT_GRANULARITY_PER_WARP},
    {QuantGranularity::kPerThread, v1::QUANT_GRANULARITY_PER_THREAD},
};
constexpr WirePair<QkSmoothing, v1::QkSmoothing> kQkSmoothingWire[] = {
    {QkSmoothing::kNone, v1::QK_SMOOTHING_NONE},
    {QkSmoothing::kK, v1::QK_SMOOTHING_K},
    {QkSmoothing::kQK, v1::QK_SMOOTHING_QK},
};
constexpr WirePair<PvType, v1::PvType> kPvTypeWire[] = {
    {PvType::kFp8E4M3, v1::PV_TYPE_FP8_E4M3},
    {PvType::kF16, v1::PV_TYPE_F16},
};
constexpr WirePair<VSmoothing, v1::VSmoothing> kVSmoothingWire[] = {
    {VSmoothing::kNone, v1::V_SMOOTHING_NONE},
    {VSmoothing::kMean, v1::V_SMOOTHING_MEAN},
};
constexpr WirePair<PvAccumulation, v1::PvAccumulation> kAccumulationWire[] = {
    {PvAccumulation::kTwoLevel, v1::PV_ACCUMULATION_TWO_LEVEL},
    {PvAccumulation::kFp22Only, v1::PV_ACCUMULATION_FP22_ONLY},
};

// Sets `out` from `wire` (UNSPECIFIED leaves it); INVALID_ARGUMENT naming `field` for a value
// without a row.
template <typename Engine, typename Wire, size_t N>
absl::Status FromWire(const WirePair<Engine, Wire> (&table)[N], Wire wire, const std::string& field, Engine& out) {
  if (static_cast<int>(wire) == 0) return absl::OkStatus();
  std::optional<Engine> e = FromWire(table, wire);
  if (!e.has_value()) return BadEnum(field, wire);
  out = *e;
  return absl::OkStatus();
}

absl::StatusOr<RecipeConfig> ConfigFromWire(const std::string& field, Recipe recipe, const v1::RecipeConfig& w) {
  RecipeConfig c = ConfigFor(recipe);
  if (absl::Status s = FromWire(kQkTypeWire, w.qk(), field + ".qk", c.qk); !s.ok()) return s;
  if (absl::Status s = FromWire(kGranularityWire, w.granularity(), field + ".granularity", c.granularity); !s.ok()) {
    return s;
  }
  if (absl::Status s = FromWire(kQkSmoothingWire, w.qk_smoothing(), field + ".qk_smoothing", c.qk_smoothing);
      !s.ok()) {
    return s;
  }
  if (absl::Status s = FromWire(kPvTypeWire, w.pv(), field + ".pv", c.pv); !s.ok()) return s;
  if (absl::Status s = FromWire(kVSmoothingWire, w.v_smoothing(), field + ".v_smoothing", c.v_smoothing); !s.ok()) {
    return s;
  }
  if (absl::Status s = FromWire(kAccumulationWire, w.accumulation(), field + ".accumulation", c.accumulation);
      !s.ok()) {
    return s;
  }
  return c;
}

void ConfigToWire(const RecipeConfig& c, v1::RecipeConfig* w) {
  w->set_qk(ToWire(kQkTypeWire, c.qk));
  w->set_granularity(ToWire(kGranularityWire, c.granularity));
  w->set_qk_smoothing(ToWire(kQkSmoothingWire, c.qk_smoothing));
  w->set_pv(ToWire(kPvTypeWire, c.pv));
  w->set_v_smoothing(ToWire(kVSmoothingWire, c.v_smoothing));
  w->set_accumulation(ToWire(kAccumulationWire, c.accumulation));
}

v1::PlanSource SourceToWire(reg::PlanSource s) {
  switch (s) {
    case reg::PlanSource::kDefault: return v1::PLAN_SOURCE_DEFAULT;
    case reg::PlanSource::kCalibrated: return v1::PLAN_SOURCE_CALIBRATED;
    case reg::PlanSource::kManual: return v1::PLAN_SOURCE_MANUAL;
  }
  return v1::PLAN_SOURCE_UNSPECIFIED;
}

void HardwareToWire(const reg::HardwareDescription& hw, v1::HardwareDescription* w) {
  w->set_backend(hw.backend);
  w->set_device(hw.device);
  w->set_architecture(hw.architecture);
}

}  // namespace

absl::StatusOr<reg::ModelSpec> ModelSpecFromWire(const v1::ModelSpec& w) {
  reg::ModelSpec spec;
  spec.name = w.name();
  spec.num_layers = w.num_layers();
  spec.q_heads = w.q_heads();
  spec.kv_heads = w.kv_heads();
  spec.head_dim = w.head_dim();
  if (w.has_num_timesteps()) spec.num_timesteps = w.num_timesteps();
  spec.accuracy_target = w.accuracy_target() == 0.0 ? reg::kDefaultAccuracyTarget : w.accuracy_target();
  return spec;
}

void ModelSpecToWire(const reg::ModelSpec& spec, v1::ModelSpec* w) {
  w->set_name(spec.name);
  w->set_num_layers(spec.num_layers);
  w->set_q_heads(spec.q_heads);
  w->set_kv_heads(spec.kv_heads);
  w->set_head_dim(spec.head_dim);
  if (spec.num_timesteps.has_value()) w->set_num_timesteps(*spec.num_timesteps);
  w->set_accuracy_target(spec.accuracy_target);
}

absl::StatusOr<reg::Plan> PlanFromWire(const v1::Plan& w) {
  reg::Plan plan;
  for (int i = 0; i < w.entries_size(); ++i) {
    const v1::PlanEntry& we = w.entries(i);
    const std::string field = absl::StrCat("plan.entries[", i, "]");
    if (!we.has_layers()) return absl::InvalidArgumentError(field + ".layers: not set");
    reg::PlanEntry e;
    e.layers = {we.layers().first(), we.layers().last()};
    if (we.has_timesteps()) e.timesteps = reg::Range{we.timesteps().first(), we.timesteps().last()};
    if (we.recipe() == v1::RECIPE_UNSPECIFIED) return absl::InvalidArgumentError(field + ".recipe: not set");
    absl::StatusOr<Recipe> recipe = FromWireRecipe(we.recipe());
    if (!recipe.ok()) return absl::InvalidArgumentError(absl::StrCat(field, ".", recipe.status().message()));
    e.recipe = *recipe;
    absl::StatusOr<RecipeConfig> config = ConfigFromWire(field + ".config", *recipe, we.config());
    if (!config.ok()) return config.status();
    e.config = *config;
    plan.entries.push_back(e);
  }
  for (int i = 0; i < w.kv_storages_size(); ++i) {
    const v1::KvStorageEntry& we = w.kv_storages(i);
    const std::string field = absl::StrCat("plan.kv_storages[", i, "]");
    if (!we.has_layers()) return absl::InvalidArgumentError(field + ".layers: not set");
    const std::optional<KvStorage> storage = KvStorageFromWire(we.kv_storage());
    if (!storage.has_value()) {
      return absl::InvalidArgumentError(absl::StrCat(field, ".kv_storage: not set or unknown (", static_cast<int>(we.kv_storage()), ")"));
    }
    plan.kv_storages.push_back(reg::KvStorageEntry{{we.layers().first(), we.layers().last()}, *storage});
  }
  plan.accuracy_target = w.accuracy_target();  // 0 = the model's target (Registry::SetPlan).
  if (w.has_calibrated_on()) {
    plan.calibrated_on = {w.calibrated_on().backend(), w.calibrated_on().device(),
                          w.calibrated_on().architecture()};
  }
  plan.source = w.source() == v1::PLAN_SOURCE_CALIBRATED ? reg::PlanSource::kCalibrated : reg::PlanSource::kManual;
  plan.sample_count = w.sample_count();
  return plan;
}

void PlanToWire(const reg::Plan& plan, Recipe default_recipe, v1::Plan* w) {
  for (const reg::PlanEntry& e : plan.entries) {
    v1::PlanEntry* we = w->add_entries();
    we->mutable_layers()->set_first(e.layers.first);
    we->mutable_layers()->set_last(e.layers.last);
    if (e.timesteps.has_value()) {
      we->mutable_timesteps()->set_first(e.timesteps->first);
      we->mutable_timesteps()->set_last(e.timesteps->last);
    }
    we->set_recipe(ToWireRecipe(e.recipe));
    ConfigToWire(e.config, we->mutable_config());
  }
  for (const reg::KvStorageEntry& e : plan.kv_storages) {
    v1::KvStorageEntry* we = w->add_kv_storages();
    we->mutable_layers()->set_first(e.layers.first);
    we->mutable_layers()->set_last(e.layers.last);
    we->set_kv_storage(KvStorageToWire(e.storage));
  }
  w->set_source(SourceToWire(plan.source));
  HardwareToWire(plan.calibrated_on, w->mutable_calibrated_on());
  w->set_accuracy_target(plan.accuracy_target);
  w->set_version(plan.version);
  if (plan.source != reg::PlanSource::kDefault) w->set_created_at(reg::FormatTimestamp(plan.created_at));
  w->set_sample_count(plan.sample_count);
  w->set_default_recipe(ToWireRecipe(default_recipe));
}

void ModelInfoToWire(const reg::ModelRecord& record, const BackendInfo& backend, v1::ModelInfo* w) {
  ModelSpecToWire(record.spec, w->mutable_spec());
  const reg::Plan plan = record.plan.has_value() ? *record.plan : reg::DefaultPlanFor(backend, record.spec);
  PlanToWire(plan, reg::DefaultRecipeFor(backend), w->mutable_plan());
  w->set_created_at(reg::FormatTimestamp(record.created_at));
  w->set_updated_at(reg::FormatTimestamp(record.updated_at));
}

void CalibrationToWire(const reg::CalibrationOutcome& outcome, Recipe default_recipe,
                       v1::CalibrateResponse* w) {
  const reg::CalibrationReport& r = outcome.report;
  w->set_model(r.model);
  w->set_stored(outcome.stored);
  w->set_accuracy_target(r.accuracy_target);
  HardwareToWire(r.hardware, w->mutable_hardware());
  for (Recipe recipe : r.cost_order) w->add_cost_order(ToWireRecipe(recipe));
  for (const reg::CellReport& c : r.cells) {
    v1::CellReport* wc = w->add_cells();
    wc->set_layer(c.layer);
    if (c.timestep.has_value()) wc->set_timestep(*c.timestep);
    wc->set_samples(c.samples);
    for (const reg::RecipeScore& s : c.scores) {
      v1::RecipeScore* ws = wc->add_scores();
      ws->set_recipe(ToWireRecipe(s.recipe));
      ws->set_relative_cost(s.relative_cost);
      ws->set_samples(s.samples);
      ws->set_mean_score(s.mean_score);
      ws->set_min_score(s.min_score);
      ws->set_std_score(s.std_score);
      ws->set_mean_cosine(s.mean_cosine);
      ws->set_mean_relative_l1(s.mean_relative_l1);
      ws->set_max_relative_l1(s.max_relative_l1);
      ws->set_mean_compute_us(s.mean_compute_us);
      ws->set_meets_target(s.meets_target);
      ws->set_error(s.error);
    }
    wc->set_chosen(ToWireRecipe(c.chosen));
    wc->set_met_target(c.met_target);
    wc->set_reason(c.reason);
  }
  for (const reg::LayerKvReport& l : r.kv_layers) {
    v1::LayerKvStorageReport* wl = w->add_kv_layers();
    wl->set_layer(l.layer);
    wl->set_samples(l.samples);
    for (const reg::KvStorageScore& s : l.scores) {
      v1::KvStorageScore* ws = wl->add_scores();
      ws->set_kv_storage(KvStorageToWire(s.storage));
      ws->set_relative_bytes(s.relative_bytes);
      ws->set_samples(s.samples);
      ws->set_mean_decode_score(s.mean_decode_score);
      ws->set_min_decode_score(s.min_decode_score);
      ws->set_mean_prefill_score(s.mean_prefill_score);
      ws->set_min_prefill_score(s.min_prefill_score);
      ws->set_max_relative_l1(s.max_relative_l1);
      ws->set_meets_target(s.meets_target);
      ws->set_error(s.error);
    }
    wl->set_chosen(KvStorageToWire(l.chosen));
    wl->set_met_target(l.met_target);
    wl->set_reason(l.reason);
  }
  PlanToWire(outcome.plan, default_recipe, w->mutable_plan());
  w->set_sample_count(r.sample_count);
  w->set_elapsed_us(absl::ToInt64Microseconds(r.elapsed));
  w->set_report(reg::FormatReport(r));
}

absl::StatusOr<std::unique_ptr<DecodedSamples>> DecodeCalibrationSamples(
    std::vector<v1::CalibrationSample> samples, const BackendInfo& backend, const RequestLimits& limits) {
  auto out = std::make_unique<DecodedSamples>();
  out->requests.resize(samples.size());
  for (size_t i = 0; i < samples.size(); ++i) {
    v1::CalibrationSample& s = samples[i];
    // Moving the tensors into an AttendRequest swaps their buffers: no byte is copied, and the
    // Attend validation (with its field names) applies unchanged.
    v1::AttendRequest& req = out->requests[i];
    *req.mutable_q() = std::move(*s.mutable_q());
    *req.mutable_k() = std::move(*s.mutable_k());
    *req.mutable_v() = std::move(*s.mutable_v());
    *req.mutable_cu_seqlens_q() = std::move(*s.mutable_cu_seqlens_q());
    *req.mutable_cu_seqlens_k() = std::move(*s.mutable_cu_seqlens_k());
    req.set_mask(s.mask());
    if (s.has_softmax_scale()) req.set_softmax_scale(s.softmax_scale());
  }
  for (size_t i = 0; i < samples.size(); ++i) {
    absl::StatusOr<std::unique_ptr<DecodedRequest>> d = DecodeAttendRequest(out->requests[i], backend, limits);
    if (!d.ok()) {
      return absl::Status(d.status().code(), absl::StrCat("samples[", i, "].", d.status().message()));
    }
    reg::CalibrationSample cs;
    cs.layer = samples[i].layer();
    if (samples[i].has_timestep()) cs.timestep = samples[i].timestep();
    cs.input = (*d)->core.input;
    out->samples.push_back(cs);
    out->decoded.push_back(*std::move(d));
  }
  return out;
}

}  // namespace sage::server
