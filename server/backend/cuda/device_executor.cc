#include "server/backend/cuda/device_executor.h"

#include <cuda_runtime.h>

#include <algorithm>
#include <bit>
#include <cstring>
#include <string>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "kernels/reference/numerics.h"
#include "kernels/reference/recipe.h"
#include "server/backend/cuda/cuda_status.h"
#include "server/backend/cuda/device_slot.h"
#include "server/backend/cuda/host_staging.h"
#include "server/backend/cuda/kernel_config.h"
#include "server/backend/cuda/transfer_plan.h"

namespace sage::server {
namespace {

constexpr double kMiB = 1024.0 * 1024.0;

unsigned SyncFlags(CudaSync sync) {
  switch (sync) {
    case CudaSync::kSpin: return cudaDeviceScheduleSpin;
    case CudaSync::kYield: return cudaDeviceScheduleYield;
    case CudaSync::kBlock: return cudaDeviceScheduleBlockingSync;
    case CudaSync::kAuto: break;
  }
  return cudaDeviceScheduleAuto;
}

// Workspace that the default configuration of every recipe (QK smoothing excluded: its ΔS grows
// with q_len·k_len) needs for `elements` per tensor with up to 32 heads.
absl::StatusOr<size_t> AutoWorkspaceBytes(int64_t max_batch_elements, int max_batch_sequences) {
  size_t best = 0;
  for (Recipe r : kAllRecipes) {
    absl::StatusOr<sage_recipe_config_t> cfg = ToKernelConfig(ConfigFor(r));
    if (!cfg.ok()) return cfg.status();
    if (cfg->qk_smoothing == SAGE_SMOOTH_QK) cfg->qk_smoothing = SAGE_SMOOTH_K;
    for (int d : kSupportedHeadDims) {
      const int64_t tokens = std::max<int64_t>(1, max_batch_elements / (int64_t{32} * d));
      for (int batch : {1, std::min(max_batch_sequences, 256)}) {
        const int b = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(batch, tokens)));
        sage_attn_params_t p{};
        p.config = *cfg;
        p.dtype = SAGE_DTYPE_F16;
        p.batch = b;
        p.total_q = p.total_k = tokens;
        p.max_seqlen_q = p.max_seqlen_k = static_cast<int32_t>((tokens + b - 1) / b);
        p.num_q_heads = p.num_kv_heads = 32;
        p.head_dim = d;
        p.softmax_scale = 1.0f;
        size_t bytes = 0;
        SAGE_CUDA_RETURN_IF_ERROR(FromSage(sage_attn_workspace_size(&p, &bytes), "workspace size at pool capacity"));
        best = std::max(best, bytes);
      }
    }
  }
  return best + (1 << 20);
}

// Enqueues the copies on `stream`: a cudaMemcpyAsync each for a few, one batched call for many (a
// merged launch of N pinned requests has 3N + 1 pieces; that many separate calls would cost more
// CPU than the copies themselves).
constexpr size_t kBatchedCopyMin = 5;
cudaError_t IssueCopies(std::span<const Copy> copies, cudaStream_t stream) {
  if (copies.size() < kBatchedCopyMin) {
    for (const Copy& c : copies) {
      const cudaError_t e = cudaMemcpyAsync(c.dst, c.src, c.bytes, cudaMemcpyDefault, stream);
      if (e != cudaSuccess) return e;
    }
    return cudaSuccess;
  }
  std::vector<void*> dsts(copies.size());
  std::vector<const void*> srcs(copies.size());
  std::vector<size_t> sizes(copies.size());
  for (size_t i = 0; i < copies.size(); ++i) {
    dsts[i] = copies[i].dst;
    srcs[i] = copies[i].src;
    sizes[i] = copies[i].bytes;
  }
  cudaMemcpyAttributes attr{};
  attr.srcAccessOrder = cudaMemcpySrcAccessOrderStream;
  size_t attr_index = 0;
  const cudaError_t err =
      cudaMemcpyBatchAsync(dsts.data(), srcs.data(), sizes.data(), copies.size(), &attr, &attr_index, 1, stream);
  if (err != cudaErrorNotSupported) return err;
  (void)cudaGetLastError();  // a driver without batched copies: one call each
  for (const Copy& c : copies) {
    const cudaError_t e = cudaMemcpyAsync(c.dst, c.src, c.bytes, cudaMemcpyDefault, stream);
    if (e != cudaSuccess) return e;
  }
  return cudaSuccess;
}

}  // namespace

