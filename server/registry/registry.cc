#include "server/registry/registry.h"

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"
#include "server/registry/cost_table.h"
#include "server/util/status_details.h"

namespace sage::registry {
namespace {

constexpr absl::string_view kModelResource = "sageserve.v1.Model";

absl::Status NotFound(const std::string& name) {
  return server::WithResource(absl::NotFoundError(absl::StrCat("model '", name, "' is not registered")),
                              kModelResource, name);
}

// Files and the wire carry whole seconds; truncating here keeps a reloaded registry equal to the
// one that was saved.
absl::Time WholeSeconds(absl::Time t) { return absl::FromUnixSeconds(absl::ToUnixSeconds(t)); }

}  // namespace

bool SnapshotsEqual(const RegistrySnapshot& a, const RegistrySnapshot& b) {
  if (a.generation != b.generation || a.models.size() != b.models.size()) return false;
  for (auto ia = a.models.begin(), ib = b.models.begin(); ia != a.models.end(); ++ia, ++ib) {
    const ModelRecord& ra = ia->second;
    const ModelRecord& rb = ib->second;
    if (ia->first != ib->first || !SameSpec(ra.spec, rb.spec) || ra.created_at != rb.created_at ||
        ra.updated_at != rb.updated_at || ra.plan.has_value() != rb.plan.has_value()) {
      return false;
    }
    if (ra.plan.has_value() && !PlansEqual(*ra.plan, *rb.plan)) return false;
  }
  return true;
}

std::string_view ResolutionSourceName(ResolutionSource source) {
  switch (source) {
    case ResolutionSource::kPlan: return "plan";
    case ResolutionSource::kPlanUncovered: return "plan_uncovered_default";
    case ResolutionSource::kNoPlan: return "no_plan_default";
  }
  return "unknown";
}

Registry::Registry(const RegistryOptions& options, std::shared_ptr<const RegistrySnapshot> initial)
    : options_(options), current_(std::move(initial)) {}

namespace {
// Every model's spec is valid and keyed by its own name, and every stored plan fits its model.
absl::Status ValidateSnapshot(const RegistrySnapshot& snapshot) {
  for (const auto& [name, record] : snapshot.models) {
    absl::Status spec_ok = ValidateModelSpec(record.spec);
    if (spec_ok.ok() && name != record.spec.name) {
      spec_ok = absl::InvalidArgumentError(absl::StrCat("keyed as '", name, "' but named '",
                                                        record.spec.name, "'"));
    }
    if (spec_ok.ok() && record.plan.has_value()) spec_ok = ValidatePlan(record.spec, *record.plan);
    if (!spec_ok.ok()) {
      return absl::FailedPreconditionError(
          absl::StrCat("registry: model '", name, "' is inconsistent: ", spec_ok.message()));
    }
  }
  return absl::OkStatus();
}
}  // namespace

absl::StatusOr<std::unique_ptr<Registry>> Registry::Create(const RegistryOptions& options,
                                                           RegistrySnapshot initial) {
  if (absl::Status s = ValidateSnapshot(initial); !s.ok()) return s;
  return std::unique_ptr<Registry>(
      new Registry(options, std::make_shared<const RegistrySnapshot>(std::move(initial))));
}

absl::StatusOr<bool> Registry::ReplaceState(RegistrySnapshot snapshot) {
  if (absl::Status s = ValidateSnapshot(snapshot); !s.ok()) return s;
  // Under the writer lock so a local write in flight is not overwritten half-way; its own CAS in
  // the store then fails against the newer revision instead of silently winning.
  std::lock_guard<std::mutex> writer(write_mu_);
  if (snapshot.generation <= Snapshot()->generation) return false;
  auto published = std::make_shared<const RegistrySnapshot>(std::move(snapshot));
  std::lock_guard<std::mutex> lock(state_mu_);
  current_ = std::move(published);
  return true;
}

absl::Time Registry::Now() const { return WholeSeconds(options_.now ? options_.now() : absl::Now()); }

std::shared_ptr<const RegistrySnapshot> Registry::Snapshot() const {
  std::lock_guard<std::mutex> lock(state_mu_);
  return current_;
}

absl::Status Registry::Update(
    const std::function<absl::StatusOr<Change>(RegistrySnapshot&)>& mutate) {
  std::lock_guard<std::mutex> writer(write_mu_);
  RegistrySnapshot next = *Snapshot();
  absl::StatusOr<Change> change = mutate(next);
  if (!change.ok()) return change.status();
  if (*change == Change::kNone) return absl::OkStatus();
  next.generation += 1;
  if (options_.sink != nullptr) {
    // Persist before publishing: a change the disk refused is not visible to anyone, so memory
    // and file never disagree.
    if (absl::Status s = options_.sink->Save(next); !s.ok()) return s;
  }
  auto published = std::make_shared<const RegistrySnapshot>(std::move(next));
  std::lock_guard<std::mutex> lock(state_mu_);
  current_ = std::move(published);
  return absl::OkStatus();
}

absl::StatusOr<ModelRecord> Registry::RegisterModel(const ModelSpec& spec, RegisterMode mode) {
  if (absl::Status s = ValidateModelSpec(spec); !s.ok()) return s;
  ModelRecord result;
  absl::Status s = Update([&](RegistrySnapshot& next) -> absl::StatusOr<Change> {
    const absl::Time now = Now();
    auto it = next.models.find(spec.name);
    if (it != next.models.end()) {
      if (SameSpec(it->second.spec, spec)) {
        // Registering the same spec again is a no-op, so start-up scripts can re-run.
        result = it->second;
        return Change::kNone;
      }
      if (mode == RegisterMode::kCreate) {
        const std::string message =
            absl::StrCat("model '", spec.name, "' is already registered with a different spec (use replace)");
        return server::WithResource(absl::AlreadyExistsError(message), kModelResource, spec.name);
      }
      it->second.spec = spec;
      // A plan measured for other shapes or another target says nothing about this spec.
      it->second.plan.reset();
      it->second.updated_at = now;
      result = it->second;
      return Change::kChanged;
    }
    if (next.models.size() >= static_cast<size_t>(options_.max_models)) {
      return server::WithResource(
          absl::ResourceExhaustedError(absl::StrCat("registry holds ", next.models.size(),
                                                    " models, its limit (registry_max_models); delete one first")),
          kModelResource, spec.name);
    }
    ModelRecord record;
    record.spec = spec;
    record.created_at = now;
    record.updated_at = now;
    next.models.emplace(spec.name, record);
    result = record;
    return Change::kChanged;
  });
  if (!s.ok()) return s;
  return result;
}

std::vector<ModelRecord> Registry::ListModels() const {
  std::shared_ptr<const RegistrySnapshot> snap = Snapshot();
  std::vector<ModelRecord> out;
  out.reserve(snap->models.size());
  for (const auto& [name, record] : snap->models) out.push_back(record);
  return out;
}

absl::StatusOr<ModelRecord> Registry::GetModel(const std::string& name) const {
  std::shared_ptr<const RegistrySnapshot> snap = Snapshot();
  auto it = snap->models.find(name);
  if (it == snap->models.end()) return NotFound(name);
  return it->second;
}

absl::Status Registry::DeleteModel(const std::string& name) {
  return Update([&](RegistrySnapshot& next) -> absl::StatusOr<Change> {
    if (next.models.erase(name) == 0) return NotFound(name);
    return Change::kChanged;
  });
}

absl::StatusOr<EffectivePlan> Registry::GetPlan(const std::string& name) const {
  absl::StatusOr<ModelRecord> record = GetModel(name);
  if (!record.ok()) return record.status();
  if (record->plan.has_value()) return EffectivePlan{*record->plan, false};
  return EffectivePlan{DefaultPlanFor(options_.backend, record->spec), true};
}

absl::StatusOr<Plan> Registry::SetPlan(const std::string& name, Plan plan,
                                       std::optional<int64_t> expected_version) {
  Plan stored;
  absl::Status s = Update([&](RegistrySnapshot& next) -> absl::StatusOr<Change> {
    auto it = next.models.find(name);
    if (it == next.models.end()) return NotFound(name);
    ModelRecord& record = it->second;
    const int64_t current_version = record.plan.has_value() ? record.plan->version : 0;
    if (expected_version.has_value() && *expected_version != current_version) {
      return absl::AbortedError(absl::StrCat("model '", name, "': plan version is ", current_version,
                                             ", expected ", *expected_version,
                                             " (someone else changed it; re-read and retry)"));
    }
    if (plan.accuracy_target == 0.0) plan.accuracy_target = record.spec.accuracy_target;
    if (plan.calibrated_on.architecture.empty() && plan.calibrated_on.backend.empty()) {
      plan.calibrated_on = DescribeHardware(options_.backend);
    }
    if (plan.source == PlanSource::kDefault) plan.source = PlanSource::kManual;
    if (absl::Status v = ValidatePlan(record.spec, plan); !v.ok()) return v;
    plan.version = current_version + 1;
    plan.created_at = Now();
    record.plan = plan;
    record.updated_at = plan.created_at;
    stored = plan;
    return Change::kChanged;
  });
  if (!s.ok()) return s;
  return stored;
}

Recipe Registry::Runnable(Recipe wanted) const {
  const std::vector<Recipe>& runs = options_.backend.recipes;
  if (runs.empty() || std::find(runs.begin(), runs.end(), wanted) != runs.end()) return wanted;
  // Recipe values are ordered from least to most accurate: step towards more accuracy, never less.
  for (int r = static_cast<int>(wanted) + 1; r <= static_cast<int>(Recipe::kUnquantized); ++r) {
    if (std::find(runs.begin(), runs.end(), static_cast<Recipe>(r)) != runs.end()) {
      return static_cast<Recipe>(r);
    }
  }
  return DefaultRecipeFor(options_.backend);
}

absl::StatusOr<SessionKvPlan> Registry::SessionKvStorages(const std::string& name) const {
  std::shared_ptr<const RegistrySnapshot> snap = Snapshot();
  auto it = snap->models.find(name);
  if (it == snap->models.end()) return NotFound(name);
  const ModelRecord& record = it->second;
  SessionKvPlan out;
  out.spec = record.spec;
  out.storages.assign(static_cast<size_t>(record.spec.num_layers), KvStorage::k16Bit);
  if (!record.plan.has_value()) return out;
  out.plan_version = record.plan->version;
  const std::vector<KvStorage>& runs = options_.backend.kv_storages;
  const auto runnable = [&runs](KvStorage s) { return runs.empty() || std::find(runs.begin(), runs.end(), s) != runs.end(); };
  // From the fewest bytes per token to the most: a stand-in is always further along.
  constexpr KvStorage kWider[] = {KvStorage::kInt4KFp8V, KvStorage::kInt8KFp8V, KvStorage::k16Bit};
  for (int l = 0; l < record.spec.num_layers; ++l) {
    const std::optional<KvStorage> chosen = FindKvStorage(*record.plan, l);
    if (!chosen.has_value()) continue;
    const auto* at = std::find(std::begin(kWider), std::end(kWider), *chosen);
    while (at + 1 != std::end(kWider) && !runnable(*at)) ++at;
    out.storages[static_cast<size_t>(l)] = *at;
  }
  return out;
}

absl::StatusOr<Resolution> Registry::Resolve(const std::string& name, int layer,
                                             std::optional<int> timestep) const {
  std::shared_ptr<const RegistrySnapshot> snap = Snapshot();
  auto it = snap->models.find(name);
  if (it == snap->models.end()) return NotFound(name);
  const ModelRecord& record = it->second;
  if (absl::Status s = CheckLayerKey(record.spec, layer, timestep); !s.ok()) return s;
  Resolution r;
  const PlanEntry* entry = nullptr;
  if (record.plan.has_value()) {
    r.plan_version = record.plan->version;
    entry = FindEntry(*record.plan, layer, timestep);
    r.source = entry != nullptr ? ResolutionSource::kPlan : ResolutionSource::kPlanUncovered;
  }
  if (entry == nullptr) {
    r.recipe = DefaultRecipeFor(options_.backend);
    r.config = ConfigFor(r.recipe);
    return r;
  }
  r.recipe = Runnable(entry->recipe);
  if (r.recipe == entry->recipe) {
    r.config = entry->config;
  } else {
    r.substituted_for = entry->recipe;
    r.config = ConfigFor(r.recipe);
  }
  return r;
}

}  // namespace sage::registry
