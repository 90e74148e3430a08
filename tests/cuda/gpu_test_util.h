// Shared helpers of the GPU tests (tests/cuda/*_gpu_test.cc): device RAII, input generation
// (Gaussian and outlier-heavy), ragged varlen batches, one GPU run through the C API with poisoned
// outputs, the CPU emulation and the double oracle, and THE tolerance table.
//
// The rule every kernel test applies (after FlashAttention-3's tests):
//   error(GPU vs double oracle) <= k * error(CPU emulation of the same recipe vs oracle) + atol
// with k and atol per recipe in ToleranceFor() below, the only place they are set.
#pragma once

#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <numeric>
#include <random>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "kernels/include/sageattn.h"
#include "kernels/reference/attention_problem.h"
#include "kernels/reference/dtype.h"
#include "kernels/reference/numerics.h"
#include "kernels/reference/oracle.h"
#include "kernels/reference/recipe.h"
#include "tests/cuda/gpu_test_emulation.h"

namespace sage::gputest {

// ---------------------------------------------------------------------------------------------
// GPU presence and CUDA checks
// ---------------------------------------------------------------------------------------------

inline bool GpuVisible() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    (void)cudaGetLastError();  // clear the sticky "no driver" error
    return false;
  }
  return n > 0;
}

inline int DeviceSm() {
  int dev = 0, major = 0, minor = 0;
  if (cudaGetDevice(&dev) != cudaSuccess) return 0;
  cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev);
  cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, dev);
  return major * 10 + minor;
}

// Put first in every GPU test body.
#define SAGE_SKIP_WITHOUT_GPU()                                        \
  do {                                                                 \
    if (!::sage::gputest::GpuVisible()) GTEST_SKIP() << "no CUDA GPU visible"; \
  } while (0)

#define SAGE_CUDA_ASSERT(expr)                                                         \
  do {                                                                                 \
    const cudaError_t sage_err_ = (expr);                                              \
    ASSERT_EQ(sage_err_, cudaSuccess) << #expr << ": " << cudaGetErrorString(sage_err_); \
  } while (0)

inline absl::Status CudaStatus(cudaError_t err, const char* what) {
  if (err == cudaSuccess) return absl::OkStatus();
  return absl::InternalError(absl::StrCat(what, ": ", cudaGetErrorString(err)));
}

inline absl::Status SageStatus(sage_status_t s, const char* what) {
  if (s == SAGE_OK) return absl::OkStatus();
  return absl::InternalError(
      absl::StrCat(what, ": ", sage_status_name(s), ": ", sage_last_error()));
}

// ---------------------------------------------------------------------------------------------
// RAII
// ---------------------------------------------------------------------------------------------

// An owning device allocation of `bytes` bytes. Move-only.
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  explicit DeviceBuffer(size_t bytes) { (void)Allocate(bytes); }
  ~DeviceBuffer() { Reset(); }
  DeviceBuffer(DeviceBuffer&& o) noexcept : ptr_(std::exchange(o.ptr_, nullptr)), bytes_(o.bytes_) {}
  DeviceBuffer& operator=(DeviceBuffer&& o) noexcept {
    if (this != &o) {
      Reset();
      ptr_ = std::exchange(o.ptr_, nullptr);
      bytes_ = o.bytes_;
    }
    return *this;
  }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;

  absl::Status Allocate(size_t bytes) {
    Reset();
    bytes_ = bytes;
    if (bytes == 0) return absl::OkStatus();
    return CudaStatus(cudaMalloc(&ptr_, bytes), "cudaMalloc");
  }
  absl::Status Upload(const void* host, size_t bytes, cudaStream_t stream) {
    if (bytes > bytes_) return absl::InvalidArgumentError("upload larger than buffer");
    return CudaStatus(cudaMemcpyAsync(ptr_, host, bytes, cudaMemcpyHostToDevice, stream), "upload");
  }
  template <class T>
  absl::Status Upload(const std::vector<T>& v, cudaStream_t stream) {
    if (Size() < v.size() * sizeof(T)) {
      auto st = Allocate(v.size() * sizeof(T));
      if (!st.ok()) return st;
    }
    return Upload(v.data(), v.size() * sizeof(T), stream);
  }
  // Every byte 0xFF: NaN in fp32, fp16 and bf16 alike, so unwritten outputs show up.
  absl::Status Poison(cudaStream_t stream) {
    return CudaStatus(cudaMemsetAsync(ptr_, 0xFF, bytes_, stream), "poison");
  }
  template <class T>
  absl::Status Download(std::vector<T>* out, cudaStream_t stream) const {
    out->resize(bytes_ / sizeof(T));
    auto st = CudaStatus(cudaMemcpyAsync(out->data(), ptr_, bytes_, cudaMemcpyDeviceToHost, stream),
                         "download");
    if (!st.ok()) return st;
    return CudaStatus(cudaStreamSynchronize(stream), "sync");
  }

  void* get() const { return ptr_; }
  template <class T>
  T* as() const { return static_cast<T*>(ptr_); }
  size_t Size() const { return ptr_ ? bytes_ : 0; }
  void Reset() {
    if (ptr_) cudaFree(ptr_);
    ptr_ = nullptr;
    bytes_ = 0;
  }

 private:
  void* ptr_ = nullptr;
  size_t bytes_ = 0;
};

