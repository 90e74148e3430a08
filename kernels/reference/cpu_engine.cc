#include "kernels/reference/cpu_engine.h"

#include <thread>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "kernels/reference/quantized_attention.h"
#include "kernels/reference/thread_pool.h"

namespace sage {

absl::StatusOr<std::unique_ptr<CpuEngine>> CpuEngine::Create(const CpuEngineOptions& options) {
  if (options.num_threads < 0) {
    return absl::InvalidArgumentError(absl::StrCat("num_threads: must be >= 0, got ", options.num_threads));
  }
  int threads = options.num_threads;
  if (threads == 0) threads = static_cast<int>(std::thread::hardware_concurrency());
  if (threads <= 0) threads = 1;
  return std::unique_ptr<CpuEngine>(new CpuEngine(threads));
}

// The caller participates in every ParallelFor, so the pool holds num_threads - 1 helpers.
CpuEngine::CpuEngine(int num_threads)
    : pool_(std::make_unique<ThreadPool>(num_threads - 1)), num_threads_(num_threads) {}

CpuEngine::~CpuEngine() = default;

int CpuEngine::num_threads() const { return num_threads_; }

absl::StatusOr<AttnOutput> CpuEngine::Run(const AttnInput& in, const RecipeConfig& config) const {
  if (absl::Status s = ValidateInput(in); !s.ok()) return s;
  QuantizedAttention attn(in, config);
  pool_->ParallelFor(attn.num_kv_items(), [&](int64_t i) { attn.PrepareKv(i); });
  AttnOutput out = attn.AllocateOutput();
  pool_->ParallelFor(attn.num_q_items(), [&](int64_t i) { attn.AttendTile(i, &out); });
  return out;
}

}  // namespace sage
