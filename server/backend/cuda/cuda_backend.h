// The CUDA backend: runs requests on the GPU kernels of kernels/cuda through their C API.
// Built only when CUDA is available (target sage_cuda_backend, define SAGESERVE_HAVE_CUDA=1).
#pragma once

#include <memory>

#include "absl/status/statusor.h"
#include "server/backend/backend.h"

namespace sage::server {

struct CudaBackendOptions {
  int device = 0;  // CUDA device ordinal (after CUDA_VISIBLE_DEVICES).
};

// Number of CUDA devices visible to this process; 0 when there is no GPU or no driver (never an error
// for "no GPU", so --backend=auto can fall back to the CPU engine).
int VisibleCudaDevices();

absl::StatusOr<std::unique_ptr<AttentionBackend>> CreateCudaBackend(const CudaBackendOptions& options);

}  // namespace sage::server
