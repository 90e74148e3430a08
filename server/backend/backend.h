// The interface between the request path (gRPC layer, scheduler) and an attention engine.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "kernels/reference/attention_problem.h"
#include "kernels/reference/recipe.h"

namespace sage::server {

enum class BackendKind { kCpu, kCuda };

struct DeviceDescription {
  std::string name;            // "cpu (16 threads)", "NVIDIA H100 80GB HBM3"
  std::string architecture;    // "x86_64", "sm_90"
  int64_t memory_bytes = 0;    // device memory (0 for the CPU backend)
};

struct BackendInfo {
  BackendKind kind = BackendKind::kCpu;
  std::vector<DeviceDescription> devices;
  std::vector<int> head_dims;         // supported head dims
  std::vector<Recipe> recipes;        // recipes this backend runs
  Recipe default_recipe = Recipe::kInt8QkFp8Pv;  // what runs when a request names none
};

// An engine the server can hand requests to. Attend() is blocking and thread-safe; it is called
// from the server's worker threads, never from a gRPC reactor callback.
class AttentionBackend {
 public:
  virtual ~AttentionBackend() = default;
  virtual const BackendInfo& info() const = 0;
  virtual absl::StatusOr<AttnOutput> Attend(const AttnInput& in, const RecipeConfig& config) = 0;
};

}  // namespace sage::server
