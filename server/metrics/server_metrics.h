// The metrics sageserve exports, in one place: names, help, labels and buckets (see
// docs/RUNTIME.md for the table). The gRPC layer records requests; the scheduler records queueing
// and batches; an executor records its stage times and device memory.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "server/metrics/metrics_registry.h"

namespace sage::server {

using MetricsClock = std::chrono::steady_clock;

// One finished Attend call, as the gRPC layer saw it.
struct RequestRecord {
  absl::string_view method = "Attend";  // "Attend", "AttendStream".
  absl::string_view recipe = "unknown";  // RecipeName() of what ran (or was asked for).
  absl::StatusCode code = absl::StatusCode::kOk;
  MetricsClock::duration latency{};     // Accepted -> answered, on the server.
  int64_t bytes_in = 0;                 // Request tensor bytes.
  int64_t bytes_out = 0;                // Response tensor bytes.
};

// One finished RPC of any method (Attend, registry, shared memory, health, reflection), as gRPC's
// interceptor saw it. `method` is gRPC's full name, or "other" for a method the server lacks.
struct RpcRecord {
  absl::string_view method;
  absl::StatusCode code = absl::StatusCode::kOk;
  MetricsClock::duration latency{};  // Started -> status sent.
};

// The `recipe` label of a request refused before any recipe ran (decode, plan or admission).
inline constexpr absl::string_view kNoRecipeLabel = "none";

// One backend launch, as the scheduler saw it.
struct BatchRecord {
  absl::string_view device = "cpu";
  int requests = 0;
  int64_t tokens = 0;
  int64_t work = 0;
  MetricsClock::duration compute{};  // The backend call, transfers included.
};

// Per-stage device times of one batch (CUDA events), or just the kernel for the CPU engine.
struct StageRecord {
  absl::string_view device = "cpu";
  std::optional<MetricsClock::duration> h2d;
  std::optional<MetricsClock::duration> kernel;
  std::optional<MetricsClock::duration> d2h;
};

class ServerMetrics {
 public:
  static absl::StatusOr<std::unique_ptr<ServerMetrics>> Create();

  metrics::Registry& registry() { return registry_; }
  const metrics::Registry& registry() const { return registry_; }
  std::string RenderText() const;

  void RecordRequest(const RequestRecord& r);
  void RecordRpc(const RpcRecord& r);
  // Streaming RPCs open now, by full method name: +1 / -1.
  void AddOpenStreams(absl::string_view method, int delta);
  void RecordQueued(MetricsClock::duration queued);
  void RecordDropped(absl::StatusCode code);  // Expired, cancelled or drained while queued.
  void RecordBatch(const BatchRecord& b);
  void RecordBatchSplit(absl::string_view device);  // A merged batch failed; members retried alone.
  void RecordStages(const StageRecord& s);
  // Time a worker spent answering one launch's requests after it (responses built and handed to gRPC).
  void RecordRespond(absl::string_view device, MetricsClock::duration respond);
  void SetQueueDepth(int depth);
  // Attend requests accepted and not yet answered (unary and streamed): +1 / -1.
  void AddInFlight(int delta);
  // sageserve_build_info{version, backend} = 1, set once at start.
  void SetBuildInfo(absl::string_view version, absl::string_view backend);
  // AttendStream answers waiting to be written (all streams): `responses` and `bytes` are changes.
  void AddStreamQueued(int64_t responses, int64_t bytes);
  void SetGpuMemory(absl::string_view device, int64_t used_bytes, int64_t total_bytes);
  // KV sessions, read from the session store when scraped; the cumulative counts are totals.
  struct SessionGauges {
    absl::string_view device = "cpu";
    int64_t sessions_open = 0;
    int64_t pages_total = 0;
    int64_t pages_free = 0;
    int64_t appended_tokens = 0;
    int64_t closed = 0;
    int64_t expired_idle = 0;
  };
  void SetSessions(const SessionGauges& g);
  // The request payload pool (`memory`: "pinned" or "pageable"); `overflowed` is cumulative.
  void SetPayloadPool(absl::string_view memory, int64_t capacity_bytes, int64_t in_use_bytes, int64_t overflowed);

 private:
  ServerMetrics() = default;
  absl::Status Register();

  metrics::Registry registry_;
  metrics::CounterFamily* requests_ = nullptr;
  metrics::CounterFamily* rpcs_ = nullptr;
  metrics::HistogramFamily* rpc_duration_ = nullptr;
  metrics::GaugeFamily* open_streams_ = nullptr;
  metrics::CounterFamily* errors_ = nullptr;
  metrics::HistogramFamily* request_duration_ = nullptr;
  metrics::CounterFamily* bytes_in_ = nullptr;
  metrics::CounterFamily* bytes_out_ = nullptr;
  metrics::HistogramFamily* queue_duration_ = nullptr;
  metrics::CounterFamily* dropped_ = nullptr;
  metrics::GaugeFamily* queue_depth_ = nullptr;
  metrics::GaugeFamily* in_flight_ = nullptr;
  metrics::GaugeFamily* build_info_ = nullptr;
  metrics::GaugeFamily* resident_memory_ = nullptr;
  metrics::GaugeFamily* open_fds_ = nullptr;
  metrics::GaugeFamily* stream_queued_responses_ = nullptr;
  metrics::GaugeFamily* stream_queued_bytes_ = nullptr;
  metrics::CounterFamily* batches_ = nullptr;
  metrics::CounterFamily* batch_splits_ = nullptr;
  metrics::HistogramFamily* batch_requests_ = nullptr;
  metrics::HistogramFamily* batch_tokens_ = nullptr;
  metrics::HistogramFamily* compute_duration_ = nullptr;
  metrics::HistogramFamily* respond_duration_ = nullptr;
  metrics::HistogramFamily* h2d_duration_ = nullptr;
  metrics::HistogramFamily* kernel_duration_ = nullptr;
  metrics::HistogramFamily* d2h_duration_ = nullptr;
  metrics::GaugeFamily* memory_used_ = nullptr;
  metrics::GaugeFamily* sessions_open_ = nullptr;
  metrics::GaugeFamily* kv_pages_ = nullptr;
  metrics::CounterFamily* session_tokens_ = nullptr;
  metrics::CounterFamily* sessions_ended_ = nullptr;
  int64_t session_tokens_seen_ = 0;   // guarded by payload_mu_: cumulative values turned into increments
  int64_t sessions_closed_seen_ = 0;  // guarded by payload_mu_
  int64_t sessions_expired_seen_ = 0; // guarded by payload_mu_
  metrics::GaugeFamily* memory_total_ = nullptr;
  metrics::GaugeFamily* payload_capacity_ = nullptr;
  metrics::GaugeFamily* payload_in_use_ = nullptr;
  metrics::CounterFamily* payload_overflow_ = nullptr;
  std::mutex payload_mu_;
  int64_t payload_overflow_seen_ = 0;  // guarded by payload_mu_: the last cumulative value turned into increments
};

}  // namespace sage::server
