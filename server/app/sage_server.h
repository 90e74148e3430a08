// The assembled server: backend, scheduler, services, gRPC server. Used by main.cc and by tests
// (in-process on a loopback port).
#pragma once

#include <memory>
#include <vector>

#include "absl/status/statusor.h"
#include "grpcpp/server.h"
#include "server/backend/backend.h"
#include "server/core/attend_pipeline.h"
#include "server/frontend/grpc/shared_memory_service.h"
#include "server/shared_memory/shared_memory_registry.h"
#include "server/frontend/grpc/attention_service.h"
#include "server/frontend/grpc/call_auth.h"
#include "server/frontend/grpc/health_service.h"
#include "server/frontend/grpc/registry_service.h"
#include "server/frontend/grpc/session_service.h"
#include "server/metrics/metrics_http_server.h"
#include "server/metrics/server_metrics.h"
#include "server/scheduler/scheduler.h"
#include "server/core/selftest.h"
#include "server/app/server_options.h"

namespace sage::server {

// worker_threads = 0 (auto): two workers per full-size GPU stream slot, or the library default
// without devices. A worker holds a slot only for the launch itself; answering the requests
// (building the responses, handing them to gRPC) comes after, and a second worker per slot launches
// meanwhile. Light slots add none (AutoWorkerThreads in sage_server.cc says why).
// With one per slot, 16 clients on 16 connections queued ~275 µs p50 with batching off, against
// ~18 µs with two (docs/BENCHMARKS.md, "workers per slot").
int AutoWorkerThreads(const std::vector<DeviceStats>& devices);

class SageServer {
 public:
  // Builds the backend from options.backend and starts serving.
  static absl::StatusOr<std::unique_ptr<SageServer>> Start(const ServerOptions& options);
  // Same, with a backend built by the caller (tests).
  static absl::StatusOr<std::unique_ptr<SageServer>> Start(const ServerOptions& options,
                                                           std::unique_ptr<AttentionBackend> backend);
  ~SageServer();  // Shutdown() if not done yet.

  int port() const { return port_; }
  // Port of the /metrics endpoint; 0 when options.metrics_listen_address is empty.
  int metrics_port() const { return metrics_http_ ? metrics_http_->port() : 0; }
  // The server's metrics (recorded whether or not an endpoint serves them).
  const ServerMetrics& metrics() const { return *metrics_; }
  const BackendInfo& backend_info() const { return backend_->info(); }
  // The precision registry (models, plans) this server resolves layer_keys with.
  const registry::Registry& precision_registry() const { return *registry_; }

  // Graceful drain: with options.session_drain and sessions open, first only their calls are
  // served (until the last closes or that time passes); then health NOT_SERVING, new requests
  // refused (UNAVAILABLE), accepted work runs to completion; calls still open after the grace
  // period are cancelled. Idempotent.
  void Shutdown();
  // Re-reads the token file now (SIGHUP); on error the tokens in force stay (the error is logged).
  absl::Status ReloadAccess();
  // Blocks until Shutdown() has completed (from another thread).
  void Wait();

 private:
  SageServer() = default;
  void DrainSessions();  // Shutdown's first stage (options.session_drain)

  ServerOptions options_;
  // Before everything that records into it, so it is destroyed after them.
  std::unique_ptr<ServerMetrics> metrics_;
  std::unique_ptr<AttentionBackend> backend_;
  // Where request tensors are received: the backend's pool (pinned, CUDA) or this heap pool.
  std::unique_ptr<HostBufferPool> heap_payload_pool_;
  HostBufferPool* payload_pool_ = nullptr;
  // After the backend (it pins and opens memory through it), before everything that resolves
  // requests against it. Requests still queued hold their regions themselves.
  std::unique_ptr<SharedMemoryRegistry> shared_memory_;
  // Before the pipeline and the registry service, which use them (destroyed after them).
  std::unique_ptr<registry::RegistryStore> registry_store_;  // Null without a state directory.
  std::unique_ptr<registry::Registry> registry_;
  std::unique_ptr<Scheduler> scheduler_;
  std::unique_ptr<AttendPipeline> pipeline_;
  std::unique_ptr<SelfTestRunner> selftest_;
  // KV sessions: the store (its page pool), and their attend path through the pipeline.
  std::unique_ptr<SessionStore> session_store_;
  std::unique_ptr<SessionAttend> session_attend_;
  // Before the services, which check every call through it.
  std::unique_ptr<AccessControl> access_;
  std::unique_ptr<CallAuthorizer> authorizer_;
  std::unique_ptr<AttentionService> attention_service_;
  std::unique_ptr<HealthService> health_service_;
  std::unique_ptr<RegistryService> registry_service_;
  std::unique_ptr<SharedMemoryService> shared_memory_service_;
  std::unique_ptr<SessionService> session_service_;
  std::unique_ptr<grpc::Server> server_;
  std::unique_ptr<metrics::MetricsHttpServer> metrics_http_;
  int port_ = 0;
  std::mutex shutdown_mu_;
  bool shut_down_ = false;
};

}  // namespace sage::server
