// Fused forward attention on mma.sync tensor cores for every recipe except the fast sm_90 INT8·FP8
// one (attn_sm90): INT4·FP8, INT8·FP16 and unquantized FP16/BF16. Called by the C API dispatch
// (kernels/cuda/api) after the quantizers have filled the workspace (internal/workspace.h).
//
// One CTA = one 64-row Q tile of one (sequence, head): 4 warps × 16 rows; keys in 128-key blocks
// that restart at each sequence start. Online softmax in the log2 domain:
//   s2 = S · softmax_scale · log2e, with S = δQ·δK·(Q̂·K̂ᵀ) [+ ΔS] for the integer recipes,
//   P̃ = exp2(s2 − m2 + 8.807) for FP8 P·V (P̃ ≤ 448, then rounded to e4m3), exp2(s2 − m2) for 16-bit,
//   l summed from the fp32 P̃ before rounding; O = (Σ P̂·V̂)/l (· δV + v̄ for FP8 V).
// P·V on sm_80/sm_89/sm_90 alike: e4m3 P̂ and V̂ are widened exactly to fp16 and multiplied with
// mma.m16n8k16.f32.f16.f16.f32. That is what the hardware itself does for an FP8 mma.sync on sm_90
// (FP16 unpack + HMMA); its fp32 accumulator has no FP22 truncation, so the two-level promotion of
// the recipe holds trivially (every 128-key block's partial sum is exact fp32 already).
#pragma once

#include <cstdint>
#include <string>

#include "kernels/cuda/internal/workspace.h"
#include "kernels/include/sageattn.h"

namespace sage::cuda {

// Everything one attn_mma launch reads and writes. Raw tensors are the caller's packed varlen
// [tokens, heads, head_dim] buffers in `dtype`; quantized operands come from `ws`.
struct AttnMmaParams {
  sage_recipe_t recipe = SAGE_RECIPE_UNQUANTIZED;
  sage_dtype_t dtype = SAGE_DTYPE_F16;  // of q, k, v and o
  const void* q = nullptr;  // raw Q: read by UNQUANTIZED, and by the LSE correction q·k̄
  const void* k = nullptr;  // raw K: read by UNQUANTIZED
  const void* v = nullptr;  // raw V: read by the 16-bit P·V recipes
  void* o = nullptr;
  float* lse = nullptr;     // [total_q, Hq] natural log, or null
  const int32_t* cu_seqlens_q = nullptr;
  const int32_t* cu_seqlens_k = nullptr;
  int32_t batch = 0;
  int32_t max_seqlen_q = 0;
  int32_t max_seqlen_k = 0;
  int64_t total_q = 0;
  int64_t total_k = 0;
  int32_t num_q_heads = 0;
  int32_t num_kv_heads = 0;
  int32_t head_dim = 0;
  sage_mask_t mask = SAGE_MASK_NONE;
  float softmax_scale = 0.0f;
  WorkspaceView ws;  // quantized Q/K (q_i8/k_i8 or q_i4/k_i4, scales, k_mean, delta_s), V̂ (v_f8, ...)
};

// Validates, then launches the recipe's kernel on `stream` and checks the launch. Returns
// SAGE_ERR_INVALID_ARGUMENT / SAGE_ERR_UNSUPPORTED / SAGE_ERR_CUDA with a message in *error.
sage_status_t LaunchAttnMma(const AttnMmaParams& p, sage_stream_t stream, std::string* error);

// The same, one recipe each (LaunchAttnMma dispatches on p.recipe).
sage_status_t LaunchAttnMmaUnquantized(const AttnMmaParams& p, sage_stream_t stream, std::string* error);
sage_status_t LaunchAttnMmaInt8Fp16(const AttnMmaParams& p, sage_stream_t stream, std::string* error);
sage_status_t LaunchAttnMmaInt4Fp8(const AttnMmaParams& p, sage_stream_t stream, std::string* error);

}  // namespace sage::cuda