// An owning non-blocking stream (never the default stream).
class Stream {
 public:
  Stream() {
    if (cudaStreamCreateWithFlags(&s_, cudaStreamNonBlocking) != cudaSuccess) s_ = nullptr;
  }
  ~Stream() {
    if (s_) cudaStreamDestroy(s_);
  }
  Stream(const Stream&) = delete;
  Stream& operator=(const Stream&) = delete;
  cudaStream_t get() const { return s_; }
  sage_stream_t sage() const { return reinterpret_cast<sage_stream_t>(s_); }

 private:
  cudaStream_t s_ = nullptr;
};

// ---------------------------------------------------------------------------------------------
// Inputs
// ---------------------------------------------------------------------------------------------

enum class InputDist {
  kGaussian,  // N(0,1) everywhere
  kOutliers,  // K per-channel bias (as real LLMs have), Q outlier channels, V channel offset
};

struct ProblemSpec {
  std::vector<int> q_lens;  // one entry per sequence
  std::vector<int> k_lens;  // empty: same as q_lens
  int hq = 4;
  int hkv = 4;
  int d = 128;
  MaskMode mask = MaskMode::kNone;
  DType dtype = DType::kF16;
  InputDist dist = InputDist::kOutliers;
  LseMode lse = LseMode::kNatural;
  uint64_t seed = 1;
};

inline std::string Describe(const ProblemSpec& s) {
  std::string lens;
  for (size_t i = 0; i < s.q_lens.size(); ++i) {
    absl::StrAppend(&lens, i ? "," : "", s.q_lens[i]);
    if (!s.k_lens.empty()) absl::StrAppend(&lens, "/", s.k_lens[i]);
  }
  return absl::StrCat("lens[", lens, "] hq=", s.hq, " hkv=", s.hkv, " d=", s.d,
                      s.mask == MaskMode::kCausal ? " causal" : " full", " ", std::string(DTypeName(s.dtype)),
                      s.dist == InputDist::kOutliers ? " outliers" : " gaussian", " seed=", s.seed);
}

inline std::vector<int32_t> CuSeqlens(const std::vector<int>& lens) {
  std::vector<int32_t> cu(lens.size() + 1, 0);
  for (size_t i = 0; i < lens.size(); ++i) cu[i + 1] = cu[i] + lens[i];
  return cu;
}

// Host copy of one problem, 16-bit inputs stored as raw bits.
struct HostProblem {
  ProblemSpec spec;
  std::vector<uint16_t> q, k, v;
  std::vector<int32_t> cu_q, cu_k;

  int64_t total_q() const { return cu_q.back(); }
  int64_t total_k() const { return cu_k.back(); }
  int max_q() const { return *std::max_element(spec.q_lens.begin(), spec.q_lens.end()); }
  int max_k() const {
    const auto& kl = spec.k_lens.empty() ? spec.q_lens : spec.k_lens;
    return *std::max_element(kl.begin(), kl.end());
  }
  float scale() const { return 1.0f / std::sqrt(static_cast<float>(spec.d)); }

