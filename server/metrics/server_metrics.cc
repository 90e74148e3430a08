#include "server/metrics/server_metrics.h"

#include <unistd.h>

#include <algorithm>
#include <array>
#include <filesystem>
#include <fstream>
#include <string>

#include "server/metrics/prometheus_text.h"

namespace sage::server {
namespace {

double Seconds(MetricsClock::duration d) { return std::chrono::duration<double>(d).count(); }

// Requests per batch: 1 .. 1024.
std::vector<double> BatchRequestBuckets() { return metrics::ExponentialBuckets(1, 2, 11); }
// Tokens per batch: 16 .. 1M.
std::vector<double> BatchTokenBuckets() { return metrics::ExponentialBuckets(16, 4, 9); }

// The `code` label of a status code, without building a string per request.
absl::string_view CodeLabel(absl::StatusCode code) {
  static const std::array<std::string, 17> kNames = [] {
    std::array<std::string, 17> names;
    for (int c = 0; c < 17; ++c) names[c] = absl::StatusCodeToString(static_cast<absl::StatusCode>(c));
    return names;
  }();
  const int c = static_cast<int>(code);
  if (c >= 0 && c < static_cast<int>(kNames.size())) return kNames[static_cast<size_t>(c)];
  return "UNKNOWN";
}

template <typename T>
absl::Status Assign(absl::StatusOr<T*> made, T** slot) {
  if (!made.ok()) return made.status();
  *slot = *made;
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::unique_ptr<ServerMetrics>> ServerMetrics::Create() {
  std::unique_ptr<ServerMetrics> m(new ServerMetrics());
  if (absl::Status s = m->Register(); !s.ok()) return s;
  return m;
}

absl::Status ServerMetrics::Register() {
  using metrics::DurationBucketsSeconds;
  metrics::Registry& r = registry_;
  const std::vector<std::string> kRequestLabels = {"method", "recipe", "code"};
  const std::vector<std::string> kDevice = {"device"};
  absl::Status s;
  // Request path (gRPC layer).
  s.Update(Assign(r.AddCounter("sageserve_requests_total",
                               "Attend requests answered, by RPC method, recipe and gRPC status code.",
                               kRequestLabels),
                  &requests_));
  s.Update(Assign(r.AddCounter("sageserve_request_errors_total",
                               "Attend requests answered with a status other than OK.", kRequestLabels),
                  &errors_));
  s.Update(Assign(r.AddHistogram("sageserve_request_duration_seconds",
                                 "End-to-end server time of an Attend request, accepted to answered.",
                                 {"method"}, DurationBucketsSeconds()),
                  &request_duration_));
  s.Update(Assign(r.AddCounter("sageserve_request_bytes_total",
                               "Tensor bytes received in Attend requests (Q, K, V).", {}),
                  &bytes_in_));
  s.Update(Assign(r.AddCounter("sageserve_response_bytes_total",
                               "Tensor bytes sent in Attend responses (O, LSE).", {}),
                  &bytes_out_));
  // Every RPC (gRPC interceptor).
  s.Update(Assign(r.AddCounter("sageserve_rpcs_total",
                               "RPCs answered, every method of every service, by full method name and gRPC "
                               "status code.",
                               {"method", "code"}),
                  &rpcs_));
  s.Update(Assign(r.AddHistogram("sageserve_rpc_duration_seconds",
                                 "Server time of an RPC, started to status sent (a stream: its whole life).",
                                 {"method"}, DurationBucketsSeconds()),
                  &rpc_duration_));
  s.Update(Assign(r.AddGauge("sageserve_open_streams", "Streaming RPCs open now, by full method name.",
                             {"method"}),
                  &open_streams_));
  // Scheduler.
  s.Update(Assign(r.AddHistogram("sageserve_queue_duration_seconds",
                                 "Time a request waited in the scheduler queue before its launch.", {},
                                 DurationBucketsSeconds()),
                  &queue_duration_));
  s.Update(Assign(r.AddCounter("sageserve_queue_dropped_total",
                               "Requests answered from the queue without a launch (deadline, "
                               "cancellation, shutdown), by gRPC status code.",
                               {"code"}),
                  &dropped_));
  s.Update(Assign(r.AddGauge("sageserve_queue_depth_requests",
                             "Requests accepted and waiting for a launch.", {}),
                  &queue_depth_));
  s.Update(Assign(r.AddGauge("sageserve_stream_queued_responses",
                             "AttendStream answers waiting to be written to their clients, all streams.", {}),
                  &stream_queued_responses_));
  s.Update(Assign(r.AddGauge("sageserve_stream_queued_bytes",
                             "Bytes of AttendStream answers waiting to be written to their clients, all streams.",
                             {}),
                  &stream_queued_bytes_));
  s.Update(Assign(r.AddCounter("sageserve_batches_total", "Backend launches, by device.", kDevice),
                  &batches_));
  s.Update(Assign(r.AddCounter("sageserve_batch_splits_total",
                               "Merged launches that failed and were retried one request at a time.",
                               kDevice),
                  &batch_splits_));
  s.Update(Assign(r.AddHistogram("sageserve_batch_size_requests", "Requests merged into one launch.",
                                 kDevice, BatchRequestBuckets()),
                  &batch_requests_));
  s.Update(Assign(r.AddHistogram("sageserve_batch_size_tokens",
                                 "Tokens per launch (max of Q and K tokens, summed over requests).",
                                 kDevice, BatchTokenBuckets()),
                  &batch_tokens_));
  s.Update(Assign(r.AddHistogram("sageserve_batch_compute_duration_seconds",
                                 "Wall time of one backend launch, transfers included.", kDevice,
                                 DurationBucketsSeconds()),
                  &compute_duration_));
  s.Update(Assign(r.AddHistogram("sageserve_batch_respond_duration_seconds",
                                 "Time a worker spent answering one launch's requests after it (responses "
                                 "built and handed to gRPC), holding no stream slot.",
                                 kDevice, DurationBucketsSeconds()),
                  &respond_duration_));
  // Executor stages.
  s.Update(Assign(r.AddHistogram("sageserve_h2d_duration_seconds",
                                 "Host-to-device copy time of one launch.", kDevice,
                                 DurationBucketsSeconds()),
                  &h2d_duration_));
  s.Update(Assign(r.AddHistogram("sageserve_kernel_duration_seconds",
                                 "Quantization and attention time of one launch.", kDevice,
                                 DurationBucketsSeconds()),
                  &kernel_duration_));
  s.Update(Assign(r.AddHistogram("sageserve_d2h_duration_seconds",
                                 "Device-to-host copy time of one launch.", kDevice,
                                 DurationBucketsSeconds()),
                  &d2h_duration_));
  s.Update(Assign(r.AddGauge("sageserve_sessions_open", "KV sessions open, all identities.", {}), &sessions_open_));
  s.Update(Assign(r.AddGauge("sageserve_kv_pages", "KV pages of the session pool, by device and state (used, free).",
                             {"device", "state"}),
                  &kv_pages_));
  s.Update(Assign(r.AddCounter("sageserve_session_appended_tokens_total",
                               "Tokens appended to session KV caches (every layer counted).", {}),
                  &session_tokens_));
  s.Update(Assign(r.AddCounter("sageserve_sessions_ended_total",
                               "Sessions ended and their pages freed, by reason (closed, idle).", {"reason"}),
                  &sessions_ended_));
  s.Update(Assign(r.AddGauge("sageserve_gpu_memory_used_bytes",
                             "GPU memory in use, by device (GPU backends only).", kDevice),
                  &memory_used_));
  s.Update(Assign(r.AddGauge("sageserve_gpu_memory_total_bytes",
                             "GPU memory of the device, by device (GPU backends only).", kDevice),
                  &memory_total_));
  s.Update(Assign(r.AddGauge("sageserve_payload_pool_capacity_bytes",
                             "Host memory request tensors are received into, by kind (pinned: the GPU copies "
                             "straight from it).", {"memory"}),
                  &payload_capacity_));
  s.Update(Assign(r.AddGauge("sageserve_payload_pool_in_use_bytes",
                             "Bytes of the payload pool held by requests in flight, by kind.", {"memory"}),
                  &payload_in_use_));
  s.Update(Assign(r.AddCounter("sageserve_payload_pool_overflow_total",
                               "Requests that did not fit the payload pool and were received into ordinary "
                               "memory (staged before the GPU copy), by kind.",
                               {"memory"}),
                  &payload_overflow_));
  // Process (the names Prometheus' client libraries use), read afresh at each scrape.
  s.Update(Assign(r.AddGauge("process_resident_memory_bytes", "Resident set size of the server process.", {}),
                  &resident_memory_));
  s.Update(Assign(r.AddGauge("process_open_fds", "File descriptors the server process has open.", {}), &open_fds_));
  s.Update(Assign(r.AddGauge("sageserve_in_flight_requests",
                             "Attend requests accepted and not yet answered (unary and streamed).", {}),
                  &in_flight_));
  s.Update(Assign(r.AddGauge("sageserve_build_info", "Always 1; the labels say what runs.", {"version", "backend"}),
                  &build_info_));
  if (!s.ok()) return s;
  // Unlabelled series exist from the start, so a scrape shows 0 rather than nothing.
  bytes_in_->Get();
  bytes_out_->Get();
  queue_duration_->Get();
  queue_depth_->Get();
  in_flight_->Get();
  stream_queued_responses_->Get();
  stream_queued_bytes_->Get();
  return absl::OkStatus();
}

namespace {

// Resident set size from /proc/self/statm (pages); -1 when unreadable.
double ResidentBytes() {
  std::ifstream statm("/proc/self/statm");
  long pages_total = 0, pages_resident = 0;
  if (!(statm >> pages_total >> pages_resident)) return -1;
  return static_cast<double>(pages_resident) * static_cast<double>(::sysconf(_SC_PAGESIZE));
}

// Entries of /proc/self/fd, less the one the listing itself opens.
double OpenFds() {
  std::error_code ec;
  double n = 0;
  for (std::filesystem::directory_iterator it("/proc/self/fd", ec), end; !ec && it != end; it.increment(ec)) ++n;
  return ec ? -1 : n - 1;
}

}  // namespace

std::string ServerMetrics::RenderText() const {
  resident_memory_->Get().Set(ResidentBytes());
  open_fds_->Get().Set(OpenFds());
  return metrics::RenderPrometheusText(registry_);
}

void ServerMetrics::AddInFlight(int delta) { in_flight_->Get().Add(delta); }

void ServerMetrics::SetBuildInfo(absl::string_view version, absl::string_view backend) {
  build_info_->WithLabels({version, backend}).Set(1);
}

void ServerMetrics::SetSessions(const SessionGauges& g) {
  sessions_open_->WithLabels({}).Set(static_cast<double>(g.sessions_open));
  kv_pages_->WithLabels({g.device, "used"}).Set(static_cast<double>(g.pages_total - g.pages_free));
  kv_pages_->WithLabels({g.device, "free"}).Set(static_cast<double>(g.pages_free));
  std::lock_guard<std::mutex> lock(payload_mu_);
  session_tokens_->WithLabels({}).Increment(static_cast<double>(g.appended_tokens - session_tokens_seen_));
  sessions_ended_->WithLabels({"closed"}).Increment(static_cast<double>(g.closed - sessions_closed_seen_));
  sessions_ended_->WithLabels({"idle"}).Increment(static_cast<double>(g.expired_idle - sessions_expired_seen_));
  session_tokens_seen_ = g.appended_tokens;
  sessions_closed_seen_ = g.closed;
  sessions_expired_seen_ = g.expired_idle;
}

void ServerMetrics::RecordRpc(const RpcRecord& r) {
  rpcs_->WithLabels({r.method, CodeLabel(r.code)}).Increment();
  rpc_duration_->WithLabels({r.method}).Observe(Seconds(r.latency));
}

void ServerMetrics::AddOpenStreams(absl::string_view method, int delta) {
  open_streams_->WithLabels({method}).Add(delta);
}

void ServerMetrics::RecordRequest(const RequestRecord& r) {
  const absl::string_view code = CodeLabel(r.code);
  requests_->WithLabels({r.method, r.recipe, code}).Increment();
  if (r.code != absl::StatusCode::kOk) errors_->WithLabels({r.method, r.recipe, code}).Increment();
  request_duration_->WithLabels({r.method}).Observe(Seconds(r.latency));
  bytes_in_->Get().Increment(static_cast<double>(r.bytes_in));
  bytes_out_->Get().Increment(static_cast<double>(r.bytes_out));
}

void ServerMetrics::RecordQueued(MetricsClock::duration queued) {
  queue_duration_->Get().Observe(Seconds(queued));
}

void ServerMetrics::RecordDropped(absl::StatusCode code) {
  dropped_->WithLabels({CodeLabel(code)}).Increment();
}

void ServerMetrics::RecordBatch(const BatchRecord& b) {
  batches_->WithLabels({b.device}).Increment();
  batch_requests_->WithLabels({b.device}).Observe(static_cast<double>(b.requests));
  batch_tokens_->WithLabels({b.device}).Observe(static_cast<double>(b.tokens));
  compute_duration_->WithLabels({b.device}).Observe(Seconds(b.compute));
}

void ServerMetrics::RecordRespond(absl::string_view device, MetricsClock::duration respond) {
  respond_duration_->WithLabels({device}).Observe(Seconds(respond));
}

void ServerMetrics::RecordBatchSplit(absl::string_view device) {
  batch_splits_->WithLabels({device}).Increment();
}

void ServerMetrics::RecordStages(const StageRecord& s) {
  if (s.h2d) h2d_duration_->WithLabels({s.device}).Observe(Seconds(*s.h2d));
  if (s.kernel) kernel_duration_->WithLabels({s.device}).Observe(Seconds(*s.kernel));
  if (s.d2h) d2h_duration_->WithLabels({s.device}).Observe(Seconds(*s.d2h));
}

void ServerMetrics::SetQueueDepth(int depth) { queue_depth_->Get().Set(depth); }

void ServerMetrics::AddStreamQueued(int64_t responses, int64_t bytes) {
  stream_queued_responses_->Get().Add(static_cast<double>(responses));
  stream_queued_bytes_->Get().Add(static_cast<double>(bytes));
}

void ServerMetrics::SetGpuMemory(absl::string_view device, int64_t used_bytes, int64_t total_bytes) {
  memory_used_->WithLabels({device}).Set(static_cast<double>(used_bytes));
  memory_total_->WithLabels({device}).Set(static_cast<double>(total_bytes));
}

void ServerMetrics::SetPayloadPool(absl::string_view memory, int64_t capacity_bytes, int64_t in_use_bytes,
                                   int64_t overflowed) {
  payload_capacity_->WithLabels({memory}).Set(static_cast<double>(capacity_bytes));
  payload_in_use_->WithLabels({memory}).Set(static_cast<double>(in_use_bytes));
  std::lock_guard<std::mutex> lock(payload_mu_);
  metrics::Counter& c = payload_overflow_->WithLabels({memory});
  if (overflowed > payload_overflow_seen_) c.Increment(static_cast<double>(overflowed - payload_overflow_seen_));
  payload_overflow_seen_ = std::max(payload_overflow_seen_, overflowed);
}

}  // namespace sage::server
