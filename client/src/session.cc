#include "sageserve/client/session.h"

#include <chrono>
#include <utility>

#include "absl/strings/str_cat.h"
#include "sageserve/client/tensor.h"
#include "status_conversion.h"

namespace sageserve {
namespace {

void ApplyDeadline(const ClientOptions& options, grpc::ClientContext* context) {
  if (options.deadline.count() > 0) context->set_deadline(std::chrono::system_clock::now() + options.deadline);
}

// Names the call's session for a proxy (kSessionMetadataKey). gRPC refuses metadata values that
// are not printable ASCII; no server makes such an id, and the server's NOT_FOUND for one is the
// better answer, so it goes without the header.
void NameSession(const std::string& session_id, grpc::ClientContext* context) {
  if (session_id.empty()) return;
  for (char c : session_id) {
    if (c < 0x20 || c > 0x7e) return;
  }
  context->AddMetadata(kSessionMetadataKey, session_id);
}

// A [n, heads, head_dim] tensor of 16-bit values in `dtype`.
void SetValues(std::span<const uint16_t> values, int heads, int head_dim, v1::DType dtype, v1::Tensor* t) {
  t->set_dtype(dtype);
  t->add_shape(static_cast<int64_t>(values.size()) / heads / head_dim);
  t->add_shape(heads);
  t->add_shape(head_dim);
  t->set_data(std::string(reinterpret_cast<const char*>(values.data()), values.size() * sizeof(uint16_t)));
}

bool Retryable(const absl::Status& s) {
  return s.code() == absl::StatusCode::kUnavailable || s.code() == absl::StatusCode::kDeadlineExceeded;
}

// A [rows, heads, head_dim] tensor whose bytes are `ref`.
void SetShared(int64_t rows, int heads, int head_dim, v1::DType dtype, const v1::SharedMemoryRef& ref, v1::Tensor* t) {
  t->set_dtype(dtype);
  t->add_shape(rows);
  t->add_shape(heads);
  t->add_shape(head_dim);
  *t->mutable_shared_memory() = ref;
}

// A call on sessions that their server did not answer (UNAVAILABLE: gone, or draining): the
// status says their caches went with it and carries the owner-gone payload (IsSessionOwnerGone).
absl::Status OnSessions(const grpc::Status& st, const std::vector<std::string>& ids) {
  absl::Status s = FromGrpcStatus(st);
  if (s.code() != absl::StatusCode::kUnavailable) return s;
  std::string names;
  for (const std::string& id : ids) absl::StrAppend(&names, names.empty() ? "" : ", ", id);
  return SessionOwnerGone(absl::StrCat("the server holding session(s) ", names,
                                       " cannot be reached or is shutting down; their KV caches are lost with it: create "
                                       "new sessions and prefill again (", st.error_message(), ")"),
                          names);
}

}  // namespace

bool IsSessionOwnerGone(const absl::Status& status) {
  return status.code() == absl::StatusCode::kUnavailable && status.GetPayload(kSessionOwnerGonePayload).has_value();
}

SessionClient::SessionClient(const Client& client)
    : client_(client), stub_(v1::SessionService::NewStub(client.channel())) {}

absl::StatusOr<Session> SessionClient::Create(const SessionOptions& options) const {
  v1::CreateSessionRequest req;
  req.set_model(options.model);
  req.set_layers(options.layers);
  req.set_heads_q(options.heads_q);
  req.set_heads_kv(options.heads_kv);
  req.set_head_dim(options.head_dim);
  req.set_dtype(options.dtype);
  req.set_kv_storage(options.kv_storage);
  for (v1::KvStorage s : options.layer_kv_storages) req.add_layer_kv_storages(s);
  req.set_max_tokens(options.max_tokens);
  req.set_reserve_tokens(options.reserve_tokens);
  grpc::ClientContext ctx;
  ApplyDeadline(client_.options(), &ctx);
  v1::CreateSessionResponse resp;
  if (grpc::Status st = stub_->CreateSession(&ctx, req, &resp); !st.ok()) return FromGrpcStatus(st);
  return Session(this, resp.session_id(), options, std::vector<int64_t>(static_cast<size_t>(options.layers), 0));
}

absl::StatusOr<v1::AttendSessionResponse> SessionClient::Attend(const v1::AttendSessionRequest& request) const {
  grpc::ClientContext ctx;
  ApplyDeadline(client_.options(), &ctx);
  if (request.steps_size() > 0) NameSession(request.steps(0).session_id(), &ctx);
  v1::AttendSessionResponse resp;
  if (grpc::Status st = stub_->AttendSession(&ctx, request, &resp); !st.ok()) {
    std::vector<std::string> ids;
    for (const v1::SessionStep& step : request.steps()) ids.push_back(step.session_id());
    return OnSessions(st, ids);
  }
  return resp;
}

absl::StatusOr<v1::SessionInfo> SessionClient::Get(const std::string& session_id) const {
  v1::GetSessionRequest req;
  req.set_session_id(session_id);
  grpc::ClientContext ctx;
  ApplyDeadline(client_.options(), &ctx);
  NameSession(session_id, &ctx);
  v1::GetSessionResponse resp;
  if (grpc::Status st = stub_->GetSession(&ctx, req, &resp); !st.ok()) return OnSessions(st, {session_id});
  return resp.info();
}

absl::StatusOr<v1::ListSessionsResponse> SessionClient::List() const {
  grpc::ClientContext ctx;
  ApplyDeadline(client_.options(), &ctx);
  v1::ListSessionsResponse resp;
  if (grpc::Status st = stub_->ListSessions(&ctx, v1::ListSessionsRequest(), &resp); !st.ok()) return FromGrpcStatus(st);
  return resp;
}

absl::StatusOr<v1::SessionInfo> SessionClient::Truncate(const std::string& session_id, int64_t length) const {
  v1::TruncateSessionRequest req;
  req.set_session_id(session_id);
  req.set_length(length);
  grpc::ClientContext ctx;
  ApplyDeadline(client_.options(), &ctx);
  NameSession(session_id, &ctx);
  v1::TruncateSessionResponse resp;
  if (grpc::Status st = stub_->TruncateSession(&ctx, req, &resp); !st.ok()) return OnSessions(st, {session_id});
  return resp.info();
}

absl::StatusOr<v1::ForkSessionResponse> SessionClient::Fork(const std::string& session_id,
                                                            std::optional<int64_t> length) const {
  v1::ForkSessionRequest req;
  req.set_session_id(session_id);
  if (length.has_value()) req.set_length(*length);
  grpc::ClientContext ctx;
  ApplyDeadline(client_.options(), &ctx);
  NameSession(session_id, &ctx);
  v1::ForkSessionResponse resp;
  if (grpc::Status st = stub_->ForkSession(&ctx, req, &resp); !st.ok()) return OnSessions(st, {session_id});
  return resp;
}

absl::Status SessionClient::Close(const std::string& session_id) const {
  v1::CloseSessionRequest req;
  req.set_session_id(session_id);
  grpc::ClientContext ctx;
  ApplyDeadline(client_.options(), &ctx);
  NameSession(session_id, &ctx);
  v1::CloseSessionResponse resp;
  const grpc::Status st = stub_->CloseSession(&ctx, req, &resp);
  return st.ok() ? absl::OkStatus() : OnSessions(st, {session_id});
}

v1::SessionStep Session::MakeStep(int layer, std::span<const uint16_t> k, std::span<const uint16_t> v,
                                  std::span<const uint16_t> q) const {
  v1::SessionStep step;
  step.set_session_id(id_);
  step.set_layer(layer);
  step.set_position(layer >= 0 && layer < static_cast<int>(lengths_.size()) ? lengths_[static_cast<size_t>(layer)] : 0);
  step.set_step_id(next_step_id_);
  SetValues(k, options_.heads_kv, options_.head_dim, options_.dtype, step.mutable_k());
  SetValues(v, options_.heads_kv, options_.head_dim, options_.dtype, step.mutable_v());
  if (!q.empty()) SetValues(q, options_.heads_q, options_.head_dim, options_.dtype, step.mutable_q());
  return step;
}

v1::SessionStep Session::MakeStep(int layer, std::span<const uint16_t> k, std::span<const uint16_t> v, int64_t q_rows,
                                  const v1::SharedMemoryRef& q) const {
  v1::SessionStep step = MakeStep(layer, k, v, {});
  SetShared(q_rows, options_.heads_q, options_.head_dim, options_.dtype, q, step.mutable_q());
  return step;
}

v1::SessionStep Session::MakeStep(int layer, int64_t new_tokens, const v1::SharedMemoryRef& k,
                                  const v1::SharedMemoryRef& v, int64_t q_rows, const v1::SharedMemoryRef& q) const {
  v1::SessionStep step = MakeStep(layer, {}, {}, {});
  step.clear_k();
  step.clear_v();
  SetShared(new_tokens, options_.heads_kv, options_.head_dim, options_.dtype, k, step.mutable_k());
  SetShared(new_tokens, options_.heads_kv, options_.head_dim, options_.dtype, v, step.mutable_v());
  if (q_rows > 0) SetShared(q_rows, options_.heads_q, options_.head_dim, options_.dtype, q, step.mutable_q());
  return step;
}

v1::SessionStep Session::MakePackedStep(int layer) const {
  v1::SessionStep step = MakeStep(layer, {}, {}, {});
  step.clear_k();
  step.clear_v();
  return step;
}

namespace {

int64_t Sum(std::span<const int64_t> x) {
  int64_t n = 0;
  for (int64_t v : x) n += v;
  return n;
}

void SetCounts(std::span<const int64_t> n_new, std::span<const int64_t> n_q, v1::PackedSteps* p) {
  p->mutable_n_new()->Assign(n_new.begin(), n_new.end());
  p->mutable_n_q()->Assign(n_q.begin(), n_q.end());
}

}  // namespace

void SetPacked(const SessionOptions& shape, std::span<const int64_t> n_new, std::span<const int64_t> n_q,
               std::span<const uint16_t> k, std::span<const uint16_t> v, std::span<const uint16_t> q,
               v1::AttendSessionRequest* request) {
  v1::PackedSteps* p = request->mutable_packed();
  SetCounts(n_new, n_q, p);
  SetValues(k, shape.heads_kv, shape.head_dim, shape.dtype, p->mutable_k());
  SetValues(v, shape.heads_kv, shape.head_dim, shape.dtype, p->mutable_v());
  if (Sum(n_q) > 0) SetValues(q, shape.heads_q, shape.head_dim, shape.dtype, p->mutable_q());
}

void SetPackedShared(const SessionOptions& shape, std::span<const int64_t> n_new, std::span<const int64_t> n_q,
                     const v1::SharedMemoryRef& k, const v1::SharedMemoryRef& v, const v1::SharedMemoryRef& q,
                     v1::AttendSessionRequest* request) {
  v1::PackedSteps* p = request->mutable_packed();
  SetCounts(n_new, n_q, p);
  SetShared(Sum(n_new), shape.heads_kv, shape.head_dim, shape.dtype, k, p->mutable_k());
  SetShared(Sum(n_new), shape.heads_kv, shape.head_dim, shape.dtype, v, p->mutable_v());
  if (const int64_t rows = Sum(n_q); rows > 0) SetShared(rows, shape.heads_q, shape.head_dim, shape.dtype, q, p->mutable_q());
}

uint64_t SessionOBytes(const SessionOptions& options, int64_t q_rows) {
  return static_cast<uint64_t>(q_rows) * static_cast<uint64_t>(options.heads_q) * static_cast<uint64_t>(options.head_dim) *
         sizeof(uint16_t);
}

uint64_t SessionLseBytes(const SessionOptions& options, int64_t q_rows) {
  return static_cast<uint64_t>(q_rows) * static_cast<uint64_t>(options.heads_q) * sizeof(float);
}

void Session::Commit(int layer, const v1::SessionStepResult& result) {
  if (layer >= 0 && layer < static_cast<int>(lengths_.size())) lengths_[static_cast<size_t>(layer)] = result.length();
  ++next_step_id_;
}

absl::StatusOr<v1::SessionStepResult> Session::Step(int layer, std::span<const uint16_t> k, std::span<const uint16_t> v,
                                                    std::span<const uint16_t> q, bool return_lse, int retries) {
  v1::AttendSessionRequest req;
  req.set_return_lse(return_lse);
  *req.add_steps() = MakeStep(layer, k, v, q);
  absl::StatusOr<v1::AttendSessionResponse> resp = client_->Attend(req);
  for (int attempt = 0; !resp.ok() && Retryable(resp.status()) && attempt < retries; ++attempt) {
    resp = client_->Attend(req);  // same position and step id: the server appends at most once
  }
  if (!resp.ok()) return resp.status();
  if (resp->results_size() != 1) return absl::InternalError("AttendSession: expected one result");
  Commit(layer, resp->results(0));
  return resp->results(0);
}

absl::StatusOr<Session> Session::Fork(std::optional<int64_t> length) const {
  absl::StatusOr<v1::ForkSessionResponse> r = client_->Fork(id_, length);
  if (!r.ok()) return r.status();
  std::vector<int64_t> lengths(r->info().layer_lengths().begin(), r->info().layer_lengths().end());
  return Session(client_, r->session_id(), options_, std::move(lengths));
}

absl::Status Session::Truncate(int64_t length) {
  absl::StatusOr<v1::SessionInfo> info = client_->Truncate(id_, length);
  if (!info.ok()) return info.status();
  lengths_.assign(info->layer_lengths().begin(), info->layer_lengths().end());
  return absl::OkStatus();
}

absl::Status Session::Close() { return client_->Close(id_); }

}  // namespace sageserve
