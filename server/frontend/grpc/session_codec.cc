#include "server/frontend/grpc/session_codec.h"

#include <algorithm>
#include <initializer_list>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "server/frontend/grpc/request_codec.h"
#include "server/frontend/grpc/shared_memory_refs.h"

namespace sage::server {
namespace {

namespace v1 = ::sageserve::v1;

absl::Status Invalid(const std::string& field, const std::string& why) {
  return absl::InvalidArgumentError(absl::StrCat(field, ": ", why));
}

// A step tensor: 16-bit bytes of a [tokens, heads, head_dim] shape, inline or in a registered
// region (k, v and q alike).
struct StepTensor {
  int64_t tokens = 0;
  int heads = 0;
  int head_dim = 0;
  DType dtype = DType::kF16;
  std::span<const std::byte> bytes;
  std::optional<SharedRange> shared;
};

absl::StatusOr<StepTensor> DecodeStepTensor(const std::string& field, const v1::Tensor& t, const SharedMemoryAccess* shm,
                                            HeldRegions& held) {
  if (t.shape_size() != 3) return Invalid(absl::StrCat(field, ".shape"), "expected [tokens, heads, head_dim]");
  absl::StatusOr<DType> dtype = FromWireDType(t.dtype());
  if (!dtype.ok() || (*dtype != DType::kF16 && *dtype != DType::kBF16)) {
    return Invalid(absl::StrCat(field, ".dtype"), "must be FP16 or BF16 (the session's dtype)");
  }
  StepTensor out;
  out.tokens = t.shape(0);
  if (out.tokens < 0 || out.tokens > (int64_t{1} << 24)) return Invalid(absl::StrCat(field, ".shape[0]"), "out of range");
  if (t.shape(1) < 1 || t.shape(1) > 1024 || t.shape(2) < 1 || t.shape(2) > 256) {
    return Invalid(absl::StrCat(field, ".shape"), "heads must be in [1, 1024] and head_dim in [1, 256]");
  }
  out.heads = static_cast<int>(t.shape(1));
  out.head_dim = static_cast<int>(t.shape(2));
  out.dtype = *dtype;
  const size_t want = static_cast<size_t>(out.tokens) * out.heads * out.head_dim * 2;
  if (t.has_shared_memory()) {
    if (!t.data().empty()) return Invalid(field, "set data or shared_memory, not both");
    absl::StatusOr<SharedRange> range = ResolveRef(absl::StrCat(field, ".shared_memory"), t.shared_memory(), want, 2, shm, held);
    if (!range.ok()) return range.status();
    out.bytes = range->bytes;
    out.shared = *std::move(range);
    return out;
  }
  if (t.data().size() != want) {
    return Invalid(absl::StrCat(field, ".data"), absl::StrCat(t.data().size(), " bytes, the shape needs ", want));
  }
  out.bytes = std::as_bytes(std::span<const char>(t.data().data(), t.data().size()));
  return out;
}

// Tokens [first, first + n) of `t` (of `heads` x `head_dim` 16-bit values each).
StepTensor Slice(const StepTensor& t, int64_t first, int64_t n) {
  const size_t row = static_cast<size_t>(t.heads) * t.head_dim * 2;
  StepTensor out = t;
  out.tokens = n;
  out.bytes = t.bytes.subspan(static_cast<size_t>(first) * row, static_cast<size_t>(n) * row);
  if (out.shared.has_value()) {
    out.shared->bytes = out.shared->bytes.subspan(static_cast<size_t>(first) * row, static_cast<size_t>(n) * row);
  }
  return out;
}

// The packed form's tensors, checked against their per-step counts; each step's k, v (and q)
// are then slices of them (Slice), at the offsets the counts give.
struct PackedTensors {
  StepTensor k, v;
  std::optional<StepTensor> q;
  std::vector<int64_t> k_first, q_first;  // per step, the first token / row of its slice
};

absl::StatusOr<PackedTensors> DecodePacked(const v1::AttendSessionRequest& r, const SharedMemoryAccess* shm, HeldRegions& held) {
  const v1::PackedSteps& p = r.packed();
  const int steps = r.steps_size();
  if (p.n_new_size() != steps) {
    return Invalid("packed.n_new", absl::StrCat(p.n_new_size(), " counts for ", steps, " steps (one per step)"));
  }
  if (p.n_q_size() != steps) return Invalid("packed.n_q", absl::StrCat(p.n_q_size(), " counts for ", steps, " steps (one per step)"));
  PackedTensors out;
  int64_t k_tokens = 0, q_rows = 0;
  for (int i = 0; i < steps; ++i) {
    const v1::SessionStep& w = r.steps(i);
    if (w.has_k() || w.has_v() || w.has_q()) {
      return Invalid(absl::StrCat("steps[", i, "].", w.has_k() ? "k" : w.has_v() ? "v" : "q"),
                     "set, but the call is packed (the step's tensors are slices of packed.k, packed.v and packed.q)");
    }
    if (p.n_new(i) < 0 || p.n_new(i) > (int64_t{1} << 24)) return Invalid(absl::StrCat("packed.n_new[", i, "]"), "out of range");
    if (p.n_q(i) < 0 || p.n_q(i) > (int64_t{1} << 24)) return Invalid(absl::StrCat("packed.n_q[", i, "]"), "out of range");
    out.k_first.push_back(k_tokens);
    out.q_first.push_back(q_rows);
    k_tokens += p.n_new(i);
    q_rows += p.n_q(i);
  }
  absl::StatusOr<StepTensor> k = DecodeStepTensor("packed.k", p.k(), shm, held);
  if (!k.ok()) return k.status();
  absl::StatusOr<StepTensor> v = DecodeStepTensor("packed.v", p.v(), shm, held);
  if (!v.ok()) return v.status();
  if (v->tokens != k->tokens || v->heads != k->heads || v->head_dim != k->head_dim || v->dtype != k->dtype) {
    return Invalid("packed.v", "shape and dtype must equal packed.k's");
  }
  if (k->tokens != k_tokens) {
    return Invalid("packed.k.shape[0]", absl::StrCat(k->tokens, " tokens, the steps' n_new add up to ", k_tokens));
  }
  out.k = *std::move(k);
  out.v = *std::move(v);
  if (p.has_q()) {
    absl::StatusOr<StepTensor> q = DecodeStepTensor("packed.q", p.q(), shm, held);
    if (!q.ok()) return q.status();
    if (q->tokens != q_rows) return Invalid("packed.q.shape[0]", absl::StrCat(q->tokens, " rows, the steps' n_q add up to ", q_rows));
    out.q = *std::move(q);
  } else if (q_rows > 0) {
    return Invalid("packed.q", absl::StrCat("absent, but the steps' n_q add up to ", q_rows));
  }
  return out;
}

}  // namespace


void InfoToWire(const SessionInfo& info, v1::SessionInfo* out) {
  out->set_session_id(info.id);
  out->set_model(info.shape.model);
  out->set_layers(info.shape.layers);
  out->set_heads_q(info.shape.heads_q);
  out->set_heads_kv(info.shape.heads_kv);
  out->set_head_dim(info.shape.head_dim);
  out->set_dtype(ToWireDType(info.shape.dtype));
  // kv_storage names the storage of every layer; UNSPECIFIED when layers differ (layer_kv_storages).
  const std::optional<KvStorage> uniform = info.shape.uniform_storage();
  if (uniform.has_value()) out->set_kv_storage(KvStorageToWire(*uniform));
  for (KvStorage st : info.shape.storages) out->add_layer_kv_storages(KvStorageToWire(st));
  out->set_max_tokens(info.shape.max_tokens);
  for (int64_t n : info.layer_lengths) out->add_layer_lengths(n);
  out->set_pages(info.pages);
  // page_tokens: every layer's, or 0 when layers of different storages hold different counts.
  for (int t : info.page_tokens) out->add_layer_page_tokens(t);
  const bool same = std::all_of(info.page_tokens.begin(), info.page_tokens.end(),
                                [&](int t) { return t == info.page_tokens.front(); });
  out->set_page_tokens(same && !info.page_tokens.empty() ? info.page_tokens.front() : 0);
  out->set_idle_ms(info.idle.count());
  out->set_expires_in_ms(info.expires_in.count());
}

absl::StatusOr<SessionShape> ShapeFromWire(const v1::CreateSessionRequest& r) {
  SessionShape s;
  s.model = r.model();
  s.layers = r.layers();
  s.heads_q = r.heads_q();
  s.heads_kv = r.heads_kv();
  s.head_dim = r.head_dim();
  absl::StatusOr<DType> dtype = FromWireDType(r.dtype());
  if (!dtype.ok() || (*dtype != DType::kF16 && *dtype != DType::kBF16)) return Invalid("dtype", "must be FP16 or BF16");
  s.dtype = *dtype;
  // Neither kv_storage nor layer_kv_storages: the model's plan decides (SessionAttend), else 16-bit.
  if (r.kv_storage() != v1::KV_STORAGE_UNSPECIFIED) {
    if (r.layer_kv_storages_size() > 0) return Invalid("layer_kv_storages", "set kv_storage or layer_kv_storages, not both");
    const std::optional<KvStorage> st = KvStorageFromWire(r.kv_storage());
    if (!st.has_value()) return Invalid("kv_storage", absl::StrCat("unknown value ", static_cast<int>(r.kv_storage())));
    if (r.layers() >= 1 && r.layers() <= kMaxSessionLayers) s.storages.assign(static_cast<size_t>(r.layers()), *st);
    else s.storages.push_back(*st);  // the store refuses the layer count, naming it
  }
  for (int i = 0; i < r.layer_kv_storages_size(); ++i) {
    const std::optional<KvStorage> st = KvStorageFromWire(r.layer_kv_storages(i));
    if (!st.has_value()) {
      return Invalid(absl::StrCat("layer_kv_storages[", i, "]"),
                     absl::StrCat("unspecified or unknown (", static_cast<int>(r.layer_kv_storages(i)), ")"));
    }
    s.storages.push_back(*st);
  }
  s.max_tokens = r.max_tokens();
  return s;
}

absl::StatusOr<SessionAttendRequest> DecodeAttendSession(const v1::AttendSessionRequest& r,
                                                         const SharedMemoryAccess* shared_memory) {
  SessionAttendRequest out;
  out.id = r.request_id();
  out.return_lse = r.return_lse();
  if (r.recipe() != v1::RECIPE_UNSPECIFIED) {
    absl::StatusOr<Recipe> recipe = FromWireRecipe(r.recipe());
    if (!recipe.ok()) return recipe.status();
    out.recipe = *recipe;
  }
  std::optional<PackedTensors> packed;
  if (r.has_packed()) {
    absl::StatusOr<PackedTensors> p = DecodePacked(r, shared_memory, out.regions);
    if (!p.ok()) return p.status();
    packed = *std::move(p);
    out.packed = true;
  }
  std::vector<NamedBytes> q_bytes;  // every step's q, in step order (CUDA q must be back to back)
  std::vector<NamedBytes> inputs;   // what o_output / lse_output must not overlap: q, and k / v in regions
  int64_t q_rows = 0;
  const StepTensor* first_q = nullptr;
  StepTensor q0;
  size_t first_q_step = 0;
  for (int i = 0; i < r.steps_size(); ++i) {
    const v1::SessionStep& w = r.steps(i);
    const std::string at = absl::StrCat("steps[", i, "]");
    SessionStepInput st;
    st.session_id = w.session_id();
    st.layer = w.layer();
    st.position = w.position();
    st.step_id = w.step_id();
    // k and v may each be inline or in any registered region (system or CUDA, any of the server's
    // GPUs): the append reads them in place or from a host copy, so no placement rule ties them.
    absl::StatusOr<StepTensor> k = packed.has_value() ? Slice(packed->k, packed->k_first[i], r.packed().n_new(i))
                                                      : DecodeStepTensor(at + ".k", w.k(), shared_memory, out.regions);
    if (!k.ok()) return k.status();
    absl::StatusOr<StepTensor> v = packed.has_value() ? Slice(packed->v, packed->k_first[i], r.packed().n_new(i))
                                                      : DecodeStepTensor(at + ".v", w.v(), shared_memory, out.regions);
    if (!v.ok()) return v.status();
    if (v->tokens != k->tokens || v->heads != k->heads || v->head_dim != k->head_dim || v->dtype != k->dtype) {
      return Invalid(at + ".v", "shape and dtype must equal k's");
    }
    st.n_new = k->tokens;
    st.k = k->bytes;
    st.v = v->bytes;
    st.k_shared = k->shared;
    st.v_shared = v->shared;
    // Inputs o_output / lse_output must not overlap (inline bytes cannot: they are in the message).
    if (k->shared.has_value()) inputs.push_back(NamedBytes{at + ".k", k->bytes});
    if (v->shared.has_value()) inputs.push_back(NamedBytes{at + ".v", v->bytes});
    st.dtype = k->dtype;
    st.kv_heads = k->heads;
    st.head_dim = k->head_dim;
    if (packed.has_value() ? r.packed().n_q(i) > 0 : w.has_q()) {
      absl::StatusOr<StepTensor> q = packed.has_value() ? Slice(*packed->q, packed->q_first[i], r.packed().n_q(i))
                                                        : DecodeStepTensor(at + ".q", w.q(), shared_memory, out.regions);
      if (!q.ok()) return q.status();
      if (q->dtype != k->dtype || q->head_dim != k->head_dim) return Invalid(at + ".q", "dtype and head_dim must equal k's");
      if (first_q == nullptr) {
        q0 = *q;
        first_q = &q0;
        first_q_step = static_cast<size_t>(i);
      } else if (q->heads != first_q->heads) {
        return Invalid(at + ".q.shape[1]", absl::StrCat(q->heads, " heads, steps[", first_q_step, "].q has ", first_q->heads,
                                                        " (one launch per shape)"));
      }
      // CUDA q is read in place as the launch's one Q tensor: each step's must follow the one before.
      const bool on_device = q->shared.has_value() && q->shared->memory() == MemoryKind::kDevice;
      const bool first_on_device = first_q->shared.has_value() && first_q->shared->memory() == MemoryKind::kDevice;
      if (on_device != first_on_device) {
        return Invalid(at + ".q", absl::StrCat(on_device ? "in" : "not in", " CUDA shared memory, but steps[", first_q_step,
                                               "].q is", on_device ? " not" : "", ": every step's q, or none, in CUDA memory"));
      }
      if (on_device) {
        const int device = q->shared->region->device();
        if (out.memory_device >= 0 && device != out.memory_device) {
          return Invalid(at + ".q.shared_memory", absl::StrCat("on CUDA device ", device, ", but steps[", first_q_step,
                                                               "].q is on device ", out.memory_device));
        }
        out.memory_device = device;
        if (!q_bytes.empty() && (q->shared->region != first_q->shared->region ||
                                 q->bytes.data() != q_bytes.back().bytes.data() + q_bytes.back().bytes.size())) {
          return Invalid(at + ".q.shared_memory",
                         absl::StrCat("CUDA shared memory q must directly follow the previous step's q in the same "
                                      "region (offset ", w.q().shared_memory().offset(), "; the launch reads the call's Q "
                                      "in place as one [sum of n_q, Hq, D] tensor)"));
        }
      }
      q_rows += q->tokens;
      q_bytes.push_back(NamedBytes{at + ".q", q->bytes});
      inputs.push_back(q_bytes.back());
      st.n_q = q->tokens;
      st.q = q->bytes;
      st.q_heads = q->heads;
      st.q_shared = q->shared;
    }
    out.steps.push_back(std::move(st));
  }
  const OutputRefs refs{r.has_o_output() ? &r.o_output() : nullptr, r.has_lse_output() ? &r.lse_output() : nullptr,
                        r.return_lse()};
  if (refs.o != nullptr && first_q == nullptr) return Invalid("o_output", "set, but no step carries q (nothing to write)");
  if (first_q != nullptr) {
    const OutputShape shape{q_rows, first_q->heads, first_q->head_dim, first_q->dtype, first_q->dtype};
    absl::Status s = ResolveOutputs(refs, shape, inputs, shared_memory, out.regions, out.output, out.output_regions,
                                    out.memory_device);
    if (!s.ok()) return s;
  } else if (refs.lse != nullptr) {
    return Invalid("lse_output", "set only together with o_output");
  }
  return out;
}

namespace {

// O ([rows, Hq, D]) or LSE ([rows, Hq]) of an answer: `data`, or no data and `ref` when the call
// named o_output / lse_output.
void SetOutput(v1::Tensor* t, v1::DType dtype, std::initializer_list<int64_t> shape, const v1::SharedMemoryRef* ref,
               std::string_view data) {
  t->set_dtype(dtype);
  for (int64_t n : shape) t->add_shape(n);
  if (ref != nullptr) {
    *t->mutable_shared_memory() = *ref;
  } else {
    t->set_data(data.data(), data.size());
  }
}

std::string_view FloatBytes(const std::vector<float>& x) {
  return {reinterpret_cast<const char*>(x.data()), x.size() * sizeof(float)};
}

}  // namespace

void ResultToWire(const SessionAttendResult& r, const v1::AttendSessionRequest& request, v1::AttendSessionResponse* out) {
  const bool want_lse = request.return_lse();
  const bool to_shared = request.has_o_output();
  const v1::DType o_dtype = ToWireDType(r.dtype);
  out->set_recipe(ToWireRecipe(r.recipe));
  v1::Timings* t = out->mutable_timings();
  t->set_queued_us(std::chrono::duration_cast<std::chrono::microseconds>(r.timings.queued).count());
  t->set_compute_us(std::chrono::duration_cast<std::chrono::microseconds>(r.timings.compute).count());
  t->set_prepare_us(std::chrono::duration_cast<std::chrono::microseconds>(r.prepare).count());
  if (r.device_timings.has_value()) {
    t->set_kernel_us(static_cast<int64_t>(r.device_timings->kernel_us));
    t->set_device_us(static_cast<int64_t>(r.device_timings->h2d_us + r.device_timings->kernel_us + r.device_timings->d2h_us));
  }
  if (request.has_packed()) {  // lengths per step; O and LSE of every step in one tensor each
    int64_t rows = 0;
    for (const SessionStepOutput& s : r.steps) {
      out->add_results()->set_length(s.length);
      rows += s.n_q;
    }
    if (rows == 0) return;
    SetOutput(out->mutable_o(), o_dtype, {rows, r.heads_q, r.head_dim}, to_shared ? &request.o_output() : nullptr, r.o);
    if (want_lse) {
      SetOutput(out->mutable_lse(), v1::DTYPE_FP32, {rows, r.heads_q}, to_shared ? &request.lse_output() : nullptr,
                FloatBytes(r.lse));
    }
    return;
  }
  const uint64_t o_row = static_cast<uint64_t>(r.heads_q) * r.head_dim * 2, lse_row = static_cast<uint64_t>(r.heads_q) * sizeof(float);
  for (const SessionStepOutput& s : r.steps) {
    v1::SessionStepResult* w = out->add_results();
    w->set_session_id(s.session_id);
    w->set_length(s.length);
    if (s.n_q == 0) continue;
    // With o_output / lse_output, the step's own rows of them.
    v1::SharedMemoryRef o_ref, lse_ref;
    if (to_shared) {
      o_ref = request.o_output();
      o_ref.set_offset(o_ref.offset() + static_cast<uint64_t>(s.row) * o_row);
      o_ref.set_byte_size(static_cast<uint64_t>(s.n_q) * o_row);
      lse_ref = request.lse_output();
      lse_ref.set_offset(lse_ref.offset() + static_cast<uint64_t>(s.row) * lse_row);
      lse_ref.set_byte_size(static_cast<uint64_t>(s.n_q) * lse_row);
    }
    SetOutput(w->mutable_o(), o_dtype, {s.n_q, r.heads_q, r.head_dim}, to_shared ? &o_ref : nullptr, s.o);
    if (want_lse) {
      SetOutput(w->mutable_lse(), v1::DTYPE_FP32, {s.n_q, r.heads_q}, to_shared ? &lse_ref : nullptr, FloatBytes(s.lse));
    }
  }
}

}  // namespace sage::server
