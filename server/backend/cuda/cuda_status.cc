#include "server/backend/cuda/cuda_status.h"

#include <string>

#include "absl/strings/str_cat.h"

namespace sage::server {

absl::Status FromCuda(cudaError_t err, const char* what) {
  if (err == cudaSuccess) return absl::OkStatus();
  const std::string msg = absl::StrCat("cuda backend: ", what, ": ", cudaGetErrorString(err));
  if (err == cudaErrorMemoryAllocation) return absl::ResourceExhaustedError(msg);
  return absl::InternalError(msg);
}

absl::Status FromSage(sage_status_t s, const char* what) {
  if (s == SAGE_OK) return absl::OkStatus();
  const std::string msg = absl::StrCat("cuda backend: ", what, ": ", sage_status_name(s), ": ", sage_last_error());
  switch (s) {
    case SAGE_ERR_INVALID_ARGUMENT: return absl::InvalidArgumentError(msg);
    case SAGE_ERR_UNSUPPORTED: return absl::UnimplementedError(msg);
    case SAGE_ERR_OUT_OF_MEMORY: return absl::ResourceExhaustedError(msg);
    default: return absl::InternalError(msg);
  }
}

}  // namespace sage::server
