// Seeded calibration samples whose difficulty is one knob: the strength of K outlier channels.
//
// A K channel bias is not a good knob: K smoothing removes it exactly. What per-group INT8/INT4
// scales cannot absorb is a few K channels whose values are large AND vary per token (zero mean,
// so smoothing leaves them): they set every key's quantization scale and flatten the ordinary
// channels to a handful of levels. Q is scaled down by the same gain in those channels, so the
// exact logits keep their usual size and the problem stays a well-behaved attention: only the
// quantized recipes suffer, in proportion to the gain.
#pragma once

#include <cstdint>
#include <vector>

#include "kernels/reference/attention_problem.h"

namespace sage {

struct OutlierSampleSpec {
  int tokens = 256;  // One sequence, q_len = k_len = tokens.
  int q_heads = 4;
  int kv_heads = 4;
  int head_dim = 128;
  // K channels c with c % outlier_channel_every == 3 are multiplied by k_outlier_gain, Q's same
  // channels divided by it. 1 = plain Gaussian data.
  float k_outlier_gain = 1.0f;
  int outlier_channel_every = 32;
  uint64_t seed = 1;
};

// Owns fp16 Q/K/V; input() views them. Move-only so the views stay valid.
class OutlierSample {
 public:
  explicit OutlierSample(const OutlierSampleSpec& spec);
  OutlierSample(OutlierSample&&) = default;
  OutlierSample& operator=(OutlierSample&&) = default;
  OutlierSample(const OutlierSample&) = delete;
  OutlierSample& operator=(const OutlierSample&) = delete;

  const AttnInput& input() const { return input_; }
  // Raw little-endian fp16 bytes, for putting on the wire.
  const std::vector<uint8_t>& q_bytes() const { return q_; }
  const std::vector<uint8_t>& k_bytes() const { return k_; }
  const std::vector<uint8_t>& v_bytes() const { return v_; }

 private:
  std::vector<uint8_t> q_, k_, v_;
  std::vector<int32_t> cu_;
  AttnInput input_;
};

}  // namespace sage
