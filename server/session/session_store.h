// Server-resident KV sessions: each session holds, per layer, a page table into the KV page pool
// and the layer's cached length. Steps append new tokens at a named position (a retried step is
// recognised by its step id and never appends twice), and the layer's cache is gathered out,
// decoded to 16-bit, for an engine to attend over. Forks share pages copy-on-write; truncate and
// close free pages at once; idle sessions expire after the TTL. A session belongs to the identity
// that created it: any other identity (but an administrator) gets NOT_FOUND. Thread-safe; no
// protobuf here (the frontend decodes into these types).
#pragma once

#include <atomic>
#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <shared_mutex>
#include <span>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "kernels/reference/dtype.h"
#include "server/backend/kv_memory.h"
#include "server/session/kv_page_pool.h"
#include "kernels/reference/kv_pages.h"

namespace sage::server {

struct SessionStoreOptions {
  size_t pool_bytes = size_t{1} << 30;  // KV page memory per device (host memory for the CPU engine)
  double pool_fraction = 0;             // > 0: this fraction of each GPU's free memory instead
  size_t page_bytes = size_t{256} << 10;
  std::chrono::milliseconds ttl{std::chrono::minutes(10)};  // idle sessions expire after this
  int max_sessions = 65536;
  int worker_threads = 0;      // threads that append and gather for AttendSession; 0: half the cores, >= 2
  // Empty: the instance (the first part of every session id) is 64 random bits in hex. Set (1 to
  // 40 of a-z, 0-9 and '-'): "<replica_name>-<64 random bits>", so a proxy can send a session's
  // calls to the replica its id names while a restarted process still gets new ids.
  std::string replica_name;
};

inline constexpr int kMaxSessionLayers = 4096;

struct SessionShape {
  std::string model;
  int layers = 1;
  int heads_q = 1;
  int heads_kv = 1;
  int head_dim = 128;
  DType dtype = DType::kF16;
  // How each layer stores its K/V: `layers` entries (SessionStore::CreateSession takes none as
  // 16-bit for every layer). Fixed for the session's life.
  std::vector<KvStorage> storages;
  int64_t max_tokens = 0;

  KvStorage storage(int layer) const { return storages[static_cast<size_t>(layer)]; }  // layer checked
  // The one storage of every layer, or nullopt when layers differ.
  std::optional<KvStorage> uniform_storage() const;
};

// Who asks: the identity, and whether it may see everyone's sessions (admin scope).
struct SessionCaller {
  std::string identity;
  bool sees_all = false;
};

struct SessionInfo {
  std::string id;
  std::string owner;
  SessionShape shape;
  std::vector<int64_t> layer_lengths;
  int64_t pages = 0;
  std::vector<int> page_tokens;  // per layer: a page holds fewer tokens of a wider storage
  std::chrono::milliseconds idle{0};
  std::chrono::milliseconds expires_in{0};
};

struct AppendStep;  // below SessionStore

// One KV pool: the device holding it ("cpu", "cuda0", ...) and its pages.
struct KvDeviceStats {
  std::string device;
  KvPoolStats pool;
};

// The pages holding a layer's first `end` tokens, each with a reference held until Unpin: an engine
// reads them in place while the session may append (a written shared page is copied first),
// truncate or close.
struct PinnedPages {
  int pool = 0;  // SessionStore::pool(pool) holds them
  KvPageLayout layout;
  std::vector<PageId> pages;
};

struct SessionStoreStats {
  int64_t sessions = 0;
  KvPoolStats pool;  // all devices together
  std::vector<KvDeviceStats> devices;
  int64_t appended_tokens = 0;  // cumulative
  int64_t closed = 0;           // cumulative: by CloseSession
  int64_t expired_idle = 0;     // cumulative: by the idle TTL
};

class SessionStore {
  struct Session;  // session_state.h

