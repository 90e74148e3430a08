// Server-resident KV sessions (sageserve.v1.SessionService): create a session once, then send only
// each step's new tokens. A Session handle keeps the positions and step ids, so a step retried
// after a transport error is never appended twice; SessionClient::Attend sends one call per layer
// for a whole decode batch (each step naming its session). docs/API.md, "Sessions".
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "sageserve/client/client.h"
#include "sageserve/v1/session.grpc.pb.h"

namespace sageserve {

struct SessionOptions {
  std::string model;  // optional: the registry's per-layer recipes
  int layers = 1;
  int heads_q = 1;
  int heads_kv = 1;
  int head_dim = 128;
  v1::DType dtype = v1::DTYPE_FP16;
  // Every layer's storage; UNSPECIFIED with layer_kv_storages empty: the model's plan decides per
  // layer (16-bit without a model). layer_kv_storages: one per layer instead (not with kv_storage).
  v1::KvStorage kv_storage = v1::KV_STORAGE_UNSPECIFIED;
  std::vector<v1::KvStorage> layer_kv_storages;
  int64_t max_tokens = 0;
  int64_t reserve_tokens = 0;
};

class SessionClient;

// Every call of SessionClient on a session (Attend: its first step's) carries the session id in
// this metadata key, so a gRPC proxy in front of several replicas can send it to the replica the id
// names (docs/DEPLOY.md, "A gRPC proxy in front"). The server itself does not read it.
inline constexpr char kSessionMetadataKey[] = "sageserve-session";

// A session call whose server did not answer (UNAVAILABLE: it died, was drained away, or is not
// one of a cluster's replicas) comes back UNAVAILABLE with this payload (the session ids): the
// sessions' KV caches went with that server, so create new sessions and prefill again.
inline constexpr char kSessionOwnerGonePayload[] = "type.sageserve.dev/SessionOwnerGone";
bool IsSessionOwnerGone(const absl::Status& status);

// Bytes of O (in the sessions' dtype) and of LSE (fp32) for `q_rows` query rows of sessions shaped
// like `options`: the sizes of AttendSessionRequest.o_output / lse_output for a call whose steps
// carry that many rows of q in all.
uint64_t SessionOBytes(const SessionOptions& options, int64_t q_rows);
uint64_t SessionLseBytes(const SessionOptions& options, int64_t q_rows);

// Makes `request` a packed call (AttendSessionRequest.packed) of sessions shaped like `shape`: its
// steps (from Session::MakePackedStep, in order) bring n_new[i] new tokens and n_q[i] query rows
// each; k and v hold [sum of n_new, Hkv, D] 16-bit values, q [sum of n_q, Hq, D] (empty when every
// n_q is 0: bulk imports). The answer's o holds every step's O in step order; its results carry
// the lengths (Session::Commit).
void SetPacked(const SessionOptions& shape, std::span<const int64_t> n_new, std::span<const int64_t> n_q,
               std::span<const uint16_t> k, std::span<const uint16_t> v, std::span<const uint16_t> q,
               v1::AttendSessionRequest* request);
// The same with k, v and q in registered regions (SharedMemoryRange, each byte_size its tensor's
// bytes); `q` is not used when every n_q is 0.
void SetPackedShared(const SessionOptions& shape, std::span<const int64_t> n_new, std::span<const int64_t> n_q,
                     const v1::SharedMemoryRef& k, const v1::SharedMemoryRef& v, const v1::SharedMemoryRef& q,
                     v1::AttendSessionRequest* request);

// One session. Positions advance when a step succeeds; not thread-safe (one decode loop owns it).
class Session {
 public:
  const std::string& id() const { return id_; }
  const SessionOptions& options() const { return options_; }
  int64_t length(int layer) const { return lengths_.at(static_cast<size_t>(layer)); }