bool IsStickyCudaError(cudaError_t err) {
  switch (err) {
    case cudaErrorIllegalAddress:
    case cudaErrorLaunchFailure:
    case cudaErrorHardwareStackError:
    case cudaErrorIllegalInstruction:
    case cudaErrorMisalignedAddress:
    case cudaErrorInvalidAddressSpace:
    case cudaErrorInvalidPc:
    case cudaErrorECCUncorrectable:
    case cudaErrorDevicesUnavailable:
    case cudaErrorUnknown:
      return true;
    default:
      return false;
  }
}

void ReadBackOutput(const unsigned char* o, size_t elements, DType dtype, OutputForm form, const unsigned char* lse,
                    size_t lse_elements, EngineOutput& out) {
  StageSegment o_seg{o, dtype, nullptr, dtype, elements};
  if (form != OutputForm::kFloat) {
    out.o_native.resize(elements * 2);  // the kernel's codes as they are (no decode; the codec moves them)
    out.o_native_dtype = dtype;
    o_seg.dst = out.o_native.data();
  } else {
    out.o.resize(elements);
    o_seg.dst = out.o.data();
    o_seg.dst_dtype = DType::kF32;
  }
  RunStaging(std::span<const StageSegment>(&o_seg, 1));
  if (lse_elements > 0) {
    out.lse.resize(lse_elements);
    std::memcpy(out.lse.data(), lse, lse_elements * sizeof(float));
  }
}

// Stages that did not happen are 0; the kernels' stage starts where the uploads ended, if any.
absl::StatusOr<DeviceTimings> StageTimings(const cudaEvent_t (&ev)[4], bool has_h2d, bool has_d2h) {
  float ms[3] = {0, 0, 0};
  const auto elapsed = [](float* out, cudaEvent_t from, cudaEvent_t to) {
    return FromCuda(cudaEventElapsedTime(out, from, to), "cudaEventElapsedTime");
  };
  if (has_h2d) SAGE_CUDA_RETURN_IF_ERROR(elapsed(&ms[0], ev[0], ev[1]));
  SAGE_CUDA_RETURN_IF_ERROR(elapsed(&ms[1], has_h2d ? ev[1] : ev[0], ev[2]));
  if (has_d2h) SAGE_CUDA_RETURN_IF_ERROR(elapsed(&ms[2], ev[2], ev[3]));
  return DeviceTimings{ms[0] * 1e3, ms[1] * 1e3, ms[2] * 1e3};
}

DeviceExecutor::DeviceExecutor(int device, int sm, DeviceDescription description, const CudaPoolOptions& pool)
    : device_(device), sm_(sm), description_(std::move(description)), pool_(pool) {}

DeviceExecutor::~DeviceExecutor() {
  slots_.clear();  // each slot syncs its stream before freeing
}

