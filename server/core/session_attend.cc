#include "server/core/session_attend.h"

#include <algorithm>
#include <cstring>
#include <memory>
#include <optional>
#include <set>
#include <utility>

#include "absl/strings/str_cat.h"
#include "server/backend/encode_output.h"
#include "server/core/session_kv_staging.h"
#include "server/shared_memory/safe_copy.h"

namespace sage::server {
namespace {

absl::Status StepError(size_t i, const absl::Status& s) {  // the message, prefixed with the step
  return absl::Status(s.code(), absl::StrCat("steps[", i, "]: ", s.message()));
}

absl::Status StepInvalid(size_t i, const char* field, const std::string& why) {
  return absl::InvalidArgumentError(absl::StrCat("steps[", i, "].", field, ": ", why));
}

bool SameShape(const SessionShape& a, const SessionShape& b) {
  return a.heads_q == b.heads_q && a.heads_kv == b.heads_kv && a.head_dim == b.head_dim && a.dtype == b.dtype;
}

// Query rows per step up to which a call is decode-shaped: it runs the unquantized recipe unless
// the request names one, which the CUDA backend runs with the paged decode kernel.
constexpr int64_t kPagedMaxQueryRows = SessionAttend::kPagedMaxQueryRows;

// The heap state of one call: the AttendRequest the pipeline reads, and what the answer collects.
// Pages pinned for an in-place launch are let go when the call is destroyed, which the pipeline
// does only after the launch has finished with the request.
struct SessionCall {
  SessionStore* store = nullptr;
  AttendRequest request;
  SessionAttendResult result;
  std::vector<size_t> q_steps;  // indices of the steps with Q, in launch order
  std::vector<PinnedPages> pins;
  std::vector<int32_t> page_table, cu_pages;
  bool packed = false;  // SessionAttendRequest::packed
  std::vector<int> in_place_pools;  // pools whose writes read the client's CUDA K/V (InPlaceKvGuard)
  absl::AnyInvocable<void(absl::StatusOr<SessionAttendResult>)> done;

