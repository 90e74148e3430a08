// sage_copy_segments: many byte-range copies in one launch. Grid y = the segment, grid x = the CTAs
// sharing it (grid-stride over 16-byte words). A segment whose ends are equally misaligned copies
// its unaligned head and tail bytewise and the middle by words; ends misaligned relative to each
// other fall back to bytes (the server's tensors are 16-byte aligned, so that path is for safety).
#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/cuda/common/status.cuh"
#include "sageattn.h"

namespace sage::cuda {
namespace {

constexpr int kThreads = 256;
constexpr uint64_t kBytesPerCtaPass = uint64_t{kThreads} * 16 * 4;  // sizes the grid: ~4 words per thread
constexpr int kMaxCtasPerSegment = 64;

__device__ void CopyBytes(const unsigned char* src, unsigned char* dst, uint64_t n, uint64_t first, uint64_t stride) {
  for (uint64_t i = first; i < n; i += stride) dst[i] = src[i];
}

__global__ void __launch_bounds__(kThreads) CopySegmentsKernel(const sage_copy_segment_t* segments) {
  const sage_copy_segment_t seg = segments[blockIdx.y];
  const auto* src = static_cast<const unsigned char*>(seg.src);
  auto* dst = static_cast<unsigned char*>(seg.dst);
  const uint64_t n = seg.bytes;
  const uint64_t first = uint64_t{blockIdx.x} * kThreads + threadIdx.x;
  const uint64_t stride = uint64_t{gridDim.x} * kThreads;
  const uintptr_t s = reinterpret_cast<uintptr_t>(src), d = reinterpret_cast<uintptr_t>(dst);
  if (((s ^ d) & 15) != 0) {
    CopyBytes(src, dst, n, first, stride);
    return;
  }
  uint64_t head = (16 - (s & 15)) & 15;
  if (head > n) head = n;
  const uint64_t words = (n - head) / 16;
  const uint64_t tail_at = head + words * 16;
  // Head and tail (under 16 bytes each) go to the first CTA's threads.
  if (blockIdx.x == 0 && threadIdx.x < 32) {
    if (threadIdx.x < head) dst[threadIdx.x] = src[threadIdx.x];
    const uint64_t t = tail_at + (threadIdx.x & 15);
    if (threadIdx.x >= 16 && t < n) dst[t] = src[t];
  }
  const auto* sw = reinterpret_cast<const uint4*>(src + head);
  auto* dw = reinterpret_cast<uint4*>(dst + head);
  for (uint64_t i = first; i < words; i += stride) dw[i] = sw[i];
}

}  // namespace
}  // namespace sage::cuda

extern "C" sage_status_t sage_copy_segments(const sage_copy_segment_t* segments, int count, uint64_t max_bytes,
                                            sage_stream_t stream) {
  using namespace sage::cuda;
  ClearLastError();
  if (count < 0) return Fail(SAGE_ERR_INVALID_ARGUMENT, "copy segments: count %d < 0", count);
  if (count == 0) return SAGE_OK;
  if (segments == nullptr) return Fail(SAGE_ERR_INVALID_ARGUMENT, "copy segments: null table with count %d", count);
  if (count > 65535) return Fail(SAGE_ERR_UNSUPPORTED, "copy segments: count %d > 65535 per launch", count);
  if (stream == nullptr) {
    return Fail(SAGE_ERR_INVALID_ARGUMENT, "copy segments: null stream (the default stream is never used)");
  }
  uint64_t ctas = (max_bytes + kBytesPerCtaPass - 1) / kBytesPerCtaPass;
  if (ctas < 1) ctas = 1;
  if (ctas > kMaxCtasPerSegment) ctas = kMaxCtasPerSegment;
  const dim3 grid(static_cast<unsigned>(ctas), static_cast<unsigned>(count));
  CopySegmentsKernel<<<grid, kThreads, 0, reinterpret_cast<cudaStream_t>(stream)>>>(segments);
  SAGE_CHECK_LAUNCH("CopySegmentsKernel");
  return SAGE_OK;
}
