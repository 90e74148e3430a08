// Raising a kernel's dynamic shared memory limit once per device, not once per launch.
#pragma once

#include <cuda_runtime.h>

#include <atomic>
#include <cstdint>

namespace sage::cuda {

// The limit is a property of the kernel in the device's context and stays set, while setting it on
// every launch is a driver call that takes the context's lock (one of the ~16 host calls per small
// launch that 8 workers contend on). `done` holds one bit per device ordinal below 64 and belongs to
// one kernel (a static beside its launch); higher ordinals simply set it every time.
inline cudaError_t SetMaxDynamicSmemOnce(const void* kernel, int bytes, std::atomic<uint64_t>& done) {
  int device = 0;
  if (const cudaError_t e = cudaGetDevice(&device); e != cudaSuccess) return e;
  const uint64_t bit = device >= 0 && device < 64 ? uint64_t{1} << device : 0;
  if (bit != 0 && (done.load(std::memory_order_acquire) & bit) != 0) return cudaSuccess;
  const cudaError_t e = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes);
  if (e == cudaSuccess && bit != 0) done.fetch_or(bit, std::memory_order_release);
  return e;
}

}  // namespace sage::cuda
