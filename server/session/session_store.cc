#include "server/session/session_store.h"

#include <algorithm>
#include <cstring>
#include <random>
#include <utility>

#include "absl/strings/str_cat.h"
#include "kernels/reference/numerics.h"
#include "server/session/session_state.h"

namespace sage::server {
namespace {

using Clock = std::chrono::steady_clock;

constexpr int kMaxPageTokens = 256;
constexpr int kMinPageTokens = 16;
constexpr int64_t kMaxSessionTokens = int64_t{1} << 24;

std::string RandomHex(int bytes) {
  static thread_local std::random_device device;
  std::string out;
  for (int i = 0; i < bytes; i += 4) {
    absl::StrAppend(&out, absl::Hex(device(), absl::kZeroPad8));
  }
  return out.substr(0, static_cast<size_t>(bytes) * 2);
}

// The most tokens (a multiple of 16, at most 256) whose K/V fit one page; 0 when fewer than 16 do.
int PageTokens(size_t page_bytes, size_t token_bytes) {
  const size_t fit = std::min<size_t>(kMaxPageTokens, page_bytes / token_bytes);
  return fit < static_cast<size_t>(kMinPageTokens) ? 0 : static_cast<int>(fit / kMinPageTokens * kMinPageTokens);
}

absl::Status CheckShape(const SessionShape& s) {
  const auto bad = [](const char* field, const std::string& why) {
    return absl::InvalidArgumentError(absl::StrCat(field, ": ", why));
  };
  if (s.layers < 1 || s.layers > kMaxSessionLayers) return bad("layers", absl::StrCat("must be in [1, ", kMaxSessionLayers, "]"));
  if (s.heads_q < 1 || s.heads_q > 1024) return bad("heads_q", "must be in [1, 1024]");
  if (s.heads_kv < 1 || s.heads_q % s.heads_kv != 0) return bad("heads_kv", "must be >= 1 and divide heads_q");
  if (s.head_dim < 1 || s.head_dim > 256) return bad("head_dim", "must be in [1, 256]");
  if (s.dtype != DType::kF16 && s.dtype != DType::kBF16) return bad("dtype", "must be FP16 or BF16");
  if (!s.storages.empty() && s.storages.size() != static_cast<size_t>(s.layers)) {
    return bad("layer_kv_storages", absl::StrCat(s.storages.size(), " entries for ", s.layers, " layers"));
  }
  for (size_t l = 0; l < s.storages.size(); ++l) {
    if (absl::Status layout = CheckKvLayout(s.storages[l], s.head_dim); !layout.ok()) {
      return absl::InvalidArgumentError(absl::StrCat("layer_kv_storages[", l, "]: ", layout.message()));
    }
  }
  if (s.max_tokens < 1 || s.max_tokens > kMaxSessionTokens) {
    return bad("max_tokens", absl::StrCat("must be in [1, ", kMaxSessionTokens, "]"));
  }
  return absl::OkStatus();
}

}  // namespace

std::optional<KvStorage> SessionShape::uniform_storage() const {
  if (storages.empty()) return std::nullopt;
  for (KvStorage s : storages) {
    if (s != storages.front()) return std::nullopt;
  }
  return storages.front();
}

absl::Status SessionStore::CheckReplicaName(std::string_view name) {
  constexpr size_t kMaxReplicaName = 40;
  const bool valid = name.size() <= kMaxReplicaName &&
                     std::all_of(name.begin(), name.end(), [](char c) {
                       return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-';
                     });
  if (valid) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrCat(
      "replica_name: '", std::string(name.substr(0, 64)), "' must be 1 to ", kMaxReplicaName,
      " characters of a-z, 0-9 and '-' (it starts every session id, before a '-' and the process's random bits)"));
}

absl::Status SessionStore::CheckOptions(const SessionStoreOptions& options) {
  if (absl::Status s = CheckReplicaName(options.replica_name); !s.ok()) return s;
  // With a fraction of free GPU memory the pool's size is known only once the backend asks for it.
  return options.pool_fraction > 0 ? KvPagePool::CheckPageBytes(options.page_bytes)
                                   : KvPagePool::CheckSize(options.pool_bytes, options.page_bytes);
}

