// SelfTest: a small built-in problem run through the real request path (scheduler + backend) for
// each recipe, compared against the double-precision oracle with the paper's metrics. One grpcurl
// call then tells whether a box computes attention correctly, and how fast.
#pragma once

#include <cstdint>
#include <memory>
#include <mutex>
#include <vector>

#include "absl/functional/any_invocable.h"
#include "absl/status/status.h"
#include "kernels/reference/attention_problem.h"
#include "kernels/reference/oracle.h"
#include "server/backend/backend.h"
#include "server/scheduler/scheduler.h"

namespace sage::server {

// The fixed problem: fp16, GQA 4:2 heads, D = 128, two sequences of different lengths.
struct BuiltinProblem {
  std::vector<uint16_t> q, k, v;  // fp16 bits
  std::vector<int32_t> cu_q, cu_k;
  EngineInput input;  // Views into the vectors above.
  std::string description;
};
std::unique_ptr<BuiltinProblem> MakeBuiltinProblem();

// Minimum cosine similarity vs the oracle for a recipe to pass on the built-in problem.
double SelfTestCosineThreshold(Recipe recipe);

// What one self test found, per recipe, against the oracle.
struct RecipeCheck {
  Recipe recipe = Recipe::kInt8QkFp8Pv;
  int64_t compute_us = 0;
  std::string error;  // the engine's error; empty when it ran
  double cosine = 0, relative_l1 = 0, rmse = 0, max_abs_error = 0;
  bool passed = false;
};
struct SelfTestReport {
  std::string problem;
  std::string backend;
  std::vector<RecipeCheck> results;
  bool passed = false;
  int64_t total_us = 0;
};

class SelfTestRunner {
 public:
  // Both must outlive this object.
  SelfTestRunner(Scheduler* scheduler, AttentionBackend* backend);

  // Queues one work item that runs the first recipe through the scheduler, then the others and
  // the oracle on the same worker; `done` runs there with `report` filled. An error means
  // nothing was queued and `done` will not run.
  // `recipes` empty: every recipe the backend runs. INVALID_ARGUMENT for one it does not run.
  absl::Status Start(std::vector<Recipe> recipes, SelfTestReport* report,
                     absl::AnyInvocable<void(const absl::Status&)> done);

 private:
  const ExactOutput* Oracle();  // Computed once, on first use, on a worker thread.

  Scheduler* const scheduler_;
  AttentionBackend* const backend_;
  std::unique_ptr<BuiltinProblem> problem_;
  std::once_flag oracle_once_;
  absl::StatusOr<ExactOutput> oracle_;
};

}  // namespace sage::server
