// The quantize-then-attend emulation of every RecipeConfig (docs/NUMERICS.md), split into work items
// so the single-threaded entry point and the multi-threaded CpuEngine run the identical arithmetic.
#pragma once

#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"
#include "kernels/reference/attention_problem.h"
#include "kernels/reference/recipe.h"

namespace sage {

inline constexpr float kLog2e = 1.44269504088896340736f;
inline constexpr float kLn2 = 0.693147180559945309417f;
// exp2(8.807) ≈ 448: the FP8 recipes shift P̃ so each row's largest value lands near the e4m3 max.
inline constexpr float kFp8POffset = 8.807f;
inline constexpr int kPvStepKeys = 32;  // keys per FP8 MMA k-step; the accumulator truncates after each

// One prepared problem. Usage: construct, run PrepareKv(i) for every i < num_kv_items() (any order,
// any threads), then AttendTile(i, &out) for every i < num_q_items() (any order, any threads; each
// item writes disjoint rows of `out`). Results do not depend on order or thread count.
class QuantizedAttention {
 public:
  // `in` must have passed ValidateInput; it and the buffers it points to must outlive this object.
  QuantizedAttention(const AttnInput& in, const RecipeConfig& config);

  int64_t num_kv_items() const { return static_cast<int64_t>(batch_) * hkv_; }
  int64_t num_q_items() const { return total_q_tiles_ * hq_; }

  // K mean, K quantization (transposed per block), V quantization for one (sequence, kv-head).
  void PrepareKv(int64_t item);
  // One (sequence, head, 64-row Q tile): Q smoothing/quantization, scores, online softmax, P·V.
  void AttendTile(int64_t item, AttnOutput* out) const;
  // An output with the right sizes (zeros; LSE = -inf where requested).
  AttnOutput AllocateOutput() const;

 private:
  struct KvSlice {
    int n = 0;                     // keys in this sequence
    std::vector<float> k_t;        // [blocks][D][128]: quantized (or 16-bit) K, transposed, zero padded
    std::vector<float> k_scale;    // [blocks * 128]: δK per key (1 for unquantized)
    std::vector<float> k_smooth;   // [n][D]: K - k̄ in fp32 (only for kQK, feeds ΔS)
    std::vector<float> k_mean;     // [D]: k̄ (zeros without K smoothing)
    std::vector<float> v_hat;      // [blocks * 128][D]: dequantization-ready V (FP8 or 16-bit values)
    std::vector<float> v_scale;    // [D]: δV (1 for 16-bit V)
    std::vector<float> v_mean;     // [D]: v̄ (zeros without V smoothing)
  };

  void ComputeScores(const KvSlice& kv, int block, const float* q_hat, int rows, float* s) const;

  const AttnInput& in_;
  RecipeConfig config_;
  int batch_, hq_, hkv_, d_;
  DType qk16_ = DType::kF16;  // 16-bit type for unquantized Q/K
  DType pv16_ = DType::kF16;  // 16-bit type for P̃ and V with PvType::kF16
  std::vector<float> q_, k_, v_;             // inputs as float
  std::vector<int64_t> tile_offset_;         // first global Q tile of each sequence, batch + 1 entries
  int64_t total_q_tiles_ = 0;
  std::vector<KvSlice> kv_;                  // [batch][Hkv]
};

// Validates, then runs every work item on the calling thread.
absl::StatusOr<AttnOutput> AttendQuantized(const AttnInput& in, const RecipeConfig& config);

}  // namespace sage
