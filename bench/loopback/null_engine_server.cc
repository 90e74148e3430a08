// The serving path's own ceiling: a sageserve server whose engine does no math. Every launch answers
// at once (O and LSE all zero, written into the request's buffers when it asks for that, as the CUDA
// backend does), so `sagectl bench` against it measures gRPC, decoding, batching and responding
// alone, and a profiler attached to it sees nothing else. Not a server anyone should deploy.
//
//   null_engine_server [--listen=127.0.0.1:0] [--workers=8] [--max_batch_tokens=8192]
//                      [--mutex_deadlock_detection]  (absl's checks on, as without sageserve's main)
// Prints "null_engine_server listening on port N" and serves until SIGINT/SIGTERM. Shared memory
// is allowed (system regions only: there is no GPU).
#include <signal.h>

#include <cstdio>
#include <cstring>
#include <string>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/synchronization/mutex.h"
#include "server/backend/backend_factory.h"
#include "server/app/sage_server.h"
#include "spdlog/spdlog.h"

namespace {

using sage::server::EngineInput;
using sage::server::EngineOutput;
using sage::server::OutputForm;
using sage::RecipeConfig;

class NullBackend final : public sage::server::AttentionBackend {
 public:
  explicit NullBackend(sage::server::BackendInfo info) : info_(std::move(info)) {
    info_.input_gather = sage::server::InputGather::kSegments;  // no batch assembly copies either
    info_.devices = {{"null engine (no math)", "none", 0}};
  }
  const sage::server::BackendInfo& info() const override { return info_; }

  absl::StatusOr<EngineOutput> Attend(const EngineInput& in, const RecipeConfig&) override {
    EngineOutput out;
    if (in.output.form == OutputForm::kNativeInto) {
      std::memset(in.output.o_into.data(), 0, in.output.o_into.size());
      if (!in.output.lse_into.empty()) std::memset(in.output.lse_into.data(), 0, in.output.lse_into.size() * sizeof(float));
      out.placement = sage::server::OutputPlacement::kCallerBuffers;
      return out;
    }
    const size_t n = static_cast<size_t>(in.q.numel());
    if (in.output.form == OutputForm::kNativeAllowed) {
      out.o_native.assign(n * 2, '\0');
      out.o_native_dtype = in.q.dtype;
    } else {
      out.o.assign(n, 0.0f);
    }
    if (in.lse == sage::LseMode::kNatural) out.lse.assign(static_cast<size_t>(in.q.tokens) * in.q.heads, 0.0f);
    return out;
  }
  absl::StatusOr<EngineOutput> AttendGathered(const EngineInput& merged, std::span<const EngineInput* const> members,
                                            const RecipeConfig& config) override {
    if (merged.output.form != OutputForm::kNativeInto) return Attend(merged, config);
    for (const EngineInput* m : members) (void)Attend(*m, config);
    EngineOutput out;
    out.placement = sage::server::OutputPlacement::kCallerBuffers;
    return out;
  }

 private:
  sage::server::BackendInfo info_;
};

std::string Flag(int argc, char** argv, const std::string& name, const std::string& fallback) {
  const std::string prefix = "--" + name + "=";
  for (int i = 1; i < argc; ++i) {
    if (absl::StartsWith(argv[i], prefix)) return std::string(argv[i] + prefix.size());
  }
  return fallback;
}

}  // namespace

int main(int argc, char** argv) {
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);
  spdlog::set_level(spdlog::level::warn);
  bool detect = false;
  for (int i = 1; i < argc; ++i) detect = detect || std::string(argv[i]) == "--mutex_deadlock_detection";
  if (!detect) absl::SetMutexDeadlockDetectionMode(absl::OnDeadlockCycle::kIgnore);

  sage::server::ServerOptions options;
  options.listen_address = Flag(argc, argv, "listen", "127.0.0.1:0");
  int workers = 8;
  int64_t max_batch_tokens = 8192;
  if (!absl::SimpleAtoi(Flag(argc, argv, "workers", "8"), &workers) || workers < 1 ||
      !absl::SimpleAtoi(Flag(argc, argv, "max_batch_tokens", "8192"), &max_batch_tokens) || max_batch_tokens < 0) {
    std::fprintf(stderr, "null_engine_server: --workers must be >= 1 and --max_batch_tokens >= 0\n");
    return 2;
  }
  options.scheduler.worker_threads = workers;
  if (max_batch_tokens == 0) {
    options.batcher.merge = sage::server::MergePolicy::kNever;
  } else {
    options.batcher.max_batch_tokens = max_batch_tokens;
  }
  options.shared_memory.policy = sage::server::SharedMemoryPolicy::kAllow;
  sage::server::BackendOptions cpu;
  cpu.choice = sage::server::BackendChoice::kCpu;
  auto real = sage::server::CreateBackend(cpu);
  if (!real.ok()) {
    std::fprintf(stderr, "null_engine_server: %s\n", real.status().ToString().c_str());
    return 1;
  }
  auto server = sage::server::SageServer::Start(options, std::make_unique<NullBackend>((*real)->info()));
  if (!server.ok()) {
    std::fprintf(stderr, "null_engine_server: %s\n", server.status().ToString().c_str());
    return 1;
  }
  std::printf("null_engine_server listening on port %d\n", (*server)->port());
  std::fflush(stdout);
  int sig = 0;
  sigwait(&signals, &sig);
  (*server)->Shutdown();
  return 0;
}