  ~SessionCall() {
    for (const PinnedPages& p : pins) store->Unpin(p);
  }
};

// The storage of a step's layer; nullopt for a layer outside the session (its append reports it).
std::optional<KvStorage> StepStorage(const SessionShape& shape, int layer) {
  if (layer < 0 || layer >= shape.layers) return std::nullopt;
  return shape.storage(layer);
}

// Whether two pins' pages can be read by one paged launch, which takes one pool and one page
// layout (storage, tokens per page) for all of its sequences.
bool OneLaunchReads(const PinnedPages& a, const PinnedPages& b) {
  return a.pool == b.pool && a.layout.storage == b.layout.storage && a.layout.page_tokens == b.layout.page_tokens;
}

// Fills `call`'s request with the steps' pages as they lie in the pool (EngineInput::paged), from
// the pins the append took for the steps with Q (call.pins). False (the pins let go) when the
// steps' sessions live in different pools or store their K/V differently, which one launch
// cannot read.
bool UseStepPages(SessionStore& store, SessionCall& call) {
  for (const PinnedPages& p : call.pins) {
    if (OneLaunchReads(p, call.pins.front())) continue;
    for (const PinnedPages& q : call.pins) store.Unpin(q);
    call.pins.clear();
    return false;
  }
  call.cu_pages.assign(1, 0);
  for (const PinnedPages& p : call.pins) {
    call.page_table.insert(call.page_table.end(), p.pages.begin(), p.pages.end());
    call.cu_pages.push_back(static_cast<int32_t>(call.page_table.size()));
  }
  const KvPagePool& pool = store.pool(call.pins.front().pool);
  PagedKv& paged = call.request.input.paged.emplace();
  paged.layout = call.pins.front().layout;
  paged.pool = pool.memory().base();
  paged.page_bytes = pool.page_bytes();
  paged.pool_pages = pool.Stats().pages_total;
  paged.memory = pool.memory().memory();
  paged.device = pool.memory().device();
  paged.writes = &pool.memory();
  paged.page_table = call.page_table;
  paged.cu_pages = call.cu_pages;
  return true;
}

// The field errors about a request's CUDA shared memory name: the first step's q in it, else O.
std::string CudaField(const SessionAttendRequest& request) {
  for (size_t i = 0; i < request.steps.size(); ++i) {
    const std::optional<SharedRange>& q = request.steps[i].q_shared;
    if (q.has_value() && q->memory() == MemoryKind::kDevice) return absl::StrCat("steps[", i, "].q.shared_memory");
  }
  return "o_output";
}

// A request naming CUDA shared memory runs where it can be read and written in place: the paged
// decode launch (decode-shaped, unquantized), on the GPU whose pool holds every step's pages.
// Checked before anything is appended.
absl::Status CheckCudaMemory(const SessionStore& store, std::span<const SessionStore::Ref> sessions,
                             const SessionAttendRequest& request, bool paged_shape) {
  if (request.memory_device < 0) return absl::OkStatus();
  const std::string field = CudaField(request);
  if (!paged_shape) {
    return absl::InvalidArgumentError(absl::StrCat(
        field, ": CUDA shared memory is taken by decode-shaped calls of the unquantized recipe only (at most ",
        kPagedMaxQueryRows, " query rows per step), which read the pages in place; send this call's q and O inline "
        "or in system shared memory"));
  }
  // CUDA q is read in place as one tensor: every step's, back to back (the frontend's promise, kept).
  const std::byte* next_q = nullptr;
  bool q_on_device = false;
  for (size_t i = 0; i < request.steps.size(); ++i) {
    const SessionStepInput& st = request.steps[i];
    if (!st.n_q.has_value()) continue;
    const bool on_device = st.q_shared.has_value() && st.q_shared->memory() == MemoryKind::kDevice;
    if (next_q != nullptr && (on_device != q_on_device || (on_device && st.q.data() != next_q))) {
      return StepInvalid(i, "q.shared_memory", "CUDA shared memory q must directly follow the previous step's q");
    }
    q_on_device = on_device;
    next_q = st.q.data() + st.q.size();
  }
  std::optional<size_t> first;  // the first step with Q
  for (size_t i = 0; i < request.steps.size(); ++i) {
    if (!request.steps[i].n_q.has_value()) continue;
    if (!first.has_value()) first = i;
    const std::optional<KvStorage> storage = StepStorage(sessions[i].shape(), request.steps[i].layer);
    const std::optional<KvStorage> first_storage = StepStorage(sessions[*first].shape(), request.steps[*first].layer);
    if (storage.has_value() && first_storage.has_value() && *storage != *first_storage) {
      return absl::InvalidArgumentError(absl::StrCat(
          field, ": steps[", i, "]'s layer stores its K/V as ", std::string(KvStorageName(*storage)), " and steps[",
          *first, "]'s as ", std::string(KvStorageName(*first_storage)),
          "; a call in CUDA shared memory is one paged launch, over pages of one storage"));
    }
    const KvMemory& memory = store.pool(sessions[i].pool()).memory();
    if (memory.memory() != MemoryKind::kDevice || memory.device() != request.memory_device) {
      return absl::InvalidArgumentError(absl::StrCat(
          field, ": on CUDA device ", request.memory_device, ", but steps[", i, "]'s session keeps its pages ",
          memory.memory() == MemoryKind::kDevice ? absl::StrCat("on device ", memory.device()) : "in host memory",
          " (a call runs on the GPU that holds its sessions)"));
    }
  }
  return absl::OkStatus();
}

// Q of the steps with Q, back to back in launch order, into `dst`: inline bytes by memcpy, a system
// region with the fault-tolerant copy (the client may shrink its object under the read). Steps
// whose q follow each other in one region (a packed call's, or a client's batch laid out so) are
// copied as one range.
absl::Status StageQ(const SessionAttendRequest& request, std::span<const size_t> q_steps, std::byte* dst) {
  for (size_t n = 0; n < q_steps.size();) {
    const SessionStepInput& st = request.steps[q_steps[n]];
    if (!st.q_shared.has_value()) {
      std::memcpy(dst, st.q.data(), st.q.size());
      dst += st.q.size();
      ++n;
      continue;
    }
    size_t bytes = st.q.size(), last = n + 1;
    for (; last < q_steps.size(); ++last) {
      const SessionStepInput& next = request.steps[q_steps[last]];
      if (!next.q_shared.has_value() || next.q_shared->region != st.q_shared->region || next.q.data() != st.q.data() + bytes) break;
      bytes += next.q.size();
    }
    const std::string& region = st.q_shared->region->info().name;
    absl::Status s = CopyFromClient(std::span<std::byte>(dst, bytes), std::span<const std::byte>(st.q.data(), bytes),
                                    absl::StrCat("steps[", q_steps[n], "].q.shared_memory"), region);
    for (size_t m = n; !s.ok() && m < last; ++m) {  // the error names the step whose bytes cannot be read
      const SessionStepInput& one = request.steps[q_steps[m]];
      s = CopyFromClient(std::span<std::byte>(dst + (one.q.data() - st.q.data()), one.q.size()), one.q,
                         absl::StrCat("steps[", q_steps[m], "].q.shared_memory"), region);
      if (!s.ok()) return s;
      if (m + 1 == last) s = absl::OkStatus();  // each step's bytes read on their own
    }
    if (!s.ok()) return s;
    dst += bytes;
    n = last;
  }
  return absl::OkStatus();
}

// The CUDA device whose memory holds both the step's K and V, or -1: the append may read them in
// place there if the session's pages are on it too (SessionStore::TakesDeviceKv).
int KvDevice(const SessionStepInput& st) {
  if (!st.k_shared.has_value() || !st.v_shared.has_value() || st.k_shared->memory() != MemoryKind::kDevice ||
      st.v_shared->memory() != MemoryKind::kDevice) {
    return -1;
  }
  const int device = st.k_shared->region->device();
  return st.v_shared->region->device() == device ? device : -1;
}

// Returns once the writes issued so far to each of `pools` have run (KvMemory::WaitForWrites);
// the first error, if any.
absl::Status WaitForPoolWrites(const SessionStore& store, std::span<const int> pools) {
  absl::Status first;
  for (int pool : pools) first.Update(store.pool(pool).memory().WaitForWrites());
  return first;
}

// Until appends that read a client's CUDA memory in place have run, that memory must stay as the
// call found it: every way out of Start but a launch (ordered after the writes, answered after
// it) waits for them, so the client may reuse its buffers once answered.
class InPlaceKvGuard {
 public:
  explicit InPlaceKvGuard(const SessionStore& store) : store_(store) {}
  ~InPlaceKvGuard() { (void)Wait(); }
  // Waits now (before a call without a launch is answered); the first error, if any.
  absl::Status Wait() { return WaitForPoolWrites(store_, std::exchange(pools_, {})); }
  void Add(int pool) {
    if (std::find(pools_.begin(), pools_.end(), pool) == pools_.end()) pools_.push_back(pool);
  }
  // A launch now orders itself after the writes; the pools are the caller's to wait on should the
  // call end without it (cancelled or past its deadline while queued).
  std::vector<int> Release() { return std::exchange(pools_, {}); }

