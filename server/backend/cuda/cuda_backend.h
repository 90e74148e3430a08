// The CUDA backend: a multi-GPU runtime over the kernels' C API. One DeviceExecutor per GPU (all
// visible ones unless restricted), each with a fixed pool of non-default streams; every stream slot
// owns pinned host staging and device buffers (inputs, o, lse, kernel workspace) allocated at
// start, so the request path never calls cudaMalloc or cudaHostAlloc. Attend() (thread-safe, called
// from the batcher's workers) sends each batch to the least-loaded executor (device_selector.h).
// Built only when CUDA is available (target sage_cuda_backend, define SAGESERVE_HAVE_CUDA=1).
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "absl/status/statusor.h"
#include "server/backend/backend.h"

namespace sage::server {

// Sizes of the buffers every stream slot preallocates. A batch larger than these answers
// RESOURCE_EXHAUSTED (the message names the sizes and the option to raise). Defaults fit an H100:
// 64k tokens × 32 heads × 128 at fp16 is 512 MiB per tensor; per slot ~2 GiB pinned host and
// ~2.8 GiB device (q, k, v, o + workspace), 4 slots ~8 GiB pinned and ~11 GiB device per GPU.
struct CudaPoolOptions {
  // Elements (tokens × heads × head_dim) of q, and of k and of v, in one launch.
  int64_t max_batch_elements = int64_t{65536} * 32 * 128;
  // Sequences (varlen entries) in one launch.
  int max_batch_sequences = 4096;
  // Kernel workspace per slot; 0 = sized for max_batch_elements under every recipe's default
  // configuration with up to 32 heads (QK smoothing with very long sequences may need more).
  int64_t workspace_bytes = 0;
  // Light slots (CudaBackendOptions::light_streams_per_device) hold launches up to these sizes;
  // their workspace is sized for them automatically. Clamped to the full-size limits above.
  int64_t light_max_batch_elements = int64_t{4096} * 8 * 128;
  // Each sequence pads the kernels' workspace (up to a 128-row K block per head), so this, more
  // than the elements, sets a light slot's size.
  int light_max_batch_sequences = 64;
};

struct CudaBackendOptions {
  std::vector<int> devices;     // CUDA ordinals (after CUDA_VISIBLE_DEVICES); empty = every visible one
  int streams_per_device = 4;   // full-size stream slots per GPU executor
  // Extra slots per GPU with buffers for small launches only (CudaPoolOptions::light_*: ~32 MiB
  // pinned and ~132 MiB device each by default, most of it kernel workspace padded per sequence,
  // against ~2 GiB pinned and ~3.1 GiB device for a full-size slot). A launch that fits takes a
  // light slot first, so small requests rarely wait for a slot. 0: none.
  int light_streams_per_device = 8;
  CudaPoolOptions pool;
  // Pinned host memory that request payloads are received into and results sent from, shared by
  // every GPU (portable). A request that does not fit takes ordinary memory and is staged instead.
  int64_t request_pinned_bytes = int64_t{512} << 20;
  // How workers wait for their launches (the scheduling flag of each GPU's primary context).
  CudaSync sync = CudaSync::kAuto;
};

// Number of CUDA devices visible to this process; 0 when there is no GPU or no driver (never an error
// for "no GPU", so --backend=auto can fall back to the CPU engine).
int VisibleCudaDevices();

// INVALID_ARGUMENT for a bad ordinal or option, FAILED_PRECONDITION without a usable GPU,
// RESOURCE_EXHAUSTED when the pools do not fit in device or pinned host memory.
absl::StatusOr<std::unique_ptr<AttentionBackend>> CreateCudaBackend(const CudaBackendOptions& options);

}  // namespace sage::server
