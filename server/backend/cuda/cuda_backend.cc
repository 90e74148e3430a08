// The CUDA backend: one request = upload Q/K/V and cu_seqlens, one sage_attn_forward on a private
// stream, download O (and LSE) as float. Inputs go to the GPU as they came when they are fp16 or
// bf16 (all three the same type); fp32 (or mixed) inputs are converted to fp16 on the host first,
// because the kernels take 16-bit inputs only. Serialized by a mutex (batching and stream pools
// are a later issue). Every CUDA call is checked; failures come back as absl::Status and the
// backend keeps serving.
#include "server/backend/cuda/cuda_backend.h"

#include <cuda_runtime.h>

#include <algorithm>
#include <cstring>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "kernels/include/sageattn.h"
#include "kernels/reference/numerics.h"

namespace sage::server {
namespace {

absl::Status FromCuda(cudaError_t err, const char* what) {
  if (err == cudaSuccess) return absl::OkStatus();
  const std::string msg = absl::StrCat("cuda backend: ", what, ": ", cudaGetErrorString(err));
  if (err == cudaErrorMemoryAllocation) return absl::ResourceExhaustedError(msg);
  return absl::InternalError(msg);
}

absl::Status FromSage(sage_status_t s, const char* what) {
  if (s == SAGE_OK) return absl::OkStatus();
  const std::string msg = absl::StrCat("cuda backend: ", what, ": ", sage_status_name(s), ": ", sage_last_error());
  switch (s) {
    case SAGE_ERR_INVALID_ARGUMENT: return absl::InvalidArgumentError(msg);
    case SAGE_ERR_UNSUPPORTED: return absl::UnimplementedError(msg);
    case SAGE_ERR_OUT_OF_MEMORY: return absl::ResourceExhaustedError(msg);
    default: return absl::InternalError(msg);
  }
}

#define SAGE_RETURN_IF_ERROR_(expr)        \
  do {                                     \
    absl::Status sage_st_ = (expr);        \
    if (!sage_st_.ok()) return sage_st_;   \
  } while (0)

// A stream-ordered device allocation, freed on the same stream.
class StreamBuffer {
 public:
  explicit StreamBuffer(cudaStream_t s) : stream_(s) {}
  ~StreamBuffer() {
    if (ptr_) cudaFreeAsync(ptr_, stream_);
  }
  StreamBuffer(const StreamBuffer&) = delete;
  StreamBuffer& operator=(const StreamBuffer&) = delete;
  absl::Status Allocate(size_t bytes) {
    if (bytes == 0) return absl::OkStatus();
    return FromCuda(cudaMallocAsync(&ptr_, bytes, stream_), "cudaMallocAsync");
  }
  void* get() const { return ptr_; }

 private:
  cudaStream_t stream_;
  void* ptr_ = nullptr;
};

// Which kernel recipe a reference configuration names; combinations no kernel runs are UNIMPLEMENTED.
absl::StatusOr<sage_recipe_config_t> ToKernelConfig(const RecipeConfig& c) {
  sage_recipe_config_t k{};
  if (c.qk == QkType::kInt4 && c.pv == PvType::kFp8E4M3) k.recipe = SAGE_RECIPE_INT4_QK_FP8_PV;
  else if (c.qk == QkType::kInt8 && c.pv == PvType::kFp8E4M3) k.recipe = SAGE_RECIPE_INT8_QK_FP8_PV;
  else if (c.qk == QkType::kInt8 && c.pv == PvType::kF16) k.recipe = SAGE_RECIPE_INT8_QK_FP16_PV;
  else if (c.qk == QkType::kF16 && c.pv == PvType::kF16) k.recipe = SAGE_RECIPE_UNQUANTIZED;
  else return absl::UnimplementedError(absl::StrCat("cuda backend: no kernel for ", DescribeConfig(c)));
  switch (c.granularity) {
    case QuantGranularity::kPerBlock: k.granularity = SAGE_GRAN_PER_BLOCK; break;
    case QuantGranularity::kPerWarp: k.granularity = SAGE_GRAN_PER_WARP; break;
    case QuantGranularity::kPerThread: k.granularity = SAGE_GRAN_PER_THREAD; break;
  }
  switch (c.qk_smoothing) {
    case QkSmoothing::kNone: k.qk_smoothing = SAGE_SMOOTH_NONE; break;
    case QkSmoothing::kK: k.qk_smoothing = SAGE_SMOOTH_K; break;
    case QkSmoothing::kQK: k.qk_smoothing = SAGE_SMOOTH_QK; break;
  }
  k.v_smoothing = c.v_smoothing == VSmoothing::kMean ? SAGE_VSMOOTH_MEAN : SAGE_VSMOOTH_NONE;
  k.accumulation = c.accumulation == PvAccumulation::kFp22Only ? SAGE_ACCUM_FP22_ONLY : SAGE_ACCUM_TWO_LEVEL;
  return k;
}

// A tensor as the 16-bit bits the kernels read: the caller's buffer when it already is `target`,
// else a host conversion (fp32/bf16 -> fp16 with round-to-nearest-even).
struct Host16 {
  const void* data = nullptr;
  std::vector<uint16_t> converted;
};

Host16 As16(const TensorView& t, DType target) {
  Host16 h;
  if (t.dtype == target) {
    h.data = t.data;
    return h;
  }
  const std::vector<float> f = ToFloatVector(t);
  h.converted.resize(f.size());
  for (size_t i = 0; i < f.size(); ++i) h.converted[i] = target == DType::kBF16 ? EncodeBf16(f[i]) : EncodeFp16(f[i]);
  h.data = h.converted.data();
  return h;
}

class CudaBackend final : public AttentionBackend {
 public:
  CudaBackend(int device, cudaStream_t stream, BackendInfo info, int sm)
      : device_(device), stream_(stream), info_(std::move(info)), sm_(sm) {}
  ~CudaBackend() override {
    cudaSetDevice(device_);
    cudaStreamSynchronize(stream_);
    cudaStreamDestroy(stream_);
  }

