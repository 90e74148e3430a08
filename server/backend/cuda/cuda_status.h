// absl::Status from CUDA runtime errors and sageattn status codes, for the CUDA backend's files.
#pragma once

#include <cuda_runtime.h>

#include "absl/status/status.h"
#include "kernels/include/sageattn.h"

namespace sage::server {

// cudaErrorMemoryAllocation -> RESOURCE_EXHAUSTED, anything else -> INTERNAL; message names `what`.
absl::Status FromCuda(cudaError_t err, const char* what);
// SAGE_ERR_INVALID_ARGUMENT -> INVALID_ARGUMENT, UNSUPPORTED -> UNIMPLEMENTED, OUT_OF_MEMORY ->
// RESOURCE_EXHAUSTED, CUDA/INTERNAL -> INTERNAL; the message carries sage_last_error().
absl::Status FromSage(sage_status_t s, const char* what);

}  // namespace sage::server

#define SAGE_CUDA_RETURN_IF_ERROR(expr)    \
  do {                                     \
    absl::Status sage_st_ = (expr);        \
    if (!sage_st_.ok()) return sage_st_;   \
  } while (0)
