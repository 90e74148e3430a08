/* sageattn: C API of the sageserve CUDA attention kernels (libsageattn.so).
 * Plain C so the server, the tests and Python (ctypes) use it alike. Pointers are device pointers
 * unless a field says otherwise; every call takes an explicit stream and never touches the default
 * stream. Errors come back as status codes with a thread-local message; nothing exits or throws. */
#ifndef SAGEATTN_H_
#define SAGEATTN_H_

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct CUstream_st* sage_stream_t; /* == cudaStream_t */

typedef enum {
  SAGE_OK = 0,
  SAGE_ERR_INVALID_ARGUMENT = 1, /* bad shape, pointer, alignment, workspace too small */
  SAGE_ERR_UNSUPPORTED = 2,      /* valid request this build/GPU cannot run (head dim, arch) */
  SAGE_ERR_OUT_OF_MEMORY = 3,
  SAGE_ERR_CUDA = 4,             /* a CUDA runtime/driver error; see sage_last_error() */
  SAGE_ERR_INTERNAL = 5
} sage_status_t;

typedef enum { SAGE_DTYPE_F16 = 1, SAGE_DTYPE_BF16 = 2 } sage_dtype_t;

/* Same values and meanings as sage::Recipe (kernels/reference/recipe.h). */
typedef enum {
  SAGE_RECIPE_INT4_QK_FP8_PV = 0,
  SAGE_RECIPE_INT8_QK_FP8_PV = 1,
  SAGE_RECIPE_INT8_QK_FP16_PV = 2,
  SAGE_RECIPE_UNQUANTIZED = 3
} sage_recipe_t;

typedef enum { SAGE_GRAN_PER_BLOCK = 0, SAGE_GRAN_PER_WARP = 1, SAGE_GRAN_PER_THREAD = 2 } sage_granularity_t;
typedef enum { SAGE_SMOOTH_NONE = 0, SAGE_SMOOTH_K = 1, SAGE_SMOOTH_QK = 2 } sage_qk_smoothing_t;
typedef enum { SAGE_VSMOOTH_NONE = 0, SAGE_VSMOOTH_MEAN = 1 } sage_v_smoothing_t;
typedef enum { SAGE_ACCUM_TWO_LEVEL = 0, SAGE_ACCUM_FP22_ONLY = 1 } sage_accumulation_t;
typedef enum { SAGE_MASK_NONE = 0, SAGE_MASK_CAUSAL = 1 } sage_mask_t; /* causal: bottom-right aligned */

typedef struct {
  sage_recipe_t recipe;
  sage_granularity_t granularity;
  sage_qk_smoothing_t qk_smoothing;
  sage_v_smoothing_t v_smoothing;
  sage_accumulation_t accumulation;
} sage_recipe_config_t;

typedef struct {
  sage_recipe_config_t config;
  sage_dtype_t dtype;           /* of q, k, v and o */
  const void* q;                /* [total_q, num_q_heads, head_dim] */
  const void* k;                /* [total_k, num_kv_heads, head_dim] */
  const void* v;                /* [total_k, num_kv_heads, head_dim] */
  void* o;                      /* [total_q, num_q_heads, head_dim] */
  float* lse;                   /* [total_q, num_q_heads] natural log, or NULL */
  const int32_t* cu_seqlens_q;  /* device, batch + 1 */
  const int32_t* cu_seqlens_k;  /* device, batch + 1 */
  int32_t batch;
  int32_t max_seqlen_q;         /* host-side maxima over the batch (grid sizing) */
  int32_t max_seqlen_k;
  int64_t total_q;
  int64_t total_k;
  int32_t num_q_heads;
  int32_t num_kv_heads;
  int32_t head_dim;
  sage_mask_t mask;
  float softmax_scale;          /* > 0 */
  void* workspace;              /* device scratch of at least sage_attn_workspace_size() bytes */
  size_t workspace_bytes;
  /* Optional host copies of cu_seqlens_q/k (batch + 1 each; both or neither). When set, the call
   * writes them into cu_seqlens_q/k itself (which must then be writable device memory), stream-
   * ordered before any kernel reads them, so the caller uploads nothing. With a quantized recipe and
   * batch <= SAGE_INLINE_CU_SEQLENS_MAX they ride in the first kernel's parameters and are read when
   * the call is made; otherwise they are copied by cudaMemcpyAsync, and the arrays must stay as they
   * are until the stream has run the copy. A small launch saves a copy and its driver call. */
  const int32_t* host_cu_seqlens_q;
  const int32_t* host_cu_seqlens_k;
} sage_attn_params_t;

#define SAGE_INLINE_CU_SEQLENS_MAX 64

/* Bytes of device workspace the call needs for these params (quantized Q/K/V, scales, means). */
sage_status_t sage_attn_workspace_size(const sage_attn_params_t* params, size_t* bytes);

/* Quantize (per the recipe) and attend, all on `stream`. Asynchronous; launch errors are reported. */
sage_status_t sage_attn_forward(const sage_attn_params_t* params, sage_stream_t stream);

