// Picks and builds the engine behind the server from --backend=auto|cpu|cuda.
#pragma once

#include <cstdint>
#include <memory>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "server/backend/backend.h"

namespace sage::server {

enum class BackendChoice {
  kAuto,  // CUDA when built with it and a GPU is visible, else CPU.
  kCpu,
  kCuda,  // Fails at startup on a build or machine without CUDA.
};

struct BackendOptions {
  BackendChoice choice = BackendChoice::kAuto;
  int cpu_threads = 0;  // CPU engine threads per request; 0 = engine default.
  // CUDA runtime (issue 5): which GPUs, stream slots per GPU and the per-slot buffer pool.
  int cuda_device = -1;            // one ordinal, or -1 for cuda_devices (empty = every visible GPU)
  std::vector<int> cuda_devices;   // ordinals; empty = every visible GPU
  int cuda_streams = 4;            // full-size stream slots per GPU
  int cuda_light_streams = 8;      // light stream slots per GPU (small launches only; 0 = none)
  int64_t cuda_light_max_batch_elements = int64_t{4096} * 8 * 128;  // per tensor, in a light slot
  int64_t cuda_max_batch_elements = int64_t{65536} * 32 * 128;  // tokens × heads × head_dim per launch
  int cuda_max_batch_sequences = 4096;
  int64_t cuda_workspace_bytes = 0;  // 0 = auto
  int64_t cuda_request_pinned_bytes = int64_t{512} << 20;  // pinned memory requests are received into
  CudaSync cuda_sync = CudaSync::kAuto;
};

absl::StatusOr<BackendChoice> ParseBackendChoice(std::string_view name);
// "auto", "spin", "yield" or "block".
absl::StatusOr<CudaSync> ParseCudaSync(std::string_view name);
std::string_view CudaSyncName(CudaSync sync);
std::string_view BackendKindName(BackendKind kind);
// True when this binary was built with the CUDA backend.
bool BuiltWithCuda();

absl::StatusOr<std::unique_ptr<AttentionBackend>> CreateBackend(const BackendOptions& options);

}  // namespace sage::server
