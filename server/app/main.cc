// sageserve: the attention-offload gRPC server. The only place that defines or reads flags.
#include <signal.h>

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/reflection.h"
#include "absl/flags/usage.h"
#include "absl/flags/usage_config.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "grpc/grpc.h"
#include "server/app/allocator.h"
#include "server/backend/backend_factory.h"
#include "server/app/sage_server.h"
#include "server/app/server_options.h"
#include "server/util/version.h"
#include "spdlog/spdlog.h"

namespace {
const sage::server::ServerOptions kDefaults;
constexpr int kExitLingerMs = 250;
}  // namespace

ABSL_FLAG(std::string, config, "",
          "File of flag=value lines (# comments allowed); flags given on the command line win");
ABSL_FLAG(std::string, listen, kDefaults.listen_address, "Listen address host:port (port 0 = any free port), or unix:PATH for a Unix domain socket");
ABSL_FLAG(std::string, backend, "auto", "Engine: auto (CUDA if built with it and a GPU is visible, else CPU), cpu, cuda");
ABSL_FLAG(int, cpu_threads, 0, "CPU engine threads per request (0 = all cores)");
ABSL_FLAG(int, cuda_device, -1, "One CUDA device ordinal; -1 = the --cuda_devices list (empty: every visible GPU)");
ABSL_FLAG(std::vector<std::string>, cuda_devices, {},
          "CUDA device ordinals, comma-separated (e.g. 0,2); empty = every visible GPU. --cuda_device wins when >= 0");
ABSL_FLAG(int, cuda_streams, kDefaults.backend.cuda_streams,
          "Full-size CUDA stream slots per GPU (each with buffers for the largest launch)");
ABSL_FLAG(int, cuda_light_streams, kDefaults.backend.cuda_light_streams,
          "Extra CUDA stream slots per GPU with small buffers, for launches within --cuda_light_max_batch_elements: "
          "more concurrency for small requests at little memory. 0 = none");
ABSL_FLAG(int64_t, cuda_light_max_batch_elements, kDefaults.backend.cuda_light_max_batch_elements,
          "Elements (tokens x heads x head_dim) of q, and of k and v, that a light stream slot holds");
ABSL_FLAG(int64_t, cuda_max_batch_elements, kDefaults.backend.cuda_max_batch_elements,
          "Elements (tokens x heads x head_dim) of q, and of k and v, one CUDA launch holds; sizes the "
          "preallocated pinned and device buffers of every stream slot");
ABSL_FLAG(int, cuda_max_batch_sequences, kDefaults.backend.cuda_max_batch_sequences,
          "Varlen sequences one CUDA launch holds");
ABSL_FLAG(int64_t, cuda_workspace_bytes, kDefaults.backend.cuda_workspace_bytes,
          "Kernel workspace per CUDA stream slot in bytes; 0 = sized from --cuda_max_batch_elements");
ABSL_FLAG(int64_t, cuda_request_pinned_mib, kDefaults.backend.cuda_request_pinned_bytes >> 20,
          "Pinned host memory (MiB) that request tensors are received into and results sent from, so the GPU "
          "copies need no staging; requests that do not fit use ordinary memory. 0 = off");
ABSL_FLAG(std::string, cuda_sync, "auto",
          "How a worker waits for its GPU launch: auto (CUDA's choice: spin here), spin, yield (spin, giving "
          "the core to other threads between polls) or block (sleep; no CPU, a wake-up per launch)");
ABSL_FLAG(int, worker_threads, 0,
          "Scheduler worker threads (launches run concurrently); 0 = auto: 2 x the full-size CUDA stream slots "
          "(light ones add none) with the CUDA backend, 2 with the CPU engine");
ABSL_FLAG(int, queue_capacity, kDefaults.scheduler.queue_capacity, "Requests waiting beyond which new ones get RESOURCE_EXHAUSTED");
ABSL_FLAG(std::vector<std::string>, grpc_arg, {},
          "Integer gRPC server arguments name=value,... (transport tuning, e.g. grpc.http2.max_frame_size=1048576)");