/* The two halves of sage_attn_forward (same params, same validation), for timing the attention
 * kernel alone and for callers that reuse a quantized workspace: sage_attn_quantize fills
 * params->workspace from q/k/v; sage_attn_attend reads a workspace that sage_attn_quantize filled
 * with the same params and writes o/lse. For UNQUANTIZED, quantize does nothing. */
sage_status_t sage_attn_quantize(const sage_attn_params_t* params, sage_stream_t stream);
sage_status_t sage_attn_attend(const sage_attn_params_t* params, sage_stream_t stream);

/* ---- Paged decode: attention of a few new query rows over a session's KV pages, read in place ----
 * The pages are those of the server's KV page pool (docs/NUMERICS.md "Session KV storage",
 * kernels/reference/kv_pages.h): page p starts at pages + p * page_bytes and holds page_tokens
 * tokens of num_kv_heads heads as
 *   [K codes: T x H x D][V codes: T x H x D][K scales: T x H fp32][V scales: T x H fp32]
 * 16BIT: codes are the dtype's 2-byte values, no scales. INT8K_FP8V: K codes int8 (K minus the
 * session's mean, which leaves softmax unchanged), V codes FP8 E4M3, value = code x scale of its
 * token and head. INT4K_FP8V (head_dim 128): K codes are nibbles (code + 8, two per byte, D/2 bytes
 * per token-head in kv_pages.h's nibble order) with one fp32 scale per 32 channels, so the K parts
 * are [K codes: T x H x D/2][..][K scales: T x H x D/32 fp32]; V as INT8K_FP8V.
 * Sequence b has seqlens_k[b] cached tokens (its pages page_table[cu_pages[b] ..]) and
 * cu_seqlens_q[b+1] - cu_seqlens_q[b] query rows (1..SAGE_PAGED_MAX_QUERY_ROWS, at most its
 * length), causal, bottom-right aligned: row i of n sees tokens [0, len - n + i]. The math is fp32
 * over the stored values (K = code x scale exactly, not rounded to 16 bits); O in dtype, LSE natural
 * log of the scaled scores. The query heads of one KV head are computed together, so each page is
 * read once per step; long sequences are split across CTAs and merged by LSE. */
typedef enum { SAGE_KV_16BIT = 0, SAGE_KV_INT8K_FP8V = 1, SAGE_KV_INT4K_FP8V = 2 } sage_kv_storage_t;
/* Order of a page's (token, head) rows inside each of its four parts: TOKEN_MAJOR is row
 * t * num_kv_heads + h (the layout above), HEAD_MAJOR row h * page_tokens + t, so one head's tokens
 * of a page are contiguous. */
typedef enum { SAGE_KV_TOKEN_MAJOR = 0, SAGE_KV_HEAD_MAJOR = 1 } sage_kv_layout_t;

#define SAGE_PAGED_MAX_QUERY_ROWS 16

typedef struct {
  sage_kv_storage_t storage;
  sage_dtype_t dtype;           /* of q, o and 16-bit pages */
  const void* q;                /* [total_q, num_q_heads, head_dim] */
  void* o;                      /* [total_q, num_q_heads, head_dim] */
  float* lse;                   /* [total_q, num_q_heads], or NULL */
  const void* pages;            /* the pool's base */
  uint64_t page_bytes;          /* stride between pages (>= the layout's bytes, multiple of 16) */
  int32_t page_tokens;          /* tokens per page, a multiple of 16 */
  const int32_t* page_table;    /* device: every sequence's page ids, concatenated */
  const int32_t* cu_pages;      /* device, batch + 1 */
  const int32_t* cu_seqlens_q;  /* device, batch + 1 */
  const int32_t* seqlens_k;     /* device, batch */
  int32_t batch;
  int32_t max_seqlen_q;         /* host-side maxima over the batch (grid sizing) */
  int32_t max_seqlen_k;
  int64_t total_q;
  int32_t num_q_heads;
  int32_t num_kv_heads;
  int32_t head_dim;             /* 64 or 128 */
  float softmax_scale;          /* > 0 */
  void* workspace;              /* split-KV partials: sage_paged_decode_workspace_size() bytes */
  size_t workspace_bytes;
  sage_kv_layout_t layout;      /* row order inside the pages (0, TOKEN_MAJOR, when zeroed) */
} sage_paged_decode_params_t;

sage_status_t sage_paged_decode_workspace_size(const sage_paged_decode_params_t* params, size_t* bytes);
/* Asynchronous on `stream`; validation and launch errors are reported. */
sage_status_t sage_paged_decode(const sage_paged_decode_params_t* params, sage_stream_t stream);

