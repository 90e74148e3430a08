// Quantizers of the SageAttention2 recipes: fp16/bf16 packed varlen Q/K/V -> the workspace of
// kernels/cuda/internal/workspace.h. Launch order (all on one stream):
//   LaunchKvStats      one read of K and V: k̄, v̄, per-channel V range -> k_mean, v_scale, v_mean
//   LaunchQuantizeK    K − k̄ -> INT8/INT4 image + δK (needs k_mean)
//   LaunchQuantizeQ    Q (− q̄) -> INT8/INT4 image + δQ, q_mean, q·k̄ (needs k_mean)
//   LaunchQuantizeV    (V − v̄)·448/amax -> e4m3 image, token-permuted (needs v_scale/v_mean)
//   LaunchDeltaS       ΔS = q̄·(K − k̄) (SMOOTH_QK only; needs q_mean, k_mean)
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/cuda/internal/workspace.h"
#include "sageattn.h"

namespace sage::cuda {

struct QuantParams {
  const void* q = nullptr;  // [total_q, Hq, D]
  const void* k = nullptr;  // [total_k, Hkv, D]
  const void* v = nullptr;  // [total_k, Hkv, D]
  bool bf16 = false;        // else fp16
  const int32_t* cu_q = nullptr;
  const int32_t* cu_k = nullptr;
  int batch = 0, num_q_heads = 0, num_kv_heads = 0, head_dim = 0;
  int max_seqlen_q = 0, max_seqlen_k = 0;
  sage_granularity_t granularity = SAGE_GRAN_PER_THREAD;
  bool smooth_k = true;
  bool smooth_q = false;
  bool smooth_v = false;
  bool int4 = false;       // INT4 Q/K (qmax 7, packed) instead of INT8 (qmax 127)
  WorkspaceView ws;
};

sage_status_t LaunchKvStats(const QuantParams& p, cudaStream_t stream);
sage_status_t LaunchQuantizeK(const QuantParams& p, cudaStream_t stream);
sage_status_t LaunchQuantizeQ(const QuantParams& p, cudaStream_t stream);
sage_status_t LaunchQuantizeV(const QuantParams& p, cudaStream_t stream);
sage_status_t LaunchDeltaS(const QuantParams& p, cudaStream_t stream);

// All of the above that the params ask for, in order.
sage_status_t LaunchQuantizeAll(const QuantParams& p, bool quantize_v, cudaStream_t stream);

}  // namespace sage::cuda
