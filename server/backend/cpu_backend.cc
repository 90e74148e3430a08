#include "server/backend/cpu_backend.h"

#include <string>
#include <utility>

#include "absl/strings/str_cat.h"
#include "kernels/reference/cpu_engine.h"
#include "server/backend/paged_kv.h"

namespace sage::server {
namespace {

std::string HostArchitecture() {
#if defined(__x86_64__)
  return "x86_64";
#elif defined(__aarch64__)
  return "aarch64";
#else
  return "unknown";
#endif
}

class CpuBackend final : public AttentionBackend {
 public:
  CpuBackend(std::unique_ptr<CpuEngine> engine, int threads) : engine_(std::move(engine)) {
    info_.kind = BackendKind::kCpu;
    info_.devices.push_back(
        DeviceDescription{absl::StrCat("cpu (", threads, " threads)"), HostArchitecture(), 0});
    info_.head_dims.assign(std::begin(kSupportedHeadDims), std::end(kSupportedHeadDims));
    info_.kv_storages.assign(std::begin(kAllKvStorages), std::end(kAllKvStorages));  // decoded on the host
    info_.recipes.assign(std::begin(kAllRecipes), std::end(kAllRecipes));
    info_.default_recipe = Recipe::kInt8QkFp8Pv;
  }

  const BackendInfo& info() const override { return info_; }

  absl::StatusOr<EngineOutput> Attend(const EngineInput& in, const RecipeConfig& config) override {
    // CpuEngine::Run is const and thread-safe. It returns fp32 O whatever the target allows.
    if (in.paged.has_value()) return AttendPaged(in, config);
    absl::StatusOr<AttnOutput> out = engine_->Run(in, config);
    if (!out.ok()) return out.status();
    return EngineOutput(*std::move(out));
  }

 private:
  // Session pages (host memory here) decoded into contiguous K/V first: the session scheme's CPU
  // emulation, which any paged kernel is held to.
  absl::StatusOr<EngineOutput> AttendPaged(const EngineInput& in, const RecipeConfig& config) {
    if (absl::Status s = ValidatePagedKv(in, *in.paged); !s.ok()) return s;
    if (in.paged->memory == MemoryKind::kDevice) return absl::InvalidArgumentError("cpu backend: KV pages in device memory");
    const size_t bytes = static_cast<size_t>(in.k.numel()) * 2;
    std::unique_ptr<std::byte[]> kv(new std::byte[2 * bytes]);
    GatherPagedKv(in, *in.paged, kv.get(), kv.get() + bytes);
    AttnInput flat = in;
    flat.k.data = kv.get();
    flat.v.data = kv.get() + bytes;
    absl::StatusOr<AttnOutput> out = engine_->Run(flat, config);
    if (!out.ok()) return out.status();
    return EngineOutput(*std::move(out));
  }

  std::unique_ptr<CpuEngine> engine_;
  BackendInfo info_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<AttentionBackend>> CreateCpuBackend(const CpuBackendOptions& options) {
  if (options.num_threads < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("cpu backend: num_threads must be >= 0, got ", options.num_threads));
  }
  CpuEngineOptions engine_options;
  engine_options.num_threads = options.num_threads;
  absl::StatusOr<std::unique_ptr<CpuEngine>> engine = CpuEngine::Create(engine_options);
  if (!engine.ok()) return engine.status();
  const int threads = (*engine)->num_threads();
  return std::unique_ptr<AttentionBackend>(new CpuBackend(*std::move(engine), threads));
}

}  // namespace sage::server