absl::StatusOr<std::unique_ptr<DeviceExecutor>> DeviceExecutor::Create(const ExecutorOptions& options) {
  if (options.streams < 1 || options.streams > 64) {
    return absl::InvalidArgumentError(
        absl::StrCat("cuda backend: streams_per_device ", options.streams, " out of range [1, 64]"));
  }
  if (options.light_streams < 0 || options.light_streams > 64) {
    return absl::InvalidArgumentError(absl::StrCat("cuda backend: light_streams_per_device ", options.light_streams,
                                                   " out of range [0, 64]"));
  }
  if (options.light_streams > 0 &&
      (options.pool.light_max_batch_elements < 64 * 64 || options.pool.light_max_batch_sequences < 1)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "cuda backend: light slot options out of range (light_max_batch_elements ",
        options.pool.light_max_batch_elements, " >= 4096, light_max_batch_sequences ",
        options.pool.light_max_batch_sequences, " >= 1)"));
  }
  if (options.pool.max_batch_elements < 64 * 64 || options.pool.max_batch_sequences < 1 ||
      options.pool.workspace_bytes < 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "cuda backend: pool options out of range (max_batch_elements ", options.pool.max_batch_elements,
        " >= 4096, max_batch_sequences ", options.pool.max_batch_sequences, " >= 1, workspace_bytes >= 0)"));
  }
  SAGE_CUDA_RETURN_IF_ERROR(FromCuda(cudaSetDevice(options.device), "cudaSetDevice"));
  // Set before the slots' streams exist; on an already initialized context it replaces the flags.
  SAGE_CUDA_RETURN_IF_ERROR(FromCuda(cudaSetDeviceFlags(SyncFlags(options.sync)), "cudaSetDeviceFlags"));
  cudaDeviceProp prop{};
  SAGE_CUDA_RETURN_IF_ERROR(FromCuda(cudaGetDeviceProperties(&prop, options.device), "cudaGetDeviceProperties"));
  const int sm = prop.major * 10 + prop.minor;
  if (sm < 80) {
    return absl::FailedPreconditionError(absl::StrCat("cuda backend: device ", options.device, " (", prop.name,
                                                      ") is sm_", sm, "; the kernels need sm_80 or newer"));
  }
  DeviceDescription desc{prop.name, absl::StrCat("sm_", sm), static_cast<int64_t>(prop.totalGlobalMem)};
  std::unique_ptr<DeviceExecutor> ex(new DeviceExecutor(options.device, sm, std::move(desc), options.pool));
  SAGE_CUDA_RETURN_IF_ERROR(ex->AllocateSlots(options.streams, options.light_streams));
  return ex;
}

absl::StatusOr<DeviceExecutor::Capacity> DeviceExecutor::CapacityFor(int64_t max_elements, int max_sequences,
                                                                      int64_t workspace_bytes) {
  Capacity c;
  c.max_elements = max_elements;
  c.max_sequences = max_sequences;
  const StagingLayout layout = LayoutFor(max_elements, max_elements, max_sequences, max_elements / 64);
  c.in_bytes = layout.in_end;
  c.out_bytes = layout.out_end;
  if (workspace_bytes > 0) {
    c.ws_bytes = static_cast<size_t>(workspace_bytes);
  } else {
    absl::StatusOr<size_t> ws = AutoWorkspaceBytes(max_elements, max_sequences);
    if (!ws.ok()) return ws.status();
    c.ws_bytes = *ws;
  }
  return c;
}

