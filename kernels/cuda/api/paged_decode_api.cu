// C API of the paged decode (sageattn.h "Paged decode"): validation, workspace sizing, launch.
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>

#include "kernels/cuda/common/status.cuh"
#include "kernels/cuda/decode/page_parts.h"
#include "kernels/cuda/decode/paged_decode.h"
#include "sageattn.h"

namespace sage::cuda {
namespace {

constexpr size_t kVectorAlign = 16;  // q, o and pages are read or written 16 bytes at a time
constexpr size_t kWorkspaceBaseAlign = 256;
constexpr double kLog2e = 1.4426950408889634;

// Bytes of the kv_pages.h layout of one page.

// Everything except the data pointers and the workspace (what the workspace size depends on).
sage_status_t ValidateShape(const sage_paged_decode_params_t* p) {
  if (p == nullptr) return Fail(SAGE_ERR_INVALID_ARGUMENT, "params: null");
  if (p->storage != SAGE_KV_16BIT && p->storage != SAGE_KV_INT8K_FP8V && p->storage != SAGE_KV_INT4K_FP8V)
    return Fail(SAGE_ERR_INVALID_ARGUMENT, "storage: unknown value %d (16BIT=0, INT8K_FP8V=1, INT4K_FP8V=2)",
                static_cast<int>(p->storage));
  if (p->layout != SAGE_KV_TOKEN_MAJOR && p->layout != SAGE_KV_HEAD_MAJOR)
    return Fail(SAGE_ERR_INVALID_ARGUMENT, "layout: unknown value %d (TOKEN_MAJOR=0, HEAD_MAJOR=1)", static_cast<int>(p->layout));
  if (p->dtype != SAGE_DTYPE_F16 && p->dtype != SAGE_DTYPE_BF16)
    return Fail(SAGE_ERR_INVALID_ARGUMENT, "dtype: unknown value %d (F16=1, BF16=2)", static_cast<int>(p->dtype));
  if (p->batch < 0 || p->batch > 65535) return Fail(SAGE_ERR_INVALID_ARGUMENT, "batch: %d not in [0, 65535]", p->batch);
  if (p->num_q_heads <= 0 || p->num_kv_heads <= 0)
    return Fail(SAGE_ERR_INVALID_ARGUMENT, "num_q_heads %d / num_kv_heads %d: must be > 0", p->num_q_heads, p->num_kv_heads);
  if (p->num_q_heads % p->num_kv_heads != 0)
    return Fail(SAGE_ERR_INVALID_ARGUMENT, "num_q_heads %d: not a multiple of num_kv_heads %d", p->num_q_heads, p->num_kv_heads);
  if (p->num_q_heads > 32767)  // the grid's y axis holds KV heads x row passes (<= 2 x num_q_heads)
    return Fail(SAGE_ERR_UNSUPPORTED, "num_q_heads %d: at most 32767", p->num_q_heads);
  if (p->head_dim != 64 && p->head_dim != 128)
    return Fail(SAGE_ERR_UNSUPPORTED, "head_dim %d unsupported (64, 128)", p->head_dim);
  if (p->storage == SAGE_KV_INT4K_FP8V && p->head_dim != 128)
    return Fail(SAGE_ERR_UNSUPPORTED, "head_dim %d unsupported with storage INT4K_FP8V (128 only)", p->head_dim);
  if (p->batch == 0) return SAGE_OK;
  if (p->max_seqlen_q < 1 || p->max_seqlen_q > SAGE_PAGED_MAX_QUERY_ROWS)
    return Fail(SAGE_ERR_INVALID_ARGUMENT, "max_seqlen_q: %d not in [1, %d]", p->max_seqlen_q, SAGE_PAGED_MAX_QUERY_ROWS);
  if (p->max_seqlen_k < p->max_seqlen_q)
    return Fail(SAGE_ERR_INVALID_ARGUMENT, "max_seqlen_k: %d < max_seqlen_q %d (every sequence needs n_q <= its length)",
                p->max_seqlen_k, p->max_seqlen_q);
  if (p->total_q < p->batch || p->total_q > static_cast<int64_t>(p->batch) * p->max_seqlen_q)
    return Fail(SAGE_ERR_INVALID_ARGUMENT, "total_q: %lld not in [batch %d, batch x max_seqlen_q %lld]",
                static_cast<long long>(p->total_q), p->batch, static_cast<long long>(p->batch) * p->max_seqlen_q);
  if (p->page_tokens <= 0 || p->page_tokens % 16 != 0)
    return Fail(SAGE_ERR_INVALID_ARGUMENT, "page_tokens: %d must be a positive multiple of 16", p->page_tokens);
  const uint64_t layout_bytes = PartsOf(p->storage, p->page_tokens, p->num_kv_heads, p->head_dim).bytes;
  if (p->page_bytes < layout_bytes || p->page_bytes % 16 != 0)
    return Fail(SAGE_ERR_INVALID_ARGUMENT, "page_bytes: %llu must be >= the layout's %llu bytes and a multiple of 16",
                static_cast<unsigned long long>(p->page_bytes), static_cast<unsigned long long>(layout_bytes));
  if (!(p->softmax_scale > 0.f) || !std::isfinite(p->softmax_scale))
    return Fail(SAGE_ERR_INVALID_ARGUMENT, "softmax_scale: %g must be finite and > 0", static_cast<double>(p->softmax_scale));
  return SAGE_OK;
}

sage_status_t CheckPointer(const void* ptr, const char* name, size_t align) {
  if (ptr == nullptr) return Fail(SAGE_ERR_INVALID_ARGUMENT, "%s: null", name);
  if (reinterpret_cast<uintptr_t>(ptr) % align != 0)
    return Fail(SAGE_ERR_INVALID_ARGUMENT, "%s: not %zu-byte aligned", name, align);
  return SAGE_OK;
}

sage_status_t PagedDecode(const sage_paged_decode_params_t* p, cudaStream_t stream) {
  SAGE_RETURN_IF_ERROR(ValidateShape(p));
  if (stream == nullptr)
    return Fail(SAGE_ERR_INVALID_ARGUMENT, "stream: null (the legacy default stream is not used; pass a created stream)");
  if (p->batch == 0) return SAGE_OK;
  SAGE_RETURN_IF_ERROR(CheckPointer(p->q, "q", kVectorAlign));
  SAGE_RETURN_IF_ERROR(CheckPointer(p->o, "o", kVectorAlign));
  SAGE_RETURN_IF_ERROR(CheckPointer(p->pages, "pages", kVectorAlign));
  SAGE_RETURN_IF_ERROR(CheckPointer(p->page_table, "page_table", 4));
  SAGE_RETURN_IF_ERROR(CheckPointer(p->cu_pages, "cu_pages", 4));
  SAGE_RETURN_IF_ERROR(CheckPointer(p->cu_seqlens_q, "cu_seqlens_q", 4));
  SAGE_RETURN_IF_ERROR(CheckPointer(p->seqlens_k, "seqlens_k", 4));
  if (p->lse != nullptr) SAGE_RETURN_IF_ERROR(CheckPointer(p->lse, "lse", 4));

  PagedDecodeParams kp;
  SAGE_RETURN_IF_ERROR(PlanPagedDecode(*p, &kp.plan));
  if (kp.plan.workspace_bytes > 0) {
    SAGE_RETURN_IF_ERROR(CheckPointer(p->workspace, "workspace", kWorkspaceBaseAlign));
    if (p->workspace_bytes < kp.plan.workspace_bytes)
      return Fail(SAGE_ERR_INVALID_ARGUMENT, "workspace_bytes: %zu < %zu needed (sage_paged_decode_workspace_size)",
                  p->workspace_bytes, kp.plan.workspace_bytes);
    kp.partial_o = static_cast<float*>(p->workspace);
    const size_t o_bytes = kp.plan.workspace_bytes -
                           static_cast<size_t>(kp.plan.splits) * static_cast<size_t>(p->total_q) * p->num_q_heads * sizeof(float);
    kp.partial_lse = reinterpret_cast<float*>(static_cast<unsigned char*>(p->workspace) + o_bytes);
  }
  kp.codes = CodesOf(p->storage);
  kp.io = p->dtype == SAGE_DTYPE_F16 ? IoType::kF16 : IoType::kBF16;
  kp.q = p->q;
  kp.o = p->o;
  kp.lse = p->lse;
  kp.pages = static_cast<const unsigned char*>(p->pages);
  kp.page_bytes = p->page_bytes;
  kp.page_tokens = p->page_tokens;
  kp.page_div = FastDivmod::For(p->page_tokens);
  kp.page_table = p->page_table;
  kp.cu_pages = p->cu_pages;
  kp.cu_seqlens_q = p->cu_seqlens_q;
  kp.seqlens_k = p->seqlens_k;
  kp.batch = p->batch;
  kp.total_q = p->total_q;
  kp.num_q_heads = p->num_q_heads;
  kp.num_kv_heads = p->num_kv_heads;
  kp.head_dim = p->head_dim;
  kp.scale_log2 = static_cast<float>(p->softmax_scale * kLog2e);
  kp.rows = RowsOf(p->layout, p->page_tokens, p->num_kv_heads);
  const PageParts parts = PartsOf(p->storage, p->page_tokens, p->num_kv_heads, p->head_dim);
  kp.v_codes_offset = parts.v_codes;
  kp.k_scales_offset = parts.k_scales;
  kp.v_scales_offset = parts.v_scales;
  if (kp.plan.tma) SAGE_RETURN_IF_ERROR(EncodeCodesMap(kp));
  return LaunchPagedDecode(kp, stream);
}

}  // namespace
}  // namespace sage::cuda

extern "C" sage_status_t sage_paged_decode_workspace_size(const sage_paged_decode_params_t* params, size_t* bytes) {
  sage::cuda::ClearLastError();
  if (bytes == nullptr) return sage::cuda::Fail(SAGE_ERR_INVALID_ARGUMENT, "bytes: null");
  *bytes = 0;
  SAGE_RETURN_IF_ERROR(sage::cuda::ValidateShape(params));
  if (params->batch == 0) return SAGE_OK;
  sage::cuda::PagedDecodePlan plan;
  SAGE_RETURN_IF_ERROR(sage::cuda::PlanPagedDecode(*params, &plan));
  *bytes = plan.workspace_bytes;
  return SAGE_OK;
}

extern "C" sage_status_t sage_paged_decode(const sage_paged_decode_params_t* params, sage_stream_t stream) {
  sage::cuda::ClearLastError();
  return sage::cuda::PagedDecode(params, reinterpret_cast<cudaStream_t>(stream));
}