absl::StatusOr<std::unique_ptr<SessionStore>> SessionStore::Create(const SessionStoreOptions& options) {
  if (absl::Status s = CheckOptions(options); !s.ok()) return s;
  absl::StatusOr<std::unique_ptr<KvMemory>> memory = CreateHostKvMemory(options.pool_bytes);
  if (!memory.ok()) return memory.status();
  std::vector<std::unique_ptr<KvMemory>> memories;
  memories.push_back(*std::move(memory));
  return Create(options, std::move(memories));
}

absl::StatusOr<std::unique_ptr<SessionStore>> SessionStore::Create(const SessionStoreOptions& options,
                                                                   std::vector<std::unique_ptr<KvMemory>> memories) {
  if (memories.empty()) return absl::InvalidArgumentError("kv pool: no memory to hold pages");
  if (absl::Status s = CheckReplicaName(options.replica_name); !s.ok()) return s;
  std::vector<DevicePool> pools;
  for (std::unique_ptr<KvMemory>& m : memories) {
    const int device = m->device();
    absl::StatusOr<std::unique_ptr<KvPagePool>> pool = KvPagePool::Create(std::move(m), options.page_bytes);
    if (!pool.ok()) return pool.status();
    pools.push_back(DevicePool{device < 0 ? std::string("cpu") : absl::StrCat("cuda", device), *std::move(pool)});
  }
  return std::unique_ptr<SessionStore>(new SessionStore(options, std::move(pools)));
}

SessionStore::SessionStore(const SessionStoreOptions& options, std::vector<DevicePool> pools)
    : options_(options),
      pools_(std::move(pools)),
      instance_(options.replica_name.empty() ? RandomHex(8) : absl::StrCat(options.replica_name, "-", RandomHex(8))) {
  sweeper_ = std::thread([this] { Sweep(); });
}

SessionStore::~SessionStore() {
  {
    std::lock_guard<std::mutex> lock(stop_mu_);
    stopping_ = true;
  }
  wake_.notify_all();
  sweeper_.join();
}

std::string SessionStore::NewId(const std::string& device) {
  // <instance>.<device>.<128 random bits>: the first two let a later error say where it lives (and
  // a proxy route on the instance's replica name).
  return absl::StrCat(instance_, ".", device, ".", RandomHex(16));
}

KvPagePool& SessionStore::PoolOf(const Session& s) const { return *pools_[static_cast<size_t>(s.pool)].pool; }

absl::StatusOr<std::shared_ptr<SessionStore::Session>> SessionStore::Find(const SessionCaller& caller,
                                                                          std::string_view id) const {
  {
    std::shared_lock<std::shared_mutex> lock(mu_);  // every step looks its session up: readers share
    auto it = sessions_.find(id);
    if (it != sessions_.end() && (caller.sees_all || it->second->owner == caller.identity)) return it->second;
  }
  const std::string shown(id.substr(0, 96));
  const size_t dot = id.find('.');
  if (dot != std::string_view::npos && id.find('.', dot + 1) != std::string_view::npos &&
      id.substr(0, dot) != instance_) {
    return absl::NotFoundError(absl::StrCat("session '", shown, "' was created by server instance ",
                                            std::string(id.substr(0, std::min<size_t>(dot, 64))), "; this is ", instance_,
                                            " (the server restarted, or the session lives on another server)"));
  }
  return absl::NotFoundError(
      absl::StrCat("session '", shown, "' does not exist (closed, expired after idling, or never created)"));
}

SessionInfo SessionStore::InfoOf(const Session& s) const {
  SessionInfo info;
  info.id = s.id;
  info.owner = s.owner;
  info.shape = s.shape;
  for (const Session::Layer& l : s.layers) info.layer_lengths.push_back(l.length);
  info.pages = s.PageCount();
  for (const Session::Layer& l : s.layers) info.page_tokens.push_back(l.layout.page_tokens);
  info.idle = std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - s.last_use);
  info.expires_in = std::max(std::chrono::milliseconds(0), options_.ttl - info.idle);
  return info;
}

