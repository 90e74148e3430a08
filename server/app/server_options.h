// Everything the server can be configured with, with the defaults used when a flag is absent.
// main.cc maps flags onto this struct; nothing else reads flags.
#pragma once

#include <chrono>
#include <cstdint>
#include <string>
#include <vector>

#include "server/backend/backend_factory.h"
#include "server/session/session_store.h"
#include "server/core/access_control.h"
#include "server/core/attend_request.h"
#include "server/frontend/grpc/attend_stream_reactor.h"
#include "server/frontend/grpc/listener_credentials.h"
#include "server/registry/registry_store.h"
#include "server/scheduler/dynamic_batcher.h"
#include "server/scheduler/fifo_scheduler.h"
#include "server/shared_memory/shared_memory_registry.h"

namespace sage::server {

// 512 MiB: a 16k-token fp16 batch with 32 heads of 128 is 3 × 128 MiB of Q/K/V; gRPC's 4 MiB
// default would refuse it.
inline constexpr int64_t kDefaultMaxMessageBytes = int64_t{512} << 20;

enum class SchedulerKind {
  kDynamicBatcher,  // Merges compatible requests into one launch (docs/RUNTIME.md).
  kFifo,            // One request per launch, no merging machinery at all.
};

// The precision registry (docs/REGISTRY.md).
struct RegistryServerOptions {
  // Directory of registry.json. Empty: models and plans live in memory only and are lost on
  // restart (the default, so tests and throwaway servers never share or lock a directory).
  std::string state_dir;
  // kRefuse: a corrupt or unreadable-version registry file stops the server at start.
  registry::CorruptFilePolicy on_corrupt = registry::CorruptFilePolicy::kRefuse;
  // Models the registry holds at most (RegistryOptions::max_models).
  int max_models = 1024;
};


// One integer gRPC server argument (grpc/impl/codegen/grpc_types.h names them), for transport
// tuning: docs/RUNTIME.md, "Transport".
struct GrpcArg {
  std::string name;
  int value = 0;
};

struct ServerOptions {
  // "host:port"; port 0 picks a free port (see SageServer::port()).
  std::string listen_address = "127.0.0.1:50051";
  ServerTlsOptions tls;
  int64_t max_message_bytes = kDefaultMaxMessageBytes;  // Receive and send.
  // Accept gzip/deflate-compressed requests. Off: such a request is refused (UNIMPLEMENTED) before
  // it is inflated. gRPC 1.51 inflates a whole message before it checks max_message_bytes, which
  // then bounds only the compressed size: a 1 MB message of zeros became 1 GiB in memory.
  bool allow_request_compression = false;
  // A connection must finish its TLS handshake and send the HTTP/2 preface and SETTINGS within
  // this, or it is closed (gRPC's default, 120 s, let silent connections pile up).
  std::chrono::milliseconds handshake_timeout{10000};
  // A connection without calls for this long is closed (GOAWAY); clients reconnect on their next
  // call. 0: never (gRPC's default).
  std::chrono::milliseconds max_connection_idle{600000};
  // Applied after the server's own settings, so they override them.
  std::vector<GrpcArg> grpc_args;
  // What an AttendStream may hold for a client that does not read its answers.
  StreamLimits stream;
  BackendOptions backend;
  // worker_threads and queue_capacity apply to whichever scheduler runs. worker_threads 0 = auto:
  // twice the Σ full-size stream slots over the backend's devices (AutoWorkerThreads), or 2 for the
  // CPU engine.
  FifoSchedulerOptions scheduler;
  SchedulerKind scheduler_kind = SchedulerKind::kDynamicBatcher;
  // Batching knobs; its worker_threads and queue_capacity are taken from `scheduler`.
  BatcherOptions batcher;
  // Prometheus endpoint "host:port" (GET /metrics); empty: no endpoint (metrics still kept).
  std::string metrics_listen_address;
  RequestLimits limits;
  RegistryServerOptions registry;
  // Who may call what (tokens, mTLS identities, scopes). Without a token file every caller is an
  // administrator; the server says so in its log and in GetServerInfo. client_certificates_verified
  // is set from `tls` at start.
  AccessControlOptions access;
  // Client shared-memory regions (SharedMemoryService); refused unless policy is kAllow.
  SharedMemoryOptions shared_memory;
  // KV sessions (SessionService): the host page pool, page size, idle TTL, session count.
  SessionStoreOptions sessions;
  // On SIGTERM with sessions open, how long to keep serving them (calls on open sessions, their
  // closes) while refusing everything else with UNAVAILABLE (new sessions, stateless calls) and
  // reporting NOT_SERVING, so clients move new work to other replicas (docs/DEPLOY.md, "Draining").
  // Ends early when the last session closes; then the drain below. 0: no session drain.
  std::chrono::milliseconds session_drain{0};
  // How long a drain may take before remaining calls are cancelled.
  std::chrono::milliseconds grace_period{30000};
  // After the last accepted request is answered, the server keeps its connections this long (within
  // the grace period) before stopping gRPC: gRPC closes a connection as soon as its calls are done,
  // and closing under bytes the client has not read yet can reset the connection and cut a large
  // response short.
  std::chrono::milliseconds drain_linger{500};
};

}  // namespace sage::server
