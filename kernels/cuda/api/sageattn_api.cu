// The C API of libsageattn: validation, workspace sizing, quantization and per-recipe dispatch.
//   INT8_QK_FP8_PV  -> quant/ + attn_sm90 (wgmma; sm_90a only)
//   other recipes   -> quant/ (as the recipe needs) + attn_mma (CUDA-B's mma.sync kernels)
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>

#include "kernels/cuda/attn_mma/attn_mma.h"
#include "kernels/cuda/attn_sm90/attn_sm90.h"
#include "kernels/cuda/common/status.cuh"
#include "kernels/cuda/internal/workspace.h"
#include "kernels/cuda/quant/quantize.h"
#include "sageattn.h"

namespace sage::cuda {
namespace {

constexpr size_t kWorkspaceBaseAlign = 128;  // bulk copies need 16; tiles are 256-aligned offsets
constexpr size_t kIoAlign = 4;                // o (and raw q/k/v of UNQUANTIZED): element pairs
constexpr size_t kQuantInAlign = 16;          // the quantizers read q/k/v 16 bytes at a time

const char* RecipeName(sage_recipe_t r) {
  switch (r) {
    case SAGE_RECIPE_INT4_QK_FP8_PV: return "int4_qk_fp8_pv";
    case SAGE_RECIPE_INT8_QK_FP8_PV: return "int8_qk_fp8_pv";
    case SAGE_RECIPE_INT8_QK_FP16_PV: return "int8_qk_fp16_pv";
    case SAGE_RECIPE_UNQUANTIZED: return "unquantized";
  }
  return "?";
}

bool Quantized(sage_recipe_t r) { return r != SAGE_RECIPE_UNQUANTIZED; }
bool Fp8V(sage_recipe_t r) { return r == SAGE_RECIPE_INT8_QK_FP8_PV || r == SAGE_RECIPE_INT4_QK_FP8_PV; }

// Everything about the params except the data pointers and the workspace.
sage_status_t ValidateShape(const sage_attn_params_t* p) {
  if (p == nullptr) return Fail(SAGE_ERR_INVALID_ARGUMENT, "params: null");
  const sage_recipe_config_t& c = p->config;
  if (c.recipe < SAGE_RECIPE_INT4_QK_FP8_PV || c.recipe > SAGE_RECIPE_UNQUANTIZED)
    return Fail(SAGE_ERR_INVALID_ARGUMENT, "config.recipe: unknown value %d", static_cast<int>(c.recipe));
  if (c.granularity < SAGE_GRAN_PER_BLOCK || c.granularity > SAGE_GRAN_PER_THREAD)
    return Fail(SAGE_ERR_INVALID_ARGUMENT, "config.granularity: unknown value %d", static_cast<int>(c.granularity));
  if (c.qk_smoothing < SAGE_SMOOTH_NONE || c.qk_smoothing > SAGE_SMOOTH_QK)
    return Fail(SAGE_ERR_INVALID_ARGUMENT, "config.qk_smoothing: unknown value %d", static_cast<int>(c.qk_smoothing));
  if (c.v_smoothing != SAGE_VSMOOTH_NONE && c.v_smoothing != SAGE_VSMOOTH_MEAN)
    return Fail(SAGE_ERR_INVALID_ARGUMENT, "config.v_smoothing: unknown value %d", static_cast<int>(c.v_smoothing));
  if (c.accumulation != SAGE_ACCUM_TWO_LEVEL && c.accumulation != SAGE_ACCUM_FP22_ONLY)
    return Fail(SAGE_ERR_INVALID_ARGUMENT, "config.accumulation: unknown value %d", static_cast<int>(c.accumulation));
  if (p->dtype != SAGE_DTYPE_F16 && p->dtype != SAGE_DTYPE_BF16)
    return Fail(SAGE_ERR_INVALID_ARGUMENT, "dtype: unknown value %d (F16=1, BF16=2)", static_cast<int>(p->dtype));
  if (p->batch < 0) return Fail(SAGE_ERR_INVALID_ARGUMENT, "batch: %d < 0", p->batch);
  if (p->num_q_heads <= 0 || p->num_kv_heads <= 0)
    return Fail(SAGE_ERR_INVALID_ARGUMENT, "num_q_heads %d / num_kv_heads %d: must be > 0", p->num_q_heads, p->num_kv_heads);
  if (p->num_q_heads % p->num_kv_heads != 0)
    return Fail(SAGE_ERR_INVALID_ARGUMENT, "num_q_heads %d: not a multiple of num_kv_heads %d", p->num_q_heads, p->num_kv_heads);
  if (p->num_q_heads > 65535 || p->batch > 65535)
    return Fail(SAGE_ERR_UNSUPPORTED, "num_q_heads %d / batch %d: at most 65535 each", p->num_q_heads, p->batch);
  if (p->head_dim != 64 && p->head_dim != 128)
    return Fail(SAGE_ERR_UNSUPPORTED, "head_dim %d unsupported (64, 128)", p->head_dim);
  if (p->total_q < 0 || p->total_k < 0)
    return Fail(SAGE_ERR_INVALID_ARGUMENT, "total_q %lld / total_k %lld: must be >= 0", static_cast<long long>(p->total_q),
                static_cast<long long>(p->total_k));
  if (p->max_seqlen_q < 0 || p->max_seqlen_k < 0 || p->max_seqlen_q > p->total_q || p->max_seqlen_k > p->total_k)
    return Fail(SAGE_ERR_INVALID_ARGUMENT, "max_seqlen_q %d / max_seqlen_k %d: must be in [0, total_q / total_k]",
                p->max_seqlen_q, p->max_seqlen_k);
  if (p->mask != SAGE_MASK_NONE && p->mask != SAGE_MASK_CAUSAL)
    return Fail(SAGE_ERR_INVALID_ARGUMENT, "mask: unknown value %d", static_cast<int>(p->mask));
  if (!(p->softmax_scale > 0.f) || !std::isfinite(p->softmax_scale))
    return Fail(SAGE_ERR_INVALID_ARGUMENT, "softmax_scale: %g must be finite and > 0", static_cast<double>(p->softmax_scale));
  if (c.recipe == SAGE_RECIPE_INT8_QK_FP8_PV) {
    if (c.qk_smoothing == SAGE_SMOOTH_QK)
      return Fail(SAGE_ERR_UNSUPPORTED, "int8_qk_fp8_pv: qk_smoothing SMOOTH_QK (ΔS) is not implemented in the sm90 kernel");
    if (c.accumulation != SAGE_ACCUM_TWO_LEVEL)
      return Fail(SAGE_ERR_UNSUPPORTED, "int8_qk_fp8_pv: accumulation FP22_ONLY is not implemented in the sm90 kernel");
  }
  return SAGE_OK;
}

WorkspaceShape ShapeOf(const sage_attn_params_t* p) {
  WorkspaceShape s;
  s.total_q = p->total_q;
  s.total_k = p->total_k;
  s.batch = p->batch;
  s.num_q_heads = p->num_q_heads;
  s.num_kv_heads = p->num_kv_heads;
  s.head_dim = p->head_dim;
  s.max_seqlen_k = p->max_seqlen_k;
  s.int8_qk = p->config.recipe != SAGE_RECIPE_INT4_QK_FP8_PV;
  s.fp8_v = Fp8V(p->config.recipe);
  s.smooth_q = p->config.qk_smoothing == SAGE_SMOOTH_QK;
  s.smooth_v = p->config.v_smoothing == SAGE_VSMOOTH_MEAN;
  return s;
}

size_t WorkspaceBytes(const sage_attn_params_t* p) {
  if (!Quantized(p->config.recipe)) return 0;
  return ComputeWorkspaceLayout(ShapeOf(p)).total_bytes;
}

sage_status_t CheckPointer(const void* ptr, const char* name, size_t align) {
  if (ptr == nullptr) return Fail(SAGE_ERR_INVALID_ARGUMENT, "%s: null", name);
  if (reinterpret_cast<uintptr_t>(ptr) % align != 0)
    return Fail(SAGE_ERR_INVALID_ARGUMENT, "%s: not %zu-byte aligned", name, align);
  return SAGE_OK;
}

enum Phase : unsigned { kQuantize = 1, kAttend = 2 };

sage_status_t Forward(const sage_attn_params_t* p, cudaStream_t stream, unsigned phases) {
  SAGE_RETURN_IF_ERROR(ValidateShape(p));
  if (stream == nullptr)
    return Fail(SAGE_ERR_INVALID_ARGUMENT, "stream: null (the legacy default stream is not used; pass a created stream)");
  if (p->batch == 0 || p->total_q == 0) return SAGE_OK;  // nothing to compute
  const size_t in_align = Quantized(p->config.recipe) ? kQuantInAlign : kIoAlign;
  SAGE_RETURN_IF_ERROR(CheckPointer(p->q, "q", in_align));
  SAGE_RETURN_IF_ERROR(CheckPointer(p->o, "o", kIoAlign));
  SAGE_RETURN_IF_ERROR(CheckPointer(p->cu_seqlens_q, "cu_seqlens_q", 4));
  SAGE_RETURN_IF_ERROR(CheckPointer(p->cu_seqlens_k, "cu_seqlens_k", 4));
  if (p->total_k > 0) {
    SAGE_RETURN_IF_ERROR(CheckPointer(p->k, "k", in_align));
    SAGE_RETURN_IF_ERROR(CheckPointer(p->v, "v", in_align));
  }
  if (p->lse != nullptr) SAGE_RETURN_IF_ERROR(CheckPointer(p->lse, "lse", 4));
  const size_t need = WorkspaceBytes(p);
  if (need > 0) {
    SAGE_RETURN_IF_ERROR(CheckPointer(p->workspace, "workspace", kWorkspaceBaseAlign));
    if (p->workspace_bytes < need)
      return Fail(SAGE_ERR_INVALID_ARGUMENT, "workspace_bytes: %zu < %zu needed (sage_attn_workspace_size)",
                  p->workspace_bytes, need);
  }

  const bool host_cu = p->host_cu_seqlens_q != nullptr || p->host_cu_seqlens_k != nullptr;
  if (host_cu && (p->host_cu_seqlens_q == nullptr || p->host_cu_seqlens_k == nullptr))
    return Fail(SAGE_ERR_INVALID_ARGUMENT, "host_cu_seqlens_q/k: give both or neither");
  // Host cu_seqlens ride in the statistics kernel's parameters when it runs and they fit; otherwise
  // they are copied here, ahead of every kernel on the stream.
  const bool inline_cu = host_cu && need > 0 && (phases & kQuantize) && p->batch <= SAGE_INLINE_CU_SEQLENS_MAX;
  if (host_cu && !inline_cu) {
    const size_t cu_bytes = static_cast<size_t>(p->batch + 1) * sizeof(int32_t);
    SAGE_CUDA_TRY(cudaMemcpyAsync(const_cast<int32_t*>(p->cu_seqlens_q), p->host_cu_seqlens_q, cu_bytes,
                                  cudaMemcpyHostToDevice, stream));
    SAGE_CUDA_TRY(cudaMemcpyAsync(const_cast<int32_t*>(p->cu_seqlens_k), p->host_cu_seqlens_k, cu_bytes,
                                  cudaMemcpyHostToDevice, stream));
  }

  const sage_recipe_t recipe = p->config.recipe;
  int device = 0;
  SAGE_CUDA_TRY(cudaGetDevice(&device));
  if (recipe == SAGE_RECIPE_INT8_QK_FP8_PV && !AttnSm90Available(device))
    return Fail(SAGE_ERR_UNSUPPORTED,
                "int8_qk_fp8_pv: needs an sm_90 GPU and a build with sm_90a (FP8 P·V runs on wgmma only)");

  WorkspaceView ws;
  if (need > 0) ws = MakeWorkspaceView(p->workspace, ComputeWorkspaceLayout(ShapeOf(p)));
  if (need > 0 && (phases & kQuantize)) {
    QuantParams qp;
    qp.q = p->q;
    qp.k = p->k;
    qp.v = p->v;
    qp.bf16 = p->dtype == SAGE_DTYPE_BF16;
    qp.cu_q = p->cu_seqlens_q;
    qp.cu_k = p->cu_seqlens_k;
    qp.batch = p->batch;
    qp.num_q_heads = p->num_q_heads;
    qp.num_kv_heads = p->num_kv_heads;
    qp.head_dim = p->head_dim;
    qp.max_seqlen_q = p->max_seqlen_q;
    qp.max_seqlen_k = p->max_seqlen_k;
    qp.granularity = p->config.granularity;
    qp.smooth_k = p->config.qk_smoothing != SAGE_SMOOTH_NONE;
    qp.smooth_q = p->config.qk_smoothing == SAGE_SMOOTH_QK;
    qp.smooth_v = p->config.v_smoothing == SAGE_VSMOOTH_MEAN;
    qp.int4 = recipe == SAGE_RECIPE_INT4_QK_FP8_PV;
    qp.ws = ws;
    InlineCuSeqlens cu;
    if (inline_cu) {
      cu.count = p->batch + 1;
      cu.q_dst = const_cast<int32_t*>(p->cu_seqlens_q);
      cu.k_dst = const_cast<int32_t*>(p->cu_seqlens_k);
      std::memcpy(cu.q, p->host_cu_seqlens_q, static_cast<size_t>(cu.count) * sizeof(int32_t));
      std::memcpy(cu.k, p->host_cu_seqlens_k, static_cast<size_t>(cu.count) * sizeof(int32_t));
    }
    SAGE_RETURN_IF_ERROR(LaunchQuantizeAll(qp, Fp8V(recipe), stream, QuantLaunch::kAuto, inline_cu ? &cu : nullptr));
  }
  if (!(phases & kAttend)) return SAGE_OK;

  if (recipe == SAGE_RECIPE_INT8_QK_FP8_PV) {
    AttnSm90Params ap;
    ap.ws = ws;
    ap.o = p->o;
    ap.lse = p->lse;
    ap.cu_q = p->cu_seqlens_q;
    ap.cu_k = p->cu_seqlens_k;
    ap.batch = p->batch;
    ap.num_q_heads = p->num_q_heads;
    ap.num_kv_heads = p->num_kv_heads;
    ap.head_dim = p->head_dim;
    ap.max_seqlen_q = p->max_seqlen_q;
    ap.causal = p->mask == SAGE_MASK_CAUSAL;
    ap.bf16 = p->dtype == SAGE_DTYPE_BF16;
    ap.lse_k_correction = p->config.qk_smoothing != SAGE_SMOOTH_NONE;
    ap.softmax_scale = p->softmax_scale;
    return LaunchAttnSm90(ap, stream);
  }

  AttnMmaParams mp;
  mp.recipe = recipe;
  mp.dtype = p->dtype;
  mp.q = p->q;
  mp.k = p->k;
  mp.v = p->v;
  mp.o = p->o;
  mp.lse = p->lse;
  mp.cu_seqlens_q = p->cu_seqlens_q;
  mp.cu_seqlens_k = p->cu_seqlens_k;
  mp.batch = p->batch;
  mp.max_seqlen_q = p->max_seqlen_q;
  mp.max_seqlen_k = p->max_seqlen_k;
  mp.total_q = p->total_q;
  mp.total_k = p->total_k;
  mp.num_q_heads = p->num_q_heads;
  mp.num_kv_heads = p->num_kv_heads;
  mp.head_dim = p->head_dim;
  mp.mask = p->mask;
  mp.softmax_scale = p->softmax_scale;
  mp.ws = ws;
  std::string error;
  const sage_status_t s = LaunchAttnMma(mp, reinterpret_cast<sage_stream_t>(stream), &error);
  if (s != SAGE_OK) return Fail(s, "%s: %s", RecipeName(recipe), error.c_str());
  return SAGE_OK;
}

}  // namespace
}  // namespace sage::cuda