void SessionStore::ReleaseSession(Session& s) {
  for (Session::Layer& l : s.layers) {
    PoolOf(s).Release(l.pages);
    l.pages.clear();
    l.length = 0;
  }
  s.closed = true;
}

absl::StatusOr<SessionInfo> SessionStore::CreateSession(const SessionCaller& caller, const SessionShape& shape,
                                                        int64_t reserve_tokens) {
  if (absl::Status s = CheckShape(shape); !s.ok()) return s;
  if (reserve_tokens < 0 || reserve_tokens > shape.max_tokens) {
    return absl::InvalidArgumentError("reserve_tokens: must be in [0, max_tokens]");
  }
  auto session = std::make_shared<Session>();
  session->owner = caller.identity;
  session->shape = shape;
  if (session->shape.storages.empty()) session->shape.storages.assign(static_cast<size_t>(shape.layers), KvStorage::k16Bit);
  // Placement: the device with the most free pages.
  for (size_t i = 1; i < pools_.size(); ++i) {
    if (pools_[i].pool->Stats().pages_free > pools_[static_cast<size_t>(session->pool)].pool->Stats().pages_free) {
      session->pool = static_cast<int>(i);
    }
  }
  KvPagePool& pool = PoolOf(*session);
  session->layers.resize(static_cast<size_t>(shape.layers));
  int64_t reserve_pages = 0;
  for (int l = 0; l < shape.layers; ++l) {
    const KvStorage storage = session->shape.storage(l);
    const size_t token_bytes = KvTokenBytes(storage, shape.heads_kv, shape.head_dim);
    KvPageLayout& layout = session->layers[static_cast<size_t>(l)].layout;
    layout = KvPageLayout{storage, shape.dtype, PageTokens(pool.page_bytes(), token_bytes), shape.heads_kv, shape.head_dim};
    if (layout.page_tokens == 0) {
      return absl::InvalidArgumentError(absl::StrCat("heads_kv: a token takes ", token_bytes, " bytes as ",
                                                     std::string(KvStorageName(storage)), ", and a KV page of ",
                                                     pool.page_bytes(), " bytes holds fewer than ", kMinPageTokens,
                                                     " (start the server with a larger --kv_page_bytes)"));
    }
    reserve_pages += (reserve_tokens + layout.page_tokens - 1) / layout.page_tokens;
  }
  if (reserve_pages > 0) {
    absl::StatusOr<std::vector<PageId>> pages = pool.Allocate(reserve_pages);
    if (!pages.ok()) return pages.status();
    auto next = pages->begin();
    for (Session::Layer& l : session->layers) {
      const int64_t n = (reserve_tokens + l.layout.page_tokens - 1) / l.layout.page_tokens;
      l.pages.assign(next, next + n);
      next += n;
    }
  }
  std::lock_guard<std::shared_mutex> lock(mu_);
  if (static_cast<int>(sessions_.size()) >= options_.max_sessions) {
    for (Session::Layer& l : session->layers) pool.Release(l.pages);
    return absl::ResourceExhaustedError(absl::StrCat("sessions: ", sessions_.size(), " open, the server's maximum"));
  }
  session->id = NewId(pools_[static_cast<size_t>(session->pool)].device);
  sessions_.emplace(session->id, session);
  return InfoOf(*session);
}

const SessionShape& SessionStore::Ref::shape() const { return s_->shape; }
int SessionStore::Ref::pool() const { return s_->pool; }

absl::StatusOr<SessionStore::Ref> SessionStore::Lookup(const SessionCaller& caller, std::string_view id) const {
  absl::StatusOr<std::shared_ptr<Session>> s = Find(caller, id);
  if (!s.ok()) return s.status();
  return Ref(*std::move(s));
}

bool SessionStore::TakesDeviceKv(const SessionCaller& caller, std::string_view id, int layer, int device) const {
  absl::StatusOr<Ref> found = Lookup(caller, id);
  return found.ok() && TakesDeviceKv(*found, layer, device);
}

bool SessionStore::TakesDeviceKv(const Ref& session, int layer, int device) const {
  Session& s = *session.s_;
  const KvMemory& memory = PoolOf(s).memory();
  if (memory.memory() != MemoryKind::kDevice || memory.device() != device) return false;
  std::lock_guard<std::mutex> lock(s.mu);
  if (layer < 0 || layer >= s.shape.layers) return false;
  return s.KvMayStayOnDevice(layer);
}