 private:
  const SessionStore& store_;
  std::vector<int> pools_;
};

}  // namespace

bool SessionAttend::StartsOnCaller(const SessionCaller& caller, SessionAttendRequest& request) const {
  if (request.steps.empty()) return false;
  if (request.recipe.has_value() && *request.recipe != Recipe::kUnquantized) return false;
  const std::string_view placement = SessionStore::PlacementOf(request.steps.front().session_id);
  for (const SessionStepInput& st : request.steps) {
    if (st.n_q.has_value() && *st.n_q > kPagedMaxQueryRows) return false;
    if (SessionStore::PlacementOf(st.session_id) != placement) return false;
  }
  request.sessions.clear();
  request.sessions.reserve(request.steps.size());
  for (const SessionStepInput& st : request.steps) {
    absl::StatusOr<SessionStore::Ref> session = store_->Lookup(caller, st.session_id);
    if (!session.ok()) {  // Start reports it
      request.sessions.clear();
      return false;
    }
    request.sessions.push_back(*std::move(session));
  }
  const auto on_device = [](const std::optional<SharedRange>& r) {
    return r.has_value() && r->memory() == MemoryKind::kDevice;
  };
  size_t kv_bytes = 0, q_bytes = 0;
  std::optional<KvStorage> storage;  // of the steps with Q: one, or the call gathers (not here)
  for (size_t i = 0; i < request.steps.size(); ++i) {
    const SessionStepInput& st = request.steps[i];
    const SessionStore::Ref& session = request.sessions[i];
    if (st.n_q.has_value() && request.steps.size() > 1) {
      const std::optional<KvStorage> step_storage = StepStorage(session.shape(), st.layer);
      if (!step_storage.has_value() || (storage.has_value() && *storage != *step_storage)) return false;
      storage = step_storage;
    }
    q_bytes += st.q.size();
    if (on_device(st.k_shared) || on_device(st.v_shared)) {
      const int device = KvDevice(st);
      if (device < 0 || !store_->TakesDeviceKv(session, st.layer, device)) return false;
      continue;  // read by the GPU in place: no bytes for this thread to move
    }
    kv_bytes += st.k.size() + st.v.size();
  }
  return kv_bytes <= kCallerAppendBytes && q_bytes <= kCallerQBytes;
}

absl::StatusOr<SessionInfo> SessionAttend::CreateSession(const SessionCaller& caller, const SessionShape& shape,
                                                         int64_t reserve_tokens) const {
  const std::vector<int>& dims = pipeline_->backend().head_dims;
  if (std::find(dims.begin(), dims.end(), shape.head_dim) == dims.end()) {
    std::string runs;
    for (int d : dims) absl::StrAppend(&runs, runs.empty() ? "" : ", ", d);
    return absl::InvalidArgumentError(absl::StrCat("head_dim: ", shape.head_dim, " is not one this server runs (", runs, ")"));
  }
  if (pipeline_->serving_sessions_only()) {
    return absl::UnavailableError("server draining: it serves its open sessions until they close and creates no new "
                                  "ones; create the session on another replica");
  }
  SessionShape planned = shape;
  if (planned.storages.empty() && !planned.model.empty()) {
    absl::Status from_plan = StoragesFromPlan(planned);
    if (!from_plan.ok()) return from_plan;
  }
  const std::vector<KvStorage>& storages = pipeline_->backend().kv_storages;
  const bool uniform = planned.uniform_storage().has_value();
  for (size_t l = 0; l < planned.storages.size(); ++l) {
    const KvStorage storage = planned.storages[l];
    if (std::find(storages.begin(), storages.end(), storage) != storages.end()) continue;
    std::string runs;
    for (KvStorage st : storages) absl::StrAppend(&runs, runs.empty() ? "" : ", ", std::string(KvStorageName(st)));
    return absl::InvalidArgumentError(absl::StrCat(uniform ? std::string("kv_storage") : absl::StrCat("layer_kv_storages[", l, "]"),
                                                   ": ", std::string(KvStorageName(storage)),
                                                   " is not one this server's engine runs (", runs, ")"));
  }
  return store_->CreateSession(caller, planned, reserve_tokens);
}

absl::Status SessionAttend::StoragesFromPlan(SessionShape& shape) const {
  const registry::Registry* const reg = pipeline_->registry();
  if (reg == nullptr) {
    return absl::FailedPreconditionError(
        "model: this server has no precision registry to take the layers' KV storage from; set kv_storage");
  }
  absl::StatusOr<registry::SessionKvPlan> plan = reg->SessionKvStorages(shape.model);
  if (!plan.ok()) return plan.status();
  const registry::ModelSpec& spec = plan->spec;
  const struct {
    const char* field;
    int session, model;
  } dims[] = {{"layers", shape.layers, spec.num_layers},
              {"heads_q", shape.heads_q, spec.q_heads},
              {"heads_kv", shape.heads_kv, spec.kv_heads},
              {"head_dim", shape.head_dim, spec.head_dim}};
  for (const auto& d : dims) {
    if (d.session == d.model) continue;
    return absl::InvalidArgumentError(absl::StrCat(d.field, ": ", d.session, ", but model '", shape.model, "' has ", d.model,
                                                   " (its plan's per-layer KV storage is for its own shape; set kv_storage "
                                                   "to create a session of another)"));
  }
  shape.storages = std::move(plan->storages);
  return absl::OkStatus();
}

absl::Status SessionAttend::Start(const SessionCaller& caller, SessionAttendRequest request,
                                  std::optional<Clock::time_point> deadline, std::function<bool()> is_cancelled,
                                  absl::AnyInvocable<void(absl::StatusOr<SessionAttendResult>)> done) {
  if (request.steps.empty()) return absl::InvalidArgumentError("steps: at least one step");
  // Every step against its session, before anything is appended.
  SessionShape shape;
  // Each step's session, looked up once (by StartsOnCaller already, for the same caller, or here).
  std::vector<SessionStore::Ref> sessions = std::move(request.sessions);
  if (sessions.size() != request.steps.size()) sessions.clear();
  const bool looked_up = !sessions.empty();
  sessions.reserve(request.steps.size());
  std::set<std::pair<std::string_view, int>> seen;
  bool one_layer = true;
  for (size_t i = 0; i < request.steps.size(); ++i) {
    const SessionStepInput& st = request.steps[i];
    if (!looked_up) {
      absl::StatusOr<SessionStore::Ref> session = store_->Lookup(caller, st.session_id);
      if (!session.ok()) return StepError(i, session.status());
      sessions.push_back(*std::move(session));
    }
    const SessionShape* const sh = &sessions[i].shape();
    if (i == 0) {
      shape = *sh;
    } else if (!SameShape(shape, *sh)) {
      return StepInvalid(i, "session_id", "its session's heads, head_dim or dtype differ from steps[0]'s (one launch per shape)");
    }
    if (st.dtype != sh->dtype) return StepInvalid(i, "k.dtype", "differs from the session's dtype");
    if (st.head_dim != sh->head_dim) {
      return StepInvalid(i, "k.shape[2]", absl::StrCat(st.head_dim, ", the session's head_dim is ", sh->head_dim));
    }
    if (st.kv_heads != sh->heads_kv) {
      return StepInvalid(i, "k.shape[1]", absl::StrCat(st.kv_heads, ", the session's heads_kv is ", sh->heads_kv));
    }
    if (st.n_q.has_value() && st.q_heads != sh->heads_q) {
      return StepInvalid(i, "q.shape[1]", absl::StrCat(st.q_heads, ", the session's heads_q is ", sh->heads_q));
    }
    one_layer = one_layer && st.layer == request.steps[0].layer;
    if (!seen.emplace(st.session_id, st.layer).second) return StepInvalid(i, "layer", "the same session and layer twice in one call");
    const size_t kv_bytes = static_cast<size_t>(st.n_new) * sh->heads_kv * sh->head_dim * 2;
    if (st.n_new < 0 || st.k.size() != kv_bytes) {
      return StepInvalid(i, "k", absl::StrCat(st.k.size(), " bytes; [", st.n_new, ", ", sh->heads_kv, ", ", sh->head_dim,
                                               "] in the session's dtype is ", kv_bytes));
    }
    if (st.v.size() != kv_bytes) return StepInvalid(i, "v", absl::StrCat(st.v.size(), " bytes, k has ", st.k.size()));
    if (st.n_q.has_value()) {
      const size_t q_bytes = static_cast<size_t>(*st.n_q) * sh->heads_q * sh->head_dim * 2;
      if (*st.n_q < 1 || st.q.size() != q_bytes) {
        return StepInvalid(i, "q", absl::StrCat(st.q.size(), " bytes for ", *st.n_q, " rows; [n_q, ", sh->heads_q, ", ",
                                                 sh->head_dim, "] with n_q >= 1 is ", q_bytes));
      }
    }
  }

  // Decode-shaped calls (every step at most kPagedMaxQueryRows rows) run the unquantized recipe
  // unless the request names one. The engine reads the steps' pages where they are
  // (EngineInput::paged): the CUDA backend in place with the paged decode kernel for unquantized
  // decode steps, else decoded on the GPU into the launch's K/V for the dense kernels
  // (sage_paged_gather); the CPU engine decodes them on the host. Only a call whose sessions live
  // in different pools or store their K/V differently gathers the caches here, decoded to 16-bit,
  // into one block.
  bool short_steps = true;
  for (const SessionStepInput& st : request.steps) short_steps = short_steps && st.n_q.value_or(0) <= kPagedMaxQueryRows;
  const bool unquantized = request.recipe.has_value() ? *request.recipe == Recipe::kUnquantized : short_steps;
  if (absl::Status s = CheckCudaMemory(*store_, sessions, request, short_steps && unquantized); !s.ok()) return s;

  auto call = std::make_shared<SessionCall>();
  call->store = store_;
  call->done = std::move(done);
  call->packed = request.packed;
  SessionAttendResult& result = call->result;
  result.dtype = shape.dtype;
  result.heads_q = shape.heads_q;
  result.head_dim = shape.head_dim;
  result.steps.resize(request.steps.size());
  // K and V in CUDA memory of the GPU that holds their pages are read there by the append. Others
  // from shared memory are read into a host block first, so that a client's bad memory fails the
  // call before anything is appended; the store then reads them as inline bytes.
  InPlaceKvGuard in_place(*store_);
  for (size_t i = 0; i < request.steps.size(); ++i) {
    SessionStepInput& st = request.steps[i];
    const int device = st.n_new > 0 ? KvDevice(st) : -1;
    st.kv_on_device = device >= 0 && store_->TakesDeviceKv(sessions[i], st.layer, device);
    if (st.kv_on_device) in_place.Add(sessions[i].pool());
  }
  absl::StatusOr<std::unique_ptr<std::byte[]>> staged_kv = StageSharedKv(std::span(request.steps));
  if (!staged_kv.ok()) return staged_kv.status();
  // Every step's tokens appended together: one transfer per device for the whole call.
  std::vector<AppendStep> appends;
  for (size_t i = 0; i < request.steps.size(); ++i) {
    const SessionStepInput& st = request.steps[i];
    appends.push_back(AppendStep{st.session_id, st.layer, st.position, st.step_id, st.n_new, st.k.data(), st.v.data(),
                                 st.kv_on_device ? MemoryKind::kDevice : MemoryKind::kPageable, &sessions[i],
                                 st.n_q.has_value()});
  }
  SessionStore::AppendAllResult appended = store_->AppendAll(caller, appends);
  if (!appended.status.ok()) return StepError(appended.failed, appended.status);
  call->pins = std::move(appended.pins);  // the pages the steps with Q read, let go with the call
  const std::vector<int64_t>& ends = appended.ends;
  for (size_t i = 0; i < request.steps.size(); ++i) {
    result.steps[i].session_id = request.steps[i].session_id;
    result.steps[i].length = ends[i];
    if (request.steps[i].n_q.has_value()) call->q_steps.push_back(i);
  }
  if (call->q_steps.empty()) {  // bulk imports only: nothing to compute
    if (absl::Status s = in_place.Wait(); !s.ok()) return s;  // the client's K/V read before the answer
    for (const auto& region : request.regions) region->CountRequest();
    auto finish = std::move(call->done);
    finish(std::move(call->result));
    return absl::OkStatus();
  }

  // One varlen launch: Q of the steps with Q, each over its layer's cache [0, end).
  const size_t q_row = static_cast<size_t>(shape.heads_q) * shape.head_dim * 2;
  const size_t kv_row = static_cast<size_t>(shape.heads_kv) * shape.head_dim * 2;
  int64_t total_q = 0, total_k = 0;
  for (size_t i : call->q_steps) {
    total_q += *request.steps[i].n_q;
    total_k += ends[i];
  }
  if (total_q >= (int64_t{1} << 31) || total_k >= (int64_t{1} << 31)) {
    return absl::ResourceExhaustedError("steps: more than 2^31 tokens in one call");
  }
  const bool paged = UseStepPages(*store_, *call);
  if (request.memory_device >= 0 && !paged) {  // CheckCudaMemory saw to one pool on that GPU
    return absl::InternalError(absl::StrCat(CudaField(request), ": the call's pages are not in one pool and layout"));
  }
  // Q in CUDA shared memory is read where it lies: the frontend checked the steps' q follow each
  // other in one region, so the first one's start is the launch's [total_q, Hq, D] Q.
  const SessionStepInput& first_q = request.steps[call->q_steps.front()];
  const bool q_on_device = first_q.q_shared.has_value() && first_q.q_shared->memory() == MemoryKind::kDevice;
  const size_t q_bytes = static_cast<size_t>(total_q) * q_row, kv_bytes = paged ? 0 : static_cast<size_t>(total_k) * kv_row;
  const size_t q_staged = q_on_device ? 0 : q_bytes;
  AttendRequest& ar = call->request;
  ar.staged_inputs.reset(new std::byte[q_staged + 2 * kv_bytes]);
  std::byte* const q_at = ar.staged_inputs.get();
  std::byte* const k_at = q_at + q_staged;  // the gathered K and V (none when paged)
  std::byte* const v_at = k_at + kv_bytes;
  if (!q_on_device) {
    if (absl::Status s = StageQ(request, call->q_steps, q_at); !s.ok()) return s;
  }
  ar.default_cu_q.assign(1, 0);
  ar.default_cu_k.assign(1, 0);
  for (size_t i : call->q_steps) {
    const SessionStepInput& st = request.steps[i];
    const int64_t q0 = ar.default_cu_q.back(), k0 = ar.default_cu_k.back();
    if (!paged) {
      const std::span<std::byte> k(k_at + static_cast<size_t>(k0) * kv_row, static_cast<size_t>(ends[i]) * kv_row);
      const std::span<std::byte> v(v_at + static_cast<size_t>(k0) * kv_row, k.size());
      if (absl::Status s = store_->Gather(caller, st.session_id, st.layer, ends[i], k, v); !s.ok()) return StepError(i, s);
    }
    ar.default_cu_q.push_back(static_cast<int32_t>(q0 + *st.n_q));
    ar.default_cu_k.push_back(static_cast<int32_t>(k0 + ends[i]));
  }
  ar.id = request.id;
  EngineInput& in = ar.input;
  in.q = TensorView{shape.dtype, q_on_device ? static_cast<const void*>(first_q.q.data()) : q_at, total_q, shape.heads_q,
                    shape.head_dim};
  in.memory = q_on_device ? MemoryKind::kDevice : MemoryKind::kPageable;
  // Paged: k/v give their shapes, and their data is the pool's base (engine_io.h, EngineInput::paged).
  const void* const pool = paged ? static_cast<const void*>(ar.input.paged->pool) : nullptr;
  in.k = TensorView{shape.dtype, paged ? pool : k_at, total_k, shape.heads_kv, shape.head_dim};
  in.v = TensorView{shape.dtype, paged ? pool : v_at, total_k, shape.heads_kv, shape.head_dim};
  in.cu_seqlens_q = ar.default_cu_q;
  in.cu_seqlens_k = ar.default_cu_k;
  in.mask = MaskMode::kCausal;
  if (paged && ar.input.paged->device >= 0) in.memory_device = ar.input.paged->device;  // the GPU holding the pages
  in.lse = request.return_lse ? LseMode::kNatural : LseMode::kNone;
  if (request.recipe.has_value() || unquantized) {
    ar.recipe = unquantized ? Recipe::kUnquantized : *request.recipe;
    ar.recipe_explicit = true;
  } else {
    ar.recipe = pipeline_->backend().default_recipe;
    if (!shape.model.empty() && one_layer) ar.plan = PlanAddress{shape.model, request.steps[0].layer, std::nullopt};
  }
  ar.config = ConfigFor(ar.recipe);
  ar.output_dtype = shape.dtype;
  ar.output.q_dtype = shape.dtype;
  ar.output.output_dtype = shape.dtype;
  ar.output.o_bytes = q_bytes;
  ar.output.lse_bytes = request.return_lse ? static_cast<size_t>(total_q) * shape.heads_q * sizeof(float) : 0;
  // o_output / lse_output: the launch's O is the steps' O concatenated, which is what they hold.
  ar.output.client_o = request.output.client_o;
  ar.output.client_lse = request.output.client_lse;
  ar.output.client_memory = request.output.client_memory;
  ar.output.client_direct = request.output.client_direct;
  ar.output_regions = std::move(request.output_regions);
  ar.regions = std::move(request.regions);  // held while the call lives, after its launch
  for (const auto& region : ar.regions) region->CountRequest();

  AttendCall attend;
  attend.method = AttendMethod::kSession;
  attend.request = &ar;
  attend.bytes_in = q_bytes;
  attend.accepted = request.accepted;
  attend.deadline = deadline;
  attend.is_cancelled = std::move(is_cancelled);
  attend.encode = [call](AttendResult r) -> absl::StatusOr<size_t> {
    const std::vector<size_t>& q_steps = call->q_steps;
    SessionAttendResult& out = call->result;
    out.recipe = r.recipe;
    out.timings = r.timings;
    out.prepare = r.submitted - r.accepted;
    out.device_timings = r.output.device_timings;
    const size_t row_values = static_cast<size_t>(out.heads_q) * out.head_dim;
    const AttendRequest& req = call->request;
    const bool to_client = req.writes_client_memory();
    if (to_client) {
      absl::Status s = WriteClientOutputs(r.output, out.dtype, req.input.lse, req.output, req.output_regions);
      if (!s.ok()) return s;
    }
    size_t bytes = 0;
    const int64_t rows = req.default_cu_q.back();
    if (call->packed && !to_client) {  // every step's rows in one tensor
      out.o.resize(static_cast<size_t>(rows) * row_values * 2);
      EncodeO(r.output, out.dtype, 0, static_cast<size_t>(rows) * row_values, reinterpret_cast<std::byte*>(out.o.data()));
      out.lse = std::move(r.output.lse);
      bytes = out.o.size() + out.lse.size() * sizeof(float);
    }
    for (size_t n = 0; n + 1 < req.default_cu_q.size(); ++n) {
      SessionStepOutput& step = out.steps[q_steps[n]];
      const int64_t row = req.default_cu_q[n];
      step.n_q = req.default_cu_q[n + 1] - row;
      step.row = row;
      if (to_client || call->packed) continue;  // the step's rows are in o_output / lse_output, or in out.o
      step.o.resize(static_cast<size_t>(step.n_q) * row_values * 2);
      EncodeO(r.output, out.dtype, static_cast<size_t>(row) * row_values, static_cast<size_t>(step.n_q) * row_values,
              reinterpret_cast<std::byte*>(step.o.data()));
      if (!r.output.lse.empty()) {
        const auto first = r.output.lse.begin() + row * out.heads_q;
        step.lse.assign(first, first + step.n_q * out.heads_q);
      }
      bytes += step.o.size() + step.lse.size() * sizeof(float);
    }
    return bytes;
  };
  attend.done = [call](const absl::Status& status) {
    auto finish = std::move(call->done);
    if (!status.ok()) {  // no launch ran after the in-place reads: they must be done before the answer
      (void)WaitForPoolWrites(*call->store, call->in_place_pools);
    }
    if (status.ok()) {
      finish(std::move(call->result));
    } else {
      finish(status);
    }
  };
  call->in_place_pools = in_place.Release();  // from here the launch, or `done` on failure, orders them
  absl::Status started = pipeline_->Start(std::move(attend));
  if (!started.ok()) (void)WaitForPoolWrites(*store_, call->in_place_pools);
  return started;
}

}  // namespace sage::server
