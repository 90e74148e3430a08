#include "server/app/sage_server.h"

#include <algorithm>
#include <chrono>
#include <climits>
#include <thread>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "grpc/compression.h"
#include "grpc/grpc.h"
#include "grpcpp/ext/proto_server_reflection_plugin.h"
#include "grpcpp/security/server_credentials.h"
#include "grpcpp/server_builder.h"
#include "server/backend/backend_factory.h"
#include "server/frontend/grpc/listener_credentials.h"
#include "server/frontend/grpc/rpc_metrics_interceptor.h"
#include "server/scheduler/dynamic_batcher.h"
#include "server/scheduler/fifo_scheduler.h"
#include "server/util/version.h"
#include "spdlog/spdlog.h"

namespace sage::server {
namespace {

absl::StatusOr<std::unique_ptr<Scheduler>> MakeScheduler(const ServerOptions& options,
                                                         AttentionBackend* backend, ServerMetrics* metrics) {
  if (options.scheduler_kind == SchedulerKind::kFifo) {
    absl::StatusOr<std::unique_ptr<FifoScheduler>> fifo = FifoScheduler::Create(options.scheduler, backend);
    if (!fifo.ok()) return fifo.status();
    return std::unique_ptr<Scheduler>(*std::move(fifo));
  }
  BatcherOptions batcher = options.batcher;
  batcher.worker_threads = options.scheduler.worker_threads;
  batcher.queue_capacity = options.scheduler.queue_capacity;
  if (backend->info().kind == BackendKind::kCuda) {
    batcher.device_label = "cuda";  // Launches that report DeviceTimings say which GPU ran them.
    batcher.launch_timing = LaunchTiming::kBackendReportsStages;
    // A merged launch must fit one stream slot's preallocated buffers, or it would be refused
    // (RESOURCE_EXHAUSTED) and retried member by member.
    batcher.max_batch_elements = options.backend.cuda_max_batch_elements;
    batcher.max_batch_sequences = options.backend.cuda_max_batch_sequences;
  } else {
    batcher.device_label = "cpu";
    batcher.launch_timing = LaunchTiming::kLaunchIsKernel;
  }
  absl::StatusOr<std::unique_ptr<DynamicBatcher>> made = DynamicBatcher::Create(batcher, backend, metrics);
  if (!made.ok()) return made.status();
  return std::unique_ptr<Scheduler>(*std::move(made));
}

struct OpenedRegistry {
  std::unique_ptr<registry::RegistryStore> store;
  std::unique_ptr<registry::Registry> registry;
};

// Loads the precision registry from options.registry.state_dir (or starts an in-memory one). Runs
// before anything else is built: a corrupt registry file must stop the server, naming the file
// and the problem, unless the operator asked for it to be moved aside.
absl::StatusOr<OpenedRegistry> OpenRegistry(const RegistryServerOptions& options, const BackendInfo& backend) {
  OpenedRegistry out;
  registry::RegistryOptions ro;
  ro.backend = backend;
  ro.max_models = options.max_models;
  registry::RegistrySnapshot initial;
  if (options.state_dir.empty()) {
    spdlog::warn("registry: no --state_dir; models and plans are kept in memory only and lost on restart");
  } else {
    registry::RegistryStoreOptions so;
    so.state_dir = options.state_dir;
    so.on_corrupt = options.on_corrupt;
    absl::StatusOr<std::unique_ptr<registry::RegistryStore>> store = registry::RegistryStore::Open(so);
    if (!store.ok()) return store.status();
    absl::StatusOr<registry::LoadResult> loaded = (*store)->Load();
    if (!loaded.ok()) return loaded.status();
    switch (loaded->kind) {
      case registry::LoadKind::kFresh:
        spdlog::info("registry: new registry at {}", (*store)->path());
        break;
      case registry::LoadKind::kLoaded:
        spdlog::info("registry: {} models from {} (generation {})", loaded->snapshot.models.size(),
                     (*store)->path(), loaded->snapshot.generation);
        break;
      case registry::LoadKind::kMovedAside:
        spdlog::warn("registry: {} was unusable ({}); moved it to {} and started with an empty registry",
                     (*store)->path(), loaded->problem, loaded->moved_to);
        break;
    }
    initial = std::move(loaded->snapshot);
    out.store = *std::move(store);
    ro.sink = out.store.get();
  }
  absl::StatusOr<std::unique_ptr<registry::Registry>> made = registry::Registry::Create(ro, std::move(initial));
  if (!made.ok()) {
    return absl::Status(made.status().code(),
                        absl::StrCat(out.store ? out.store->path() + ": " : "", made.status().message()));
  }
  out.registry = *std::move(made);
  return out;
}

}  // namespace

int AutoWorkerThreads(const std::vector<DeviceStats>& devices) {
  // Full-size slots only: light ones spare small launches the wait for a slot, and more workers
  // than that made launches smaller and the CUDA driver's locks busier under load.
  int slots = 0;
  for (const DeviceStats& d : devices) slots += d.streams - d.light_streams;
  return slots > 0 ? 2 * slots : FifoSchedulerOptions{}.worker_threads;
}

absl::StatusOr<std::unique_ptr<SageServer>> SageServer::Start(const ServerOptions& options) {
  // Bad TLS settings fail before a GPU backend spends seconds allocating its pools.
  if (absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> c = ListenerCredentials(options.tls); !c.ok()) {
    return c.status();
  }
  if (absl::Status name = SessionStore::CheckReplicaName(options.sessions.replica_name); !name.ok()) return name;
  absl::StatusOr<std::unique_ptr<AttentionBackend>> backend = CreateBackend(options.backend);
  if (!backend.ok()) return backend.status();
  return Start(options, *std::move(backend));
}

absl::StatusOr<std::unique_ptr<SageServer>> SageServer::Start(
    const ServerOptions& requested, std::unique_ptr<AttentionBackend> backend) {
  if (backend == nullptr) return absl::InvalidArgumentError("server: backend is null");
  absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> credentials = ListenerCredentials(requested.tls);
  if (!credentials.ok()) return credentials.status();
  ServerOptions options = requested;
  if (options.scheduler.worker_threads == 0) {
    options.scheduler.worker_threads = AutoWorkerThreads(backend->DeviceStatsSnapshot());
  }
  if (options.max_message_bytes <= 0 || options.max_message_bytes > INT_MAX) {
    return absl::InvalidArgumentError(absl::StrCat(
        "max_message_bytes must be in (0, ", INT_MAX, "], got ", options.max_message_bytes));
  }
  if (options.handshake_timeout.count() <= 0 || options.handshake_timeout.count() > INT_MAX) {
    return absl::InvalidArgumentError(absl::StrCat("handshake_timeout must be in (0, ", INT_MAX, "] ms, got ",
                                                   options.handshake_timeout.count()));
  }
  if (options.max_connection_idle.count() < 0 || options.max_connection_idle.count() > INT_MAX) {
    return absl::InvalidArgumentError(absl::StrCat("max_connection_idle must be in [0, ", INT_MAX,
                                                   "] ms (0 = never), got ", options.max_connection_idle.count()));
  }
  if (options.registry.max_models < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("registry_max_models must be >= 1, got ", options.registry.max_models));
  }
  if (options.stream.max_pending_responses < 1) {
    return absl::InvalidArgumentError(absl::StrCat("stream_max_pending_responses must be >= 1, got ",
                                                   options.stream.max_pending_responses));
  }
  // A bad token file stops the server (naming the line) before anything else is built.
  AccessControlOptions access_options = options.access;
  access_options.client_certificates_verified = !options.tls.client_ca_file.empty();
  absl::StatusOr<std::unique_ptr<AccessControl>> access = AccessControl::Create(access_options);
  if (!access.ok()) return access.status();
  if (!(*access)->tokens_required()) spdlog::warn("access control: {}", (*access)->warning());
  absl::StatusOr<OpenedRegistry> opened = OpenRegistry(options.registry, backend->info());
  if (!opened.ok()) return opened.status();
  std::unique_ptr<SageServer> s(new SageServer());
  s->options_ = options;
  s->access_ = *std::move(access);
  s->authorizer_ = std::make_unique<CallAuthorizer>(s->access_.get());
  s->backend_ = std::move(backend);
  s->registry_store_ = std::move(opened->store);
  s->registry_ = std::move(opened->registry);
  s->payload_pool_ = s->backend_->host_buffers();
  if (s->payload_pool_ == nullptr) {
    s->heap_payload_pool_ = MakeHeapBufferPool();
    s->payload_pool_ = s->heap_payload_pool_.get();
  }
  if (options.shared_memory.max_regions < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("shared_memory.max_regions must be >= 1, got ", options.shared_memory.max_regions));
  }
  s->shared_memory_ = std::make_unique<SharedMemoryRegistry>(options.shared_memory, s->backend_.get());
  absl::StatusOr<std::unique_ptr<ServerMetrics>> metrics = ServerMetrics::Create();
  if (!metrics.ok()) return metrics.status();
  s->metrics_ = *std::move(metrics);
  const std::string_view backend_name = BackendKindName(s->backend_->info().kind);
  s->metrics_->SetBuildInfo(absl::string_view(kSageserveVersion.data(), kSageserveVersion.size()),
                            absl::string_view(backend_name.data(), backend_name.size()));
  absl::StatusOr<std::unique_ptr<Scheduler>> scheduler =
      MakeScheduler(options, s->backend_.get(), s->metrics_.get());
  if (!scheduler.ok()) return scheduler.status();
  s->scheduler_ = *std::move(scheduler);
  const SessionStoreOptions& session_options = options.sessions;
  absl::Status kv_options = SessionStore::CheckOptions(session_options);
  absl::StatusOr<std::vector<std::unique_ptr<KvMemory>>> kv_memory =
      kv_options.ok() ? s->backend_->CreateKvMemory(session_options.pool_bytes, session_options.pool_fraction)
                      : absl::StatusOr<std::vector<std::unique_ptr<KvMemory>>>(kv_options);
  absl::StatusOr<std::unique_ptr<SessionStore>> store =
      kv_memory.ok() ? SessionStore::Create(session_options, *std::move(kv_memory)) : kv_memory.status();
  if (!store.ok()) {
    s->scheduler_->Shutdown(DrainMode::kDropQueued);
    return absl::Status(store.status().code(), absl::StrCat("sessions: ", store.status().message()));
  }
  s->session_store_ = *std::move(store);
  if (!options.metrics_listen_address.empty()) {
    metrics::MetricsHttpServerOptions http;
    http.listen_address = options.metrics_listen_address;
    ServerMetrics* m = s->metrics_.get();
    const AttentionBackend* backend = s->backend_.get();  // Outlives the endpoint (stopped first).
    const HostBufferPool* pool = s->payload_pool_;         // So does the payload pool.
    const SessionStore* sessions = s->session_store_.get();  // And the session store.
    http.render = [m, backend, pool, sessions] {
      const SessionStoreStats ss = sessions->Stats();
      for (const KvDeviceStats& d : ss.devices) {  // the counters are cumulative: repeating them adds nothing
        m->SetSessions(ServerMetrics::SessionGauges{d.device, ss.sessions, d.pool.pages_total, d.pool.pages_free,
                                                    ss.appended_tokens, ss.closed, ss.expired_idle});
      }
      const HostBufferPoolStats ps = pool->Stats();
      m->SetPayloadPool(ps.memory == MemoryKind::kPinned ? "pinned" : "pageable", ps.capacity_bytes, ps.in_use_bytes,
                        ps.overflowed);
      // Device gauges are read when scraped rather than polled.
      for (const DeviceStats& d : backend->DeviceStatsSnapshot()) {
        m->SetGpuMemory(absl::StrCat("cuda:", d.device), d.memory_used_bytes, d.memory_total_bytes);
      }
      return m->RenderText();
    };
    absl::StatusOr<std::unique_ptr<metrics::MetricsHttpServer>> endpoint =
        metrics::MetricsHttpServer::Start(std::move(http));
    if (!endpoint.ok()) {
      s->scheduler_->Shutdown(DrainMode::kDropQueued);
      return absl::Status(endpoint.status().code(),
                          absl::StrCat("metrics endpoint: ", endpoint.status().message()));
    }
    s->metrics_http_ = *std::move(endpoint);
  }
  s->pipeline_ = std::make_unique<AttendPipeline>(s->scheduler_.get(), &s->backend_->info(),
                                                  options.limits, s->metrics_.get(), s->registry_.get());
  s->selftest_ = std::make_unique<SelfTestRunner>(s->scheduler_.get(), s->backend_.get());
  s->session_attend_ = std::make_unique<SessionAttend>(s->session_store_.get(), s->pipeline_.get());
  ServiceLimits limits;
  limits.max_message_bytes = options.max_message_bytes;
  limits.queue_capacity = options.scheduler.queue_capacity;
  limits.worker_threads = options.scheduler.worker_threads;
  limits.shared_memory_enabled = options.shared_memory.policy == SharedMemoryPolicy::kAllow;
  limits.max_shared_memory_regions = options.shared_memory.max_regions;
  limits.stream = options.stream;
  limits.instance = std::string(s->session_store_->instance());
  s->attention_service_ = std::make_unique<AttentionService>(AttendBackends{s->pipeline_.get(), s->shared_memory_.get()}, s->selftest_.get(),
                                                             &s->backend_->info(), s->payload_pool_, limits,
                                                             s->authorizer_.get(), s->metrics_.get());
  s->health_service_ = std::make_unique<HealthService>();
  RegistryServiceOptions registry_options;
  registry_options.limits = options.limits;
  s->registry_service_ =
      std::make_unique<RegistryService>(s->registry_.get(), s->backend_.get(), registry_options,
                                        s->authorizer_.get());
  s->shared_memory_service_ = std::make_unique<SharedMemoryService>(s->shared_memory_.get(), s->authorizer_.get());
  const int session_threads = options.sessions.worker_threads > 0
                                  ? options.sessions.worker_threads
                                  : std::max(2, static_cast<int>(std::thread::hardware_concurrency()) / 2);
  s->session_service_ =
      std::make_unique<SessionService>(s->session_attend_.get(), s->authorizer_.get(), s->metrics_.get(),
                                       s->shared_memory_.get(), session_threads);

  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  builder.AddListeningPort(options.listen_address, *credentials, &s->port_);
  builder.SetMaxReceiveMessageSize(static_cast<int>(options.max_message_bytes));
  builder.SetMaxSendMessageSize(static_cast<int>(options.max_message_bytes));
  if (!options.allow_request_compression) {
    // gRPC 1.51 inflates a compressed message whole before it checks the size limit (1 MB of gzip
    // became 1 GiB). With only identity enabled, a compressed request is refused (UNIMPLEMENTED)
    // from its grpc-encoding header, before a byte is inflated.
    builder.SetCompressionAlgorithmSupportStatus(GRPC_COMPRESS_DEFLATE, false);
    builder.SetCompressionAlgorithmSupportStatus(GRPC_COMPRESS_GZIP, false);
  }
  // Responses are never compressed: tensors barely shrink, and it would cost CPU on every answer.
  builder.SetDefaultCompressionAlgorithm(GRPC_COMPRESS_NONE);
  builder.SetDefaultCompressionLevel(GRPC_COMPRESS_LEVEL_NONE);
  // A connection that never completes its handshake (HTTP/2 preface and SETTINGS) is closed;
  // gRPC's 120 s default let silent connections pile up.
  builder.AddChannelArgument(GRPC_ARG_SERVER_HANDSHAKE_TIMEOUT_MS, static_cast<int>(options.handshake_timeout.count()));
  if (options.max_connection_idle.count() > 0) {
    builder.AddChannelArgument(GRPC_ARG_MAX_CONNECTION_IDLE_MS, static_cast<int>(options.max_connection_idle.count()));
  }
  // One server per port: with SO_REUSEPORT (gRPC's default on Linux) a second server binds the same
  // port and the kernel splits new connections between the two.
  builder.AddChannelArgument(GRPC_ARG_ALLOW_REUSEPORT, 0);
  for (const GrpcArg& a : options.grpc_args) builder.AddChannelArgument(a.name, a.value);
  std::vector<std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface>> interceptors;
  interceptors.push_back(MakeRpcMetricsInterceptorFactory(s->metrics_.get()));
  builder.experimental().SetInterceptorCreators(std::move(interceptors));
  builder.RegisterService(s->attention_service_.get());
  builder.RegisterService(s->health_service_.get());
  builder.RegisterService(s->registry_service_.get());
  builder.RegisterService(s->shared_memory_service_.get());
  builder.RegisterService(s->session_service_.get());
  s->server_ = builder.BuildAndStart();
  if (s->server_ == nullptr || s->port_ == 0) {
    s->scheduler_->Shutdown(DrainMode::kDropQueued);
    // The TLS settings were checked above, so what is left is the address itself.
    return absl::UnavailableError(
        absl::StrCat("could not listen on ", options.listen_address, " (address in use or invalid?)"));
  }
  s->health_service_->Set("sageserve.v1.AttentionService",
                          grpc::health::v1::HealthCheckResponse::SERVING);
  s->health_service_->Set("sageserve.v1.RegistryService", grpc::health::v1::HealthCheckResponse::SERVING);
  s->health_service_->Set("sageserve.v1.SharedMemoryService", grpc::health::v1::HealthCheckResponse::SERVING);
  s->health_service_->Set("sageserve.v1.SessionService", grpc::health::v1::HealthCheckResponse::SERVING);
  s->health_service_->SetAll(grpc::health::v1::HealthCheckResponse::SERVING);
  const BackendInfo& info = s->backend_->info();
  // A Unix socket has no port (gRPC reports 1): name the address instead.
  const bool unix_socket = absl::StartsWith(options.listen_address, "unix:");
  spdlog::info("sageserve listening on {} ({}, {}, backend {}, {}, {} workers, queue {})",
               unix_socket ? options.listen_address : absl::StrCat("port ", s->port_),
               options.tls.cert_chain_file.empty() ? "plaintext"
               : options.tls.client_ca_file.empty() ? "TLS"
                                                    : "mutual TLS",
               s->access_->tokens_required() ? "tokens required" : "NO ACCESS CONTROL",
               BackendKindName(info.kind), info.devices.empty() ? "" : info.devices.front().name,
               options.scheduler.worker_threads, options.scheduler.queue_capacity);
  if (options.scheduler_kind == SchedulerKind::kDynamicBatcher) {
    spdlog::info("dynamic batching: {}, max {} tokens / {} work per launch, max queue delay {} us",
                 options.batcher.merge == MergePolicy::kNever ? "off (one request per launch)" : "on",
                 options.batcher.max_batch_tokens, options.batcher.max_batch_work,
                 options.batcher.max_queue_delay_us);
  }
  if (s->metrics_http_) spdlog::info("metrics on port {} (GET /metrics)", s->metrics_http_->port());
  spdlog::info("instance {} (session ids start with it)", s->session_store_->instance());
  return s;
}