extern "C" sage_status_t sage_attn_workspace_size(const sage_attn_params_t* params, size_t* bytes) {
  sage::cuda::ClearLastError();
  if (bytes == nullptr) return sage::cuda::Fail(SAGE_ERR_INVALID_ARGUMENT, "bytes: null");
  *bytes = 0;
  SAGE_RETURN_IF_ERROR(sage::cuda::ValidateShape(params));
  *bytes = sage::cuda::WorkspaceBytes(params);
  return SAGE_OK;
}

extern "C" sage_status_t sage_attn_forward(const sage_attn_params_t* params, sage_stream_t stream) {
  sage::cuda::ClearLastError();
  return sage::cuda::Forward(params, reinterpret_cast<cudaStream_t>(stream), sage::cuda::kQuantize | sage::cuda::kAttend);
}

extern "C" sage_status_t sage_attn_quantize(const sage_attn_params_t* params, sage_stream_t stream) {
  sage::cuda::ClearLastError();
  return sage::cuda::Forward(params, reinterpret_cast<cudaStream_t>(stream), sage::cuda::kQuantize);
}

extern "C" sage_status_t sage_attn_attend(const sage_attn_params_t* params, sage_stream_t stream) {
  sage::cuda::ClearLastError();
  return sage::cuda::Forward(params, reinterpret_cast<cudaStream_t>(stream), sage::cuda::kAttend);
}
