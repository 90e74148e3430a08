#include "client/sagectl/problem.h"

#include <cstring>
#include <fstream>
#include <iterator>
#include <random>

#include "absl/strings/str_cat.h"
#include "sageserve/client/tensor.h"

namespace sagectl {
namespace v1 = ::sageserve::v1;

std::vector<std::string> ProblemFlags() {
  return {"batch", "q_len", "k_len", "heads_q", "heads_kv", "head_dim", "dtype", "output_dtype",
          "recipe", "causal", "lse", "seed", "q_file", "k_file", "v_file", "model", "layer", "timestep"};
}

namespace {

absl::StatusOr<v1::DType> ParseDType(const std::string& s) {
  if (s == "fp16") return v1::DTYPE_FP16;
  if (s == "bf16") return v1::DTYPE_BF16;
  if (s == "fp32") return v1::DTYPE_FP32;
  return absl::InvalidArgumentError(absl::StrCat("unknown dtype '", s, "' (fp16, bf16, fp32)"));
}

absl::StatusOr<v1::Recipe> ParseRecipeName(const std::string& s) {
  if (s.empty()) return v1::RECIPE_UNSPECIFIED;
  if (s == "int4_qk_fp8_pv") return v1::RECIPE_INT4_QK_FP8_PV;
  if (s == "int8_qk_fp8_pv") return v1::RECIPE_INT8_QK_FP8_PV;
  if (s == "int8_qk_fp16_pv") return v1::RECIPE_INT8_QK_FP16_PV;
  if (s == "unquantized") return v1::RECIPE_UNQUANTIZED;
  return absl::InvalidArgumentError(absl::StrCat(
      "unknown recipe '", s, "' (int4_qk_fp8_pv, int8_qk_fp8_pv, int8_qk_fp16_pv, unquantized)"));
}

absl::Status ReadRaw(const std::string& path, size_t count, std::vector<uint16_t>* out) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot open ", path));
  std::vector<char> bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (bytes.size() != count * 2) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": ", bytes.size(), " bytes, the shape needs ", count * 2));
  }
  out->resize(count);
  std::memcpy(out->data(), bytes.data(), bytes.size());
  return absl::OkStatus();
}

std::vector<uint16_t> Random(size_t n, bool fp16, std::mt19937& rng) {
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<uint16_t> out(n);
  for (uint16_t& x : out) {
    const float f = normal(rng);
    x = fp16 ? sageserve::FloatToFp16(f) : sageserve::FloatToBf16(f);
  }
  return out;
}

}  // namespace

absl::StatusOr<ProblemSpec> SpecFromArgs(const Args& args) {
  ProblemSpec s;
  auto get = [&](const char* key, int64_t fallback, int64_t* out) -> absl::Status {
    absl::StatusOr<int64_t> v = args.Int(key, fallback);
    if (!v.ok()) return v.status();
    *out = *v;
    return absl::OkStatus();
  };
  int64_t batch = 0, hq = 0, hkv = 0, d = 0, seed = 0;
  for (absl::Status st : {get("batch", s.batch, &batch), get("q_len", s.q_len, &s.q_len),
                          get("k_len", s.k_len, &s.k_len), get("heads_q", s.heads_q, &hq),
                          get("heads_kv", s.heads_kv, &hkv), get("head_dim", s.head_dim, &d),
                          get("seed", s.seed, &seed)}) {
    if (!st.ok()) return st;
  }
  s.batch = static_cast<int>(batch);
  s.heads_q = static_cast<int>(hq);
  s.heads_kv = static_cast<int>(hkv);
  s.head_dim = static_cast<int>(d);
  s.seed = static_cast<uint32_t>(seed);
  absl::StatusOr<v1::DType> dtype = ParseDType(args.Str("dtype", "fp16"));
  if (!dtype.ok()) return dtype.status();
  s.dtype = *dtype;
  if (args.Has("output_dtype")) {
    absl::StatusOr<v1::DType> out = ParseDType(args.Str("output_dtype", ""));
    if (!out.ok()) return out.status();
    s.output_dtype = *out;
  }
  absl::StatusOr<v1::Recipe> recipe = ParseRecipeName(args.Str("recipe", ""));
  if (!recipe.ok()) return recipe.status();
  s.recipe = *recipe;
  s.causal = args.Flag("causal");
  s.return_lse = args.Flag("lse");
  s.q_file = args.Str("q_file", "");
  s.k_file = args.Str("k_file", "");
  s.v_file = args.Str("v_file", "");
  // layer_key for the precision registry: the server runs the model's plan for this layer/timestep.
  s.model = args.Str("model", "");
  for (auto [key, field] : {std::pair{"layer", &s.layer}, std::pair{"timestep", &s.timestep}}) {
    if (!args.Has(key)) continue;
    absl::StatusOr<int64_t> v = args.Int(key, 0);
    if (!v.ok()) return v.status();
    *field = static_cast<int>(*v);
  }
  if (s.batch < 1 || s.q_len < 0 || s.k_len < 0) return absl::InvalidArgumentError("bad batch/q_len/k_len");
  return s;
}

