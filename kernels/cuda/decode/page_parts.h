// Where a KV page's four parts start (kernels/reference/kv_pages.h's layout, for the C API's
// storages): the one computation the decode, gather and quantize entry points share.
#pragma once

#include <cuda_runtime.h>  // __host__ __device__

#include <cstdint>

#include "kernels/cuda/decode/int4_nibbles.cuh"
#include "sageattn.h"

namespace sage::cuda {

// [K codes][V codes][K scales][V scales] of page_tokens x heads token-heads; K codes at 0.
struct PageParts {
  uint64_t v_codes = 0, k_scales = 0, v_scales = 0, bytes = 0;
};

inline PageParts PartsOf(sage_kv_storage_t storage, int page_tokens, int heads, int head_dim) {
  const uint64_t slots = static_cast<uint64_t>(page_tokens) * static_cast<uint64_t>(heads);
  const uint64_t d = static_cast<uint64_t>(head_dim);
  const bool quantized = storage != SAGE_KV_16BIT;
  const uint64_t k_row = !quantized ? 2 * d : storage == SAGE_KV_INT4K_FP8V ? d / 2 : d;
  const uint64_t v_row = quantized ? d : 2 * d;
  const uint64_t k_scales_per = !quantized ? 0 : storage == SAGE_KV_INT4K_FP8V ? d / kInt4GroupChannels : 1;
  PageParts parts;
  parts.v_codes = slots * k_row;
  parts.k_scales = parts.v_codes + slots * v_row;
  parts.v_scales = parts.k_scales + slots * k_scales_per * sizeof(float);
  parts.bytes = parts.v_scales + (quantized ? slots * sizeof(float) : 0);
  return parts;
}

// Row of (token t of a page, head h) inside each part: t * token + h * head (sage_kv_layout_t).
struct RowStrides {
  int token = 0, head = 0;
  __host__ __device__ uint64_t Of(int t, int h) const {
    return static_cast<uint64_t>(t) * static_cast<uint64_t>(token) + static_cast<uint64_t>(h) * static_cast<uint64_t>(head);
  }
};

inline RowStrides RowsOf(sage_kv_layout_t layout, int page_tokens, int heads) {
  return layout == SAGE_KV_HEAD_MAJOR ? RowStrides{1, page_tokens} : RowStrides{heads, 1};
}

}  // namespace sage::cuda