  AttnInput Input() const {
    AttnInput in;
    in.q = TensorView{spec.dtype, q.data(), total_q(), spec.hq, spec.d};
    in.k = TensorView{spec.dtype, k.data(), total_k(), spec.hkv, spec.d};
    in.v = TensorView{spec.dtype, v.data(), total_k(), spec.hkv, spec.d};
    in.cu_seqlens_q = cu_q;
    in.cu_seqlens_k = cu_k;
    in.mask = spec.mask;
    in.softmax_scale = scale();
    in.lse = spec.lse;
    return in;
  }
};

inline uint16_t Encode16(float x, DType t) {
  return t == DType::kBF16 ? EncodeBf16(x) : EncodeFp16(x);
}
inline float Decode16(uint16_t b, DType t) { return t == DType::kBF16 ? DecodeBf16(b) : DecodeFp16(b); }

inline HostProblem MakeProblem(const ProblemSpec& spec) {
  HostProblem p;
  p.spec = spec;
  p.cu_q = CuSeqlens(spec.q_lens);
  p.cu_k = CuSeqlens(spec.k_lens.empty() ? spec.q_lens : spec.k_lens);
  std::mt19937_64 rng(spec.seed);
  std::normal_distribution<float> n01(0.0f, 1.0f);
  const int d = spec.d;
  std::vector<float> k_bias(d, 0.0f), q_gain(d, 1.0f), v_off(d, 0.0f);
  if (spec.dist == InputDist::kOutliers) {
    for (int c = 0; c < d; ++c) {
      k_bias[c] = 3.0f * n01(rng);          // K channel bias: what K smoothing removes
      v_off[c] = 2.0f * n01(rng);           // V channel offset
    }
    for (int i = 0; i < std::max(1, d / 32); ++i) {
      q_gain[rng() % d] = 8.0f;             // Q outlier channels
      k_bias[rng() % d] = 12.0f;            // a few very large K channels
    }
  }
  auto fill = [&](std::vector<uint16_t>* out, int64_t tokens, int heads,
                  const std::vector<float>& gain, const std::vector<float>& bias) {
    out->resize(static_cast<size_t>(tokens) * heads * d);
    for (int64_t t = 0; t < tokens; ++t)
      for (int h = 0; h < heads; ++h)
        for (int c = 0; c < d; ++c)
          (*out)[(t * heads + h) * d + c] = Encode16(gain[c] * n01(rng) + bias[c], spec.dtype);
  };
  const std::vector<float> ones(d, 1.0f), zeros(d, 0.0f);
  fill(&p.q, p.total_q(), spec.hq, q_gain, zeros);
  fill(&p.k, p.total_k(), spec.hkv, ones, k_bias);
  fill(&p.v, p.total_k(), spec.hkv, ones, v_off);
  return p;
}

// ---------------------------------------------------------------------------------------------
// Recipes: C enum <-> reference config
// ---------------------------------------------------------------------------------------------

inline Recipe ToRecipe(sage_recipe_t r) { return static_cast<Recipe>(static_cast<int>(r)); }

// The named recipe's default configuration, in both vocabularies.
inline sage_recipe_config_t DefaultCConfig(sage_recipe_t r) {
  const RecipeConfig c = ConfigFor(ToRecipe(r));
  sage_recipe_config_t out{};
  out.recipe = r;
  out.granularity = c.granularity == QuantGranularity::kPerBlock  ? SAGE_GRAN_PER_BLOCK
                    : c.granularity == QuantGranularity::kPerWarp ? SAGE_GRAN_PER_WARP
                                                                  : SAGE_GRAN_PER_THREAD;
  out.qk_smoothing = c.qk_smoothing == QkSmoothing::kNone ? SAGE_SMOOTH_NONE
                     : c.qk_smoothing == QkSmoothing::kK  ? SAGE_SMOOTH_K
                                                          : SAGE_SMOOTH_QK;
  out.v_smoothing = c.v_smoothing == VSmoothing::kMean ? SAGE_VSMOOTH_MEAN : SAGE_VSMOOTH_NONE;
  out.accumulation =
      c.accumulation == PvAccumulation::kFp22Only ? SAGE_ACCUM_FP22_ONLY : SAGE_ACCUM_TWO_LEVEL;
  return out;
}