absl::StatusOr<HostProblem> MakeProblem(const ProblemSpec& spec) {
  if (spec.dtype != v1::DTYPE_FP16 && spec.dtype != v1::DTYPE_BF16) {
    return absl::InvalidArgumentError("inputs must be fp16 or bf16");
  }
  HostProblem p;
  p.spec = spec;
  const size_t nq = static_cast<size_t>(p.total_q()) * spec.heads_q * spec.head_dim;
  const size_t nk = static_cast<size_t>(p.total_k()) * spec.heads_kv * spec.head_dim;
  std::mt19937 rng(spec.seed);
  const bool fp16 = spec.dtype == v1::DTYPE_FP16;
  if (!spec.q_file.empty()) {
    for (absl::Status st : {ReadRaw(spec.q_file, nq, &p.q), ReadRaw(spec.k_file, nk, &p.k),
                            ReadRaw(spec.v_file, nk, &p.v)}) {
      if (!st.ok()) return st;
    }
  } else {
    p.q = Random(nq, fp16, rng);
    p.k = Random(nk, fp16, rng);
    p.v = Random(nk, fp16, rng);
  }
  for (int b = 0; b <= spec.batch; ++b) {
    p.cu_q.push_back(static_cast<int32_t>(b * spec.q_len));
    p.cu_k.push_back(static_cast<int32_t>(b * spec.k_len));
  }
  return p;
}

sage::AttnInput HostProblem::AsInput() const {
  const sage::DType dt = spec.dtype == v1::DTYPE_FP16 ? sage::DType::kF16 : sage::DType::kBF16;
  sage::AttnInput in;
  in.q = sage::TensorView{dt, q.data(), total_q(), spec.heads_q, spec.head_dim};
  in.k = sage::TensorView{dt, k.data(), total_k(), spec.heads_kv, spec.head_dim};
  in.v = sage::TensorView{dt, v.data(), total_k(), spec.heads_kv, spec.head_dim};
  in.cu_seqlens_q = cu_q;
  in.cu_seqlens_k = cu_k;
  in.mask = spec.causal ? sage::MaskMode::kCausal : sage::MaskMode::kNone;
  in.lse = spec.return_lse ? sage::LseMode::kNatural : sage::LseMode::kNone;
  return in;
}

v1::AttendRequest HostProblem::ToRequest(const std::string& request_id) const {
  v1::AttendRequest r;
  r.set_request_id(request_id);
  auto set = [&](const std::vector<uint16_t>& data, int64_t tokens, int heads, v1::Tensor* t) {
    const sageserve::Shape3 shape{tokens, heads, spec.head_dim};
    (void)(spec.dtype == v1::DTYPE_FP16 ? sageserve::SetTensorFp16(data, shape, t)
                                        : sageserve::SetTensorBf16(data, shape, t));
  };
  set(q, total_q(), spec.heads_q, r.mutable_q());
  set(k, total_k(), spec.heads_kv, r.mutable_k());
  set(v, total_k(), spec.heads_kv, r.mutable_v());
  for (int32_t c : cu_q) r.add_cu_seqlens_q(c);
  for (int32_t c : cu_k) r.add_cu_seqlens_k(c);
  r.set_mask(spec.causal ? v1::MASK_MODE_CAUSAL : v1::MASK_MODE_NONE);
  r.set_return_lse(spec.return_lse);
  r.set_output_dtype(spec.output_dtype);
  r.set_recipe(spec.recipe);
  if (!spec.model.empty()) {
    r.mutable_layer_key()->set_model(spec.model);
    if (spec.layer.has_value()) r.mutable_layer_key()->set_layer(*spec.layer);
    if (spec.timestep.has_value()) r.mutable_layer_key()->set_timestep(*spec.timestep);
  }
  return r;
}

}  // namespace sagectl
