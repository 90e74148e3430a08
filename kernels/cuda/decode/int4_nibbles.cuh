// INT4 K pages' nibble order (kernels/reference/kv_pages.h, Int4NibbleChannel): the nibble that
// holds channel c of a token-head's D/2 code bytes. K-step ks = 4·set + i of the tensor-core decode
// covers channel groups 2·set and 2·set + 1; word ks / 2 of lane `lane` holds nibble pairs
// (j, j + 4) as its MMA B fragments (paged_decode_mma.cuh unpacks them in that order).
#pragma once

#include <cuda_runtime.h>

namespace sage::cuda {

inline constexpr int kInt4GroupChannels = 32;  // channels per INT4 K scale

__host__ __device__ __forceinline__ int Int4NibbleOf(int c, int head_dim) {
  const int group = c / kInt4GroupChannels, rem = c % kInt4GroupChannels;
  const int i = rem / 8, lane = (rem % 8) / 2, e = rem % 2;
  const int ks = 4 * (group / 2) + i, operand = group % 2;
  return (head_dim / 4) * lane + 8 * (ks / 2) + 4 * e + 2 * (ks % 2) + operand;
}

}  // namespace sage::cuda
