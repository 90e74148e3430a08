// Per-layer KV storage calibration (issue: INT4 K "where calibration allows"). A session's layer
// stores its K/V once and every later step reads them, so the choice is per layer, for models
// without timesteps (LLMs: the models that have sessions).
//
// Each candidate storage is scored on each of the layer's samples: the sample's K/V go through the
// storage as a session would keep them (each sequence's K centred on its own channel mean, encoded
// and decoded by the scheme's CPU definition, which the GPU encoder matches bit for bit), then the
// sample's Q attends over them on the running backend twice: with the unquantized recipe (what a
// decode step runs) and with the recipe the plan chose for the layer (a prefill chunk over the
// cache: both errors together). Both are scored against the exact result of the sample's own K/V;
// the layer gets the storage of fewest bytes whose worst sample meets the target on both.
#pragma once

#include <functional>
#include <span>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "kernels/reference/kv_pages.h"
#include "kernels/reference/oracle.h"
#include "kernels/reference/recipe.h"
#include "server/backend/backend.h"

namespace sage::registry {

struct KvStorageScore {
  KvStorage storage = KvStorage::k16Bit;
  double relative_bytes = 1.0;  // bytes per token-head against 16-bit
  int samples = 0;
  double mean_decode_score = 0.0;   // cos·(1 − relL1), the unquantized recipe over the stored K/V
  double min_decode_score = 0.0;
  double mean_prefill_score = 0.0;  // the layer's recipe over the stored K/V
  double min_prefill_score = 0.0;
  double max_relative_l1 = 0.0;     // of the decode path
  bool meets_target = false;        // both worst samples >= target
  std::string error;                // set when the storage cannot hold the samples or a run failed
};

struct LayerKvReport {
  int layer = 0;
  int samples = 0;
  std::vector<KvStorageScore> scores;  // fewest bytes first
  KvStorage chosen = KvStorage::k16Bit;
  bool met_target = false;  // false: nothing quantized met it; 16-bit (exact storage) is chosen
  std::string reason;
};

// One calibration sample of a layer, with its exact result (computed once by the calibrator).
struct KvSample {
  const AttnInput* input = nullptr;
  const ExactOutput* exact = nullptr;
};

struct KvCalibrationPlan {
  int layer = 0;
  Recipe prefill_recipe = Recipe::kInt8QkFp8Pv;  // the recipe the plan chose for the layer
  double target = 0.0;
  std::vector<KvStorage> candidates;  // any order; scored fewest bytes first
  std::function<bool()> is_cancelled;
};

// CANCELLED when plan.is_cancelled fires; other failures are recorded per storage.
absl::StatusOr<LayerKvReport> CalibrateLayerKvStorage(server::AttentionBackend& backend, std::span<const KvSample> samples,
                                                      const KvCalibrationPlan& plan);

// K and V of `in` ([total_k, Hkv, D], fp16 or bf16) as `storage` gives them back: for the
// quantized storages each sequence's (cu_seqlens_k) K comes back centred on its own channel mean,
// as a session's pages hold it (a shift that changes no softmax row). INVALID_ARGUMENT for fp32
// K/V or a head_dim the storage cannot hold.
absl::Status StoreAndLoadKv(const AttnInput& in, KvStorage storage, std::vector<uint16_t>& k, std::vector<uint16_t>& v);

}  // namespace sage::registry
