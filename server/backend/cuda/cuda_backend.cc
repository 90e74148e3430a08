// The CUDA backend: validation and recipe mapping, then dispatch of each launch to the least-loaded
// GPU executor (device_selector.h) and its stream slots (device_executor.h). Inputs go to the GPU as
// they came when they are fp16 or bf16 (all three the same type); fp32 (or mixed) inputs are
// converted to fp16 while staging, because the kernels take 16-bit inputs only. Every CUDA call is
// checked; failures come back as absl::Status and the backend keeps serving.
#include "server/backend/cuda/cuda_backend.h"

#include <cuda_runtime.h>

#include <algorithm>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "server/backend/cuda/client_memory.h"
#include "server/backend/cuda/cuda_status.h"
#include "server/backend/cuda/device_kv_memory.h"
#include "server/backend/host_buffer_pool.h"
#include "server/backend/cuda/device_executor.h"
#include "server/backend/cuda/device_selector.h"
#include "server/backend/cuda/kernel_config.h"
#include "server/backend/cuda/sage_enums.h"

namespace sage::server {
namespace {

// The longest sequences of a launch (grid sizing) and its work Σ q_len·k_len (what the dispatcher
// balances).
struct Extents {
  int max_q = 0;
  int max_k = 0;
  int64_t work = 0;
};

Extents ExtentsOf(const EngineInput& in) {
  Extents e;
  for (int b = 0; b < in.batch(); ++b) {
    const int ql = in.cu_seqlens_q[b + 1] - in.cu_seqlens_q[b], kl = in.cu_seqlens_k[b + 1] - in.cu_seqlens_k[b];
    e.max_q = std::max(e.max_q, ql);
    e.max_k = std::max(e.max_k, kl);
    e.work += int64_t{ql} * kl;
  }
  return e;
}

class CudaBackend final : public AttentionBackend {
 public:
  CudaBackend(std::vector<std::unique_ptr<DeviceExecutor>> executors, BackendInfo info,
              std::unique_ptr<HostBufferPool> request_pool)
      : executors_(std::move(executors)),
        selector_(static_cast<int>(executors_.size())),
        info_(std::move(info)),
        request_pool_(std::move(request_pool)) {}

  const BackendInfo& info() const override { return info_; }
  HostBufferPool* host_buffers() override { return request_pool_.get(); }

  absl::StatusOr<std::unique_ptr<EngineMemory>> PinHostMemory(std::byte* data, size_t bytes) override {
    return PinHostRange(data, bytes);
  }

  absl::StatusOr<DeviceMapping> OpenCudaIpcMemory(std::span<const std::byte> handle, int device,
                                                  size_t bytes) override {
    if (ExecutorIndexOf(device) < 0) {
      std::string devices;
      for (const auto& ex : executors_) absl::StrAppend(&devices, devices.empty() ? "" : ", ", ex->device());
      return absl::InvalidArgumentError(
          absl::StrCat("device_id: ", device, " is not one of this server's GPUs (", devices, ")"));
    }
    return OpenIpcAllocation(handle, device, bytes);
  }

  absl::StatusOr<std::vector<std::unique_ptr<KvMemory>>> CreateKvMemory(size_t bytes, double fraction) override {
    std::vector<std::unique_ptr<KvMemory>> out;
    for (const auto& ex : executors_) {
      size_t want = bytes;
      if (fraction > 0) {
        size_t free_b = 0, total_b = 0;
        SAGE_CUDA_RETURN_IF_ERROR(FromCuda(cudaSetDevice(ex->device()), "cudaSetDevice"));
        SAGE_CUDA_RETURN_IF_ERROR(FromCuda(cudaMemGetInfo(&free_b, &total_b), "cudaMemGetInfo"));
        want = static_cast<size_t>(static_cast<double>(free_b) * fraction);
      }
      absl::StatusOr<std::unique_ptr<KvMemory>> m = CreateDeviceKvMemory(ex->device(), want);
      if (!m.ok()) return m.status();
      out.push_back(*std::move(m));
    }
    return out;
  }