  const BackendInfo& info() const override { return info_; }

  absl::StatusOr<AttnOutput> Attend(const AttnInput& in, const RecipeConfig& config) override {
    SAGE_RETURN_IF_ERROR_(ValidateInput(in));
    absl::StatusOr<sage_recipe_config_t> kcfg = ToKernelConfig(config);
    if (!kcfg.ok()) return kcfg.status();
    if (kcfg->recipe == SAGE_RECIPE_INT8_QK_FP8_PV && sm_ < 90) {
      return absl::UnimplementedError("cuda backend: int8_qk_fp8_pv needs sm_90 (wgmma)");
    }
    absl::MutexLock lock(&mu_);
    return Run(in, *kcfg);
  }

 private:
  absl::StatusOr<AttnOutput> Run(const AttnInput& in, const sage_recipe_config_t& kcfg) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    SAGE_RETURN_IF_ERROR_(FromCuda(cudaSetDevice(device_), "cudaSetDevice"));
    const bool all_bf16 = in.q.dtype == DType::kBF16 && in.k.dtype == DType::kBF16 && in.v.dtype == DType::kBF16;
    const DType dt = all_bf16 ? DType::kBF16 : DType::kF16;
    const Host16 q = As16(in.q, dt), k = As16(in.k, dt), v = As16(in.v, dt);
    const int batch = in.batch();
    int max_q = 0, max_k = 0;
    for (int b = 0; b < batch; ++b) {
      max_q = std::max(max_q, in.cu_seqlens_q[b + 1] - in.cu_seqlens_q[b]);
      max_k = std::max(max_k, in.cu_seqlens_k[b + 1] - in.cu_seqlens_k[b]);
    }
    AttnOutput out;
    out.o.assign(static_cast<size_t>(in.q.numel()), 0.0f);
    const bool want_lse = in.lse == LseMode::kNatural;
    if (want_lse) out.lse.assign(static_cast<size_t>(in.q.tokens) * in.q.heads, 0.0f);
    if (in.q.tokens == 0) return out;

    const size_t q_bytes = static_cast<size_t>(in.q.numel()) * 2, kv_bytes = static_cast<size_t>(in.k.numel()) * 2;
    const size_t cu_bytes = static_cast<size_t>(batch + 1) * sizeof(int32_t);
    const size_t lse_bytes = want_lse ? static_cast<size_t>(in.q.tokens) * in.q.heads * sizeof(float) : 0;
    StreamBuffer dq(stream_), dk(stream_), dv(stream_), dout(stream_), dlse(stream_), dcq(stream_), dck(stream_),
        dws(stream_);
    for (auto [buf, bytes] : {std::pair{&dq, q_bytes}, {&dk, kv_bytes}, {&dv, kv_bytes}, {&dout, q_bytes},
                              {&dlse, lse_bytes}, {&dcq, cu_bytes}, {&dck, cu_bytes}}) {
      SAGE_RETURN_IF_ERROR_(buf->Allocate(bytes));
    }
    const auto h2d = cudaMemcpyHostToDevice;
    SAGE_RETURN_IF_ERROR_(FromCuda(cudaMemcpyAsync(dq.get(), q.data, q_bytes, h2d, stream_), "upload q"));
    SAGE_RETURN_IF_ERROR_(FromCuda(cudaMemcpyAsync(dk.get(), k.data, kv_bytes, h2d, stream_), "upload k"));
    SAGE_RETURN_IF_ERROR_(FromCuda(cudaMemcpyAsync(dv.get(), v.data, kv_bytes, h2d, stream_), "upload v"));
    SAGE_RETURN_IF_ERROR_(
        FromCuda(cudaMemcpyAsync(dcq.get(), in.cu_seqlens_q.data(), cu_bytes, h2d, stream_), "upload cu_seqlens_q"));
    SAGE_RETURN_IF_ERROR_(
        FromCuda(cudaMemcpyAsync(dck.get(), in.cu_seqlens_k.data(), cu_bytes, h2d, stream_), "upload cu_seqlens_k"));