inline RecipeConfig ToReferenceConfig(const sage_recipe_config_t& c) {
  RecipeConfig r = ConfigFor(ToRecipe(c.recipe));
  r.granularity = c.granularity == SAGE_GRAN_PER_BLOCK  ? QuantGranularity::kPerBlock
                  : c.granularity == SAGE_GRAN_PER_WARP ? QuantGranularity::kPerWarp
                                                        : QuantGranularity::kPerThread;
  r.qk_smoothing = c.qk_smoothing == SAGE_SMOOTH_NONE ? QkSmoothing::kNone
                   : c.qk_smoothing == SAGE_SMOOTH_K  ? QkSmoothing::kK
                                                      : QkSmoothing::kQK;
  r.v_smoothing = c.v_smoothing == SAGE_VSMOOTH_MEAN ? VSmoothing::kMean : VSmoothing::kNone;
  r.accumulation =
      c.accumulation == SAGE_ACCUM_FP22_ONLY ? PvAccumulation::kFp22Only : PvAccumulation::kTwoLevel;
  return r;
}

// ---------------------------------------------------------------------------------------------
// Errors and the tolerance table
// ---------------------------------------------------------------------------------------------

struct ErrorStats {
  double rel_l1 = 0;   // Σ|x − ref| / Σ|ref|
  double cosine = 0;   // <x, ref> / (|x| |ref|)
  double max_abs = 0;  // max |x − ref|
  double lse_max_abs = 0;  // max |lse − ref_lse| over rows whose ref is finite
};

inline ErrorStats Compare(std::span<const float> o, std::span<const double> ref,
                          std::span<const float> lse = {}, std::span<const double> ref_lse = {}) {
  ErrorStats e;
  double num = 0, den = 0, dot = 0, nx = 0, nr = 0;
  for (size_t i = 0; i < ref.size() && i < o.size(); ++i) {
    const double x = o[i], r = ref[i], d = std::abs(x - r);
    num += d;
    den += std::abs(r);
    dot += x * r;
    nx += x * x;
    nr += r * r;
    e.max_abs = std::max(e.max_abs, d);
  }
  e.rel_l1 = den > 0 ? num / den : num;
  e.cosine = (nx > 0 && nr > 0) ? dot / std::sqrt(nx * nr) : (nx == nr ? 1.0 : 0.0);
  for (size_t i = 0; i < ref_lse.size() && i < lse.size(); ++i) {
    if (std::isfinite(ref_lse[i])) e.lse_max_abs = std::max(e.lse_max_abs, std::abs(lse[i] - ref_lse[i]));
  }
  return e;
}

struct Tolerance {
  double k;          // allowed multiple of the CPU emulation's error
  double atol_l1;    // added to the relative-L1 bound
  double atol_lse;   // added to the LSE max-abs bound (natural log units)
};

// THE per-recipe table. atol covers what the GPU does and the emulation may not: ex2.approx,
// fp32 summation order, and the final fp16/bf16 rounding of O (2^-11 / 2^-8 relative, so bf16
// gets a larger atol).
inline Tolerance ToleranceFor(sage_recipe_t recipe, DType out_dtype) {
  const double out_round = out_dtype == DType::kBF16 ? 4e-3 : 6e-4;
  switch (recipe) {
    case SAGE_RECIPE_UNQUANTIZED: return {2.0, out_round + 5e-4, 2e-3};
    case SAGE_RECIPE_INT8_QK_FP16_PV: return {1.5, out_round + 1e-3, 5e-3};
    case SAGE_RECIPE_INT8_QK_FP8_PV: return {1.5, out_round + 2e-3, 5e-3};
    case SAGE_RECIPE_INT4_QK_FP8_PV: return {1.5, out_round + 4e-3, 2e-2};
  }
  return {1.0, 0.0, 0.0};
}

// ---------------------------------------------------------------------------------------------
// One GPU run through the C API
// ---------------------------------------------------------------------------------------------

