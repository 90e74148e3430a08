// A test problem for `attend` and `bench`: random (seeded) or read from raw files, kept on the
// host as 16-bit bits so it can be sent and also fed to the local oracle.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "client/sagectl/args.h"
#include "kernels/reference/attention_problem.h"
#include "sageserve/v1/attention_service.pb.h"

namespace sagectl {

struct ProblemSpec {
  int batch = 1;
  int64_t q_len = 512;  // Per sequence.
  int64_t k_len = 512;
  int heads_q = 8;
  int heads_kv = 8;
  int head_dim = 128;
  sageserve::v1::DType dtype = sageserve::v1::DTYPE_FP16;
  sageserve::v1::DType output_dtype = sageserve::v1::DTYPE_UNSPECIFIED;
  sageserve::v1::Recipe recipe = sageserve::v1::RECIPE_UNSPECIFIED;
  bool causal = false;
  bool return_lse = false;
  uint32_t seed = 1;
  std::string q_file, k_file, v_file;  // Raw little-endian [tokens, heads, D] in `dtype`.
  std::string model;  // layer_key: with recipe unset, the server runs the model's plan.
  std::optional<int> layer, timestep;
};

// Options understood by SpecFromArgs (for the unknown-flag check).
std::vector<std::string> ProblemFlags();
absl::StatusOr<ProblemSpec> SpecFromArgs(const Args& args);

struct HostProblem {
  ProblemSpec spec;
  std::vector<uint16_t> q, k, v;
  std::vector<int32_t> cu_q, cu_k;

  int64_t total_q() const { return spec.batch * spec.q_len; }
  int64_t total_k() const { return spec.batch * spec.k_len; }
  sage::AttnInput AsInput() const;  // Views into this object.
  sageserve::v1::AttendRequest ToRequest(const std::string& request_id) const;
};

absl::StatusOr<HostProblem> MakeProblem(const ProblemSpec& spec);

}  // namespace sagectl