ABSL_FLAG(int64_t, max_message_bytes, kDefaults.max_message_bytes, "Largest gRPC message accepted or sent");
ABSL_FLAG(bool, allow_request_compression, kDefaults.allow_request_compression,
          "Accept gzip/deflate-compressed requests (default: refused with UNIMPLEMENTED before they are inflated). "
          "Then --max_message_bytes bounds only the compressed size: gRPC 1.51 inflates a whole message before "
          "checking it, so a small request can take much memory. Responses are never compressed");
ABSL_FLAG(absl::Duration, handshake_timeout, absl::Milliseconds(kDefaults.handshake_timeout.count()),
          "A connection that has not completed its TLS handshake and sent the HTTP/2 preface within this is closed");
ABSL_FLAG(absl::Duration, max_connection_idle, absl::Milliseconds(kDefaults.max_connection_idle.count()),
          "A connection without calls for this long is closed (GOAWAY; clients reconnect on their next call); "
          "0 = never");
ABSL_FLAG(int32_t, stream_max_pending_responses, kDefaults.stream.max_pending_responses,
          "AttendStream: requests one stream may have read and not yet answered (running or waiting to be "
          "written); at this many the server reads no more from that stream until a write completes");
ABSL_FLAG(int64_t, stream_max_queued_bytes, kDefaults.stream.max_queued_bytes,
          "AttendStream: bytes of answers one stream may have waiting to be written before the server stops "
          "reading from it; 0 = no limit");
ABSL_FLAG(int64_t, stream_max_server_queued_bytes, kDefaults.stream.max_server_queued_bytes,
          "AttendStream: bytes of unwritten answers over all streams beyond which new stream requests get "
          "RESOURCE_EXHAUSTED; 0 = no limit");
ABSL_FLAG(int64_t, max_tokens, kDefaults.limits.max_tokens, "Largest total_q or total_k per request");
ABSL_FLAG(absl::Duration, grace_period, absl::Milliseconds(kDefaults.grace_period.count()),
          "Drain time on SIGTERM/SIGINT before open calls are cancelled (e.g. 30s, 500ms)");
ABSL_FLAG(absl::Duration, session_drain, absl::Milliseconds(kDefaults.session_drain.count()),
          "On SIGTERM/SIGINT with sessions open: serve them this long (until the last closes) while refusing "
          "new sessions and stateless calls (UNAVAILABLE, health NOT_SERVING), before the drain (e.g. 5m); 0 = none");
ABSL_FLAG(int64_t, max_batch_tokens, kDefaults.batcher.max_batch_tokens,
          "Dynamic batching: most tokens (sum of max(q, k) tokens) merged into one launch; 0 = no merging, "
          "one request per launch");
ABSL_FLAG(int64_t, max_batch_work, kDefaults.batcher.max_batch_work,
          "Dynamic batching: most attention work (sum of q_len*k_len over sequences) per launch");
ABSL_FLAG(int64_t, max_queue_delay_us, kDefaults.batcher.max_queue_delay_us,
          "Dynamic batching: longest a partial batch waits for more requests (microseconds)");
ABSL_FLAG(int64_t, worker_spin_us, kDefaults.batcher.worker_spin_us,
          "How long an idle worker polls for the next launch before it sleeps (lower queueing latency "
          "for a busy core; 0 = sleep at once, at most 100000)");
ABSL_FLAG(std::string, tls_cert, "", "PEM certificate chain of the gRPC listener; with --tls_key turns TLS on");
ABSL_FLAG(std::string, tls_key, "", "PEM private key of --tls_cert");
ABSL_FLAG(std::string, tls_client_ca, "",
          "PEM CA certificates for client certificates: set = mutual TLS (clients without one are refused)");
ABSL_FLAG(std::string, token_file, "",
          "Access control: file of '<token> <identity> <scope>[,<scope>]' and 'cert:<CN> <identity> <scopes>' lines "
          "(scopes attend, admin; docs/SECURITY.md). Reloaded on SIGHUP and when it changes. Empty: no access control, "
          "anyone who reaches the port is an administrator");
ABSL_FLAG(std::string, metrics_listen, kDefaults.metrics_listen_address,
          "Prometheus endpoint host:port serving GET /metrics (e.g. 0.0.0.0:9090); empty = off");
ABSL_FLAG(std::string, state_dir, kDefaults.registry.state_dir,
          "Directory of the precision registry (registry.json: models and their per-layer recipe plans); "
          "empty = in memory only, lost on restart");