  absl::StatusOr<EngineOutput> Attend(const EngineInput& in, const RecipeConfig& config) override {
    SAGE_CUDA_RETURN_IF_ERROR(ValidateInput(in));
    if (in.paged.has_value()) return LaunchPaged(in, config);
    const EngineInput* parts[] = {&in};
    return Launch(in, parts, config);
  }

  // The batcher's merged launches: each member's rows are gathered straight into the slot's pinned
  // staging, with no intermediate concatenated copy.
  absl::StatusOr<EngineOutput> AttendGathered(const EngineInput& merged, std::span<const EngineInput* const> members,
                                            const RecipeConfig& config) override {
    if (members.empty()) return absl::InvalidArgumentError("cuda backend: gathered launch without members");
    int64_t q_tokens = 0, k_tokens = 0;
    for (const EngineInput* m : members) {
      SAGE_CUDA_RETURN_IF_ERROR(ValidateInput(*m));
      if (m->q.dtype != merged.q.dtype || m->k.dtype != merged.k.dtype || m->v.dtype != merged.v.dtype ||
          m->q.heads != merged.q.heads || m->k.heads != merged.k.heads || m->q.head_dim != merged.q.head_dim) {
        return absl::InvalidArgumentError("cuda backend: gathered member does not match the merged shape");
      }
      q_tokens += m->q.tokens;
      k_tokens += m->k.tokens;
    }
    if (q_tokens != merged.q.tokens || k_tokens != merged.k.tokens || merged.v.tokens != merged.k.tokens ||
        merged.cu_seqlens_q.size() != merged.cu_seqlens_k.size() || merged.cu_seqlens_q.size() < 2 ||
        merged.cu_seqlens_q.back() != q_tokens || merged.cu_seqlens_k.back() != k_tokens) {
      return absl::InvalidArgumentError("cuda backend: gathered members do not add up to the merged launch");
    }
    return Launch(merged, members, config);
  }

 private:
  // Session pages in a GPU's KV pool. Decode-shaped launches of the unquantized recipe (at most
  // SAGE_PAGED_MAX_QUERY_ROWS rows per sequence) are read in place by the paged decode kernel; any
  // other is gathered on the GPU into the slot's K/V buffers and runs the dense kernels of its recipe.
  absl::StatusOr<EngineOutput> LaunchPaged(const EngineInput& in, const RecipeConfig& config) {
    const PagedKv& pg = *in.paged;
    SAGE_CUDA_RETURN_IF_ERROR(ValidatePagedKv(in, pg));
    if (pg.memory != MemoryKind::kDevice || pg.device != in.memory_device) {
      return absl::InvalidArgumentError("cuda backend: paged K/V must be in a GPU's KV pool, named by memory_device");
    }
    if (in.q.dtype != pg.layout.dtype) return absl::InvalidArgumentError("cuda backend: q's dtype differs from the pages'");
    if (in.q.tokens == 0) return EngineOutput{};
    const sage_dtype_t dtype = SageDtype(pg.layout.dtype);
    const sage_kv_storage_t storage = SageKvStorage(pg.layout.storage);
    const auto [max_q, max_k, work] = ExtentsOf(in);
    PagedLaunch launch;
    LaunchShape shape;
    shape.q_elements = in.q.numel();
    shape.sequences = in.batch();
    shape.lse_elements = in.lse == LseMode::kNatural ? in.q.tokens * in.q.heads : 0;
    // The decode kernel reads INT4-K pages at head_dim 128 only; other INT4 heads take the gather.
    const bool decode_reads = storage != SAGE_KV_INT4K_FP8V || in.q.head_dim == 128;
    if (config == ConfigFor(Recipe::kUnquantized) && max_q <= SAGE_PAGED_MAX_QUERY_ROWS && in.mask == MaskMode::kCausal &&
        decode_reads) {
      launch.kernel = PagedKernel::kDecode;
      sage_paged_decode_params_t& p = launch.decode;
      p.storage = storage;
      p.dtype = dtype;
      p.pages = pg.pool;
      p.page_bytes = pg.page_bytes;
      p.page_tokens = pg.layout.page_tokens;
      p.batch = in.batch();
      p.max_seqlen_q = max_q;
      p.max_seqlen_k = max_k;
      p.total_q = in.q.tokens;
      p.num_q_heads = in.q.heads;
      p.num_kv_heads = in.k.heads;
      p.head_dim = in.q.head_dim;
      p.softmax_scale = in.scale();
      p.layout = SageKvLayout(pg.layout.rows);
      SAGE_CUDA_RETURN_IF_ERROR(FromSage(sage_paged_decode_workspace_size(&p, &shape.workspace_bytes), "paged workspace size"));
    } else {
      launch.kernel = PagedKernel::kGatherThenDense;
      absl::StatusOr<sage_attn_params_t> dense = DenseParams(in, config, dtype, {max_q, max_k, work});
      if (!dense.ok()) return dense.status();
      launch.dense = *dense;
      sage_paged_gather_params_t& g = launch.gather;
      g.storage = storage;
      g.dtype = dtype;
      g.pages = pg.pool;
      g.page_bytes = pg.page_bytes;
      g.page_tokens = pg.layout.page_tokens;
      g.batch = in.batch();
      g.max_seqlen_k = max_k;
      g.total_k = in.k.tokens;
      g.num_kv_heads = in.k.heads;
      g.head_dim = in.k.head_dim;
      g.layout = SageKvLayout(pg.layout.rows);
      shape.kv_elements = in.k.numel();
      SAGE_CUDA_RETURN_IF_ERROR(
          FromSage(sage_attn_workspace_size(&launch.dense, &shape.workspace_bytes), "workspace size"));
    }
    SAGE_CUDA_RETURN_IF_ERROR(executors_.front()->CheckFits(shape));
    return Dispatch(pg.device, work,
                    [&](DeviceExecutor& ex) { return ex.RunPaged(shape, in, launch, pg.layout.dtype); });
  }

