// Exact attention in double precision: the ground truth every engine is measured against.
#pragma once

#include <vector>

#include "absl/status/statusor.h"
#include "kernels/reference/attention_problem.h"

namespace sage {

struct ExactOutput {
  std::vector<double> o;    // [total_q, Hq, D]
  std::vector<double> lse;  // [total_q, Hq], natural log; -inf for a row that sees no key.
};

// Softmax(Q Kᵀ · scale) V over the packed varlen batch in double, with GQA/MQA head mapping and
// bottom-right aligned causal masking (see attention_problem.h). The inputs are read exactly
// (fp16/bf16/fp32 -> double). Always fills lse, whatever in.lse says. Runs on a few threads.
absl::StatusOr<ExactOutput> AttendExact(const AttnInput& in);

// First visible key index bound for query row i of a sequence: keys j < VisibleKeys(...) are seen.
int VisibleKeys(MaskMode mask, int q_row, int q_len, int k_len);

}  // namespace sage