std::vector<PinnedPages> SessionStore::PinLocked(std::span<const std::shared_ptr<Session>> of,
                                                std::span<const AppendStep> steps, std::span<const int64_t> ends) const {
  std::vector<PinnedPages> pins;
  for (size_t i = 0; i < steps.size(); ++i) {
    if (steps[i].pin) pins.push_back(PagesUpTo(*of[i], steps[i].layer, ends[i]));
  }
  // One reference count update per pool for the whole call.
  for (size_t pool = 0; pool < pools_.size(); ++pool) {
    std::vector<PageId> pages;
    for (const PinnedPages& p : pins) {
      if (p.pool == static_cast<int>(pool)) pages.insert(pages.end(), p.pages.begin(), p.pages.end());
    }
    if (!pages.empty()) pools_[pool].pool->AddRef(pages);
  }
  return pins;
}

absl::StatusOr<int64_t> SessionStore::Append(const SessionCaller& caller, const AppendStep& step) {
  AppendAllResult r = AppendAll(caller, std::span<const AppendStep>(&step, 1));
  if (!r.status.ok()) return r.status;
  return r.ends[0];
}

SessionStore::AppendAllResult SessionStore::AppendAll(const SessionCaller& caller, std::span<const AppendStep> steps) {
  AppendAllResult result;
  // Every step's session, then each distinct session locked once, in address order (two calls
  // sharing sessions take their locks in the same order).
  std::vector<std::shared_ptr<Session>> of(steps.size());
  size_t limit = steps.size();
  for (size_t i = 0; i < steps.size(); ++i) {
    if (steps[i].session != nullptr) {  // looked up by the caller already
      of[i] = steps[i].session->s_;
      continue;
    }
    absl::StatusOr<std::shared_ptr<Session>> found = Find(caller, steps[i].session_id);
    if (!found.ok()) {
      result.status = found.status();
      result.failed = i;
      limit = i;
      break;
    }
    of[i] = *std::move(found);
  }
  std::vector<Session*> distinct;
  for (size_t i = 0; i < limit; ++i) distinct.push_back(of[i].get());
  std::sort(distinct.begin(), distinct.end());
  distinct.erase(std::unique(distinct.begin(), distinct.end()), distinct.end());
  std::vector<std::unique_lock<std::mutex>> locks;
  for (Session* s : distinct) locks.emplace_back(s->mu);

  WriteBatches batches(pools_.size());
  std::vector<int64_t> ends;
  std::vector<bool> wrote;
  for (size_t i = 0; i < limit; ++i) {
    absl::StatusOr<bool> step = AppendLocked(*of[i], steps[i], batches);
    if (!step.ok()) {
      result.status = step.status();
      result.failed = i;
      limit = i;
      break;
    }
    ends.push_back(steps[i].position + steps[i].n_new);
    wrote.push_back(*step);
  }
  // The new bytes reach the pools before any length says they are there.
  for (size_t p = 0; p < batches.size(); ++p) {
    for (const TokenGroup& g : batches[p].groups) {
      if (absl::Status w = pools_[p].pool->memory().WriteTokens(g.layout, g.tokens); !w.ok()) {
        result.status = w;
        result.failed = 0;
        result.ends.clear();
        return result;
      }
    }
  }
  int64_t tokens = 0;
  for (size_t i = 0; i < limit; ++i) {
    if (!wrote[i]) continue;
    const AppendStep& step = steps[i];
    Session::Layer& l = of[i]->layers[static_cast<size_t>(step.layer)];
    l.length = ends[i];
    l.last_position = step.position;
    l.last_step_id = step.step_id;
    l.last_count = step.n_new;
    tokens += step.n_new;
  }
  if (result.status.ok()) result.pins = PinLocked(of, steps, ends);
  result.ends = std::move(ends);
  locks.clear();
  appended_tokens_.fetch_add(tokens, std::memory_order_relaxed);
  return result;
}