  // The dense kernels' params for `in` (all but the device pointers and the workspace): its recipe,
  // shapes, mask and scale. UNIMPLEMENTED for a recipe this server's GPUs cannot run.
  absl::StatusOr<sage_attn_params_t> DenseParams(const EngineInput& in, const RecipeConfig& config, sage_dtype_t dtype,
                                                 const Extents& e) const {
    absl::StatusOr<sage_recipe_config_t> kcfg = ToKernelConfig(config);
    if (!kcfg.ok()) return kcfg.status();
    if (kcfg->recipe == SAGE_RECIPE_INT8_QK_FP8_PV && min_sm_ < 90) {
      return absl::UnimplementedError("cuda backend: int8_qk_fp8_pv needs sm_90 (wgmma)");
    }
    sage_attn_params_t p{};
    p.config = *kcfg;
    p.dtype = dtype;
    p.batch = in.batch();
    p.max_seqlen_q = e.max_q;
    p.max_seqlen_k = e.max_k;
    p.total_q = in.q.tokens;
    p.total_k = in.k.tokens;
    p.num_q_heads = in.q.heads;
    p.num_kv_heads = in.k.heads;
    p.head_dim = in.q.head_dim;
    p.mask = in.mask == MaskMode::kCausal ? SAGE_MASK_CAUSAL : SAGE_MASK_NONE;
    p.softmax_scale = in.scale();
    return p;
  }

  // Runs `run` on the executor PickExecutor gives for (`memory_device`, `work`), then gives the load
  // back and takes the device out of rotation if the launch left it unhealthy.
  template <typename Run>
  absl::StatusOr<EngineOutput> Dispatch(int memory_device, int64_t work, Run&& run) {
    absl::StatusOr<int> pick = PickExecutor(memory_device, work);
    if (!pick.ok()) return pick.status();
    DeviceExecutor& ex = *executors_[static_cast<size_t>(*pick)];
    absl::StatusOr<EngineOutput> out = run(ex);
    selector_.Release(*pick, work);
    if (!ex.healthy()) selector_.SetHealth(*pick, DeviceHealth::kFailed);
    return out;
  }