 public:
  // One KV pool per memory (the backend's, one per device), cut into options.page_bytes pages. A
  // new session goes to the pool with the most free pages.
  static absl::StatusOr<std::unique_ptr<SessionStore>> Create(const SessionStoreOptions& options,
                                                              std::vector<std::unique_ptr<KvMemory>> memories);
  // INVALID_ARGUMENT naming the option unless the page size is valid (>= 4096, a multiple of 256)
  // and options.pool_bytes holds 1 to 2^30 pages: checked before any memory is allocated for them.
  // INVALID_ARGUMENT unless options.replica_name is a valid replica name (empty or [a-z0-9-]{1,40}).
  static absl::Status CheckOptions(const SessionStoreOptions& options);
  static absl::Status CheckReplicaName(std::string_view name);
  // Host memory of options.pool_bytes (the CPU engine's, and tests').
  static absl::StatusOr<std::unique_ptr<SessionStore>> Create(const SessionStoreOptions& options);
  ~SessionStore();

  // INVALID_ARGUMENT for a bad shape (naming the field), RESOURCE_EXHAUSTED at max_sessions or
  // when reserve_tokens' pages are not free.
  absl::StatusOr<SessionInfo> CreateSession(const SessionCaller& caller, const SessionShape& shape,
                                            int64_t reserve_tokens);

  // A session the caller may use, looked up once for the several uses one call makes of it (each
  // lookup by id takes the store's lock and hashes the id; a 64-session call made six per step).
  // Holding it keeps the session's state, not the session: a closed session's steps still fail.
  class Ref {
   public:
    const SessionShape& shape() const;  // immutable after creation
    int pool() const;                   // the index of the pool (pool(i)) holding its pages

   private:
    friend class SessionStore;
    explicit Ref(std::shared_ptr<Session> s) : s_(std::move(s)) {}
    std::shared_ptr<Session> s_;
  };
  // NOT_FOUND, saying why, for a session the caller may not use (unknown, closed, expired, another
  // identity's, another instance's).
  absl::StatusOr<Ref> Lookup(const SessionCaller& caller, std::string_view id) const;

  // Whether an append to the session's `layer` may take its K and V in memory of CUDA device
  // `device` (AppendStep::kv_memory kDevice): the session's pages are on that GPU, and it needs
  // no host copy of K (16-bit storage, or INT8/INT4 K whose layer's K mean is already set: it
  // never changes after). False for an unknown session or layer: the
  // append then reports it.
  bool TakesDeviceKv(const SessionCaller& caller, std::string_view id, int layer, int device) const;
  bool TakesDeviceKv(const Ref& session, int layer, int device) const;

  // Appends the step's tokens (or recognises a retry of the step at that position) and returns the
  // layer's length the step's Q attends over: position + n_new. FAILED_PRECONDITION for a gap or an
  // unexpected position (naming the expected one), OUT_OF_RANGE past max_tokens or the layer
  // count, RESOURCE_EXHAUSTED when pages are short.
  absl::StatusOr<int64_t> Append(const SessionCaller& caller, const AppendStep& step);

  // Append for every step in order, their sessions locked together so that all their new bytes
  // reach each device's pool in one transfer (a call of 64 sessions: one, not 64). Stops at the
  // first step that fails: the steps before it are appended; `failed` names it.
  struct AppendAllResult {
    std::vector<int64_t> ends;  // of the appended steps, in order
    absl::Status status;
    size_t failed = 0;
    // When every step appended: the pages of [0, end) of each step with AppendStep::pin, in step
    // order, held as Pin holds them (Unpin each), taken under the locks the append held.
    std::vector<PinnedPages> pins;
  };
  AppendAllResult AppendAll(const SessionCaller& caller, std::span<const AppendStep> steps);

  // The layer's first `end` tokens, decoded to 16-bit: K into `k` and V into `v`
  // ([end, Hkv, D] each). FAILED_PRECONDITION when the layer no longer holds `end` tokens (a
  // truncate in between).
  absl::Status Gather(const SessionCaller& caller, std::string_view id, int layer, int64_t end, std::span<std::byte> k,
                      std::span<std::byte> v) const;

  // Holds the pages of the layer's first `end` tokens for an engine to read in place.
  // FAILED_PRECONDITION when the layer no longer holds `end` tokens.
  absl::StatusOr<PinnedPages> Pin(const SessionCaller& caller, std::string_view id, int layer, int64_t end) const;
  void Unpin(const PinnedPages& pinned) const;
  const KvPagePool& pool(int index) const { return *pools_[static_cast<size_t>(index)].pool; }