// One step under its session's lock: checked, its pages allocated and its tokens encoded (into
// `batches` for memory written by transfer). True: tokens to commit once the bytes are written;
// false: nothing to write (a retry, or no new tokens).
absl::StatusOr<bool> SessionStore::AppendLocked(Session& s, const AppendStep& step, WriteBatches& batches) {
  if (s.closed) return absl::NotFoundError(absl::StrCat("session '", s.id, "' was closed"));
  s.last_use = Clock::now();
  const SessionShape& shape = s.shape;
  if (step.layer < 0 || step.layer >= shape.layers) {
    return absl::OutOfRangeError(absl::StrCat("layer: ", step.layer, " is outside the session's ", shape.layers, " layers"));
  }
  Session::Layer& l = s.layers[static_cast<size_t>(step.layer)];
  const int64_t end = step.position + step.n_new;
  if (step.position < 0 || step.n_new < 0) return absl::InvalidArgumentError("position: must be >= 0");
  if (end > shape.max_tokens) {
    return absl::OutOfRangeError(absl::StrCat("position: ", step.position, " + ", step.n_new, " new tokens passes the session's max_tokens ",
                                              shape.max_tokens));
  }
  if (step.position != l.length) {
    const bool retry = step.position < l.length && l.last_position == step.position && l.last_step_id == step.step_id &&
                       l.last_count == step.n_new;
    if (retry) return false;  // already appended: attend over what the step saw the first time
    return absl::FailedPreconditionError(absl::StrCat(
        "position: layer ", step.layer, " holds ", l.length, " tokens, so the next append goes at position ", l.length,
        ", not ", step.position,
        step.position < l.length ? " (a retried step must repeat the step_id it was first sent with)" : " (a gap)"));
  }
  if (step.n_new == 0) return false;
  if (absl::Status w = WriteTokens(s, step.layer, step, batches[static_cast<size_t>(s.pool)]); !w.ok()) return w;
  return true;
}

absl::StatusOr<SessionInfo> SessionStore::Fork(const SessionCaller& caller, std::string_view id,
                                               std::optional<int64_t> length) {
  absl::StatusOr<std::shared_ptr<Session>> found = Find(caller, id);
  if (!found.ok()) return found.status();
  Session& src = **found;
  auto child = std::make_shared<Session>();
  {
    std::lock_guard<std::mutex> lock(src.mu);
    if (src.closed) return absl::NotFoundError(absl::StrCat("session '", src.id, "' was closed"));
    if (length.has_value() && *length < 0) return absl::InvalidArgumentError("length: must be >= 0");
    src.last_use = Clock::now();
    child->owner = caller.identity;
    child->shape = src.shape;
    child->pool = src.pool;
    child->layers.resize(src.layers.size());
    for (size_t i = 0; i < src.layers.size(); ++i) {
      const Session::Layer& from = src.layers[i];
      Session::Layer& to = child->layers[i];
      to.layout = from.layout;
      to.length = length.has_value() ? std::min(*length, from.length) : from.length;
      const size_t pages = static_cast<size_t>((to.length + from.layout.page_tokens - 1) / from.layout.page_tokens);
      to.pages.assign(from.pages.begin(), from.pages.begin() + static_cast<std::ptrdiff_t>(pages));
      to.k_mean = from.k_mean;
      PoolOf(src).AddRef(to.pages);
    }
  }
  std::lock_guard<std::shared_mutex> lock(mu_);
  if (static_cast<int>(sessions_.size()) >= options_.max_sessions) {
    for (Session::Layer& l : child->layers) PoolOf(*child).Release(l.pages);
    return absl::ResourceExhaustedError(absl::StrCat("sessions: ", sessions_.size(), " open, the server's maximum"));
  }
  child->id = NewId(pools_[static_cast<size_t>(child->pool)].device);
  sessions_.emplace(child->id, child);
  return InfoOf(*child);
}