    sage_attn_params_t p{};
    p.config = kcfg;
    p.dtype = dt == DType::kBF16 ? SAGE_DTYPE_BF16 : SAGE_DTYPE_F16;
    p.q = dq.get();
    p.k = dk.get();
    p.v = dv.get();
    p.o = dout.get();
    p.lse = want_lse ? static_cast<float*>(dlse.get()) : nullptr;
    p.cu_seqlens_q = static_cast<const int32_t*>(dcq.get());
    p.cu_seqlens_k = static_cast<const int32_t*>(dck.get());
    p.batch = batch;
    p.max_seqlen_q = max_q;
    p.max_seqlen_k = max_k;
    p.total_q = in.q.tokens;
    p.total_k = in.k.tokens;
    p.num_q_heads = in.q.heads;
    p.num_kv_heads = in.k.heads;
    p.head_dim = in.q.head_dim;
    p.mask = in.mask == MaskMode::kCausal ? SAGE_MASK_CAUSAL : SAGE_MASK_NONE;
    p.softmax_scale = in.scale();
    size_t ws_bytes = 0;
    SAGE_RETURN_IF_ERROR_(FromSage(sage_attn_workspace_size(&p, &ws_bytes), "workspace size"));
    SAGE_RETURN_IF_ERROR_(dws.Allocate(ws_bytes));
    p.workspace = dws.get();
    p.workspace_bytes = ws_bytes;
    SAGE_RETURN_IF_ERROR_(FromSage(sage_attn_forward(&p, reinterpret_cast<sage_stream_t>(stream_)), "forward"));

    std::vector<uint16_t> o16(static_cast<size_t>(in.q.numel()));
    SAGE_RETURN_IF_ERROR_(
        FromCuda(cudaMemcpyAsync(o16.data(), dout.get(), q_bytes, cudaMemcpyDeviceToHost, stream_), "download o"));
    if (want_lse) {
      SAGE_RETURN_IF_ERROR_(FromCuda(
          cudaMemcpyAsync(out.lse.data(), dlse.get(), lse_bytes, cudaMemcpyDeviceToHost, stream_), "download lse"));
    }
    SAGE_RETURN_IF_ERROR_(FromCuda(cudaStreamSynchronize(stream_), "attention"));
    for (size_t i = 0; i < o16.size(); ++i) out.o[i] = dt == DType::kBF16 ? DecodeBf16(o16[i]) : DecodeFp16(o16[i]);
    return out;
  }

  const int device_;
  cudaStream_t stream_;
  const BackendInfo info_;
  const int sm_;
  absl::Mutex mu_;
};

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
  if (options.device < 0 || options.device >= count) {
    return absl::InvalidArgumentError(
        absl::StrCat("cuda backend: device ", options.device, " out of range (", count, " visible)"));
  }
  SAGE_RETURN_IF_ERROR_(FromCuda(cudaSetDevice(options.device), "cudaSetDevice"));
  cudaDeviceProp prop{};
  SAGE_RETURN_IF_ERROR_(FromCuda(cudaGetDeviceProperties(&prop, options.device), "cudaGetDeviceProperties"));
  const int sm = prop.major * 10 + prop.minor;
  if (sm < 80) {
    return absl::FailedPreconditionError(
        absl::StrCat("cuda backend: ", prop.name, " is sm_", sm, "; the kernels need sm_80 or newer"));
  }
  cudaStream_t stream = nullptr;
  SAGE_RETURN_IF_ERROR_(FromCuda(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking), "cudaStreamCreate"));

  BackendInfo info;
  info.kind = BackendKind::kCuda;
  info.devices.push_back(DeviceDescription{prop.name, absl::StrCat("sm_", sm), static_cast<int64_t>(prop.totalGlobalMem)});
  info.head_dims.assign(std::begin(kSupportedHeadDims), std::end(kSupportedHeadDims));
  if (sm >= 90) {
    // INT4 runs (its s4 mma is emulated on sm_90, ~20x slower than INT8) but is never the default here.
    info.recipes = {Recipe::kInt8QkFp8Pv, Recipe::kInt8QkFp16Pv, Recipe::kUnquantized, Recipe::kInt4QkFp8Pv};
    info.default_recipe = Recipe::kInt8QkFp8Pv;
  } else {
    info.recipes = {Recipe::kInt8QkFp16Pv, Recipe::kInt4QkFp8Pv, Recipe::kUnquantized};
    info.default_recipe = Recipe::kInt8QkFp16Pv;
  }
  return std::unique_ptr<AttentionBackend>(new CudaBackend(options.device, stream, std::move(info), sm));
}

}  // namespace sage::server
