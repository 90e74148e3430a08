// Error reporting inside libsageattn: every failure becomes a sage_status_t plus a thread-local
// message (sage_last_error()). Never exit(), assert or throw.
#pragma once

#include <cuda_runtime.h>

#include "sageattn.h"

namespace sage::cuda {

// Records `status` with a printf-style message for sage_last_error() and returns it.
sage_status_t Fail(sage_status_t status, const char* fmt, ...) __attribute__((format(printf, 2, 3)));
// Clears the thread's last error message (a successful call leaves "").
void ClearLastError();
// Maps a CUDA error to SAGE_ERR_OUT_OF_MEMORY / SAGE_ERR_CUDA with "<what>: <cuda error text>".
sage_status_t FailCuda(cudaError_t err, const char* what);

}  // namespace sage::cuda

#define SAGE_RETURN_IF_ERROR(expr)                   \
  do {                                               \
    const sage_status_t sage_status_ = (expr);       \
    if (sage_status_ != SAGE_OK) return sage_status_; \
  } while (0)

// A CUDA runtime call; on failure returns SAGE_ERR_CUDA/OUT_OF_MEMORY naming the call.
#define SAGE_CUDA_TRY(expr)                                                    \
  do {                                                                         \
    const cudaError_t sage_cuda_err_ = (expr);                                 \
    if (sage_cuda_err_ != cudaSuccess) return ::sage::cuda::FailCuda(sage_cuda_err_, #expr); \
  } while (0)

// After a <<<>>> launch: reports configuration/launch errors under the kernel's name.
#define SAGE_CHECK_LAUNCH(name)                                                \
  do {                                                                         \
    const cudaError_t sage_cuda_err_ = cudaGetLastError();                     \
    if (sage_cuda_err_ != cudaSuccess) return ::sage::cuda::FailCuda(sage_cuda_err_, "launch " name); \
  } while (0)
