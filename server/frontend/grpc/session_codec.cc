#include "server/frontend/grpc/session_codec.h"

#include <optional>
#include <string>
#include <utility>

#include "absl/strings/str_cat.h"
#include "server/frontend/grpc/request_codec.h"
#include "server/frontend/grpc/wire_enum_table.h"

namespace sage::server {
namespace {

namespace v1 = ::sageserve::v1;

absl::Status Invalid(const std::string& field, const std::string& why) {
  return absl::InvalidArgumentError(absl::StrCat(field, ": ", why));
}

constexpr WirePair<KvStorage, v1::KvStorage> kKvStorageNames[] = {
    {KvStorage::k16Bit, v1::KV_STORAGE_16BIT},
    {KvStorage::kInt8KFp8V, v1::KV_STORAGE_INT8_K_FP8_V},
};

// A step tensor: inline 16-bit bytes of a [tokens, heads, head_dim] shape.
struct StepTensor {
  int64_t tokens = 0;
  int heads = 0;
  int head_dim = 0;
  DType dtype = DType::kF16;
  std::span<const std::byte> bytes;
};

absl::StatusOr<StepTensor> DecodeStepTensor(const std::string& field, const v1::Tensor& t) {
  if (t.has_shared_memory()) return Invalid(field, "session steps take tensor bytes inline");
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
  if (t.data().size() != want) {
    return Invalid(absl::StrCat(field, ".data"), absl::StrCat(t.data().size(), " bytes, the shape needs ", want));
  }
  out.bytes = std::as_bytes(std::span<const char>(t.data().data(), t.data().size()));
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
  out->set_kv_storage(ToWire(kKvStorageNames, info.shape.storage));
  out->set_max_tokens(info.shape.max_tokens);
  for (int64_t n : info.layer_lengths) out->add_layer_lengths(n);
  out->set_pages(info.pages);
  out->set_page_tokens(info.page_tokens);
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
  if (r.kv_storage() == v1::KV_STORAGE_UNSPECIFIED) {
    s.storage = KvStorage::k16Bit;
  } else if (std::optional<KvStorage> st = FromWire(kKvStorageNames, r.kv_storage())) {
    s.storage = *st;
  } else {
    return Invalid("kv_storage", absl::StrCat("unknown value ", static_cast<int>(r.kv_storage())));
  }
  s.max_tokens = r.max_tokens();
  return s;
}

absl::StatusOr<SessionAttendRequest> DecodeAttendSession(const v1::AttendSessionRequest& r) {
  SessionAttendRequest out;
  out.id = r.request_id();
  out.return_lse = r.return_lse();
  if (r.recipe() != v1::RECIPE_UNSPECIFIED) {
    absl::StatusOr<Recipe> recipe = FromWireRecipe(r.recipe());
    if (!recipe.ok()) return recipe.status();
    out.recipe = *recipe;
  }
  for (int i = 0; i < r.steps_size(); ++i) {
    const v1::SessionStep& w = r.steps(i);
    const std::string at = absl::StrCat("steps[", i, "]");
    SessionStepInput st;
    st.session_id = w.session_id();
    st.layer = w.layer();
    st.position = w.position();
    st.step_id = w.step_id();
    absl::StatusOr<StepTensor> k = DecodeStepTensor(at + ".k", w.k());
    if (!k.ok()) return k.status();
    absl::StatusOr<StepTensor> v = DecodeStepTensor(at + ".v", w.v());
    if (!v.ok()) return v.status();
    if (v->tokens != k->tokens || v->heads != k->heads || v->head_dim != k->head_dim || v->dtype != k->dtype) {
      return Invalid(at + ".v", "shape and dtype must equal k's");
    }
    st.n_new = k->tokens;
    st.k = k->bytes;
    st.v = v->bytes;
    st.dtype = k->dtype;
    st.kv_heads = k->heads;
    st.head_dim = k->head_dim;
    if (w.has_q()) {
      absl::StatusOr<StepTensor> q = DecodeStepTensor(at + ".q", w.q());
      if (!q.ok()) return q.status();
      if (q->dtype != k->dtype || q->head_dim != k->head_dim) return Invalid(at + ".q", "dtype and head_dim must equal k's");
      st.n_q = q->tokens;
      st.q = q->bytes;
      st.q_heads = q->heads;
    }
    out.steps.push_back(std::move(st));
  }
  return out;
}

void ResultToWire(const SessionAttendResult& r, bool want_lse, v1::AttendSessionResponse* out) {
  out->set_recipe(ToWireRecipe(r.recipe));
  for (const SessionStepOutput& s : r.steps) {
    v1::SessionStepResult* w = out->add_results();
    w->set_session_id(s.session_id);
    w->set_length(s.length);
    if (s.n_q == 0) continue;
    v1::Tensor* o = w->mutable_o();
    o->set_dtype(ToWireDType(r.dtype));
    o->add_shape(s.n_q);
    o->add_shape(r.heads_q);
    o->add_shape(r.head_dim);
    o->set_data(s.o);
    if (want_lse) {
      v1::Tensor* lse = w->mutable_lse();
      lse->set_dtype(v1::DTYPE_FP32);
      lse->add_shape(s.n_q);
      lse->add_shape(r.heads_q);
      lse->set_data(std::string(reinterpret_cast<const char*>(s.lse.data()), s.lse.size() * sizeof(float)));
    }
  }
  v1::Timings* t = out->mutable_timings();
  t->set_queued_us(std::chrono::duration_cast<std::chrono::microseconds>(r.timings.queued).count());
  t->set_compute_us(std::chrono::duration_cast<std::chrono::microseconds>(r.timings.compute).count());
  t->set_prepare_us(std::chrono::duration_cast<std::chrono::microseconds>(r.prepare).count());
  if (r.device_timings.has_value()) {
    t->set_kernel_us(static_cast<int64_t>(r.device_timings->kernel_us));
    t->set_device_us(static_cast<int64_t>(r.device_timings->h2d_us + r.device_timings->kernel_us + r.device_timings->d2h_us));
  }
}


}  // namespace sage::server