  // `in` is validated (or, gathered, its members are and its metadata checked); `parts` hold the bytes.
  absl::StatusOr<EngineOutput> Launch(const EngineInput& in, std::span<const EngineInput* const> parts,
                                    const RecipeConfig& config) {
    const bool all_bf16 = in.q.dtype == DType::kBF16 && in.k.dtype == DType::kBF16 && in.v.dtype == DType::kBF16;
    const DType dt = all_bf16 ? DType::kBF16 : DType::kF16;
    const bool want_lse = in.lse == LseMode::kNatural;
    if (in.q.tokens == 0) return EngineOutput{};  // nothing to launch

    const Extents e = ExtentsOf(in);
    absl::StatusOr<sage_attn_params_t> dense =
        DenseParams(in, config, SageDtype(dt), e);
    if (!dense.ok()) return dense.status();
    sage_attn_params_t& p = *dense;

    LaunchShape shape;
    shape.q_elements = in.q.numel();
    shape.kv_elements = in.k.numel();
    shape.sequences = in.batch();
    shape.lse_elements = want_lse ? in.q.tokens * in.q.heads : 0;
    SAGE_CUDA_RETURN_IF_ERROR(FromSage(sage_attn_workspace_size(&p, &shape.workspace_bytes), "workspace size"));
    // Every executor has the same pool sizes: one check before dispatch.
    SAGE_CUDA_RETURN_IF_ERROR(executors_.front()->CheckFits(shape));

    return Dispatch(in.memory_device, e.work,
                    [&](DeviceExecutor& ex) { return ex.Run(shape, in, parts, p, dt); });
  }

  // The index in executors_ of the one running CUDA ordinal `device`; -1 when none does.
  int ExecutorIndexOf(int device) const {
    for (size_t i = 0; i < executors_.size(); ++i) {
      if (executors_[i]->device() == device) return static_cast<int>(i);
    }
    return -1;
  }

  // The least-loaded executor, or, for tensors in a client's device memory (`memory_device` >= 0),
  // the one on that GPU whatever its load; its load is charged with `work`.
  absl::StatusOr<int> PickExecutor(int memory_device, int64_t work) {
    if (memory_device < 0) return selector_.Acquire(work);
    const int index = ExecutorIndexOf(memory_device);
    if (index < 0) {
      return absl::InvalidArgumentError(absl::StrCat("cuda backend: the tensors are in the memory of device ",
                                                     memory_device, ", which this server does not run"));
    }
    return selector_.AcquireOn(index, work);
  }

 public:
  std::vector<DeviceStats> DeviceStatsSnapshot() const override {
    const std::vector<DeviceLoad> loads = selector_.Snapshot();
    std::vector<DeviceStats> stats;
    for (size_t i = 0; i < executors_.size(); ++i) {
      DeviceStats s = executors_[i]->Stats();
      s.in_flight = loads[i].in_flight;
      s.queued_work = loads[i].work;
      s.healthy = s.healthy && loads[i].health == DeviceHealth::kHealthy;
      stats.push_back(std::move(s));
    }
    return stats;
  }

  void set_min_sm(int sm) { min_sm_ = sm; }

 private:
  std::vector<std::unique_ptr<DeviceExecutor>> executors_;
  DeviceSelector selector_;
  const BackendInfo info_;
  std::unique_ptr<HostBufferPool> request_pool_;  // null when request_pinned_bytes is 0
  int min_sm_ = 0;
};

// The pinned region request payloads land in. Portable: registered with every device's context.
absl::StatusOr<std::unique_ptr<HostBufferPool>> MakePinnedRequestPool(int64_t bytes, int device) {
  if (bytes < 0) {
    return absl::InvalidArgumentError(absl::StrCat("cuda backend: request_pinned_bytes ", bytes, " < 0"));
  }
  if (bytes == 0) return std::unique_ptr<HostBufferPool>();
  SAGE_CUDA_RETURN_IF_ERROR(FromCuda(cudaSetDevice(device), "cudaSetDevice"));
  void* base = nullptr;
  const absl::Status alloc =
      FromCuda(cudaHostAlloc(&base, static_cast<size_t>(bytes), cudaHostAllocPortable), "cudaHostAlloc(request pool)");
  if (!alloc.ok()) {
    return absl::ResourceExhaustedError(absl::StrCat("cuda backend: cannot pin ", bytes >> 20,
                                                     " MiB for request payloads (lower --cuda_request_pinned_mib): ",
                                                     alloc.message()));
  }
  return MakeRegionBufferPool(static_cast<std::byte*>(base), static_cast<size_t>(bytes), MemoryKind::kPinned,
                              [base] { (void)cudaFreeHost(base); });
}

}  // namespace

int VisibleCudaDevices() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    (void)cudaGetLastError();  // no driver / no device: not an error for --backend=auto
    return 0;
  }
  return n;
}