ABSL_FLAG(bool, registry_move_corrupt_aside, false,
          "If registry.json is corrupt, rename it to registry.json.corrupt-<time> and start empty "
          "(default: refuse to start, naming the file and the problem)");
ABSL_FLAG(int32_t, registry_max_models, kDefaults.registry.max_models,
          "Models the precision registry holds at most; registering one more gets RESOURCE_EXHAUSTED");
ABSL_FLAG(bool, allow_shared_memory, false,
          "Let clients on this host register shared memory (POSIX shm by name, CUDA IPC handles) and pass "
          "tensors by reference (SharedMemoryService). A client may then make the server map any shm object "
          "under --shared_memory_key_prefix that this user can open: turn on only where clients are trusted");
ABSL_FLAG(std::string, shared_memory_key_prefix, kDefaults.shared_memory.key_prefix,
          "POSIX shm keys the server opens must start with this (the client library's keys do); empty "
          "opens any object the server's user can open");
ABSL_FLAG(int32_t, max_shared_memory_regions, kDefaults.shared_memory.max_regions,
          "Most shared-memory regions registered at once");
ABSL_FLAG(int64_t, kv_pool_bytes, static_cast<int64_t>(kDefaults.sessions.pool_bytes),
          "Memory for the KV pages of sessions (SessionService) per device, allocated at start: each GPU's "
          "memory with the cuda backend, host memory with the cpu engine");
ABSL_FLAG(double, kv_pool_fraction, kDefaults.sessions.pool_fraction,
          "> 0: each GPU's KV page pool takes this fraction of the memory free after the backend's "
          "buffers, instead of --kv_pool_bytes (cuda backend)");
ABSL_FLAG(int64_t, kv_page_bytes, static_cast<int64_t>(kDefaults.sessions.page_bytes),
          "Bytes per KV page (a page holds 16 to 256 tokens of one layer of one session)");
ABSL_FLAG(int64_t, session_ttl_s, std::chrono::duration_cast<std::chrono::seconds>(kDefaults.sessions.ttl).count(),
          "Sessions not named by any call for this long are closed and their pages freed");
ABSL_FLAG(int32_t, max_sessions, kDefaults.sessions.max_sessions, "Sessions open at once, all identities together");
ABSL_FLAG(std::string, replica_name, kDefaults.sessions.replica_name,
          "A stable name for this replica (1 to 40 of a-z, 0-9, '-'): the server instance, which starts every "
          "session id and GetServerInfo.instance, becomes NAME-<random bits>, so a proxy can route a session's "
          "calls on it (docs/DEPLOY.md, \"A gRPC proxy in front\"). Empty: random bits only");
ABSL_FLAG(int32_t, session_threads, kDefaults.sessions.worker_threads,
          "Threads that append new tokens and gather caches for AttendSession (a session's calls stay on one); "
          "0: half the cores, at least 2");
ABSL_FLAG(std::string, log_level, "info", "trace, debug (a line per request), info, warn (failures with request id), error, off");
ABSL_FLAG(bool, version, false, "Print the version and exit");

