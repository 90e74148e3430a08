#include "server/backend/cuda/host_staging.h"

#include <algorithm>
#include <thread>
#include <vector>

#include "kernels/reference/numerics.h"

namespace sage::server {
namespace {

// Elements [begin, end) of the concatenation of all segments.
void RunRange(std::span<const StageSegment> segments, size_t begin, size_t end) {
  size_t base = 0;
  for (const StageSegment& s : segments) {
    const size_t lo = std::max(begin, base), hi = std::min(end, base + s.elements);
    if (lo < hi) {
      const size_t at = lo - base;
      ConvertBulk(static_cast<const unsigned char*>(s.src) + at * DTypeSize(s.src_dtype), s.src_dtype,
                  static_cast<unsigned char*>(s.dst) + at * DTypeSize(s.dst_dtype), s.dst_dtype, hi - lo);
    }
    base += s.elements;
    if (base >= end) break;
  }
}

}  // namespace

void RunStaging(std::span<const StageSegment> segments, const StagingOptions& options) {
  size_t elements = 0, bytes = 0;
  for (const StageSegment& s : segments) {
    elements += s.elements;
    bytes += s.elements * DTypeSize(s.dst_dtype);
  }
  if (elements == 0) return;
  int threads = 1;
  if (bytes >= options.parallel_min_bytes && options.bytes_per_thread > 0) {
    int cap = options.max_threads > 0 ? options.max_threads : static_cast<int>(std::thread::hardware_concurrency());
    cap = std::max(1, cap);
    threads = static_cast<int>(std::min<size_t>(static_cast<size_t>(cap), bytes / options.bytes_per_thread));
    threads = std::max(1, threads);
  }
  if (threads == 1) {
    RunRange(segments, 0, elements);
    return;
  }
  // Ranges rounded to 64 elements keep every thread's stores on its own cache lines.
  const size_t per = (elements / static_cast<size_t>(threads) + 63) / 64 * 64;
  std::vector<std::thread> helpers;
  helpers.reserve(static_cast<size_t>(threads) - 1);
  for (int t = 1; t < threads; ++t) {
    const size_t b = std::min(elements, per * static_cast<size_t>(t));
    const size_t e = std::min(elements, b + per);
    if (b < e) helpers.emplace_back([segments, b, e] { RunRange(segments, b, e); });
  }
  RunRange(segments, 0, std::min(elements, per));
  for (std::thread& h : helpers) h.join();
}

}  // namespace sage::server
