// sagectl: operate a sageserve server: health, info, selftest, attend, bench, registry, shm.
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/mutex.h"
#include "client/sagectl/commands.h"
#include "google/protobuf/util/json_util.h"

namespace sagectl {

std::vector<std::string> ConnectionFlags() {
  return {"target", "tls", "ca_file", "cert_file", "key_file", "deadline_ms", "grpc_arg", "max_attempts",
          "token", "token_file"};
}

// --grpc_arg=name=value[,name=value...]: integer gRPC channel arguments (transport tuning).
absl::StatusOr<std::vector<sageserve::ChannelArg>> ParseChannelArgs(const std::string& text) {
  std::vector<sageserve::ChannelArg> out;
  if (text.empty()) return out;
  for (absl::string_view item : absl::StrSplit(text, ',')) {
    const size_t eq = item.find('=');
    sageserve::ChannelArg arg;
    if (eq == absl::string_view::npos || eq == 0 || !absl::SimpleAtoi(item.substr(eq + 1), &arg.value)) {
      return absl::InvalidArgumentError(
          absl::StrCat("--grpc_arg: '", item, "' is not name=integer (e.g. grpc.http2.max_frame_size=1048576)"));
    }
    arg.name = std::string(item.substr(0, eq));
    out.push_back(std::move(arg));
  }
  return out;
}

// The whole file at the path given by --`flag`, or NOT_FOUND naming it.
absl::StatusOr<std::string> ReadFlagFile(const Args& args, const std::string& flag) {
  const std::string path = args.Str(flag, "");
  std::ifstream in(path);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot read --", flag, " ", path));
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

int Fail(const absl::Status& status) {
  // Code and message; the binary detail payloads (docs/API.md, "Status codes") stay out of the text.
  std::fprintf(stderr, "sagectl: %s\n", status.ToString(absl::StatusToStringMode::kWithNoExtraData).c_str());
  const int code = static_cast<int>(status.code());
  return kExitStatusBase + (code > 0 && code <= 16 ? code : static_cast<int>(absl::StatusCode::kUnknown));
}

int FailUsage(const absl::Status& status) {
  std::fprintf(stderr, "sagectl: %s\n", status.ToString(absl::StatusToStringMode::kWithNoExtraData).c_str());
  return kExitUsage;
}

bool CheckFlags(const Args& args, std::vector<std::string> known) {
  for (const std::string& f : ConnectionFlags()) known.push_back(f);
  std::vector<std::string> unknown = args.Unknown(known);
  if (unknown.empty()) return true;
  std::fprintf(stderr, "sagectl: unknown option(s): --%s\n", absl::StrJoin(unknown, ", --").c_str());
  return false;
}

void PrintJson(const google::protobuf::Message& message) {
  std::string json;
  google::protobuf::util::JsonPrintOptions opts;
  opts.add_whitespace = true;
  opts.always_print_primitive_fields = true;
  (void)google::protobuf::util::MessageToJsonString(message, &json, opts);
  std::printf("%s", json.c_str());
}

absl::StatusOr<std::unique_ptr<sageserve::Client>> Connect(const Args& args, int connections) {
  sageserve::ClientOptions options;
  options.connections = connections;
  options.target = args.Str("target", options.target);
  absl::StatusOr<int64_t> deadline = args.Int("deadline_ms", options.deadline.count());
  if (!deadline.ok()) return deadline.status();
  options.deadline = std::chrono::milliseconds(*deadline);
  absl::StatusOr<std::vector<sageserve::ChannelArg>> channel_args = ParseChannelArgs(args.Str("grpc_arg", ""));
  if (!channel_args.ok()) return channel_args.status();
  options.channel_args = *std::move(channel_args);
  absl::StatusOr<int64_t> attempts = args.Int("max_attempts", options.max_attempts);
  if (!attempts.ok()) return attempts.status();
  options.max_attempts = static_cast<int>(*attempts);
  if (args.Flag("tls")) {
    options.security = sageserve::TransportSecurity::kTls;
    if (!args.Str("ca_file", "").empty()) {
      absl::StatusOr<std::string> ca = ReadFlagFile(args, "ca_file");
      if (!ca.ok()) return ca.status();
      options.tls.root_certs_pem = *ca;
    }
    // Mutual TLS: the client's own certificate and key.
    if (!args.Str("cert_file", "").empty() || !args.Str("key_file", "").empty()) {
      absl::StatusOr<std::string> cert = ReadFlagFile(args, "cert_file");
      if (!cert.ok()) return cert.status();
      absl::StatusOr<std::string> key = ReadFlagFile(args, "key_file");
      if (!key.ok()) return key.status();
      options.tls.client_cert_pem = *cert;
      options.tls.client_key_pem = *key;
    }
  } else if (!args.Str("ca_file", "").empty() || !args.Str("cert_file", "").empty()) {
    return absl::InvalidArgumentError("--ca_file and --cert_file need --tls");
  }
  // --token=T, or --token_file=PATH: the first whitespace-separated word of the file (so the
  // server's token-file line `<token> <identity> <scopes>` works as it is, and a trailing newline
  // does not matter). Without either, $SAGESERVE_TOKEN.
  if (args.Has("token") && args.Has("token_file")) {
    return absl::InvalidArgumentError("give --token or --token_file, not both");
  }
  if (args.Has("token_file")) {
    absl::StatusOr<std::string> text = ReadFlagFile(args, "token_file");
    if (!text.ok()) return text.status();
    std::vector<std::string> words = absl::StrSplit(*text, absl::ByAnyChar(" \t\r\n"), absl::SkipEmpty());
    if (words.empty()) return absl::InvalidArgumentError("--token_file: the file holds no token");
    options.token = words.front();
  } else if (args.Has("token")) {
    options.token = args.Str("token", "");
  } else if (const char* env = std::getenv("SAGESERVE_TOKEN"); env != nullptr) {
    options.token = env;
  }
  return sageserve::Client::Create(options);
}

namespace {

void Usage() {
  std::fprintf(stderr,
      "usage: sagectl <command> [--target=host:port|unix:PATH] [--deadline_ms=N] [--tls --ca_file=PEM [--cert_file=PEM --key_file=PEM]]\n"
      "               [--token=T | --token_file=PATH (its first word)]  (default: $SAGESERVE_TOKEN)\n"
      "               [--grpc_arg=name=int,...] [--max_attempts=1..5] [options]\n"
      "  health [--service=NAME]     grpc.health.v1 Check; exit 0 only when SERVING\n"
      "  info                        GetServerInfo as JSON\n"
      "  selftest [--recipe=NAME]    run the server's built-in problem; exit 0 when it passes\n"
      "  attend  [problem options]   one request; accuracy vs the local fp64 oracle, timings\n"
      "  bench   [problem options] [--concurrency=N] [--requests=N] [--mode=unary|stream]\n"
      "  attend, bench: [--shared_memory=none|system|cuda] [--cuda_device=N]\n"
      "                              system/cuda: tensors in a registered region, not the messages\n"
      "                              (same host; server runs --allow_shared_memory); bench checks\n"
      "                              answers bit-exact against the bytes path\n"
      "  bench --mode=decode [--sessions=N] [--clients=N] [--context=T] [--steps=M] [--stream]\n"
      "        [--shared_memory=none|system|cuda [--cuda_device=N]]  Q, O, new K/V by region\n"
      "        [--packed]             a call's K, V and Q as one tensor each (AttendSessionRequest.packed)\n"
      "        [session options]      KV sessions: prefill, then M decode steps x L layers, one call\n"
      "                              per layer-step for each client's sessions (--stream: on one\n"
      "                              AttendSessionStream per client); p50/p99, steps/s\n"
      "  session list | get --id=S | create [session options] | truncate --id=S --length=N |\n"
      "          fork --id=S [--length=N] | close --id=S\n"
      "session options: --layers --heads_q --heads_kv --head_dim --dtype=fp16|bf16\n"
      "  --kv_storage=16bit|int8_k_fp8_v|int4_k_fp8_v|plan --max_tokens --reserve_tokens --model\n"
      "  shm status [--name=N] [--json] | shm unregister [--name=N]\n"
      "                              the server's shared-memory regions (no --name: all of them)\n"
      "  registry register|list|get|delete|get-plan|set-plan|calibrate [options]\n"
      "                              the precision registry (docs/REGISTRY.md); e.g.\n"
      "    registry register --model=M --layers=N --heads_q=H --heads_kv=H --head_dim=D [--timesteps=T] [--accuracy_target=X]\n"
      "    registry calibrate --model=M [--dry_run] [--layers=0,1] [--timesteps=..] [--outlier_gain=1,4] [--samples=N]\n"
      "        [--kv_storages=KV_STORAGE_INT4_K_FP8_V,...]  session KV storages scored per layer (default: all served)\n"
      "    registry set-plan --model=M --entries=0-11:int8_qk_fp8_pv,12-15@0-9:unquantized [--expected_version=V]\n"
      "problem options: --batch --q_len --k_len --heads_q --heads_kv --head_dim --dtype=fp16|bf16\n"
      "  --output_dtype --recipe --causal --lse --seed --q_file --k_file --v_file (raw LE bytes)\n"
      "  attend: --o_file --lse_file (write the answer's raw LE bytes)\n"
      "  --model --layer --timestep (precision registry: run the model's plan unless --recipe is given)\n");
}

int RunHealth(const Args& args) {
  if (!CheckFlags(args, {"service"})) return 2;
  auto client = Connect(args);
  if (!client.ok()) return FailUsage(client.status());  // Connection flags (TLS files, deadline)
  absl::StatusOr<sageserve::HealthStatus> h = (*client)->CheckHealth(args.Str("service", ""));
  if (!h.ok()) return Fail(h.status());
  const char* names[] = {"UNKNOWN", "SERVING", "NOT_SERVING", "SERVICE_UNKNOWN"};
  std::printf("%s\n", names[static_cast<int>(*h)]);
  return *h == sageserve::HealthStatus::kServing ? 0 : 1;
}

int RunInfo(const Args& args) {
  if (!CheckFlags(args, {})) return 2;
  auto client = Connect(args);
  if (!client.ok()) return FailUsage(client.status());  // Connection flags (TLS files, deadline)
  auto info = (*client)->GetServerInfo();
  if (!info.ok()) return Fail(info.status());
  PrintJson(*info);
  return 0;
}

int RunSelfTest(const Args& args) {
  if (!CheckFlags(args, {"recipe"})) return 2;
  auto client = Connect(args);
  if (!client.ok()) return FailUsage(client.status());  // Connection flags (TLS files, deadline)
  sageserve::v1::SelfTestRequest request;
  if (args.Has("recipe")) {
    sageserve::v1::Recipe r;
    if (!sageserve::v1::Recipe_Parse(absl::StrCat("RECIPE_", args.Str("recipe", "")), &r)) {
      std::string upper = args.Str("recipe", "");
      for (char& c : upper) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
      if (!sageserve::v1::Recipe_Parse(absl::StrCat("RECIPE_", upper), &r)) {
        return FailUsage(absl::InvalidArgumentError("unknown --recipe"));
      }
    }
    request.add_recipes(r);
  }
  auto result = (*client)->SelfTest(request);
  if (!result.ok()) return Fail(result.status());
  std::printf("selftest on %s: %s (%lld us)\n  problem: %s\n", result->backend().c_str(),
              result->passed() ? "PASSED" : "FAILED", static_cast<long long>(result->total_us()),
              result->problem().c_str());
  for (const auto& r : result->results()) {
    std::printf("  %-24s cos %.6f  relL1 %.5f  rmse %.6f  maxabs %.5f  %6lld us  %s%s\n",
                sageserve::v1::Recipe_Name(r.recipe()).c_str(), r.cosine_similarity(), r.relative_l1(),
                r.rmse(), r.max_abs_error(), static_cast<long long>(r.compute_us()),
                r.passed() ? "ok" : "FAIL", r.error().empty() ? "" : (" " + r.error()).c_str());
  }
  return result->passed() ? 0 : 1;
}

}  // namespace
}  // namespace sagectl

int main(int argc, char** argv) {
  // As in sageserve's main: no process-wide lock-order bookkeeping on every absl::Mutex (gRPC's
  // locks included), which would otherwise serialize a bench's client threads.
  absl::SetMutexDeadlockDetectionMode(absl::OnDeadlockCycle::kIgnore);
  if (argc < 2) {
    sagectl::Usage();
    return 2;
  }
  const std::string command = argv[1];
  if (command == "-h" || command == "--help" || command == "help") {
    sagectl::Usage();
    return 0;
  }
  if (command == "registry" || command == "shm" || command == "session") {
    // Two words: `sagectl registry|shm|session <verb> --flags...`.
    if (argc < 3) {
      sagectl::Usage();
      return 2;
    }
    absl::StatusOr<sagectl::Args> args = sagectl::Args::Parse(std::vector<std::string>(argv + 3, argv + argc));
    if (!args.ok()) return sagectl::FailUsage(args.status());
    if (command == "session") return sagectl::RunSession(argv[2], *args);
    return command == "shm" ? sagectl::RunShm(argv[2], *args) : sagectl::RunRegistry(argv[2], *args);
  }
  absl::StatusOr<sagectl::Args> args = sagectl::Args::Parse(std::vector<std::string>(argv + 2, argv + argc));
  if (!args.ok()) return sagectl::FailUsage(args.status());
  if (command == "health") return sagectl::RunHealth(*args);
  if (command == "info") return sagectl::RunInfo(*args);
  if (command == "selftest") return sagectl::RunSelfTest(*args);
  if (command == "attend") return sagectl::RunAttend(*args);
  if (command == "bench") return args->Str("mode", "") == "decode" ? sagectl::RunDecodeBench(*args) : sagectl::RunBench(*args);
  std::fprintf(stderr, "sagectl: unknown command '%s'\n", command.c_str());
  sagectl::Usage();
  return 2;
}
