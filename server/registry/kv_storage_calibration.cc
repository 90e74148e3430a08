#include "server/registry/kv_storage_calibration.h"

#include <algorithm>
#include <cstddef>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "kernels/reference/metrics.h"
#include "kernels/reference/numerics.h"
#include "server/registry/score_stats.h"

namespace sage::registry {
namespace {

double RelativeBytes(KvStorage storage, int head_dim) {
  return static_cast<double>(KvTokenBytes(storage, 1, head_dim)) /
         static_cast<double>(KvTokenBytes(KvStorage::k16Bit, 1, head_dim));
}

// `in` run with `recipe` on the backend, against the exact result of the sample's own K/V.
absl::StatusOr<ErrorMetrics> Measure(server::AttentionBackend& backend, const AttnInput& in, Recipe recipe,
                                     const ExactOutput& exact) {
  absl::StatusOr<server::EngineOutput> out = backend.Attend(server::EngineInput{in}, ConfigFor(recipe));
  if (!out.ok()) return absl::Status(out.status().code(), absl::StrCat(std::string(RecipeName(recipe)), ": ", out.status().message()));
  return CompareToReference(out->o, exact.o);
}

}  // namespace

absl::Status StoreAndLoadKv(const AttnInput& in, KvStorage storage, std::vector<uint16_t>& k, std::vector<uint16_t>& v) {
  const DType dtype = in.k.dtype;
  if ((dtype != DType::kF16 && dtype != DType::kBF16) || in.v.dtype != dtype) {
    return absl::InvalidArgumentError("k/v: a KV storage holds fp16 or bf16 K/V (the sample's are not)");
  }
  const int heads = in.k.heads, d = in.k.head_dim;
  if (absl::Status s = CheckKvLayout(storage, d); !s.ok()) return s;
  const size_t row = static_cast<size_t>(heads) * d;
  const auto* k_in = static_cast<const uint16_t*>(in.k.data);
  const auto* v_in = static_cast<const uint16_t*>(in.v.data);
  k.resize(static_cast<size_t>(in.k.tokens) * row);
  v.resize(k.size());
  std::vector<std::byte> page;
  std::vector<float> mean(row), f(row);
  for (int b = 0; b < in.batch(); ++b) {
    const int64_t t0 = in.cu_seqlens_k[static_cast<size_t>(b)], n = in.cu_seqlens_k[static_cast<size_t>(b) + 1] - t0;
    if (n == 0) continue;
    const uint16_t* ks = k_in + static_cast<size_t>(t0) * row;
    const uint16_t* vs = v_in + static_cast<size_t>(t0) * row;
    // The sequence's K mean as a session takes it from its first append: an fp32 sum, one division.
    std::fill(mean.begin(), mean.end(), 0.0f);
    if (HasKMean(storage)) {
      for (int64_t t = 0; t < n; ++t) {
        DecodeToFloatBulk(ks + static_cast<size_t>(t) * row, dtype, f.data(), row);
        for (size_t i = 0; i < row; ++i) mean[i] += f[i];
      }
      for (float& m : mean) m /= static_cast<float>(n);
    }
    // One page holding the whole sequence: scales are per token-head, so this is what any paging gives.
    const KvPageLayout layout{storage, dtype, static_cast<int>(n), heads, d};
    page.assign(layout.page_bytes(), std::byte{0});
    EncodeKvTokens(layout, page.data(), 0, static_cast<int>(n), ks, vs, mean);
    DecodeKvTokens(layout, page.data(), 0, static_cast<int>(n), k.data() + static_cast<size_t>(t0) * row,
                   v.data() + static_cast<size_t>(t0) * row);
  }
  return absl::OkStatus();
}

absl::StatusOr<LayerKvReport> CalibrateLayerKvStorage(server::AttentionBackend& backend, std::span<const KvSample> samples,
                                                      const KvCalibrationPlan& plan) {
  LayerKvReport report;
  report.layer = plan.layer;
  report.samples = static_cast<int>(samples.size());
  if (samples.empty()) return absl::InvalidArgumentError("samples: none for the layer");
  const int head_dim = samples.front().input->k.head_dim;
  std::vector<KvStorage> order = plan.candidates;
  std::stable_sort(order.begin(), order.end(), [head_dim](KvStorage a, KvStorage b) {
    return RelativeBytes(a, head_dim) < RelativeBytes(b, head_dim);
  });
  std::vector<uint16_t> k, v;
  for (KvStorage storage : order) {
    KvStorageScore score;
    score.storage = storage;
    score.relative_bytes = RelativeBytes(storage, head_dim);
    ScoreStats decode, prefill;
    for (const KvSample& s : samples) {
      if (plan.is_cancelled && plan.is_cancelled()) return absl::CancelledError("calibration cancelled");
      if (absl::Status st = StoreAndLoadKv(*s.input, storage, k, v); !st.ok()) {
        score.error = std::string(st.message());
        break;
      }
      AttnInput stored = *s.input;
      stored.k.data = k.data();
      stored.v.data = v.data();
      // The decode path, then the layer's recipe (the same run when that is the unquantized one).
      absl::StatusOr<ErrorMetrics> dec = Measure(backend, stored, Recipe::kUnquantized, *s.exact);
      if (!dec.ok()) {
        score.error = std::string(dec.status().message());
        break;
      }
      decode.Add(*dec, 0.0);
      absl::StatusOr<ErrorMetrics> pre =
          plan.prefill_recipe == Recipe::kUnquantized ? dec : Measure(backend, stored, plan.prefill_recipe, *s.exact);
      if (!pre.ok()) {
        score.error = std::string(pre.status().message());
        break;
      }
      prefill.Add(*pre, 0.0);
    }
    if (score.error.empty()) {
      score.samples = decode.n;
      score.mean_decode_score = decode.mean;
      score.min_decode_score = decode.min;
      score.mean_prefill_score = prefill.mean;
      score.min_prefill_score = prefill.min;
      score.max_relative_l1 = decode.l1_max;
      score.meets_target = decode.min >= plan.target && prefill.min >= plan.target;
    }
    report.scores.push_back(score);
  }
  for (const KvStorageScore& s : report.scores) {
    if (!s.meets_target) continue;
    report.chosen = s.storage;
    report.met_target = true;
    report.reason = absl::StrFormat("fewest bytes whose worst sample (decode %.4f, prefill %.4f) >= target %.4f",
                                    s.min_decode_score, s.min_prefill_score, plan.target);
    return report;
  }
  report.chosen = KvStorage::k16Bit;  // exact: the storage adds no error of its own
  report.reason = absl::StrFormat("no storage meets target %.4f with the layer's recipe; 16-bit keeps K/V exact", plan.target);
  return report;
}

}  // namespace sage::registry
