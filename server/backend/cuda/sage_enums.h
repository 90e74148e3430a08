// The kernel library's C enums for the server's types: one table each, used wherever the CUDA
// backend fills a sageattn.h params struct.
#pragma once

#include "kernels/include/sageattn.h"
#include "kernels/reference/dtype.h"
#include "kernels/reference/kv_pages.h"

namespace sage::server {

// 16-bit I/O types only (the backend validates dtypes before it gets here).
inline sage_dtype_t SageDtype(DType dtype) { return dtype == DType::kBF16 ? SAGE_DTYPE_BF16 : SAGE_DTYPE_F16; }

inline sage_kv_storage_t SageKvStorage(KvStorage storage) {
  switch (storage) {
    case KvStorage::k16Bit: return SAGE_KV_16BIT;
    case KvStorage::kInt8KFp8V: return SAGE_KV_INT8K_FP8V;
    case KvStorage::kInt4KFp8V: return SAGE_KV_INT4K_FP8V;
  }
  return SAGE_KV_16BIT;
}

inline sage_kv_layout_t SageKvLayout(KvRowOrder rows) {
  return rows == KvRowOrder::kHeadMajor ? SAGE_KV_HEAD_MAJOR : SAGE_KV_TOKEN_MAJOR;
}

}  // namespace sage::server