SageServer::~SageServer() { Shutdown(); }

void SageServer::Shutdown() {
  std::lock_guard<std::mutex> lock(shutdown_mu_);
  if (shut_down_) return;
  shut_down_ = true;
  if (server_ == nullptr) {
    // Start failed part-way (e.g. it could not listen): nothing was accepted; stop what exists.
    if (scheduler_) scheduler_->Shutdown(DrainMode::kDropQueued);
    if (registry_service_) registry_service_->Shutdown();
    if (shared_memory_service_) shared_memory_service_->Shutdown();
    if (session_service_) session_service_->Shutdown();
    if (metrics_http_) metrics_http_->Shutdown();
    return;
  }
  DrainSessions();
  spdlog::info("draining: health NOT_SERVING, grace period {} ms", options_.grace_period.count());
  // Refuse first, then announce: whoever sees NOT_SERVING can rely on new work being refused.
  // Requests arriving on streams that are still open now get UNAVAILABLE; queued work runs.
  scheduler_->StopAccepting();
  health_service_->SetAll(grpc::health::v1::HealthCheckResponse::NOT_SERVING);
  health_service_->Shutdown();
  // While accepted work runs, the gRPC server keeps taking calls so that new ones are answered
  // UNAVAILABLE by the scheduler (a retryable code) rather than cancelled by gRPC core.
  const auto deadline = std::chrono::steady_clock::now() + options_.grace_period;
  while (scheduler_->outstanding() > 0 && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  // Let the clients read what was just answered before gRPC closes their connections.
  std::this_thread::sleep_for(std::min<std::chrono::steady_clock::duration>(
      options_.drain_linger,
      std::max(deadline - std::chrono::steady_clock::now(), std::chrono::steady_clock::duration::zero())));
  // Stops listening; waits for open calls (streams) until the deadline, then cancels them.
  // Workers keep running meanwhile, so accepted requests complete.
  server_->Shutdown(std::chrono::system_clock::now() +
                    std::chrono::duration_cast<std::chrono::system_clock::duration>(
                        std::max(deadline - std::chrono::steady_clock::now(), std::chrono::steady_clock::duration::zero())));
  scheduler_->Shutdown(DrainMode::kFinishQueued);
  server_->Wait();
  // After the gRPC server: its open registry calls were finished by these workers.
  if (registry_service_) registry_service_->Shutdown();
  if (shared_memory_service_) shared_memory_service_->Shutdown();
  if (session_service_) session_service_->Shutdown();
  if (metrics_http_) metrics_http_->Shutdown();
  spdlog::info("drained");
}

void SageServer::DrainSessions() {
  if (options_.session_drain.count() <= 0 || session_store_->Stats().sessions == 0) return;
  spdlog::info("draining sessions: {} open, serving them for up to {} ms; new sessions and stateless calls refused, "
               "health NOT_SERVING", session_store_->Stats().sessions, options_.session_drain.count());
  pipeline_->ServeSessionsOnly();
  health_service_->SetAll(grpc::health::v1::HealthCheckResponse::NOT_SERVING);
  const auto deadline = std::chrono::steady_clock::now() + options_.session_drain;
  while (session_store_->Stats().sessions > 0 && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  spdlog::info("sessions drained: {} still open", session_store_->Stats().sessions);
}

absl::Status SageServer::ReloadAccess() { return access_->Reload(); }

void SageServer::Wait() {
  if (server_ != nullptr) server_->Wait();
}

}  // namespace sage::server
