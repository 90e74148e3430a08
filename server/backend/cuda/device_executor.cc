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
#include "server/backend/cuda/host_staging.h"
#include "server/backend/cuda/kernel_config.h"

namespace sage::server {
namespace {

constexpr size_t kAlign = 256;  // every staged tensor starts at a multiple (kernels need 16/128)
// A pinned tensor (or O slice) at least this large is copied by its own DMA; smaller ones are
// gathered through the slot's staging by the CPU. Each DMA costs the copy engine a few µs, so a
// merged launch of 55 tiny requests spent ~0.8 ms in 166 separate copies; a host memcpy of 16 KB
// between pinned buffers takes ~1-2 µs and the gathered bytes go in one DMA.
constexpr size_t kDirectCopyMinBytes = size_t{64} << 10;
constexpr double kMiB = 1024.0 * 1024.0;

size_t AlignUp(size_t x) { return (x + kAlign - 1) / kAlign * kAlign; }

// The kernels read q/k/v 16 bytes at a time (and never write them); O and LSE need element pairs.
bool Aligned(const void* p, size_t to) { return reinterpret_cast<uintptr_t>(p) % to == 0; }

// Byte offsets of one launch's tensors inside a slot's input and output staging. The host (pinned)
// and device buffers use the same layout, so each direction is one contiguous copy. After the
// cu_seqlens comes room for the copy-kernel table (kSegmentsPerSequence entries per sequence).
struct StagingLayout {
  size_t q = 0, k = 0, v = 0, cu_q = 0, cu_k = 0, seg = 0, in_end = 0;
  size_t o = 0, lse = 0, out_end = 0;
};

// q, k, v gathered and O, LSE scattered: at most five ranges per part, and a part has >= 1 sequence.
constexpr size_t kSegmentsPerSequence = 5;

StagingLayout LayoutFor(int64_t q_elements, int64_t kv_elements, int sequences, int64_t lse_elements) {
  StagingLayout l;
  const size_t q_bytes = static_cast<size_t>(q_elements) * 2, kv_bytes = static_cast<size_t>(kv_elements) * 2;
  const size_t cu_bytes = static_cast<size_t>(sequences + 1) * sizeof(int32_t);
  l.q = 0;
  l.k = AlignUp(l.q + q_bytes);
  l.v = AlignUp(l.k + kv_bytes);
  l.cu_q = AlignUp(l.v + kv_bytes);
  l.cu_k = AlignUp(l.cu_q + cu_bytes);
  l.seg = AlignUp(l.cu_k + cu_bytes);
  l.in_end = l.seg + static_cast<size_t>(sequences) * kSegmentsPerSequence * sizeof(sage_copy_segment_t);
  l.o = 0;
  l.lse = AlignUp(q_bytes);
  l.out_end = l.lse + static_cast<size_t>(lse_elements) * sizeof(float);
  return l;
}

// Errors after which the CUDA context is unusable: the device is taken out of rotation.
bool IsSticky(cudaError_t err) {
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

// One host<->device copy of a launch.
struct Copy {
  void* dst = nullptr;
  const void* src = nullptr;
  size_t bytes = 0;
};

// Appends a copy, extending the previous one when both of its ends continue it (one DMA, not two).
void AddCopy(std::vector<Copy>& copies, void* dst, const void* src, size_t bytes) {
  if (bytes == 0) return;
  if (!copies.empty()) {
    Copy& last = copies.back();
    if (static_cast<unsigned char*>(last.dst) + last.bytes == dst &&
        static_cast<const unsigned char*>(last.src) + last.bytes == src) {
      last.bytes += bytes;
      return;
    }
  }
  copies.push_back(Copy{dst, src, bytes});
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

// One stream with its staging and events. Owned by the executor, used by one Run() at a time.
struct DeviceExecutor::Slot {
  int index = 0;
  int device = 0;
  Capacity cap;
  cudaStream_t stream = nullptr;
  // start, after H2D, after kernels, after D2H; the H2D and D2H ones only when that stage has work
  cudaEvent_t ev[4] = {nullptr, nullptr, nullptr, nullptr};
  unsigned char* host_in = nullptr;   // pinned
  unsigned char* host_out = nullptr;  // pinned
  unsigned char* dev_in = nullptr;
  unsigned char* dev_out = nullptr;
  void* dev_ws = nullptr;
  std::vector<Copy> h2d, d2h;  // reused across launches
  std::vector<sage_copy_segment_t> gather, scatter;

  ~Slot() {
    if (cudaSetDevice(device) != cudaSuccess) return;
    if (stream) (void)cudaStreamSynchronize(stream);
    for (cudaEvent_t e : ev) {
      if (e) (void)cudaEventDestroy(e);
    }
    if (stream) (void)cudaStreamDestroy(stream);
    if (host_in) (void)cudaFreeHost(host_in);
    if (host_out) (void)cudaFreeHost(host_out);
    if (dev_in) (void)cudaFree(dev_in);
    if (dev_out) (void)cudaFree(dev_out);
    if (dev_ws) (void)cudaFree(dev_ws);
  }
};

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

absl::StatusOr<AttnOutput> DeviceExecutor::Run(const LaunchShape& shape, const AttnInput& in,
                                                std::span<const AttnInput* const> parts, sage_attn_params_t params,
                                                DType dtype) {
  // Without light slots a small launch simply gets a full-size one.
  const int index = pool_of_slots_->Acquire(FitsLight(shape) ? SlotFit::kLightOrFull : SlotFit::kFullOnly);
  Slot* slot = slots_[static_cast<size_t>(index)].get();
  absl::StatusOr<AttnOutput> out = RunOnSlot(*slot, in, parts, params, dtype);
  if (!out.ok()) {
    // Whatever was enqueued must finish before the slot's buffers are reused.
    const cudaError_t drained = cudaStreamSynchronize(slot->stream);
    if (IsSticky(drained) || IsSticky(cudaGetLastError())) {
      healthy_.store(false, std::memory_order_relaxed);
    }
    failed_batches_.fetch_add(1, std::memory_order_relaxed);
  } else {
    tokens_.fetch_add(params.total_q, std::memory_order_relaxed);
  }
  batches_.fetch_add(1, std::memory_order_relaxed);
  pool_of_slots_->Release(index);
  return out;
}

absl::StatusOr<AttnOutput> DeviceExecutor::RunOnSlot(Slot& slot, const AttnInput& in,
                                                     std::span<const AttnInput* const> parts,
                                                     sage_attn_params_t& params, DType dtype) {
  SAGE_CUDA_RETURN_IF_ERROR(FromCuda(cudaSetDevice(device_), "cudaSetDevice"));
  const bool want_lse = in.lse == LseMode::kNatural;
  const int64_t lse_elements = want_lse ? params.total_q * params.num_q_heads : 0;
  const StagingLayout l = LayoutFor(in.q.numel(), in.k.numel(), params.batch, lse_elements);
  if (l.in_end > slot.cap.in_bytes || l.out_end > slot.cap.out_bytes) {
    return absl::ResourceExhaustedError("cuda backend: launch exceeds the slot's staging (CheckFits not called)");
  }
  // Inputs: a part whose bytes are in device memory, or already pinned and in the kernel's type, is
  // copied to the device straight from its own memory; any other part is first gathered (and
  // converted) into the slot's pinned staging at the same offsets the device buffer uses.
  std::vector<StageSegment> segments;
  segments.reserve(parts.size() * 3);
  std::vector<Copy>& h2d = slot.h2d;
  h2d.clear();
  bool any_direct = false;
  for (size_t i = 0; i < parts.size(); ++i) {
    const AttnInput& part = *parts[i];
    if ((part.memory == MemoryKind::kDevice && part.q.dtype != dtype) ||
        (part.out_memory == MemoryKind::kDevice && in.output_form != OutputForm::kNativeInto)) {
      // Device memory is only copied, never converted on the way (the request decoder refuses such
      // requests; a merged launch keeps device outputs apart, BatchKey::output_memory).
      return absl::InvalidArgumentError(absl::StrCat("cuda backend: part ", i,
                                                     ": device-memory tensors need the kernel's own dtype and layout"));
    }
  }
  // A lone problem whose tensors already sit in this GPU's memory (CUDA shared memory) is read, and
  // its O/LSE written, where they are: no device copies at all, only cu_seqlens go up.
  const AttnInput& lone = *parts.front();
  // A merged launch moves its parts' device-memory tensors with one copy kernel each way instead of
  // a DMA per tensor: each DMA costs the GPU a few µs, and 16 merged requests need 64 of them.
  const bool copy_kernel = parts.size() > 1;
  std::vector<sage_copy_segment_t>& gather = slot.gather;
  std::vector<sage_copy_segment_t>& scatter = slot.scatter;
  gather.clear();
  scatter.clear();
  uint64_t gather_max = 0, scatter_max = 0;
  const auto add_segment = [](std::vector<sage_copy_segment_t>& list, uint64_t& max, const void* src, void* dst,
                              size_t bytes) {
    if (bytes == 0) return;
    list.push_back(sage_copy_segment_t{src, dst, bytes});
    max = std::max<uint64_t>(max, bytes);
  };
  const bool read_in_place = parts.size() == 1 && lone.memory == MemoryKind::kDevice &&
                             lone.memory_device == device_ && Aligned(lone.q.data, 16) && Aligned(lone.k.data, 16) &&
                             Aligned(lone.v.data, 16);
  if (read_in_place) {
    any_direct = true;  // nothing staged: only cu_seqlens go up
  } else {
    size_t at_q = l.q, at_k = l.k, at_v = l.v;
    for (const AttnInput* part : parts) {
      const bool pinned = part->memory == MemoryKind::kPinned;
      const bool device = part->memory == MemoryKind::kDevice;
      const auto add = [&](const TensorView& t, size_t* at) {
        const size_t n = static_cast<size_t>(t.numel());
        if (device && copy_kernel) {
          add_segment(gather, gather_max, t.data, slot.dev_in + *at, n * 2);
          any_direct = true;
        } else if (device || (pinned && t.dtype == dtype && n * 2 >= kDirectCopyMinBytes)) {
          AddCopy(h2d, slot.dev_in + *at, t.data, n * 2);
          any_direct = true;
        } else {
          segments.push_back(StageSegment{t.data, t.dtype, slot.host_in + *at, dtype, n});
          AddCopy(h2d, slot.dev_in + *at, slot.host_in + *at, n * 2);
        }
        *at += n * 2;
      };
      add(part->q, &at_q);
      add(part->k, &at_k);
      add(part->v, &at_v);
    }
    if (at_q != l.q + static_cast<size_t>(in.q.numel()) * 2 || at_k != l.k + static_cast<size_t>(in.k.numel()) * 2 ||
        at_v != l.v + static_cast<size_t>(in.v.numel()) * 2) {
      return absl::InvalidArgumentError("cuda backend: the parts' tensors do not add up to the merged shapes");
    }
  }
  RunStaging(segments);
  const size_t cu_bytes = static_cast<size_t>(params.batch + 1) * sizeof(int32_t);
  std::memcpy(slot.host_in + l.cu_q, in.cu_seqlens_q.data(), cu_bytes);
  std::memcpy(slot.host_in + l.cu_k, in.cu_seqlens_k.data(), cu_bytes);

  // Output: into the callers' own buffers when they asked for it (kNativeInto, O in q's type):
  // pinned ones straight from the device, pageable ones through the slot's staging.
  bool into = in.output_form == OutputForm::kNativeInto;
  for (const AttnInput* part : parts) {
    if (part->q.dtype != dtype) into = false;
  }
  const size_t o_row_bytes = static_cast<size_t>(in.q.heads) * in.q.head_dim * 2;
  const size_t lse_row_bytes = static_cast<size_t>(in.q.heads) * sizeof(float);
  if (into) {
    for (size_t i = 0; i < parts.size(); ++i) {
      const AttnInput& part = *parts[i];
      const size_t rows = static_cast<size_t>(part.q.tokens);
      if (part.o_into.size() < rows * o_row_bytes || (want_lse && part.lse_into.size() * sizeof(float) < rows * lse_row_bytes)) {
        return absl::InvalidArgumentError(absl::StrCat("cuda backend: part ", i, ": o_into/lse_into too small for ",
                                                       rows, " rows"));
      }
    }
  }
  std::vector<Copy>& d2h = slot.d2h;
  d2h.clear();
  std::vector<StageSegment> out_segments;
  const bool write_in_place = into && parts.size() == 1 && lone.out_memory == MemoryKind::kDevice &&
                              lone.memory_device == device_ && Aligned(lone.o_into.data(), 4) &&
                              Aligned(lone.lse_into.data(), 4);
  if (write_in_place) {
    // The kernels write the client's device buffers directly (below); nothing comes back.
  } else if (into) {
    size_t row = 0;
    for (const AttnInput* part : parts) {
      const size_t rows = static_cast<size_t>(part->q.tokens);
      // Device memory (CUDA shared memory) is only reachable by a device copy, whatever its size.
      const bool direct = part->out_memory == MemoryKind::kDevice ||
                          (part->out_memory == MemoryKind::kPinned && rows * o_row_bytes >= kDirectCopyMinBytes);
      const size_t o_at = l.o + row * o_row_bytes, lse_at = l.lse + row * lse_row_bytes;
      if (direct && part->out_memory == MemoryKind::kDevice && copy_kernel) {
        add_segment(scatter, scatter_max, slot.dev_out + o_at, part->o_into.data(), rows * o_row_bytes);
        if (want_lse) {
          add_segment(scatter, scatter_max, slot.dev_out + lse_at, part->lse_into.data(), rows * lse_row_bytes);
        }
      } else if (direct) {
        AddCopy(d2h, part->o_into.data(), slot.dev_out + o_at, rows * o_row_bytes);
        if (want_lse) AddCopy(d2h, part->lse_into.data(), slot.dev_out + lse_at, rows * lse_row_bytes);
      } else {
        AddCopy(d2h, slot.host_out + o_at, slot.dev_out + o_at, rows * o_row_bytes);
        out_segments.push_back(StageSegment{slot.host_out + o_at, dtype, part->o_into.data(), dtype, rows * o_row_bytes / 2});
        if (want_lse) {
          AddCopy(d2h, slot.host_out + lse_at, slot.dev_out + lse_at, rows * lse_row_bytes);
          out_segments.push_back(
              StageSegment{slot.host_out + lse_at, DType::kF32, part->lse_into.data(), DType::kF32, rows * in.q.heads});
        }
      }
      row += rows;
    }
  } else {
    d2h.assign(1, Copy{slot.host_out, slot.dev_out, l.out_end});
  }
  // The copy kernels' tables ride up with the cu_seqlens, in the same copy.
  const size_t seg_bytes = sizeof(sage_copy_segment_t);
  const size_t table_end = l.seg + (gather.size() + scatter.size()) * seg_bytes;
  if (table_end > l.in_end) {
    return absl::InternalError(absl::StrCat("cuda backend: ", gather.size() + scatter.size(),
                                            " copy segments exceed the table room for ", params.batch, " sequences"));
  }
  if (!gather.empty()) std::memcpy(slot.host_in + l.seg, gather.data(), gather.size() * seg_bytes);
  if (!scatter.empty()) {
    std::memcpy(slot.host_in + l.seg + gather.size() * seg_bytes, scatter.data(), scatter.size() * seg_bytes);
  }
  // A lone problem read in place has nothing to upload but cu_seqlens. With a quantized recipe they
  // ride in the first kernel's parameters (sageattn.h, host_cu_seqlens_q/k): no copy, no H2D event,
  // two driver calls fewer on the context lock every worker shares.
  const bool cu_in_params = read_in_place && gather.empty() && params.config.recipe != SAGE_RECIPE_UNQUANTIZED &&
                            params.batch <= SAGE_INLINE_CU_SEQLENS_MAX;
  if (cu_in_params) {
    params.host_cu_seqlens_q = reinterpret_cast<const int32_t*>(slot.host_in + l.cu_q);
    params.host_cu_seqlens_k = reinterpret_cast<const int32_t*>(slot.host_in + l.cu_k);
  } else if (any_direct) {
    AddCopy(h2d, slot.dev_in + l.cu_q, slot.host_in + l.cu_q, table_end - l.cu_q);
  } else {
    // Everything is in the staging: one copy, alignment gaps included.
    h2d.assign(1, Copy{slot.dev_in, slot.host_in, table_end});
  }
  const auto* dev_table = reinterpret_cast<const sage_copy_segment_t*>(slot.dev_in + l.seg);

  params.q = read_in_place ? lone.q.data : slot.dev_in + l.q;
  params.k = read_in_place ? lone.k.data : slot.dev_in + l.k;
  params.v = read_in_place ? lone.v.data : slot.dev_in + l.v;
  params.cu_seqlens_q = reinterpret_cast<const int32_t*>(slot.dev_in + l.cu_q);
  params.cu_seqlens_k = reinterpret_cast<const int32_t*>(slot.dev_in + l.cu_k);
  params.o = write_in_place ? static_cast<void*>(lone.o_into.data()) : slot.dev_out + l.o;
  params.lse = !want_lse         ? nullptr
               : write_in_place ? lone.lse_into.data()
                                : reinterpret_cast<float*>(slot.dev_out + l.lse);
  params.workspace = slot.dev_ws;
  params.workspace_bytes = slot.cap.ws_bytes;

  cudaStream_t st = slot.stream;
  SAGE_CUDA_RETURN_IF_ERROR(FromCuda(cudaEventRecord(slot.ev[0], st), "cudaEventRecord"));
  const bool has_h2d = !h2d.empty() || !gather.empty();
  if (has_h2d) {
    SAGE_CUDA_RETURN_IF_ERROR(FromCuda(IssueCopies(h2d, st), "upload inputs"));
    SAGE_CUDA_RETURN_IF_ERROR(FromSage(sage_copy_segments(dev_table, static_cast<int>(gather.size()), gather_max,
                                                          reinterpret_cast<sage_stream_t>(st)),
                                       "gather device inputs"));
    SAGE_CUDA_RETURN_IF_ERROR(FromCuda(cudaEventRecord(slot.ev[1], st), "cudaEventRecord"));
  }
  SAGE_CUDA_RETURN_IF_ERROR(FromSage(sage_attn_forward(&params, reinterpret_cast<sage_stream_t>(st)), "forward"));
  SAGE_CUDA_RETURN_IF_ERROR(FromCuda(cudaEventRecord(slot.ev[2], st), "cudaEventRecord"));
  // O written in place (CUDA shared memory) leaves nothing to bring back: no D2H stage, and no event
  // for it (every driver call takes the context's lock, which all workers contend for).
  const bool has_d2h = !scatter.empty() || !d2h.empty();
  if (has_d2h) {
    SAGE_CUDA_RETURN_IF_ERROR(FromSage(sage_copy_segments(dev_table + gather.size(), static_cast<int>(scatter.size()),
                                                          scatter_max, reinterpret_cast<sage_stream_t>(st)),
                                       "scatter device outputs"));
    SAGE_CUDA_RETURN_IF_ERROR(FromCuda(IssueCopies(d2h, st), "download outputs"));
    SAGE_CUDA_RETURN_IF_ERROR(FromCuda(cudaEventRecord(slot.ev[3], st), "cudaEventRecord"));
  }
  SAGE_CUDA_RETURN_IF_ERROR(FromCuda(cudaStreamSynchronize(st), "attention"));

  AttnOutput out;
  if (into) {
    RunStaging(out_segments);
    out.placement = OutputPlacement::kCallerBuffers;
  } else {
    const size_t n = static_cast<size_t>(in.q.numel());
    StageSegment o_seg{slot.host_out + l.o, dtype, nullptr, dtype, n};
    if (in.output_form != OutputForm::kFloat) {
      out.o_native.resize(n * 2);  // the kernel's codes as they are (no decode; the codec moves them)
      out.o_native_dtype = dtype;
      o_seg.dst = out.o_native.data();
    } else {
      out.o.resize(n);
      o_seg.dst = out.o.data();
      o_seg.dst_dtype = DType::kF32;
    }
    RunStaging(std::span<const StageSegment>(&o_seg, 1));
    if (want_lse) {
      out.lse.resize(static_cast<size_t>(lse_elements));
      std::memcpy(out.lse.data(), slot.host_out + l.lse, out.lse.size() * sizeof(float));
    }
  }
  // Stages that did not happen are 0; the kernels' stage starts where the uploads ended, if any.
  float ms[3] = {0, 0, 0};
  const auto elapsed = [](float* out, cudaEvent_t from, cudaEvent_t to) {
    return FromCuda(cudaEventElapsedTime(out, from, to), "cudaEventElapsedTime");
  };
  if (has_h2d) SAGE_CUDA_RETURN_IF_ERROR(elapsed(&ms[0], slot.ev[0], slot.ev[1]));
  SAGE_CUDA_RETURN_IF_ERROR(elapsed(&ms[1], has_h2d ? slot.ev[1] : slot.ev[0], slot.ev[2]));
  if (has_d2h) SAGE_CUDA_RETURN_IF_ERROR(elapsed(&ms[2], slot.ev[2], slot.ev[3]));
  out.device_timings = DeviceTimings{ms[0] * 1e3, ms[1] * 1e3, ms[2] * 1e3, device_, slot.index};
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
