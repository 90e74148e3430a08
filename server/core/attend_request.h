// An Attend request as the core sees it: the math problem (kernels/reference), how to run it
// (recipe, or a precision-plan address), what it offers for its output, and the handles that keep
// its bytes alive. The frontend fills it from the wire; nothing here knows protobuf.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "kernels/reference/dtype.h"
#include "kernels/reference/recipe.h"
#include "server/backend/engine_io.h"
#include "server/backend/output_placement.h"
#include "server/core/client_output.h"
#include "server/shared_memory/shared_memory_registry.h"

namespace sage::server {

// Limits enforced on top of the transport's message size (RESOURCE_EXHAUSTED when exceeded).
struct RequestLimits {
  int64_t max_tokens = int64_t{1} << 20;  // Per tensor (total_q, total_k).
  int32_t max_heads = 1024;
};

// Which RPC a call came in on (the `method` label of the request metrics).
enum class AttendMethod { kUnary, kStream, kSession };

// A model's (layer, timestep) in the precision registry. `layer` is optional here so the pipeline
// can refuse its absence with the field's name.
struct PlanAddress {
  std::string model;
  std::optional<int> layer;
  std::optional<int> timestep;
};

struct AttendRequest {
  std::string id;
  // The problem. `input.output` is set by the pipeline (ChooseOutputTarget over `output`).
  EngineInput input;
  Recipe recipe = Recipe::kInt8QkFp8Pv;  // what runs, unless `plan` overrides it
  RecipeConfig config;
  bool recipe_explicit = false;          // the client named a recipe: it wins over the plan
  std::optional<PlanAddress> plan;       // set when the client named a model
  // What O may be written into. `output.client_o` set: the client's shared memory receives O.
  DType output_dtype = DType::kF16;
  OutputOffer output;
  ClientOutputRegions output_regions;  // the regions behind output.client_o / client_lse, by name
  // Handles: cu_seqlens storage when the client sent none (one sequence), and the shared-memory
  // regions the request reads or writes, each once, held (mapped) until it is answered.
  std::vector<int32_t> default_cu_q;
  std::vector<int32_t> default_cu_k;
  std::vector<std::shared_ptr<const SharedMemoryRegion>> regions;
  // Server-owned copies of the inputs held in system (POSIX) shared memory that is not page-locked
  // for a GPU engine: `input`'s q/k/v views point here, not into the client's mapping, which the
  // client may shrink under the read (shared_memory/safe_copy.h; docs/SECURITY.md).
  std::unique_ptr<std::byte[]> staged_inputs;

  bool writes_client_memory() const { return !output.client_o.empty(); }
};

}  // namespace sage::server