  absl::StatusOr<SessionInfo> Fork(const SessionCaller& caller, std::string_view id, std::optional<int64_t> length);
  absl::StatusOr<SessionInfo> Truncate(const SessionCaller& caller, std::string_view id, int64_t length);
  absl::Status Close(const SessionCaller& caller, std::string_view id);
  absl::StatusOr<SessionInfo> Get(const SessionCaller& caller, std::string_view id) const;
  std::vector<SessionInfo> List(const SessionCaller& caller) const;

  // Expires sessions idle for longer than the TTL now (the sweeper also runs it); returns how many.
  int ExpireIdle();
  SessionStoreStats Stats() const;
  std::string_view instance() const { return instance_; }
  // "<instance>.<device>" of a session id: sessions whose ids share it live in one pool.
  static std::string_view PlacementOf(std::string_view id) { return id.substr(0, std::min(id.size(), id.rfind('.'))); }

 private:
  struct DevicePool {
    std::string device;  // in session ids
    std::unique_ptr<KvPagePool> pool;
  };
  SessionStore(const SessionStoreOptions& options, std::vector<DevicePool> pools);

  absl::StatusOr<std::shared_ptr<Session>> Find(const SessionCaller& caller, std::string_view id) const;
  std::string NewId(const std::string& device);
  KvPagePool& PoolOf(const Session& s) const;
  // A device pool's tokens waiting for one KvMemory::WriteTokens per layout.
  struct TokenGroup {
    KvPageLayout layout;
    std::vector<KvTokenWrite> tokens;
  };
  struct WriteBatch {
    std::vector<TokenGroup> groups;
  };
  using WriteBatches = std::vector<WriteBatch>;  // one per pool
  // A read of the layer's first `end` tokens is possible (s.mu held): open, the layer in range and
  // still holding `end` tokens.
  static absl::Status CheckReadable(const Session& s, int layer, int64_t end);
  absl::StatusOr<bool> AppendLocked(Session& s, const AppendStep& step, WriteBatches& batches);  // s.mu held
  // The pages holding the layer's first `end` tokens (s.mu held), not yet referenced.
  static PinnedPages PagesUpTo(const Session& s, int layer, int64_t end);
  // AppendAll's pins, every session's mu held.
  std::vector<PinnedPages> PinLocked(std::span<const std::shared_ptr<Session>> of, std::span<const AppendStep> steps,
                                     std::span<const int64_t> ends) const;
  absl::Status WriteTokens(Session& s, int layer, const AppendStep& step, WriteBatch& batch);    // s.mu held
  SessionInfo InfoOf(const Session& s) const;  // s.mu held
  void ReleaseSession(Session& s);             // s.mu held
  void Sweep();

  const SessionStoreOptions options_;
  const std::vector<DevicePool> pools_;
  const std::string instance_;  // [<replica_name>-]<64 random bits, hex>: this server process

  mutable std::shared_mutex mu_;  // lookups share it; creating and ending sessions take it alone
  std::map<std::string, std::shared_ptr<Session>, std::less<>> sessions_;  // guarded by mu_
  std::atomic<int64_t> appended_tokens_{0};
  int64_t closed_ = 0;        // guarded by mu_
  int64_t expired_idle_ = 0;  // guarded by mu_
  std::mutex stop_mu_;        // the sweeper's sleep
  bool stopping_ = false;     // guarded by stop_mu_
  std::condition_variable wake_;
  std::thread sweeper_;
};

// One step's append: `n_new` tokens of K and V ([n_new, Hkv, D] in the session's dtype) at
// `position` of `layer`.
struct AppendStep {
  std::string_view session_id;
  int layer = 0;
  int64_t position = 0;
  uint64_t step_id = 0;
  int64_t n_new = 0;
  const void* k = nullptr;
  const void* v = nullptr;
  // kDevice: k and v are memory of the GPU that holds the session's pool (a client's CUDA buffer),
  // read there by the GPU, which only a step TakesDeviceKv approved may do.
  MemoryKind kv_memory = MemoryKind::kPageable;
  // Set: the session as SessionStore::Lookup found it for this caller (session_id is then not
  // looked up again).
  const SessionStore::Ref* session = nullptr;
  // Also pin the pages the step's Q reads, [0, position + n_new) (AppendAllResult::pins).
  bool pin = false;
};

}  // namespace sage::server