absl::Status DeviceExecutor::AllocateSlots(int streams, int light_streams) {
  absl::StatusOr<Capacity> full =
      CapacityFor(pool_.max_batch_elements, pool_.max_batch_sequences, pool_.workspace_bytes);
  if (!full.ok()) return full.status();
  full_ = *full;
  absl::StatusOr<Capacity> light =
      CapacityFor(std::min(pool_.light_max_batch_elements, pool_.max_batch_elements),
                  std::min(pool_.light_max_batch_sequences, pool_.max_batch_sequences), 0);
  if (!light.ok()) return light.status();
  light_ = *light;
  light_.ws_bytes = std::min(light_.ws_bytes, full_.ws_bytes);
  const auto slot_bytes = [](const Capacity& c) { return c.in_bytes + c.out_bytes + c.ws_bytes; };
  const auto oom = [&](const absl::Status& s, const char* what) {
    if (s.code() != absl::StatusCode::kResourceExhausted) return s;
    return absl::ResourceExhaustedError(absl::StrCat(
        "cuda backend: device ", device_, ": cannot preallocate ", what, " for ", streams, " stream slots of ",
        (full_.in_bytes + full_.out_bytes) / kMiB, " MiB staging + ", full_.ws_bytes / kMiB, " MiB workspace and ",
        light_streams, " light slots of ", slot_bytes(light_) / kMiB, " MiB (CudaPoolOptions.max_batch_elements ",
        pool_.max_batch_elements, "); lower max_batch_elements or streams_per_device: ", s.message()));
  };
  // Refuse up front (rather than half-way) when the device pools cannot fit in free memory.
  size_t free_b = 0, total_b = 0;
  SAGE_CUDA_RETURN_IF_ERROR(FromCuda(cudaMemGetInfo(&free_b, &total_b), "cudaMemGetInfo"));
  const double need = static_cast<double>(slot_bytes(full_)) * streams +
                      static_cast<double>(slot_bytes(light_)) * light_streams;
  if (need > static_cast<double>(free_b)) {
    return oom(absl::ResourceExhaustedError(absl::StrCat(need / kMiB, " MiB needed, ", free_b / kMiB, " MiB free")),
               "device buffers");
  }
  std::vector<SlotSize> sizes;
  for (int i = 0; i < streams + light_streams; ++i) {
    const bool is_light = i >= streams;
    auto slot = std::make_unique<Slot>();
    slot->index = i;
    slot->device = device_;
    slot->cap = is_light ? light_ : full_;
    const Capacity& c = slot->cap;
    SAGE_CUDA_RETURN_IF_ERROR(FromCuda(cudaStreamCreateWithFlags(&slot->stream, cudaStreamNonBlocking), "cudaStreamCreate"));
    for (cudaEvent_t& e : slot->ev) SAGE_CUDA_RETURN_IF_ERROR(FromCuda(cudaEventCreate(&e), "cudaEventCreate"));
    SAGE_CUDA_RETURN_IF_ERROR(oom(FromCuda(cudaHostAlloc(reinterpret_cast<void**>(&slot->host_in), c.in_bytes,
                                                         cudaHostAllocPortable), "cudaHostAlloc(input staging)"), "pinned input staging"));
    SAGE_CUDA_RETURN_IF_ERROR(oom(FromCuda(cudaHostAlloc(reinterpret_cast<void**>(&slot->host_out), c.out_bytes,
                                                         cudaHostAllocPortable), "cudaHostAlloc(output staging)"), "pinned output staging"));
    SAGE_CUDA_RETURN_IF_ERROR(oom(FromCuda(cudaMalloc(reinterpret_cast<void**>(&slot->dev_in), c.in_bytes),
                                           "cudaMalloc(inputs)"), "device input buffers"));
    SAGE_CUDA_RETURN_IF_ERROR(oom(FromCuda(cudaMalloc(reinterpret_cast<void**>(&slot->dev_out), c.out_bytes),
                                           "cudaMalloc(outputs)"), "device output buffers"));
    if (c.ws_bytes > 0) {
      SAGE_CUDA_RETURN_IF_ERROR(oom(FromCuda(cudaMalloc(&slot->dev_ws, c.ws_bytes), "cudaMalloc(workspace)"),
                                    "device workspace"));
    }
    pool_bytes_ += static_cast<int64_t>(slot_bytes(c));
    pinned_bytes_ += static_cast<int64_t>(c.in_bytes + c.out_bytes);
    slots_.push_back(std::move(slot));
    sizes.push_back(is_light ? SlotSize::kLight : SlotSize::kFull);
  }
  pool_of_slots_ = std::make_unique<SlotPool>(std::move(sizes));
  return absl::OkStatus();
}

