// Quantizers of the SageAttention2 recipes: fp16/bf16 packed varlen Q/K/V -> the workspace of
// kernels/cuda/internal/workspace.h. Launch order (all on one stream):
//   LaunchKvStats      one read of K and V: k̄, v̄, per-channel V range -> k_mean, v_scale, v_mean
//   LaunchQuantizeK    K − k̄ -> INT8/INT4 image + δK (needs k_mean)
//   LaunchQuantizeQ    Q (− q̄) -> INT8/INT4 image + δQ, q_mean, q·k̄ (needs k_mean)
//   LaunchQuantizeV    (V − v̄)·448/amax -> e4m3 image, token-permuted (needs v_scale/v_mean)
//   LaunchDeltaS       ΔS = q̄·(K − k̄) (SMOOTH_QK only; needs q_mean, k_mean)
// LaunchQuantizeQkv runs the K, Q and V tiles of the middle three in one launch (the same device
// code), and LaunchKvStats can finalize k̄/δV/v̄ itself when every sequence is one statistics chunk:
// a small problem then takes two quantization launches instead of five, with identical bytes.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/cuda/internal/workspace.h"
#include "sageattn.h"

namespace sage::cuda {

// cu_seqlens carried in the statistics kernel's parameters (sageattn.h, host_cu_seqlens_q/k): it
// reads them from here and its first block stores them at q_dst/k_dst (QuantParams::cu_q/cu_k) for
// the kernels after it. Only that kernel takes them; the others keep small parameters.
struct InlineCuSeqlens {
  int count = 0;            // batch + 1; 0: none (cu_q/cu_k are read from device memory)
  int32_t* q_dst = nullptr;  // == QuantParams::cu_q, writable
  int32_t* k_dst = nullptr;  // == QuantParams::cu_k, writable
  int32_t q[SAGE_INLINE_CU_SEQLENS_MAX + 1];
  int32_t k[SAGE_INLINE_CU_SEQLENS_MAX + 1];
};

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

// Where k̄, δV and v̄ are computed from the K/V statistics.
enum class KvFinalize {
  kSeparateKernel,  // a second kernel combines the per-chunk partials (any length)
  kInStatsPass,     // the statistics kernel itself (needs ws.stat_chunks <= 1: keys <= kStatsChunkRows)
};

// How LaunchQuantizeAll spreads the work over launches.
enum class QuantLaunch {
  kAuto,      // kFused when every sequence has at most kStatsChunkRows keys, else kSeparate
  kSeparate,  // one kernel per tensor (and the finalize kernel): the lowest register pressure per tile
  kFused,     // statistics (+ finalize when one chunk), then Q, K and V tiles in one launch
};

// `cu`: cu_seqlens for the kernel's parameters, or null (read from device memory).
sage_status_t LaunchKvStats(const QuantParams& p, KvFinalize finalize, const InlineCuSeqlens* cu,
                            cudaStream_t stream);
sage_status_t LaunchQuantizeK(const QuantParams& p, cudaStream_t stream);
sage_status_t LaunchQuantizeQ(const QuantParams& p, cudaStream_t stream);
sage_status_t LaunchQuantizeV(const QuantParams& p, cudaStream_t stream);
sage_status_t LaunchDeltaS(const QuantParams& p, cudaStream_t stream);
// K, Q and (quantize_v) V tiles in one launch; needs LaunchKvStats (finalized) before it.
sage_status_t LaunchQuantizeQkv(const QuantParams& p, bool quantize_v, cudaStream_t stream);

// All of the above that the params ask for, in order. Every QuantLaunch writes the same bytes.
// `cu` (may be null): cu_seqlens to store before anything reads them (LaunchKvStats).
sage_status_t LaunchQuantizeAll(const QuantParams& p, bool quantize_v, cudaStream_t stream,
                                QuantLaunch how = QuantLaunch::kAuto, const InlineCuSeqlens* cu = nullptr);

}  // namespace sage::cuda
