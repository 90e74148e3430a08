// The CPU backend: the reference engine (kernels/reference/cpu_engine.h) behind AttentionBackend.
#pragma once

#include <memory>

#include "absl/status/statusor.h"
#include "server/backend/backend.h"

namespace sage::server {

struct CpuBackendOptions {
  int num_threads = 0;  // Engine threads per request; 0 = the engine's default.
};

absl::StatusOr<std::unique_ptr<AttentionBackend>> CreateCpuBackend(const CpuBackendOptions& options);

}  // namespace sage::server
