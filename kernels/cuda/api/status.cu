// Thread-local last-error message of the C API.
#include <cstdarg>
#include <cstdio>

#include "kernels/cuda/common/status.cuh"

namespace sage::cuda {
namespace {
thread_local char g_last_error[512] = "";
}  // namespace

sage_status_t Fail(sage_status_t status, const char* fmt, ...) {
  va_list args;
  va_start(args, fmt);
  std::vsnprintf(g_last_error, sizeof(g_last_error), fmt, args);
  va_end(args);
  return status;
}

void ClearLastError() { g_last_error[0] = '\0'; }

sage_status_t FailCuda(cudaError_t err, const char* what) {
  (void)cudaGetLastError();  // clear a sticky-free error so the next call starts clean
  return Fail(err == cudaErrorMemoryAllocation ? SAGE_ERR_OUT_OF_MEMORY : SAGE_ERR_CUDA, "%s: %s (%s)", what,
              cudaGetErrorString(err), cudaGetErrorName(err));
}

const char* LastErrorText() { return g_last_error; }

}  // namespace sage::cuda

extern "C" const char* sage_last_error(void) { return sage::cuda::LastErrorText(); }

extern "C" const char* sage_status_name(sage_status_t status) {
  switch (status) {
    case SAGE_OK: return "SAGE_OK";
    case SAGE_ERR_INVALID_ARGUMENT: return "SAGE_ERR_INVALID_ARGUMENT";
    case SAGE_ERR_UNSUPPORTED: return "SAGE_ERR_UNSUPPORTED";
    case SAGE_ERR_OUT_OF_MEMORY: return "SAGE_ERR_OUT_OF_MEMORY";
    case SAGE_ERR_CUDA: return "SAGE_ERR_CUDA";
    case SAGE_ERR_INTERNAL: return "SAGE_ERR_INTERNAL";
  }
  return "SAGE_ERR_UNKNOWN";
}
