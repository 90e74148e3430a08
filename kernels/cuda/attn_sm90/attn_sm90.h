// Fused SageAttn2-8b forward for sm_90a: INT8 Q·Kᵀ (wgmma m64n128k32 s8, both operands from shared
// memory), FP8 P̃·V (wgmma m64nDk32 e4m3, P̃ from registers), two-level accumulation, online softmax
// in the log2 domain with the static 448 offset. Reads the quantizers' workspace (workspace.h).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/cuda/internal/workspace.h"
#include "sageattn.h"

namespace sage::cuda {

struct AttnSm90Params {
  WorkspaceView ws;             // q_i8, q_scale, k_i8, k_scale, v_f8, v_scale, (v_mean), q_kdot
  void* o = nullptr;            // [total_q, Hq, D] fp16/bf16
  float* lse = nullptr;         // [total_q, Hq] natural log, or null
  const int32_t* cu_q = nullptr;
  const int32_t* cu_k = nullptr;
  int batch = 0, num_q_heads = 0, num_kv_heads = 0, head_dim = 0;
  int max_seqlen_q = 0;
  bool causal = false;
  bool bf16 = false;            // output dtype
  bool lse_k_correction = true; // add softmax_scale·(q·k̄) to the LSE (K smoothing on)
  float softmax_scale = 0.f;
};

// True when the current device can run the kernel (sm_90 with the 90a code in this build).
bool AttnSm90Available(int device);
sage_status_t LaunchAttnSm90(const AttnSm90Params& p, cudaStream_t stream);

}  // namespace sage::cuda