struct GpuResult {
  std::vector<float> o;    // [total_q, Hq, D]
  std::vector<float> lse;  // [total_q, Hq] when requested
  int unwritten_o = 0;     // NaN left in O from the poison
  int nan_lse = 0;         // NaN left in LSE (−inf is a legal value)
};

// Device copies of a problem plus output/workspace buffers.
struct DeviceProblem {
  DeviceBuffer q, k, v, o, lse, cu_q, cu_k, workspace;

  absl::Status Upload(const HostProblem& p, cudaStream_t s) {
    for (auto st : {q.Upload(p.q, s), k.Upload(p.k, s), v.Upload(p.v, s), cu_q.Upload(p.cu_q, s),
                    cu_k.Upload(p.cu_k, s)}) {
      if (!st.ok()) return st;
    }
    auto st = o.Allocate(p.q.size() * sizeof(uint16_t));
    if (st.ok() && p.spec.lse == LseMode::kNatural)
      st = lse.Allocate(static_cast<size_t>(p.total_q()) * p.spec.hq * sizeof(float));
    return st;
  }

  sage_attn_params_t Params(const HostProblem& p, const sage_recipe_config_t& cfg) const {
    sage_attn_params_t prm{};
    prm.config = cfg;
    prm.dtype = p.spec.dtype == DType::kBF16 ? SAGE_DTYPE_BF16 : SAGE_DTYPE_F16;
    prm.q = q.get();
    prm.k = k.get();
    prm.v = v.get();
    prm.o = o.get();
    prm.lse = p.spec.lse == LseMode::kNatural ? lse.as<float>() : nullptr;
    prm.cu_seqlens_q = cu_q.as<int32_t>();
    prm.cu_seqlens_k = cu_k.as<int32_t>();
    prm.batch = static_cast<int32_t>(p.spec.q_lens.size());
    prm.max_seqlen_q = p.max_q();
    prm.max_seqlen_k = p.max_k();
    prm.total_q = p.total_q();
    prm.total_k = p.total_k();
    prm.num_q_heads = p.spec.hq;
    prm.num_kv_heads = p.spec.hkv;
    prm.head_dim = p.spec.d;
    prm.mask = p.spec.mask == MaskMode::kCausal ? SAGE_MASK_CAUSAL : SAGE_MASK_NONE;
    prm.softmax_scale = p.scale();
    prm.workspace = workspace.get();
    prm.workspace_bytes = workspace.Size();
    return prm;
  }

  // Params whose workspace is big enough for them: sized by sage_attn_workspace_size and grown
  // when the current one is smaller (a shape error comes back as the library's status).
  absl::StatusOr<sage_attn_params_t> ParamsWithWorkspace(const HostProblem& p, const sage_recipe_config_t& cfg) {
    sage_attn_params_t prm = Params(p, cfg);
    size_t bytes = 0;
    if (auto s = sage_attn_workspace_size(&prm, &bytes); s != SAGE_OK) return SageStatus(s, "workspace_size");
    if (workspace.Size() < bytes) {
      if (absl::Status st = workspace.Allocate(bytes); !st.ok()) return st;
    }
    return Params(p, cfg);
  }
};

inline absl::StatusOr<GpuResult> RunGpu(const HostProblem& p, const sage_recipe_config_t& cfg,
                                        const Stream& stream) {
  DeviceProblem dp;
  absl::Status st = dp.Upload(p, stream.get());
  if (!st.ok()) return st;
  absl::StatusOr<sage_attn_params_t> params = dp.ParamsWithWorkspace(p, cfg);
  if (!params.ok()) return params.status();
  sage_attn_params_t prm = *params;
  if (st = dp.o.Poison(stream.get()); !st.ok()) return st;
  if (dp.lse.get() != nullptr && !(st = dp.lse.Poison(stream.get())).ok()) return st;
  if (auto s = sage_attn_forward(&prm, stream.sage()); s != SAGE_OK) return SageStatus(s, "forward");
  if (st = CudaStatus(cudaStreamSynchronize(stream.get()), "forward sync"); !st.ok()) return st;

  GpuResult r;
  std::vector<uint16_t> o_bits;
  if (st = dp.o.Download(&o_bits, stream.get()); !st.ok()) return st;
  r.o.resize(o_bits.size());
  for (size_t i = 0; i < o_bits.size(); ++i) {
    r.o[i] = Decode16(o_bits[i], p.spec.dtype);
    if (std::isnan(r.o[i])) ++r.unwritten_o;
  }
  if (dp.lse.get() != nullptr) {
    if (st = dp.lse.Download(&r.lse, stream.get()); !st.ok()) return st;
    for (float x : r.lse) r.nan_lse += std::isnan(x) ? 1 : 0;
  }
  return r;
}

