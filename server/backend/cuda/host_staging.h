// Host-side copies and dtype conversions around a launch (into pinned staging, out of it), split
// across a few threads when a launch moves enough bytes for that to pay (large requests). CPU only.
#pragma once

#include <cstddef>
#include <span>

#include "kernels/reference/dtype.h"

namespace sage::server {

// `elements` values of `src_dtype` at `src` become `dst_dtype` values at `dst` (a copy when the types
// match; otherwise the bit-exact bulk conversions of kernels/reference/numerics.h).
struct StageSegment {
  const void* src = nullptr;
  DType src_dtype = DType::kF16;
  void* dst = nullptr;
  DType dst_dtype = DType::kF16;
  size_t elements = 0;
};

struct StagingOptions {
  size_t parallel_min_bytes = size_t{8} << 20;  // below this (bytes written), one thread
  size_t bytes_per_thread = size_t{4} << 20;     // at least this much per extra thread
  int max_threads = 8;                            // 0 = hardware_concurrency
};

// Runs every segment. Large totals are cut into contiguous element ranges handed to short-lived
// threads (the caller takes one range itself). Segments must not overlap each other.
void RunStaging(std::span<const StageSegment> segments, const StagingOptions& options = {});

}  // namespace sage::server
