// Host side of the attn_mma kernels: validation shared by every recipe and the templated launch.
#pragma once

#include <cuda_runtime.h>

#include <string>

#include "kernels/cuda/attn_mma/attn_mma.h"
#include "kernels/cuda/attn_mma/attn_mma_kernel.cuh"
#include "kernels/cuda/common/smem_attribute.h"

namespace sage::cuda::attn_mma {

inline sage_status_t Fail(sage_status_t s, std::string* error, std::string msg) {
  if (error != nullptr) *error = std::move(msg);
  return s;
}

// What a recipe's kernel reads from the workspace.
enum class WorkspaceNeed { kNone, kInt8Qk, kInt4QkFp8V };

inline sage_status_t Validate(const AttnMmaParams& p, WorkspaceNeed need, std::string* error) {
  const auto bad = [&](const std::string& m) { return Fail(SAGE_ERR_INVALID_ARGUMENT, error, "attn_mma: " + m); };
  if (p.head_dim != 64 && p.head_dim != 128)
    return Fail(SAGE_ERR_UNSUPPORTED, error,
                "attn_mma: head_dim " + std::to_string(p.head_dim) + " unsupported (64, 128)");
  if (p.dtype != SAGE_DTYPE_F16 && p.dtype != SAGE_DTYPE_BF16) return bad("dtype must be f16 or bf16");
  if (p.batch <= 0) return bad("batch must be > 0");
  if (p.num_q_heads <= 0 || p.num_kv_heads <= 0 || p.num_q_heads % p.num_kv_heads != 0)
    return bad("num_q_heads must be a positive multiple of num_kv_heads");
  if (p.max_seqlen_q < 0 || p.max_seqlen_k < 0) return bad("negative max_seqlen");
  constexpr int kMaxGridYZ = 65535;  // grid = (Q tiles, heads, batch)
  if (p.batch > kMaxGridYZ || p.num_q_heads > kMaxGridYZ)
    return bad("batch and num_q_heads must be <= 65535 (grid y/z limit)");
  if (!(p.softmax_scale > 0.0f)) return bad("softmax_scale must be > 0");
  if (p.mask != SAGE_MASK_NONE && p.mask != SAGE_MASK_CAUSAL) return bad("unknown mask");
  if (p.o == nullptr || p.cu_seqlens_q == nullptr || p.cu_seqlens_k == nullptr) return bad("null o/cu_seqlens");
  const bool need_raw_q = need == WorkspaceNeed::kNone || p.lse != nullptr;
  if (need_raw_q && p.q == nullptr) return bad("null q");
  if (need == WorkspaceNeed::kNone && p.k == nullptr) return bad("null k");
  if (need != WorkspaceNeed::kInt4QkFp8V && p.v == nullptr) return bad("null v");
  const WorkspaceView& w = p.ws;
  if (need == WorkspaceNeed::kInt8Qk && (w.q_i8 == nullptr || w.k_i8 == nullptr))
    return bad("workspace lacks INT8 Q/K");
  if (need == WorkspaceNeed::kInt4QkFp8V && (w.q_i4 == nullptr || w.k_i4 == nullptr || w.v_f8 == nullptr ||
                                             w.v_scale == nullptr))
    return bad("workspace lacks INT4 Q/K or FP8 V");
  if (need != WorkspaceNeed::kNone && (w.q_scale == nullptr || w.k_scale == nullptr))
    return bad("workspace lacks Q/K scales");
  return SAGE_OK;
}

inline sage_status_t CudaFail(cudaError_t err, const char* what, std::string* error) {
  return Fail(SAGE_ERR_CUDA, error, std::string("attn_mma: ") + what + ": " + cudaGetErrorString(err));
}

template <QkOperand QK, PvOperand PV, VSource VS, int D>
sage_status_t Launch(const AttnMmaParams& p, sage_stream_t stream, std::string* error) {
  using T = Traits<QK, PV, VS, D>;
  if (p.max_seqlen_q == 0) return SAGE_OK;  // nothing to compute
  auto kernel = AttnMmaKernel<QK, PV, VS, D>;
  static std::atomic<uint64_t> smem_set{0};
  if (cudaError_t e = SetMaxDynamicSmemOnce(reinterpret_cast<const void*>(kernel), T::kSmemBytes, smem_set);
      e != cudaSuccess)
    return CudaFail(e, "cudaFuncSetAttribute", error);
  const dim3 grid((p.max_seqlen_q + kQTileRows - 1) / kQTileRows, p.num_q_heads, p.batch);
  kernel<<<grid, kThreads, T::kSmemBytes, reinterpret_cast<cudaStream_t>(stream)>>>(p);
  if (cudaError_t e = cudaGetLastError(); e != cudaSuccess) return CudaFail(e, "kernel launch", error);
  return SAGE_OK;
}

template <QkOperand QK, PvOperand PV, VSource VS>
sage_status_t LaunchForHeadDim(const AttnMmaParams& p, sage_stream_t stream, std::string* error) {
  return p.head_dim == 64 ? Launch<QK, PV, VS, 64>(p, stream, error) : Launch<QK, PV, VS, 128>(p, stream, error);
}

}  // namespace sage::cuda::attn_mma