/* ---- Paged gather: a batch's cached tokens out of KV pages into contiguous 16-bit K and V ----
 * For prefill-shaped session steps and quantized recipes: sequence b's seqlens (cu_seqlens_k[b+1] -
 * cu_seqlens_k[b] tokens, pages page_table[cu_pages[b] ..]) are written to k_out/v_out rows
 * [cu_seqlens_k[b], cu_seqlens_k[b+1]) as [total_k, num_kv_heads, head_dim] values of `dtype`:
 * 16BIT pages copied, INT8K_FP8V and INT4K_FP8V pages decoded to code x scale (INT4: the channel's
 * 32-channel group scale) in fp32 and rounded to nearest even, exactly as the CPU scheme's
 * DecodeKvTokens (kernels/reference/kv_pages.h) gives them. INT4K_FP8V: head_dim a multiple of 64. */
typedef struct {
  sage_kv_storage_t storage;
  sage_dtype_t dtype;
  const void* pages;
  uint64_t page_bytes;
  int32_t page_tokens;          /* a multiple of 16 */
  const int32_t* page_table;    /* device */
  const int32_t* cu_pages;      /* device, batch + 1 */
  const int32_t* cu_seqlens_k;  /* device, batch + 1 */
  int32_t batch;
  int32_t max_seqlen_k;         /* host-side maximum (grid sizing) */
  int64_t total_k;
  int32_t num_kv_heads;
  int32_t head_dim;             /* a multiple of 8, at most 256 */
  void* k_out;                  /* [total_k, num_kv_heads, head_dim], 16-byte aligned */
  void* v_out;
  sage_kv_layout_t layout;      /* row order inside the pages (0, TOKEN_MAJOR, when zeroed) */
} sage_paged_gather_params_t;

sage_status_t sage_paged_gather(const sage_paged_gather_params_t* params, sage_stream_t stream);

/* ---- KV quantize: a step's new tokens encoded into their pages on the GPU ----
 * Token i (of `count`) goes to slot slots[i] of the page at byte offset page_offsets[i] of `pages`.
 * Its K and V come in one of two forms:
 *  - centred: k_centered ([count, num_kv_heads, head_dim] fp32: the token's K minus the session's K
 *    mean, as the CPU scheme's CenterKTokens gives it) and v ([count, num_kv_heads, head_dim] 16-bit
 *    values of `dtype`);
 *  - rows (k_centered and v null): k_rows[i] and v_rows[i] point at the token's K and V
 *    ([num_kv_heads, head_dim] 16-bit values of `dtype`) and k_means[i] at its session's K mean
 *    ([num_kv_heads * head_dim] fp32); K is centred here as CenterKTokens does it (one IEEE fp32
 *    subtraction), so the bytes are the same. The rows may be anywhere the GPU reads, e.g. a
 *    client's CUDA IPC buffer, so new tokens on the GPU never visit the host.
 * Writes the codes and scales QuantizeKvTokens (kernels/reference/kv_pages.h) writes for `storage`, byte for
 * byte, except that a NaN scale may differ in payload and a NaN V code in sign (x86 makes inf/inf a
 * negative NaN, the GPU a positive one). 16BIT pages take the rows as they are (K not centred). The
 * inputs and the tables may lie in pinned host memory
 * (read over the bus) or device memory. Asynchronous on `stream`. */
typedef struct {
  sage_dtype_t dtype;
  void* pages;                    /* the pool's base */
  int32_t page_tokens;
  int32_t num_kv_heads;
  int32_t head_dim;               /* at most 256; quantized: a multiple of 32 (INT4K_FP8V: of 64) */
  int32_t count;
  const uint64_t* page_offsets;   /* per token */
  const int32_t* slots;           /* per token, < page_tokens */
  const float* k_centered;
  const void* v;
  const void* const* k_rows;      /* the rows form: per token */
  const void* const* v_rows;
  const float* const* k_means;
  sage_kv_storage_t storage;      /* 16BIT (rows form only: copied, k_means unused), INT8K_FP8V or INT4K_FP8V */
  sage_kv_layout_t layout;        /* row order inside the pages (0, TOKEN_MAJOR, when zeroed) */
} sage_kv_quantize_params_t;

sage_status_t sage_kv_quantize(const sage_kv_quantize_params_t* params, sage_stream_t stream);

/* One byte range to copy: both ends device-accessible (device, IPC-mapped or pinned host memory). */
typedef struct {
  const void* src;
  void* dst;
  uint64_t bytes;
} sage_copy_segment_t;

/* Copies many byte ranges with one kernel launch on `stream`: a merged batch's tensors gathered
 * from (and its outputs scattered back to) the callers' device buffers. One copy call per range
 * costs the GPU a few microseconds each, which dominates when tens of small tensors move.
 * `segments` holds `count` entries in device-accessible memory and is read by the kernel;
 * `max_bytes` is at least the largest entry (it sizes the grid). Ranges must not overlap.
 * Asynchronous; count 0 does nothing. */
sage_status_t sage_copy_segments(const sage_copy_segment_t* segments, int count, uint64_t max_bytes,
                                 sage_stream_t stream);

/* Detail of the last error on this thread ("q: head_dim 80 unsupported (64, 128)", CUDA error text). */
const char* sage_last_error(void);
const char* sage_status_name(sage_status_t status);

#ifdef __cplusplus
}
#endif
#endif /* SAGEATTN_H_ */
