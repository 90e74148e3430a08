// The precision registry: registered models and their plans, and the per-request question "which
// recipe runs for (model, layer, timestep)?". Thread-safe. Readers (Resolve on the request path)
// never wait for a write to reach the disk: a write builds the next snapshot, persists it, then
// publishes it with a pointer swap.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "server/backend/backend.h"
#include "server/registry/model.h"
#include "server/registry/plan.h"

namespace sage::registry {

struct ModelRecord {
  ModelSpec spec;
  std::optional<Plan> plan;  // Absent: the model runs the hardware default (DefaultPlanFor).
  absl::Time created_at = absl::UnixEpoch();
  absl::Time updated_at = absl::UnixEpoch();
};

// Everything the registry persists. `generation` grows by one with every stored change, so two
// files can be told apart (and a reload compared) without diffing them.
struct RegistrySnapshot {
  int64_t generation = 0;
  std::map<std::string, ModelRecord> models;
};
bool SnapshotsEqual(const RegistrySnapshot& a, const RegistrySnapshot& b);

// Where the registry writes each new snapshot before publishing it (RegistryStore in production,
// fakes in tests). Save must be atomic: afterwards the old or the new snapshot is on disk.
class SnapshotSink {
 public:
  virtual ~SnapshotSink() = default;
  virtual absl::Status Save(const RegistrySnapshot& snapshot) = 0;
};

enum class RegisterMode {
  kCreate,   // ALREADY_EXISTS if a model of that name exists with a different spec.
  kReplace,  // Replaces the spec; a stored plan is dropped when the spec changed.
};

// Why a resolution picked its recipe (echoed in logs; the response carries the recipe).
enum class ResolutionSource {
  kPlan,           // The stored plan has an entry for the cell.
  kPlanUncovered,  // The stored plan leaves the cell out: hardware default.
  kNoPlan,         // The model has no stored plan: hardware default.
};
std::string_view ResolutionSourceName(ResolutionSource source);

struct Resolution {
  Recipe recipe = Recipe::kInt8QkFp8Pv;
  RecipeConfig config;
  ResolutionSource source = ResolutionSource::kNoPlan;
  int64_t plan_version = 0;
  // Set when the plan named a recipe this backend does not run and a more accurate one stood in.
  std::optional<Recipe> substituted_for;
};

// What a new session of a model stores per layer (Registry::SessionKvStorages).
struct SessionKvPlan {
  ModelSpec spec;                  // the session's shape must be the model's
  std::vector<KvStorage> storages;  // one per layer of the model
  int64_t plan_version = 0;         // 0: no stored plan (every layer 16-bit)
};

struct EffectivePlan {
  Plan plan;              // The stored plan, or DefaultPlanFor(hardware) when there is none.
  bool is_default = true;
};

struct RegistryOptions {
  server::BackendInfo backend;      // The running hardware (default recipe, runnable recipes).
  SnapshotSink* sink = nullptr;     // Null: in memory only. Must outlive the registry.
  std::function<absl::Time()> now;  // Null: absl::Now (tests inject a clock).
  // Models the registry holds at most; registering one more is RESOURCE_EXHAUSTED. Every write
  // rewrites the whole file, so an unbounded registry would make each write slower (21 ms per
  // write at 3000 models); plans are bounded by their model's layers x timesteps already.
  int max_models = 1024;
};

class Registry {
 public:
  // `initial` is what the store loaded (or empty). Its plans are validated against their models;
  // an invalid one is a FAILED_PRECONDITION naming the model (the file was edited badly).
  static absl::StatusOr<std::unique_ptr<Registry>> Create(const RegistryOptions& options,
                                                          RegistrySnapshot initial);

  absl::StatusOr<ModelRecord> RegisterModel(const ModelSpec& spec, RegisterMode mode);
  std::vector<ModelRecord> ListModels() const;
  absl::StatusOr<ModelRecord> GetModel(const std::string& name) const;
  absl::Status DeleteModel(const std::string& name);

  absl::StatusOr<EffectivePlan> GetPlan(const std::string& name) const;
  // Validates and stores `plan` (version = previous + 1, created_at = now; an empty
  // calibrated_on is filled with the running hardware, a zero target with the model's). With
  // `expected_version`, ABORTED when the stored version differs (lost-update protection for
  // read-modify-write clients).
  absl::StatusOr<Plan> SetPlan(const std::string& name, Plan plan,
                               std::optional<int64_t> expected_version = std::nullopt);

  // NOT_FOUND for an unknown model, INVALID_ARGUMENT for a layer/timestep outside the model.
  absl::StatusOr<Resolution> Resolve(const std::string& name, int layer,
                                     std::optional<int> timestep) const;

  // Each layer's KV storage for a new session of model `name`: the plan's, or where this backend
  // does not run it the next wider one it does (never fewer bits than the plan chose); 16-bit for
  // layers the plan leaves out. NOT_FOUND for an unknown model.
  absl::StatusOr<SessionKvPlan> SessionKvStorages(const std::string& name) const;

  std::shared_ptr<const RegistrySnapshot> Snapshot() const;
  // Publishes a snapshot another replica stored (the etcd store's watch), without saving it
  // back through the sink. Validated like Create's `initial` (FAILED_PRECONDITION naming the
  // model, state untouched). Only a newer generation replaces the current state, so a stale or
  // repeated watch event is a no-op: returns whether the state was replaced.
  absl::StatusOr<bool> ReplaceState(RegistrySnapshot snapshot);
  const server::BackendInfo& backend() const { return options_.backend; }

 private:
  Registry(const RegistryOptions& options, std::shared_ptr<const RegistrySnapshot> initial);
  absl::Time Now() const;
  enum class Change { kNone, kChanged };
  // Runs `mutate` on a copy of the current snapshot under the writer lock; if it reports a change
  // the copy gets the next generation, is saved, and becomes current.
  absl::Status Update(const std::function<absl::StatusOr<Change>(RegistrySnapshot&)>& mutate);
  Recipe Runnable(Recipe wanted) const;

  const RegistryOptions options_;
  std::mutex write_mu_;  // Serializes Update (and the disk writes inside it).
  mutable std::mutex state_mu_;  // Guards `current_` (held only to copy or swap the pointer).
  std::shared_ptr<const RegistrySnapshot> current_;
};

}  // namespace sage::registry