  // The next step of `layer`: `k`/`v` hold [n, Hkv, D] 16-bit values (n may be 0); `q` [n_q, Hq, D]
  // (empty: a bulk import). For batching several sessions into one SessionClient::Attend.
  v1::SessionStep MakeStep(int layer, std::span<const uint16_t> k, std::span<const uint16_t> v,
                           std::span<const uint16_t> q) const;
  // The same with q's [q_rows, Hq, D] values in a registered region (SharedMemoryRange; byte_size
  // q_rows * Hq * D * 2), which the server reads instead of message bytes. To have O (and LSE)
  // written into a region too, set the call's AttendSessionRequest.o_output (lse_output): every
  // step's O back to back in step order, SessionOutputBytes(options, sum of q_rows) bytes.
  v1::SessionStep MakeStep(int layer, std::span<const uint16_t> k, std::span<const uint16_t> v, int64_t q_rows,
                           const v1::SharedMemoryRef& q) const;
  // The same with k and v too in registered regions: `new_tokens` tokens each ([new_tokens, Hkv,
  // D], byte_size new_tokens * Hkv * D * 2), which the append reads in place on the GPU holding
  // the session or from a host copy (docs/API.md, "Sessions").
  // `q_rows` 0: a bulk import (`q` is not used).
  v1::SessionStep MakeStep(int layer, int64_t new_tokens, const v1::SharedMemoryRef& k, const v1::SharedMemoryRef& v,
                           int64_t q_rows, const v1::SharedMemoryRef& q) const;
  // This session's step of `layer` in a packed call (AttendSessionRequest.packed): session, layer,
  // position and step id only; SetPacked / SetPackedShared give the call's tensors.
  v1::SessionStep MakePackedStep(int layer) const;
  // Records a step's result (its layer's new length); call after a successful Attend.
  void Commit(int layer, const v1::SessionStepResult& result);

  // MakeStep, Attend and Commit in one call; a transport failure (UNAVAILABLE, DEADLINE_EXCEEDED)
  // is retried up to `retries` times with the same position and step id.
  absl::StatusOr<v1::SessionStepResult> Step(int layer, std::span<const uint16_t> k, std::span<const uint16_t> v,
                                             std::span<const uint16_t> q, bool return_lse = false, int retries = 2);

  // Shares this session's first `length` tokens (default all) with a new session.
  absl::StatusOr<Session> Fork(std::optional<int64_t> length = std::nullopt) const;
  absl::Status Truncate(int64_t length);
  absl::Status Close();

 private:
  friend class SessionClient;

  Session(const SessionClient* client, std::string id, SessionOptions options, std::vector<int64_t> lengths)
      : client_(client), id_(std::move(id)), options_(std::move(options)), lengths_(std::move(lengths)) {}

  const SessionClient* client_;
  std::string id_;
  SessionOptions options_;
  std::vector<int64_t> lengths_;
  uint64_t next_step_id_ = 1;
};

// SessionService over a Client's first connection. Blocking calls under the client's deadline.
// Through a proxy that routes on kSessionMetadataKey, one Attend call's steps must all be of
// sessions of one replica (the first step's session picks it).
class SessionClient {
 public:
  // `client` must outlive this object and its sessions.
  explicit SessionClient(const Client& client);

  absl::StatusOr<Session> Create(const SessionOptions& options) const;
  absl::StatusOr<v1::AttendSessionResponse> Attend(const v1::AttendSessionRequest& request) const;
  absl::StatusOr<v1::SessionInfo> Get(const std::string& session_id) const;
  absl::StatusOr<v1::ListSessionsResponse> List() const;
  absl::StatusOr<v1::SessionInfo> Truncate(const std::string& session_id, int64_t length) const;
  absl::StatusOr<v1::ForkSessionResponse> Fork(const std::string& session_id, std::optional<int64_t> length) const;
  absl::Status Close(const std::string& session_id) const;

 private:
  friend class Session;
  const Client& client_;
  std::unique_ptr<v1::SessionService::Stub> stub_;
};

}  // namespace sageserve