absl::StatusOr<SessionInfo> SessionStore::Truncate(const SessionCaller& caller, std::string_view id, int64_t length) {
  if (length < 0) return absl::InvalidArgumentError("length: must be >= 0");
  absl::StatusOr<std::shared_ptr<Session>> found = Find(caller, id);
  if (!found.ok()) return found.status();
  Session& s = **found;
  std::lock_guard<std::mutex> lock(s.mu);
  if (s.closed) return absl::NotFoundError(absl::StrCat("session '", s.id, "' was closed"));
  s.last_use = Clock::now();
  for (Session::Layer& l : s.layers) {
    if (l.length <= length) continue;
    l.length = length;
    const size_t keep = static_cast<size_t>((length + l.layout.page_tokens - 1) / l.layout.page_tokens);
    if (l.pages.size() > keep) {
      PoolOf(s).Release(std::span<const PageId>(l.pages).subspan(keep));
      l.pages.resize(keep);
    }
    // Positions from `length` on may be written again, by any step id.
    if (l.last_position.has_value() && *l.last_position + l.last_count > length) l.last_position.reset();
  }
  return InfoOf(s);
}

absl::Status SessionStore::Close(const SessionCaller& caller, std::string_view id) {
  absl::StatusOr<std::shared_ptr<Session>> found = Find(caller, id);
  if (!found.ok()) return found.status();
  {
    std::lock_guard<std::shared_mutex> lock(mu_);
    if (sessions_.erase((*found)->id) == 1) ++closed_;
  }
  // Steps holding the session finish first (its lock); later ones see it closed.
  std::lock_guard<std::mutex> lock((*found)->mu);
  ReleaseSession(**found);
  return absl::OkStatus();
}

absl::StatusOr<SessionInfo> SessionStore::Get(const SessionCaller& caller, std::string_view id) const {
  absl::StatusOr<std::shared_ptr<Session>> found = Find(caller, id);
  if (!found.ok()) return found.status();
  std::lock_guard<std::mutex> lock((*found)->mu);
  return InfoOf(**found);
}

std::vector<SessionInfo> SessionStore::List(const SessionCaller& caller) const {
  std::vector<std::shared_ptr<Session>> mine;
  {
    std::shared_lock<std::shared_mutex> lock(mu_);
    for (const auto& [id, s] : sessions_) {
      if (caller.sees_all || s->owner == caller.identity) mine.push_back(s);
    }
  }
  std::vector<SessionInfo> out;
  for (const auto& s : mine) {
    std::lock_guard<std::mutex> lock(s->mu);
    if (!s->closed) out.push_back(InfoOf(*s));
  }
  return out;
}

int SessionStore::ExpireIdle() {
  const Clock::time_point now = Clock::now();
  std::vector<std::shared_ptr<Session>> all;
  {
    std::shared_lock<std::shared_mutex> lock(mu_);
    for (const auto& [id, s] : sessions_) all.push_back(s);
  }
  int expired = 0;
  for (const auto& s : all) {
    {
      std::lock_guard<std::mutex> lock(s->mu);
      if (s->closed || now - s->last_use < options_.ttl) continue;
      ReleaseSession(*s);
    }
    std::lock_guard<std::shared_mutex> lock(mu_);
    sessions_.erase(s->id);
    ++expired_idle_;
    ++expired;
  }
  return expired;
}

void SessionStore::Sweep() {
  const auto period = std::clamp<std::chrono::milliseconds>(options_.ttl / 4, std::chrono::milliseconds(10),
                                                            std::chrono::milliseconds(1000));
  std::unique_lock<std::mutex> lock(stop_mu_);
  while (!stopping_) {
    wake_.wait_for(lock, period, [this] { return stopping_; });
    if (stopping_) break;
    lock.unlock();
    ExpireIdle();
    lock.lock();
  }
}

SessionStoreStats SessionStore::Stats() const {
  SessionStoreStats stats;
  for (const DevicePool& p : pools_) {
    const KvPoolStats one = p.pool->Stats();
    stats.devices.push_back(KvDeviceStats{p.device, one});
    stats.pool.pages_total += one.pages_total;
    stats.pool.pages_free += one.pages_free;
    stats.pool.page_bytes = one.page_bytes;
  }
  std::shared_lock<std::shared_mutex> lock(mu_);
  stats.sessions = static_cast<int64_t>(sessions_.size());
  stats.appended_tokens = appended_tokens_.load(std::memory_order_relaxed);
  stats.closed = closed_;
  stats.expired_idle = expired_idle_;
  return stats;
}

}  // namespace sage::server
