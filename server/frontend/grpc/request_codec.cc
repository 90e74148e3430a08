#include "server/frontend/grpc/request_codec.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <optional>
#include <cstring>
#include <string>

#include "absl/strings/str_cat.h"
#include "server/backend/encode_output.h"
#include "server/frontend/grpc/wire_enum_table.h"
#include "server/shared_memory/safe_copy.h"

namespace sage::server {
namespace v1 = ::sageserve::v1;

namespace {

constexpr WirePair<Recipe, v1::Recipe> kRecipeWire[] = {
    {Recipe::kInt4QkFp8Pv, v1::RECIPE_INT4_QK_FP8_PV},
    {Recipe::kInt8QkFp8Pv, v1::RECIPE_INT8_QK_FP8_PV},
    {Recipe::kInt8QkFp16Pv, v1::RECIPE_INT8_QK_FP16_PV},
    {Recipe::kUnquantized, v1::RECIPE_UNQUANTIZED},
};

constexpr WirePair<DType, v1::DType> kDTypeWire[] = {
    {DType::kF32, v1::DTYPE_FP32},
    {DType::kF16, v1::DTYPE_FP16},
    {DType::kBF16, v1::DTYPE_BF16},
};

constexpr WirePair<KvStorage, v1::KvStorage> kKvStorageWire[] = {
    {KvStorage::k16Bit, v1::KV_STORAGE_16BIT},
    {KvStorage::kInt8KFp8V, v1::KV_STORAGE_INT8_K_FP8_V},
    {KvStorage::kInt4KFp8V, v1::KV_STORAGE_INT4_K_FP8_V},
};

}  // namespace

sageserve::v1::KvStorage KvStorageToWire(KvStorage storage) { return ToWire(kKvStorageWire, storage); }

std::optional<KvStorage> KvStorageFromWire(sageserve::v1::KvStorage storage) {
  return FromWire(kKvStorageWire, storage);
}

sageserve::v1::Recipe ToWireRecipe(Recipe recipe) {
  return ToWire(kRecipeWire, recipe);
}

absl::StatusOr<Recipe> FromWireRecipe(sageserve::v1::Recipe recipe) {
  if (std::optional<Recipe> r = FromWire(kRecipeWire, recipe)) return *r;
  return absl::InvalidArgumentError(absl::StrCat("recipe: unknown value ", static_cast<int>(recipe)));
}

sageserve::v1::DType ToWireDType(DType dtype) { return ToWire(kDTypeWire, dtype); }

absl::StatusOr<DType> FromWireDType(sageserve::v1::DType dtype) {
  if (std::optional<DType> d = FromWire(kDTypeWire, dtype)) return *d;
  return absl::InvalidArgumentError(
      absl::StrCat("unknown dtype ", static_cast<int>(dtype), " (expected FP32, FP16 or BF16)"));
}

namespace {

absl::Status Invalid(const std::string& field, absl::string_view what) {
  return absl::InvalidArgumentError(absl::StrCat(field, ": ", what));
}

// Checks one wire tensor and returns a view of its bytes (no copy): in the message, beside it
// (`external`), or in a shared-memory region (then `memory` says what kind).
absl::StatusOr<TensorView> DecodeTensor(const std::string& field, const v1::Tensor& t,
                                        const BackendInfo& backend, const RequestLimits& limits,
                                        const std::span<const std::byte>* external,
                                        const SharedMemoryAccess* shm, DecodedRequest& decoded,
                                        std::optional<SharedRange>* shared) {
  if (t.dtype() == v1::DTYPE_UNSPECIFIED) return Invalid(absl::StrCat(field, ".dtype"), "not set");
  absl::StatusOr<DType> dtype = FromWireDType(t.dtype());
  if (!dtype.ok()) return Invalid(absl::StrCat(field, ".dtype"), dtype.status().message());
  if (t.shape_size() != 3) {
    return Invalid(absl::StrCat(field, ".shape"),
                   absl::StrCat("expected 3 dims [tokens, heads, head_dim], got ", t.shape_size()));
  }
  const int64_t tokens = t.shape(0), heads = t.shape(1), head_dim = t.shape(2);
  if (tokens < 0) return Invalid(absl::StrCat(field, ".shape[0]"), absl::StrCat("negative token count ", tokens));
  if (heads <= 0) return Invalid(absl::StrCat(field, ".shape[1]"), absl::StrCat("heads must be > 0, got ", heads));
  if (std::find(backend.head_dims.begin(), backend.head_dims.end(), head_dim) == backend.head_dims.end()) {
    std::string dims;
    for (int d : backend.head_dims) absl::StrAppend(&dims, dims.empty() ? "" : ", ", d);
    return Invalid(absl::StrCat(field, ".shape[2]"),
                   absl::StrCat("head_dim ", head_dim, " is not supported (supported: ", dims, ")"));
  }
  if (tokens > limits.max_tokens) {
    return absl::ResourceExhaustedError(absl::StrCat(field, ".shape[0]: ", tokens,
                                                     " tokens exceed the server limit of ",
                                                     limits.max_tokens));
  }
  if (heads > limits.max_heads) {
    return absl::ResourceExhaustedError(absl::StrCat(field, ".shape[1]: ", heads,
                                                     " heads exceed the server limit of ", limits.max_heads));
  }
  TensorView view;
  view.dtype = *dtype;
  view.tokens = tokens;
  view.heads = static_cast<int32_t>(heads);
  view.head_dim = static_cast<int32_t>(head_dim);
  const size_t sent = external != nullptr ? external->size() : t.data().size();
  if (t.has_shared_memory()) {
    if (sent != 0) return Invalid(field, "set data or shared_memory, not both");
    absl::StatusOr<SharedRange> range = ResolveRef(absl::StrCat(field, ".shared_memory"), t.shared_memory(),
                                                   view.bytes(), DTypeSize(*dtype), shm, decoded.core.regions);
    if (!range.ok()) return range.status();
    view.data = range->bytes.data();
    *shared = *std::move(range);
    return view;
  }
  if (sent != view.bytes()) {
    return Invalid(absl::StrCat(field, ".data"),
                   absl::StrCat(sent, " bytes, expected ", view.bytes(), " for shape [",
                                tokens, ", ", heads, ", ", head_dim, "] ", std::string(DTypeName(*dtype))));
  }
  view.data = external != nullptr ? static_cast<const void*>(external->data()) : t.data().data();
  return view;
}

absl::Status DecodeCuSeqlens(const std::string& field, const google::protobuf::RepeatedField<int32_t>& wire,
                             int64_t total, std::vector<int32_t>* default_store,
                             std::span<const int32_t>* out) {
  if (wire.empty()) {
    *default_store = {0, static_cast<int32_t>(total)};
    *out = std::span<const int32_t>(*default_store);
    return absl::OkStatus();
  }
  if (wire.size() < 2) return Invalid(field, "needs batch + 1 >= 2 entries");
  *out = std::span<const int32_t>(wire.data(), static_cast<size_t>(wire.size()));
  return absl::OkStatus();
}

// Where q, k and v live together: one device's memory, or host memory (pinned only if all are).
absl::Status SettleInputMemory(const std::array<std::optional<SharedRange>, 3>& shared, MemoryKind wire_memory,
                               EngineInput& in) {
  constexpr std::array<const char*, 3> kNames = {"q", "k", "v"};
  int on_device = 0;
  bool all_pinned = true;
  for (size_t i = 0; i < 3; ++i) {
    const MemoryKind m = shared[i] ? shared[i]->memory() : wire_memory;
    if (m == MemoryKind::kDevice) {
      ++on_device;
      const int device = shared[i]->region->device();
      if (in.memory_device >= 0 && device != in.memory_device) {
        return Invalid(absl::StrCat(kNames[i], ".shared_memory"),
                       absl::StrCat("on CUDA device ", device, ", but another input is on device ", in.memory_device,
                                    " (one request runs on one GPU)"));
      }
      in.memory_device = device;
    }
    if (m != MemoryKind::kPinned) all_pinned = false;
  }
  if (on_device != 0 && on_device != 3) {
    return Invalid("q", "q, k and v must all be in CUDA shared memory, or none of them");
  }
  in.memory = on_device == 3 ? MemoryKind::kDevice : all_pinned ? MemoryKind::kPinned : MemoryKind::kPageable;
  return absl::OkStatus();
}

// AttendRequest.o_output / lse_output: resolved, sized for the output, apart from every input.
absl::Status DecodeOutputs(const v1::AttendRequest& request, const SharedMemoryAccess* shm, DecodedRequest& d) {
  EngineInput& in = d.core.input;
  const OutputRefs refs{request.has_o_output() ? &request.o_output() : nullptr,
                        request.has_lse_output() ? &request.lse_output() : nullptr, request.return_lse()};
  const OutputShape shape{in.q.tokens, in.q.heads, in.q.head_dim, in.q.dtype, d.core.output_dtype};
  const auto bytes_of = [](const TensorView& t) {
    return std::span<const std::byte>(static_cast<const std::byte*>(t.data), t.bytes());
  };
  const NamedBytes inputs[] = {{"q", bytes_of(in.q)}, {"k", bytes_of(in.k)}, {"v", bytes_of(in.v)}};
  absl::Status s = ResolveOutputs(refs, shape, inputs, shm, d.core.regions, d.core.output, d.core.output_regions,
                                  in.memory_device);
  if (!s.ok()) return s;
  if (refs.o != nullptr) d.o_output_ref = request.o_output();
  if (refs.lse != nullptr) d.lse_output_ref = request.lse_output();
  return absl::OkStatus();
}

// Copies the system-memory inputs into one server-owned block (the request's staged_inputs) with a
// fault-tolerant copy and points q/k/v there, unless all of them may stay where they are (pinned,
// and each moved by DMA alone: with any input staged the launch gathers every input by CPU, so
// then all are staged). A client that shrank the object meanwhile gets FAILED_PRECONDITION naming
// the field and region.
absl::Status StageInputs(const std::array<std::optional<SharedRange>, 3>& shared, AttendRequest& request) {
  constexpr std::array<const char*, 3> kFields = {"q.shared_memory", "k.shared_memory", "v.shared_memory"};
  constexpr size_t kAlign = 64;
  const std::array<TensorView*, 3> views = {&request.input.q, &request.input.k, &request.input.v};
  bool in_place = request.input.memory == MemoryKind::kPinned;
  for (size_t i = 0; i < 3; ++i) {
    if (shared[i]) in_place = in_place && UsableInPlace(*shared[i], views[i]->dtype, views[i]->bytes());
  }
  const auto staged = [&](size_t i) { return shared[i] && IsSystem(*shared[i]) && !in_place; };
  std::array<size_t, 3> at{};
  size_t total = 0;
  for (size_t i = 0; i < 3; ++i) {
    if (!staged(i)) continue;
    at[i] = total;
    total += (shared[i]->bytes.size() + kAlign - 1) / kAlign * kAlign;
  }
  if (total == 0) return absl::OkStatus();
  request.staged_inputs.reset(new std::byte[total]);  // uninitialized: every used byte is copied in
  request.input.memory = MemoryKind::kPageable;           // the staged block is ordinary memory
  for (size_t i = 0; i < 3; ++i) {
    if (!staged(i)) continue;
    const std::span<std::byte> dst(request.staged_inputs.get() + at[i], shared[i]->bytes.size());
    absl::Status s = CopyFromClient(dst, shared[i]->bytes, kFields[i], shared[i]->region->info().name);
    if (!s.ok()) return s;
    views[i]->data = dst.data();
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::unique_ptr<DecodedRequest>> DecodeAttendRequest(
    const v1::AttendRequest& request, const BackendInfo& backend, const RequestLimits& limits,
    const ExternalTensors* external, const SharedMemoryAccess* shared_memory) {
  auto decoded = std::make_unique<DecodedRequest>();
  EngineInput& in = decoded->core.input;

  if (!request.has_q()) return Invalid("q", "missing");
  if (!request.has_k()) return Invalid("k", "missing");
  if (!request.has_v()) return Invalid("v", "missing");
  std::array<std::optional<SharedRange>, 3> shared;
  absl::StatusOr<TensorView> q = DecodeTensor("q", request.q(), backend, limits, external ? &external->q : nullptr,
                                              shared_memory, *decoded, &shared[0]);
  if (!q.ok()) return q.status();
  absl::StatusOr<TensorView> k = DecodeTensor("k", request.k(), backend, limits, external ? &external->k : nullptr,
                                              shared_memory, *decoded, &shared[1]);
  if (!k.ok()) return k.status();
  absl::StatusOr<TensorView> v = DecodeTensor("v", request.v(), backend, limits, external ? &external->v : nullptr,
                                              shared_memory, *decoded, &shared[2]);
  if (!v.ok()) return v.status();
  absl::Status settled =
      SettleInputMemory(shared, external != nullptr ? external->memory : MemoryKind::kPageable, in);
  if (!settled.ok()) return settled;
  in.q = *q;
  in.k = *k;
  in.v = *v;

  if (in.k.dtype != in.q.dtype) return Invalid("k.dtype", "must equal q.dtype");
  if (in.v.dtype != in.q.dtype) return Invalid("v.dtype", "must equal q.dtype");
  if (in.q.dtype == DType::kF32) {
    // The recipes quantize from 16-bit inputs; FP32 is an output type only.
    return Invalid("q.dtype", "FP32 inputs are not supported (send FP16 or BF16)");
  }
  if (in.k.head_dim != in.q.head_dim) return Invalid("k.shape[2]", "head_dim must equal q's");
  if (in.v.head_dim != in.q.head_dim) return Invalid("v.shape[2]", "head_dim must equal q's");
  if (in.v.heads != in.k.heads) return Invalid("v.shape[1]", "heads must equal k's");
  if (in.v.tokens != in.k.tokens) return Invalid("v.shape[0]", "tokens must equal k's");
  if (in.q.heads % in.k.heads != 0) {
    return Invalid("k.shape[1]", absl::StrCat("q heads (", in.q.heads, ") must be a multiple of k heads (",
                                              in.k.heads, ")"));
  }

  if (request.cu_seqlens_q().empty() != request.cu_seqlens_k().empty()) {
    return Invalid(request.cu_seqlens_q().empty() ? "cu_seqlens_q" : "cu_seqlens_k",
                   "set both cu_seqlens_q and cu_seqlens_k, or neither (one sequence)");
  }
  absl::Status s = DecodeCuSeqlens("cu_seqlens_q", request.cu_seqlens_q(), in.q.tokens,
                                   &decoded->core.default_cu_q, &in.cu_seqlens_q);
  if (!s.ok()) return s;
  s = DecodeCuSeqlens("cu_seqlens_k", request.cu_seqlens_k(), in.k.tokens, &decoded->core.default_cu_k,
                      &in.cu_seqlens_k);
  if (!s.ok()) return s;
  if (in.cu_seqlens_q.size() != in.cu_seqlens_k.size()) {
    return Invalid("cu_seqlens_k", absl::StrCat(in.cu_seqlens_k.size(), " entries, but cu_seqlens_q has ",
                                                in.cu_seqlens_q.size()));
  }

  switch (request.mask()) {
    case v1::MASK_MODE_UNSPECIFIED:
    case v1::MASK_MODE_NONE: in.mask = MaskMode::kNone; break;
    case v1::MASK_MODE_CAUSAL: in.mask = MaskMode::kCausal; break;
    default: return Invalid("mask", absl::StrCat("unknown value ", static_cast<int>(request.mask())));
  }
  if (request.has_softmax_scale()) {
    const float scale = request.softmax_scale();
    if (!std::isfinite(scale) || scale <= 0.0f) {
      return Invalid("softmax_scale", absl::StrCat("must be finite and > 0, got ", scale));
    }
    in.softmax_scale = scale;
  }
  in.lse = request.return_lse() ? LseMode::kNatural : LseMode::kNone;

  if (request.output_dtype() == v1::DTYPE_UNSPECIFIED) {
    decoded->core.output_dtype = in.q.dtype;
  } else {
    absl::StatusOr<DType> out = FromWireDType(request.output_dtype());
    if (!out.ok()) return Invalid("output_dtype", out.status().message());
    decoded->core.output_dtype = *out;
  }

  if (request.recipe() == v1::RECIPE_UNSPECIFIED) {
    decoded->core.recipe = backend.default_recipe;
  } else {
    absl::StatusOr<Recipe> recipe = FromWireRecipe(request.recipe());
    if (!recipe.ok()) return recipe.status();
    if (std::find(backend.recipes.begin(), backend.recipes.end(), *recipe) == backend.recipes.end()) {
      return Invalid("recipe", absl::StrCat(std::string(RecipeName(*recipe)), " is not available on this backend"));
    }
    decoded->core.recipe = *recipe;
  }
  decoded->core.config = ConfigFor(decoded->core.recipe);
  decoded->core.recipe_explicit = request.recipe() != v1::RECIPE_UNSPECIFIED;
  decoded->core.id = request.request_id();
  if (request.has_layer_key() && !request.layer_key().model().empty()) {
    const v1::LayerKey& key = request.layer_key();
    PlanAddress& plan = decoded->core.plan.emplace();
    plan.model = key.model();
    if (key.has_layer()) plan.layer = key.layer();
    if (key.has_timestep()) plan.timestep = key.timestep();
  }

  s = DecodeOutputs(request, shared_memory, *decoded);
  if (!s.ok()) return s;

  // The engine's own checks (cu_seqlens monotonic and in range, GQA, pointers), field-named.
  s = ValidateInput(in);
  if (!s.ok()) return s;
  s = StageInputs(shared, decoded->core);
  if (!s.ok()) return s;
  OutputOffer& offer = decoded->core.output;
  offer.q_dtype = in.q.dtype;
  offer.output_dtype = decoded->core.output_dtype;
  offer.o_bytes = in.q.bytes();
  offer.lse_bytes = in.lse == LseMode::kNatural ? static_cast<size_t>(in.q.tokens) * in.q.heads * sizeof(float) : 0;
  if (external != nullptr) {
    offer.block_o = external->o;
    offer.block_lse = external->lse;
    offer.block_memory = external->memory;
  }
  for (const auto& region : decoded->core.regions) region->CountRequest();
  return decoded;
}

absl::Status EncodeAttendOutput(EngineOutput output, const DecodedRequest& request, v1::AttendResponse* response) {
  const EngineInput& in = request.core.input;
  const bool to_shared = !request.core.output.client_o.empty();
  const bool want_lse = in.lse == LseMode::kNatural;
  v1::Tensor* o = response->mutable_o();
  o->set_dtype(ToWireDType(request.core.output_dtype));
  o->add_shape(in.q.tokens);
  o->add_shape(in.q.heads);
  o->add_shape(in.q.head_dim);
  v1::Tensor* lse = nullptr;
  if (want_lse) {
    lse = response->mutable_lse();
    lse->set_dtype(v1::DTYPE_FP32);
    lse->add_shape(in.q.tokens);
    lse->add_shape(in.q.heads);
  }
  if (to_shared) {
    *o->mutable_shared_memory() = request.o_output_ref;
    if (lse != nullptr) *lse->mutable_shared_memory() = request.lse_output_ref;
  }
  if (to_shared) {
    return WriteClientOutputs(output, request.core.output_dtype, in.lse, request.core.output,
                              request.core.output_regions);
  }
  if (output.placement == OutputPlacement::kCallerBuffers) return absl::OkStatus();
  // O goes into the response's bytes.
  if (output.has_native_o() && output.o_native_dtype == request.core.output_dtype) {
    o->set_data(std::move(output.o_native));  // the kernel's bytes become the response's: no copy
  } else {
    const size_t n = output.o_elements();
    std::string* bytes = o->mutable_data();
    bytes->resize(n * DTypeSize(request.core.output_dtype));
    EncodeO(output, request.core.output_dtype, 0, n, reinterpret_cast<std::byte*>(bytes->data()));
  }
  if (lse != nullptr) {
    lse->mutable_data()->assign(reinterpret_cast<const char*>(output.lse.data()), output.lse.size() * sizeof(float));
  }
  return absl::OkStatus();
}

}  // namespace sage::server