// ---------------------------------------------------------------------------------------------
// The whole check: GPU vs oracle within k × (CPU emulation vs oracle) + atol
// ---------------------------------------------------------------------------------------------

inline void CheckRecipeAgainstEmulation(const ProblemSpec& spec, const sage_recipe_config_t& cfg) {
  SCOPED_TRACE(Describe(spec));
  const HostProblem p = MakeProblem(spec);
  Stream stream;
  ASSERT_NE(stream.get(), nullptr);
  absl::StatusOr<GpuResult> gpu = RunGpu(p, cfg, stream);
  ASSERT_TRUE(gpu.ok()) << gpu.status();
  EXPECT_EQ(gpu->unwritten_o, 0) << "O elements left unwritten (NaN poison)";
  EXPECT_EQ(gpu->nan_lse, 0) << "LSE elements left unwritten or NaN";

  const AttnInput in = p.Input();
  absl::StatusOr<ExactOutput> exact = AttendExact(in);
  ASSERT_TRUE(exact.ok()) << exact.status();
  absl::StatusOr<AttnOutput> emu = CpuEmulation(in, ToReferenceConfig(cfg));
  ASSERT_TRUE(emu.ok()) << emu.status();

  const bool want_lse = spec.lse == LseMode::kNatural;
  const ErrorStats eg = Compare(gpu->o, exact->o, want_lse ? std::span<const float>(gpu->lse)
                                                           : std::span<const float>(),
                                exact->lse);
  const ErrorStats ec = Compare(emu->o, exact->o, want_lse ? std::span<const float>(emu->lse)
                                                           : std::span<const float>(),
                                exact->lse);
  const Tolerance tol = ToleranceFor(cfg.recipe, spec.dtype);
  EXPECT_LE(eg.rel_l1, tol.k * ec.rel_l1 + tol.atol_l1)
      << "GPU relL1 " << eg.rel_l1 << " (cos " << eg.cosine << ") vs CPU emulation relL1 " << ec.rel_l1
      << " (cos " << ec.cosine << ")";
  if (want_lse) {
    EXPECT_LE(eg.lse_max_abs, tol.k * ec.lse_max_abs + tol.atol_lse)
        << "GPU LSE max abs err " << eg.lse_max_abs << " vs CPU emulation " << ec.lse_max_abs;
    // Rows that see no key: LSE must be −inf (and O zero, covered by the O comparison).
    for (size_t i = 0; i < exact->lse.size(); ++i) {
      if (std::isinf(exact->lse[i])) {
        EXPECT_TRUE(std::isinf(gpu->lse[i]) && gpu->lse[i] < 0) << "row " << i << " lse " << gpu->lse[i];
      }
    }
  }
  ::testing::Test::RecordProperty("gpu_rel_l1", std::to_string(eg.rel_l1));
  ::testing::Test::RecordProperty("cpu_rel_l1", std::to_string(ec.rel_l1));
  std::printf("  [%s] gpu relL1 %.5f cos %.6f | cpu-emu relL1 %.5f cos %.6f | lse err gpu %.2e cpu %.2e\n",
              std::string(RecipeName(ToRecipe(cfg.recipe))).c_str(), eg.rel_l1, eg.cosine, ec.rel_l1,
              ec.cosine, eg.lse_max_abs, ec.lse_max_abs);
}

