// The embedded CPU backend: the quantized emulation of any recipe, on a fixed thread pool.
#pragma once

#include <memory>

#include "absl/status/statusor.h"
#include "kernels/reference/attention_problem.h"
#include "kernels/reference/recipe.h"

namespace sage {

class ThreadPool;

struct CpuEngineOptions {
  int num_threads = 0;  // 0 = std::thread::hardware_concurrency()
};

class CpuEngine {
 public:
  static absl::StatusOr<std::unique_ptr<CpuEngine>> Create(const CpuEngineOptions& options);
  ~CpuEngine();

  // Thread-safe. Validates the input, then splits the work over (sequence, kv-head) for K/V
  // preparation and over (sequence, head, 64-row Q tile) for attention. The result is bit-identical
  // to AttendQuantized(in, config) for any thread count.
  absl::StatusOr<AttnOutput> Run(const AttnInput& in, const RecipeConfig& config) const;

  int num_threads() const;

 private:
  explicit CpuEngine(int num_threads);
  std::unique_ptr<ThreadPool> pool_;
  int num_threads_;
};

}  // namespace sage
