#include "server/backend/backend_factory.h"

#include <string>

#include "absl/strings/str_cat.h"
#include "server/backend/cpu_backend.h"
#if SAGESERVE_HAVE_CUDA
#include "server/backend/cuda/cuda_backend.h"
#endif

namespace sage::server {

absl::StatusOr<BackendChoice> ParseBackendChoice(std::string_view name) {
  if (name == "auto") return BackendChoice::kAuto;
  if (name == "cpu") return BackendChoice::kCpu;
  if (name == "cuda") return BackendChoice::kCuda;
  return absl::InvalidArgumentError(
      absl::StrCat("backend: unknown value '", std::string(name), "' (expected auto, cpu or cuda)"));
}

absl::StatusOr<CudaSync> ParseCudaSync(std::string_view name) {
  for (CudaSync s : {CudaSync::kAuto, CudaSync::kSpin, CudaSync::kYield, CudaSync::kBlock}) {
    if (name == CudaSyncName(s)) return s;
  }
  return absl::InvalidArgumentError(
      absl::StrCat("cuda_sync: unknown value '", std::string(name), "' (expected auto, spin, yield or block)"));
}

std::string_view CudaSyncName(CudaSync sync) {
  switch (sync) {
    case CudaSync::kAuto: return "auto";
    case CudaSync::kSpin: return "spin";
    case CudaSync::kYield: return "yield";
    case CudaSync::kBlock: return "block";
  }
  return "unknown";
}

std::string_view BackendKindName(BackendKind kind) {
  switch (kind) {
    case BackendKind::kCpu: return "cpu";
    case BackendKind::kCuda: return "cuda";
  }
  return "unknown";
}

bool BuiltWithCuda() {
#if SAGESERVE_HAVE_CUDA
  return true;
#else
  return false;
#endif
}

namespace {

int VisibleGpus() {
#if SAGESERVE_HAVE_CUDA
  return VisibleCudaDevices();
#else
  return 0;
#endif
}

absl::StatusOr<std::unique_ptr<AttentionBackend>> CreateCuda(const BackendOptions& options) {
#if SAGESERVE_HAVE_CUDA
  CudaBackendOptions cuda;
  cuda.devices = options.cuda_devices;
  if (options.cuda_device >= 0) cuda.devices = {options.cuda_device};
  cuda.streams_per_device = options.cuda_streams;
  cuda.light_streams_per_device = options.cuda_light_streams;
  cuda.pool.light_max_batch_elements = options.cuda_light_max_batch_elements;
  cuda.pool.max_batch_elements = options.cuda_max_batch_elements;
  cuda.pool.max_batch_sequences = options.cuda_max_batch_sequences;
  cuda.pool.workspace_bytes = options.cuda_workspace_bytes;
  cuda.request_pinned_bytes = options.cuda_request_pinned_bytes;
  cuda.sync = options.cuda_sync;
  return CreateCudaBackend(cuda);
#else
  (void)options;
  return absl::FailedPreconditionError(
      "backend=cuda: this sageserve was built without CUDA (configure with nvcc available and "
      "SAGESERVE_ENABLE_CUDA=ON), use --backend=cpu or --backend=auto");
#endif
}

}  // namespace

absl::StatusOr<std::unique_ptr<AttentionBackend>> CreateBackend(const BackendOptions& options) {
  CpuBackendOptions cpu;
  cpu.num_threads = options.cpu_threads;
  switch (options.choice) {
    case BackendChoice::kCpu:
      return CreateCpuBackend(cpu);
    case BackendChoice::kCuda: {
      if (BuiltWithCuda() && VisibleGpus() == 0) {
        return absl::FailedPreconditionError(
            "backend=cuda: no CUDA device is visible (check the driver and CUDA_VISIBLE_DEVICES)");
      }
      return CreateCuda(options);
    }
    case BackendChoice::kAuto:
      if (BuiltWithCuda() && VisibleGpus() > 0) return CreateCuda(options);
      return CreateCpuBackend(cpu);
  }
  return absl::InvalidArgumentError("backend: invalid choice");
}

}  // namespace sage::server