// The non-finite policy on the GPU (docs/NUMERICS.md, "Non-finite inputs"): a NaN or Inf in one
// element of sequence 0's Q, K or V leaves non-finite every O element the double oracle makes
// non-finite, and sequence 1 (finite inputs, same launch) finite in O and LSE.
inline void CheckNonFiniteInputsComeBackNonFinite(const sage_recipe_config_t& cfg) {
  struct Poison {
    const char* what;
    char tensor;
    int64_t index;  // an element of sequence 0
    float value;
  };
  const float nan = std::numeric_limits<float>::quiet_NaN(), inf = std::numeric_limits<float>::infinity();
  const Poison poisons[] = {{"NaN in q", 'q', 3 * 2 * 128 + 7, nan}, {"NaN in k", 'k', 5 * 2 * 128 + 1, nan},
                            {"NaN in v", 'v', 9 * 2 * 128 + 2, nan}, {"Inf in q", 'q', 11 * 2 * 128, inf},
                            {"-Inf in k", 'k', 17 * 2 * 128 + 3, -inf}};
  for (const Poison& poison : poisons) {
    SCOPED_TRACE(poison.what);
    ProblemSpec spec;
    spec.q_lens = {128, 128};
    spec.hq = 2;
    spec.hkv = 2;
    spec.d = 128;
    HostProblem p = MakeProblem(spec);
    std::vector<uint16_t>& t = poison.tensor == 'q' ? p.q : poison.tensor == 'k' ? p.k : p.v;
    t[static_cast<size_t>(poison.index)] = Encode16(poison.value, spec.dtype);
    Stream stream;
    ASSERT_NE(stream.get(), nullptr);
    absl::StatusOr<GpuResult> gpu = RunGpu(p, cfg, stream);
    ASSERT_TRUE(gpu.ok()) << gpu.status();
    absl::StatusOr<ExactOutput> exact = AttendExact(p.Input());
    ASSERT_TRUE(exact.ok()) << exact.status();
    const size_t seq0 = static_cast<size_t>(128) * spec.hq * spec.d;
    size_t poisoned = 0;
    for (size_t i = 0; i < seq0; ++i) {
      if (std::isfinite(exact->o[i])) continue;
      ++poisoned;
      ASSERT_FALSE(std::isfinite(gpu->o[i])) << "O[" << i << "] is finite: " << gpu->o[i];
    }
    ASSERT_GT(poisoned, 0u) << "the oracle itself gave finite O";
    for (size_t i = seq0; i < gpu->o.size(); ++i) ASSERT_TRUE(std::isfinite(gpu->o[i])) << "sequence 1, O[" << i << "]";
    for (size_t r = 128 * spec.hq; r < gpu->lse.size(); ++r) ASSERT_TRUE(std::isfinite(gpu->lse[r])) << "LSE " << r;
  }
}

// Batch shapes the kernel tests run: ragged lengths (not multiples of 64/128), a length-1
// sequence, GQA/MQA, cross-attention with q_len < k_len and q_len > k_len (causal rows that see no
// key), and a long sequence with several K blocks per Q tile.
struct BatchShape {
  const char* name;
  std::vector<int> q_lens;
  std::vector<int> k_lens;  // empty: self-attention
  int hq, hkv;
};
inline const BatchShape kBatchShapes[] = {
    {"ragged", {130, 1, 257, 64}, {}, 4, 4},
    {"gqa", {77, 300}, {}, 8, 2},
    {"mqa_cross", {50, 3, 1}, {300, 129, 1}, 4, 1},
    {"q_longer", {100, 5}, {40, 5}, 2, 2},
    {"long", {700}, {}, 2, 1},
};

// The outlier-heavy problem with LSE that the kernel tests run on one of the shapes above.
inline ProblemSpec SpecFor(const BatchShape& shape, int d, MaskMode mask, DType dtype, uint64_t seed) {
  ProblemSpec spec;
  spec.q_lens = shape.q_lens;
  spec.k_lens = shape.k_lens;
  spec.hq = shape.hq;
  spec.hkv = shape.hkv;
  spec.d = d;
  spec.mask = mask;
  spec.dtype = dtype;
  spec.dist = InputDist::kOutliers;
  spec.lse = LseMode::kNatural;
  spec.seed = seed;
  return spec;
}

}  // namespace sage::gputest