namespace {

// absl's --help lists the flags of files named after the program (sageserve.cc), which matched
// none of ours (they live in main.cc), and exits 1 after --help and --helpfull: print and exit 0
// here instead. --helpfull adds the libraries' flags.
bool FlagOfThisFile(absl::string_view file) { return absl::EndsWith(file, "server/app/main.cc"); }

// True when argv asks for --help or --helpfull (any other help flag is left to absl).
bool PrintHelpIfAsked(int argc, char** argv) {
  bool help = false, full = false;
  for (int i = 1; i < argc; ++i) {
    absl::string_view a = argv[i];
    if (!absl::ConsumePrefix(&a, "--")) absl::ConsumePrefix(&a, "-");
    if (a == "help") help = true;
    if (a == "helpfull") full = true;
  }
  if (!help && !full) return false;
  std::vector<const absl::CommandLineFlag*> flags;
  for (const auto& [name, flag] : absl::GetAllFlags()) {
    if (full || FlagOfThisFile(flag->Filename())) flags.push_back(flag);
  }
  std::sort(flags.begin(), flags.end(), [](const absl::CommandLineFlag* a, const absl::CommandLineFlag* b) {
    return a->Name() < b->Name();
  });
  std::printf("%s\n\nFlags (--name=value):\n", std::string(absl::ProgramUsageMessage()).c_str());
  for (const absl::CommandLineFlag* f : flags) {
    std::printf("  --%s (%s); default: %s\n", std::string(f->Name()).c_str(), f->Help().c_str(),
                f->DefaultValue().empty() ? "\"\"" : f->DefaultValue().c_str());
  }
  return true;
}

// Reads --config=FILE (if any) and returns argv with its flags placed before the command line's.
std::vector<std::string> ExpandConfig(int argc, char** argv) {
  std::vector<std::string> args = {argv[0]};
  std::string path;
  for (int i = 1; i < argc; ++i) {
    absl::string_view a = argv[i];
    if (absl::ConsumePrefix(&a, "--config=")) path = std::string(a);
  }
  if (!path.empty()) {
    std::ifstream in(path);
    if (!in) {
      std::fprintf(stderr, "sageserve: cannot read --config file '%s'\n", path.c_str());
      std::exit(2);
    }
    std::string line;
    while (std::getline(in, line)) {
      absl::string_view l = absl::StripAsciiWhitespace(line);
      if (l.empty() || l.front() == '#') continue;
      absl::ConsumePrefix(&l, "--");
      args.push_back(absl::StrCat("--", l));
    }
  }
  for (int i = 1; i < argc; ++i) args.emplace_back(argv[i]);
  return args;
}

}  // namespace