absl::StatusOr<std::unique_ptr<AttentionBackend>> CreateCudaBackend(const CudaBackendOptions& options) {
  const int count = VisibleCudaDevices();
  if (count == 0) return absl::FailedPreconditionError("cuda backend: no CUDA device visible");
  std::vector<int> ordinals = options.devices;
  const bool all_devices = ordinals.empty();
  if (all_devices) {
    for (int d = 0; d < count; ++d) ordinals.push_back(d);
  }
  for (size_t i = 0; i < ordinals.size(); ++i) {
    const int d = ordinals[i];
    if (d < 0 || d >= count) {
      return absl::InvalidArgumentError(absl::StrCat("cuda backend: device ", d, " out of range (", count, " visible)"));
    }
    if (std::find(ordinals.begin(), ordinals.begin() + static_cast<std::ptrdiff_t>(i), d) !=
        ordinals.begin() + static_cast<std::ptrdiff_t>(i)) {
      return absl::InvalidArgumentError(absl::StrCat("cuda backend: device ", d, " listed twice"));
    }
  }

  std::vector<std::unique_ptr<DeviceExecutor>> executors;
  std::string skipped;
  for (int d : ordinals) {
    ExecutorOptions eo;
    eo.device = d;
    eo.streams = options.streams_per_device;
    eo.light_streams = options.light_streams_per_device;
    eo.pool = options.pool;
    eo.sync = options.sync;
    absl::StatusOr<std::unique_ptr<DeviceExecutor>> ex = DeviceExecutor::Create(eo);
    if (!ex.ok()) {
      // With "every device", a GPU too old for the kernels is left out; anything else is fatal.
      if (all_devices && ex.status().code() == absl::StatusCode::kFailedPrecondition) {
        absl::StrAppend(&skipped, skipped.empty() ? "" : "; ", ex.status().message());
        continue;
      }
      return ex.status();
    }
    executors.push_back(*std::move(ex));
  }
  if (executors.empty()) return absl::FailedPreconditionError(absl::StrCat("cuda backend: no usable GPU: ", skipped));

  int min_sm = executors.front()->sm();
  BackendInfo info;
  info.kind = BackendKind::kCuda;
  for (const auto& ex : executors) {
    info.devices.push_back(ex->description());
    min_sm = std::min(min_sm, ex->sm());
  }
  info.head_dims.assign(std::begin(kSupportedHeadDims), std::end(kSupportedHeadDims));
  // INT4-K pages: sage_kv_quantize, the paged decode kernel (D 128; D 64 decodes through the
  // gather) and sage_paged_gather, tested on an H100 against the CPU scheme (2026-12-07).
  info.kv_storages = {KvStorage::k16Bit, KvStorage::kInt8KFp8V, KvStorage::kInt4KFp8V};
  info.input_gather = InputGather::kSegments;
  if (min_sm >= 90) {
    // INT4 runs (its s4 mma is emulated on sm_90, ~20x slower than INT8) but is never the default here.
    info.recipes = {Recipe::kInt8QkFp8Pv, Recipe::kInt8QkFp16Pv, Recipe::kUnquantized, Recipe::kInt4QkFp8Pv};
    info.default_recipe = Recipe::kInt8QkFp8Pv;
  } else {
    info.recipes = {Recipe::kInt8QkFp16Pv, Recipe::kInt4QkFp8Pv, Recipe::kUnquantized};
    info.default_recipe = Recipe::kInt8QkFp16Pv;
  }
  absl::StatusOr<std::unique_ptr<HostBufferPool>> pool =
      MakePinnedRequestPool(options.request_pinned_bytes, executors.front()->device());
  if (!pool.ok()) return pool.status();
  auto backend = std::make_unique<CudaBackend>(std::move(executors), std::move(info), *std::move(pool));
  backend->set_min_sm(min_sm);
  return std::unique_ptr<AttentionBackend>(std::move(backend));
}

}  // namespace sage::server