bool DeviceExecutor::FitsLight(const LaunchShape& shape) const {
  return shape.q_elements <= light_.max_elements && shape.kv_elements <= light_.max_elements &&
         shape.sequences <= light_.max_sequences && shape.workspace_bytes <= light_.ws_bytes;
}

absl::Status DeviceExecutor::CheckFits(const LaunchShape& shape) const {
  const int64_t cap = pool_.max_batch_elements;
  if (shape.q_elements > cap || shape.kv_elements > cap) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "cuda backend: batch too large for the preallocated buffers: q has ", shape.q_elements, " and k/v ",
        shape.kv_elements, " elements (tokens x heads x head_dim), a launch holds at most ", cap,
        " (raise CudaPoolOptions.max_batch_elements, or send smaller requests)"));
  }
  if (shape.sequences > pool_.max_batch_sequences) {
    return absl::ResourceExhaustedError(absl::StrCat("cuda backend: batch has ", shape.sequences,
                                                     " sequences, a launch holds at most ", pool_.max_batch_sequences,
                                                     " (raise CudaPoolOptions.max_batch_sequences)"));
  }
  if (shape.workspace_bytes > full_.ws_bytes) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "cuda backend: batch needs ", shape.workspace_bytes, " bytes of kernel workspace, a slot has ", full_.ws_bytes,
        " (raise CudaPoolOptions.workspace_bytes; QK smoothing of long sequences needs the most)"));
  }
  return absl::OkStatus();
}

absl::StatusOr<EngineOutput> DeviceExecutor::Run(const LaunchShape& shape, const EngineInput& in,
                                                std::span<const EngineInput* const> parts, sage_attn_params_t params,
                                                DType dtype) {
  return OnSlot(shape, params.total_q, [&](Slot& slot) { return RunOnSlot(slot, in, parts, params, dtype); });
}

// A launch in three steps: plan the transfers (pure, transfer_plan.h), stage the host side and
// issue the device work, then collect the output and the stage timings.
absl::StatusOr<EngineOutput> DeviceExecutor::RunOnSlot(Slot& slot, const EngineInput& in,
                                                     std::span<const EngineInput* const> parts,
                                                     sage_attn_params_t& params, DType dtype) {
  SAGE_CUDA_RETURN_IF_ERROR(FromCuda(cudaSetDevice(device_), "cudaSetDevice"));
  const LaunchFacts launch{dtype, params.batch, params.total_q, params.num_q_heads, params.config.recipe, device_};
  const SlotBuffers buffers{slot.host_in, slot.dev_in,       slot.cap.in_bytes, slot.host_out,
                            slot.dev_out, slot.cap.out_bytes, slot.dev_ws,       slot.cap.ws_bytes};
  absl::StatusOr<TransferPlan> plan = PlanTransfers(in, parts, launch, buffers, std::move(slot.plan));
  if (!plan.ok()) return plan.status();
  // Host side: the parts that need it gathered (and converted) into the pinned staging, then the
  // cu_seqlens and the copy kernels' tables after them (they go up in the same copy).
  RunStaging(plan->in_segments);
  StageHostTables(*plan, in);
  FillKernelParams(*plan, params);
  const absl::Status issued = Issue(slot, *plan, params);
  absl::StatusOr<EngineOutput> out = issued.ok() ? Collect(slot, *plan, in, dtype) : issued;
  slot.plan = *std::move(plan);
  return out;
}