int main(int argc, char** argv) {
  // Block the shutdown signals before any thread exists, so every thread inherits the mask and
  // main can take them synchronously with sigwait.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGHUP);  // Reloads the token file.
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);

  // absl (as Debian builds it, without NDEBUG) checks every absl::Mutex acquisition for lock-order
  // cycles under one process-wide spinlock, and gRPC's own locks are absl::Mutex: every thread of
  // the serving path would meet on that spinlock. The tests keep the checks on.
  absl::SetMutexDeadlockDetectionMode(absl::OnDeadlockCycle::kIgnore);
  absl::SetProgramUsageMessage("sageserve: SageAttention2 over gRPC. Flags may also come from --config=FILE.");
  // Also for absl's own usage output (--helpshort, a mistyped flag's hint).
  absl::FlagsUsageConfig usage;
  usage.contains_help_flags = FlagOfThisFile;
  usage.contains_helpshort_flags = FlagOfThisFile;
  absl::SetFlagsUsageConfig(usage);
  if (PrintHelpIfAsked(argc, argv)) return 0;
  std::vector<std::string> expanded = ExpandConfig(argc, argv);
  std::vector<char*> expanded_argv;
  for (std::string& s : expanded) expanded_argv.push_back(s.data());
  absl::ParseCommandLine(static_cast<int>(expanded_argv.size()), expanded_argv.data());

  if (absl::GetFlag(FLAGS_version)) {
    std::printf("sageserve %s\n", std::string(sage::server::kSageserveVersion).c_str());
    return 0;
  }
  const std::string level = absl::AsciiStrToLower(absl::GetFlag(FLAGS_log_level));
  const auto parsed_level = spdlog::level::from_str(level);
  if (parsed_level == spdlog::level::off && level != "off") {
    std::fprintf(stderr, "sageserve: unknown --log_level '%s'\n", level.c_str());
    return 2;
  }
  spdlog::set_level(parsed_level);

  sage::server::ServerOptions options;
  options.listen_address = absl::GetFlag(FLAGS_listen);
  absl::StatusOr<sage::server::BackendChoice> choice =
      sage::server::ParseBackendChoice(absl::GetFlag(FLAGS_backend));
  if (!choice.ok()) {
    spdlog::error("{}", choice.status().ToString());
    return 2;
  }
  options.backend.choice = *choice;
  absl::StatusOr<sage::server::CudaSync> sync = sage::server::ParseCudaSync(absl::GetFlag(FLAGS_cuda_sync));
  if (!sync.ok()) {
    spdlog::error("{}", sync.status().ToString());
    return 2;
  }
  options.backend.cuda_sync = *sync;
  options.backend.cpu_threads = absl::GetFlag(FLAGS_cpu_threads);
  options.backend.cuda_device = absl::GetFlag(FLAGS_cuda_device);
  for (const std::string& d : absl::GetFlag(FLAGS_cuda_devices)) {
    int ordinal = -1;
    if (!absl::SimpleAtoi(d, &ordinal) || ordinal < 0) {
      spdlog::error("--cuda_devices: '{}' is not a device ordinal", d);
      return 2;
    }
    options.backend.cuda_devices.push_back(ordinal);
  }
  options.backend.cuda_streams = absl::GetFlag(FLAGS_cuda_streams);
  options.backend.cuda_light_streams = absl::GetFlag(FLAGS_cuda_light_streams);
  options.backend.cuda_light_max_batch_elements = absl::GetFlag(FLAGS_cuda_light_max_batch_elements);
  options.backend.cuda_max_batch_elements = absl::GetFlag(FLAGS_cuda_max_batch_elements);
  options.backend.cuda_max_batch_sequences = absl::GetFlag(FLAGS_cuda_max_batch_sequences);
  options.backend.cuda_workspace_bytes = absl::GetFlag(FLAGS_cuda_workspace_bytes);
  options.backend.cuda_request_pinned_bytes = absl::GetFlag(FLAGS_cuda_request_pinned_mib) << 20;
  if (absl::GetFlag(FLAGS_worker_threads) < 0) {
    spdlog::error("--worker_threads must be >= 0 (0 = auto), got {}", absl::GetFlag(FLAGS_worker_threads));
    return 2;
  }
  options.scheduler.worker_threads = absl::GetFlag(FLAGS_worker_threads);
  options.scheduler.queue_capacity = absl::GetFlag(FLAGS_queue_capacity);
  options.max_message_bytes = absl::GetFlag(FLAGS_max_message_bytes);
  options.allow_request_compression = absl::GetFlag(FLAGS_allow_request_compression);
  options.stream.max_pending_responses = absl::GetFlag(FLAGS_stream_max_pending_responses);
  options.stream.max_queued_bytes = absl::GetFlag(FLAGS_stream_max_queued_bytes);
  options.stream.max_server_queued_bytes = absl::GetFlag(FLAGS_stream_max_server_queued_bytes);
  options.handshake_timeout =
      std::chrono::milliseconds(absl::ToInt64Milliseconds(absl::GetFlag(FLAGS_handshake_timeout)));
  options.max_connection_idle =
      std::chrono::milliseconds(absl::ToInt64Milliseconds(absl::GetFlag(FLAGS_max_connection_idle)));
  for (const std::string& item : absl::GetFlag(FLAGS_grpc_arg)) {
    const size_t eq = item.find('=');
    sage::server::GrpcArg arg;
    if (eq == std::string::npos || eq == 0 || !absl::SimpleAtoi(item.substr(eq + 1), &arg.value)) {
      spdlog::error("--grpc_arg: '{}' is not name=integer (e.g. grpc.http2.max_frame_size=1048576)", item);
      return 2;
    }
    arg.name = item.substr(0, eq);
    options.grpc_args.push_back(std::move(arg));
  }
  options.limits.max_tokens = absl::GetFlag(FLAGS_max_tokens);
  const int64_t max_batch_tokens = absl::GetFlag(FLAGS_max_batch_tokens);
  if (max_batch_tokens < 0) {
    spdlog::error("--max_batch_tokens must be >= 0, got {}", max_batch_tokens);
    return 2;
  }
  if (max_batch_tokens == 0) {
    options.batcher.merge = sage::server::MergePolicy::kNever;  // The cap stays valid; it is unused.
  } else {
    options.batcher.max_batch_tokens = max_batch_tokens;
  }
  options.batcher.max_batch_work = absl::GetFlag(FLAGS_max_batch_work);
  options.batcher.max_queue_delay_us = absl::GetFlag(FLAGS_max_queue_delay_us);
  options.batcher.worker_spin_us = absl::GetFlag(FLAGS_worker_spin_us);
  options.metrics_listen_address = absl::GetFlag(FLAGS_metrics_listen);
  options.tls.cert_chain_file = absl::GetFlag(FLAGS_tls_cert);
  options.tls.private_key_file = absl::GetFlag(FLAGS_tls_key);
  options.tls.client_ca_file = absl::GetFlag(FLAGS_tls_client_ca);
  options.registry.state_dir = absl::GetFlag(FLAGS_state_dir);
  options.registry.max_models = absl::GetFlag(FLAGS_registry_max_models);
  options.registry.on_corrupt = absl::GetFlag(FLAGS_registry_move_corrupt_aside)
                                    ? sage::registry::CorruptFilePolicy::kMoveAside
                                    : sage::registry::CorruptFilePolicy::kRefuse;
  options.shared_memory.policy = absl::GetFlag(FLAGS_allow_shared_memory) ? sage::server::SharedMemoryPolicy::kAllow
                                                                         : sage::server::SharedMemoryPolicy::kRefuse;
  options.shared_memory.max_regions = absl::GetFlag(FLAGS_max_shared_memory_regions);
  options.shared_memory.key_prefix = absl::GetFlag(FLAGS_shared_memory_key_prefix);
  if (absl::GetFlag(FLAGS_kv_pool_bytes) <= 0 || absl::GetFlag(FLAGS_kv_page_bytes) <= 0 ||
      absl::GetFlag(FLAGS_session_ttl_s) <= 0 || absl::GetFlag(FLAGS_max_sessions) <= 0) {
    std::fprintf(stderr, "sageserve: --kv_pool_bytes, --kv_page_bytes, --session_ttl_s and --max_sessions must be > 0\n");
    return 2;
  }
  options.sessions.pool_bytes = static_cast<size_t>(absl::GetFlag(FLAGS_kv_pool_bytes));
  options.sessions.pool_fraction = absl::GetFlag(FLAGS_kv_pool_fraction);
  if (options.sessions.pool_fraction < 0 || options.sessions.pool_fraction > 0.95) {
    std::fprintf(stderr, "sageserve: --kv_pool_fraction must be in [0, 0.95]\n");
    return 2;
  }
  options.sessions.page_bytes = static_cast<size_t>(absl::GetFlag(FLAGS_kv_page_bytes));
  options.sessions.ttl = std::chrono::seconds(absl::GetFlag(FLAGS_session_ttl_s));
  options.sessions.max_sessions = absl::GetFlag(FLAGS_max_sessions);
  options.sessions.worker_threads = std::max(0, absl::GetFlag(FLAGS_session_threads));
  options.sessions.replica_name = absl::GetFlag(FLAGS_replica_name);
  options.grace_period = std::chrono::milliseconds(absl::ToInt64Milliseconds(absl::GetFlag(FLAGS_grace_period)));
  options.session_drain = std::chrono::milliseconds(absl::ToInt64Milliseconds(absl::GetFlag(FLAGS_session_drain)));
  options.access.token_file = absl::GetFlag(FLAGS_token_file);

  // Hold one reference to the gRPC library for the life of the process, so that destroying the
  // server does not run gRPC's global teardown: in 1.51 that can sit in a 10 s poll when a client
  // still holds a connection, delaying exit after a completed drain. The OS reclaims the rest.
  grpc_init();
  spdlog::info("malloc: {}", sage::server::ActiveAllocator());
  absl::StatusOr<std::unique_ptr<sage::server::SageServer>> server =
      sage::server::SageServer::Start(options);
  if (!server.ok()) {
    spdlog::error("startup failed: {}", server.status().ToString());
    return 1;
  }
  // Machine-readable line for wrappers and tests that start us with port 0.
  std::printf("sageserve listening on port %d\n", (*server)->port());
  std::fflush(stdout);

  int sig = 0;
  while (true) {
    sigwait(&signals, &sig);
    if (sig != SIGHUP) break;
    spdlog::info("received SIGHUP, reloading the token file");
    (void)(*server)->ReloadAccess();  // Logs the outcome; on error the tokens in force stay.
  }
  spdlog::info("received {}, shutting down", sig == SIGTERM ? "SIGTERM" : "SIGINT");
  (*server)->Shutdown();
  server->reset();
  // The server's connections close asynchronously after it is destroyed; give them a moment so
  // the last responses are not cut off by a reset when the process exits.
  std::this_thread::sleep_for(std::chrono::milliseconds(kExitLingerMs));
  spdlog::info("exiting");
  spdlog::shutdown();
  return 0;
}
