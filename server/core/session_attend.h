// The journey of an AttendSession call, protobuf-free: every step checked against its session
// before anything changes, the new tokens appended (one transfer per device), and one attend
// (causal, bottom-right aligned) over the steps that carry Q, through the same pipeline, scheduler
// and backend as Attend. Decode-shaped calls default to the unquantized recipe and have the engine
// read their pinned pages in place (EngineInput::paged); others gather the caches into one block.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "absl/functional/any_invocable.h"
#include "absl/status/statusor.h"
#include "kernels/reference/recipe.h"
#include "server/core/attend_pipeline.h"
#include "server/core/client_output.h"
#include "server/session/session_store.h"

namespace sage::server {

// One step as the frontend decoded it. Byte spans are 16-bit values in the session's dtype and
// stay alive until the call's `done` has run. Each of k, v and q is the message's bytes or a
// client's registered region (k_shared, v_shared, q_shared), CUDA memory included, which the host
// never reads in place.
struct SessionStepInput {
  std::string session_id;
  int layer = 0;
  int64_t position = 0;
  uint64_t step_id = 0;
  int64_t n_new = 0;  // tokens in k / v ([n_new, Hkv, D])
  std::span<const std::byte> k, v;
  // Set: k / v is this range of a registered region (steps[i].k.shared_memory). Either kind of
  // memory, each independently: read in place (kv_on_device) or copied into a host block before
  // the append (session_kv_staging.h).
  std::optional<SharedRange> k_shared, v_shared;
  // Set by Start: k and v are CUDA memory of the GPU holding the session's pages, which reads them
  // in place for the append (SessionStore::TakesDeviceKv); otherwise they are staged on the host.
  bool kv_on_device = false;
  std::optional<int64_t> n_q;  // set: q holds [n_q, Hq, D]; unset: a bulk import
  std::span<const std::byte> q;
  // Set: q is this range of a registered region (steps[i].q.shared_memory). A system region is
  // copied with the fault-tolerant copy; CUDA memory is read in place by the launch, which needs
  // the frontend's promise that every step's CUDA q follows the previous one's in one region.
  std::optional<SharedRange> q_shared;
  // As the tensors declared them (checked against the session): dtype, heads of k/v and q, head_dim.
  DType dtype = DType::kF16;
  int kv_heads = 0;
  int q_heads = 0;
  int head_dim = 0;
};

struct SessionAttendRequest {
  std::string id;
  std::vector<SessionStepInput> steps;
  std::optional<Recipe> recipe;  // unset: the model plan's, else the server's default
  bool return_lse = false;
  // The packed form: O (and LSE) of all steps go into the result's one o (lse), not per step.
  bool packed = false;
  Clock::time_point accepted = Clock::now();  // when the frontend took the call (the timings' start)
  // o_output / lse_output: O (and LSE) of every step with q, in step order, go into the client's
  // memory ([sum of n_q, Hq, D], the launch's own layout). Only the client_* fields are set here.
  OutputOffer output;
  ClientOutputRegions output_regions;
  // The GPU of the CUDA shared memory the request names (q or O), -1: none. Such a call must run
  // the paged decode launch on that GPU: every step's session keeps its pages there.
  int memory_device = -1;
  // The regions the request names, each once: held until the call is answered.
  std::vector<std::shared_ptr<const SharedMemoryRegion>> regions;
  // Each step's session when SessionAttend::StartsOnCaller has looked them all up (its caller's
  // own), so that Start does not look them up again; empty otherwise.
  std::vector<SessionStore::Ref> sessions;
};

struct SessionStepOutput {
  std::string session_id;
  int64_t length = 0;   // the layer's cached length after the step
  int64_t n_q = 0;      // 0: no Q (bulk import)
  int64_t row = 0;      // the step's first row in the call's O (the sum of n_q of earlier steps)
  std::string o;        // [n_q, Hq, D] in the session's dtype, as bytes; empty when in o_output
  std::vector<float> lse;  // [n_q, Hq] with return_lse
};

struct SessionAttendResult {
  std::vector<SessionStepOutput> steps;  // in request order
  // A packed call's O ([sum of n_q, Hq, D] as bytes) and LSE ([sum of n_q, Hq]); the steps' own
  // o and lse stay empty. Empty too when in o_output.
  std::string o;
  std::vector<float> lse;
  DType dtype = DType::kF16;
  int heads_q = 0;
  int head_dim = 0;
  Recipe recipe = Recipe::kInt8QkFp8Pv;
  WorkTimings timings;
  Clock::duration prepare{};  // accepted -> handed to the scheduler (worker hop, appends, staging)
  std::optional<DeviceTimings> device_timings;  // the launch's GPU times (CUDA backend)
};

class SessionAttend {
 public:
  // Both must outlive this object.
  SessionAttend(SessionStore* store, AttendPipeline* pipeline) : store_(store), pipeline_(pipeline) {}

  // Checks what the server can run for a new session (head_dim, each layer's KV storage) and
  // creates it. A shape without storages naming a model takes the model's plan's per layer
  // (Registry::SessionKvStorages): NOT_FOUND for an unknown model, INVALID_ARGUMENT when the
  // session's layers, heads or head_dim are not the model's.
  absl::StatusOr<SessionInfo> CreateSession(const SessionCaller& caller, const SessionShape& shape,
                                            int64_t reserve_tokens) const;

  // OK: `done` runs once, later or before Start returns, with the result or the step's error.
  // Error: `done` never runs. Appends that happened before an error stay (a retry with the same
  // step ids is recognised and not appended twice).
  absl::Status Start(const SessionCaller& caller, SessionAttendRequest request, std::optional<Clock::time_point> deadline,
                     std::function<bool()> is_cancelled,
                     absl::AnyInvocable<void(absl::StatusOr<SessionAttendResult>)> done);

  // Whether `request` is light enough to Start on the thread that received it (a gRPC reactor),
  // saving the hop to a session worker: decode-shaped (every step with Q at most kPagedMaxQueryRows
  // rows, the recipe unset or unquantized, so the engine reads the pages in place and nothing is
  // gathered), at most kCallerAppendBytes of new K/V from the host (inline or system shared memory
  // alike) and kCallerQBytes of Q, its sessions in one pool and of one storage, K and V in CUDA memory only where
  // the GPU reads them in place (SessionStore::TakesDeviceKv; a copy to the host would wait for
  // the GPU). Such a call's appends do not wait for the GPU (KvMemory::WriteTokens on the write
  // stream). Looks every step's session up once, keeping them in request.sessions for Start.
  bool StartsOnCaller(const SessionCaller& caller, SessionAttendRequest& request) const;

  const AttendPipeline& pipeline() const { return *pipeline_; }
  static constexpr int64_t kPagedMaxQueryRows = 16;  // sageattn.h SAGE_PAGED_MAX_QUERY_ROWS
  static constexpr size_t kCallerAppendBytes = size_t{256} << 10;
  static constexpr size_t kCallerQBytes = size_t{1} << 20;

  SessionStore& store() const { return *store_; }

 private:
  // Fills shape.storages from the plan of shape.model (CreateSession).
  absl::Status StoragesFromPlan(SessionShape& shape) const;

  SessionStore* const store_;
  AttendPipeline* const pipeline_;
};

}  // namespace sage::server