// Enqueues the launch on the slot's stream and waits for it. Events: start, after H2D, after the
// kernels, after D2H; the H2D and D2H ones only when that stage has work (every driver call takes
// the context's lock, which all workers contend for).
absl::Status DeviceExecutor::Issue(Slot& slot, const TransferPlan& plan, const sage_attn_params_t& params) {
  cudaStream_t st = slot.stream;
  const auto sst = reinterpret_cast<sage_stream_t>(st);
  const sage_copy_segment_t* table = plan.ptrs.copy_table;
  SAGE_CUDA_RETURN_IF_ERROR(FromCuda(cudaEventRecord(slot.ev[0], st), "cudaEventRecord"));
  if (plan.has_h2d) {
    SAGE_CUDA_RETURN_IF_ERROR(FromCuda(IssueCopies(plan.h2d, st), "upload inputs"));
    SAGE_CUDA_RETURN_IF_ERROR(FromSage(
        sage_copy_segments(table, static_cast<int>(plan.gather.size()), plan.gather_max, sst), "gather device inputs"));
    SAGE_CUDA_RETURN_IF_ERROR(FromCuda(cudaEventRecord(slot.ev[1], st), "cudaEventRecord"));
  }
  SAGE_CUDA_RETURN_IF_ERROR(FromSage(sage_attn_forward(&params, sst), "forward"));
  SAGE_CUDA_RETURN_IF_ERROR(FromCuda(cudaEventRecord(slot.ev[2], st), "cudaEventRecord"));
  if (plan.has_d2h) {
    SAGE_CUDA_RETURN_IF_ERROR(FromSage(sage_copy_segments(table + plan.gather.size(), static_cast<int>(plan.scatter.size()),
                                                          plan.scatter_max, sst),
                                       "scatter device outputs"));
    SAGE_CUDA_RETURN_IF_ERROR(FromCuda(IssueCopies(plan.d2h, st), "download outputs"));
    SAGE_CUDA_RETURN_IF_ERROR(FromCuda(cudaEventRecord(slot.ev[3], st), "cudaEventRecord"));
  }
  return FromCuda(cudaStreamSynchronize(st), "attention");
}

// After the stream synced: the pageable callers' slices out of the staging, or O (the kernel's
// codes, or float) and LSE returned; then the stage timings.
absl::StatusOr<EngineOutput> DeviceExecutor::Collect(const Slot& slot, const TransferPlan& plan,
                                                     const EngineInput& in, DType dtype) {
  EngineOutput out;
  if (plan.into_callers()) {
    RunStaging(plan.out_segments);
    out.placement = OutputPlacement::kCallerBuffers;
  } else {
    ReadBackOutput(plan.slot.host_out + plan.layout.o, static_cast<size_t>(in.q.numel()), dtype, in.output.form,
                   plan.slot.host_out + plan.layout.lse, plan.want_lse ? static_cast<size_t>(plan.lse_elements) : 0, out);
  }
  absl::StatusOr<DeviceTimings> timings = StageTimings(slot.ev, plan.has_h2d, plan.has_d2h);
  if (!timings.ok()) return timings.status();
  timings->device = device_;
  timings->stream_slot = slot.index;
  out.device_timings = *timings;
  return out;
}

DeviceStats DeviceExecutor::Stats() const {
  DeviceStats s;
  s.device = device_;
  s.name = description_.name;
  s.healthy = healthy();
  s.batches = batches_.load(std::memory_order_relaxed);
  s.failed_batches = failed_batches_.load(std::memory_order_relaxed);
  s.tokens = tokens_.load(std::memory_order_relaxed);
  s.streams = static_cast<int>(slots_.size());
  for (int i = 0; i < pool_of_slots_->size(); ++i) {
    if (pool_of_slots_->size_of(i) == SlotSize::kLight) ++s.light_streams;
  }
  s.pool_bytes = pool_bytes_;
  s.pinned_bytes = pinned_bytes_;
  s.memory_total_bytes = description_.memory_bytes;
  size_t free_b = 0, total_b = 0;
  if (cudaSetDevice(device_) == cudaSuccess && cudaMemGetInfo(&free_b, &total_b) == cudaSuccess) {
    s.memory_used_bytes = static_cast<int64_t>(total_b - free_b);
    s.memory_total_bytes = static_cast<int64_t>(total_b);
  } else {
    (void)cudaGetLastError();
  }
  return s;
}

}  // namespace sage::server
