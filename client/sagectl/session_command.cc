// `sagectl session <verb>`: operators' view of KV sessions (list, get, create, truncate, fork,
// close), and `sagectl bench --mode=decode`: N concurrent sessions, a prefill, then M decode steps
// over L layers, one call per layer per step (all sessions of a client thread batched), with the
// client latency of each layer-step; --shared_memory=system|cuda moves each call's Q, O and new
// K/V through a registered region instead of the messages.
#include <algorithm>
#include <cctype>
#include <cstring>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <memory>
#include <mutex>
#include <random>
#include <thread>
#include <tuple>
#include <vector>

#include "absl/strings/str_cat.h"
#include "client/sagectl/commands.h"
#include "client/sagectl/region_buffer.h"
#include "client/sagectl/shared_memory_transport.h"
#include "sageserve/client/shared_memory.h"
#include "sageserve/client/session.h"
#include "sageserve/client/tensor.h"
#include "sageserve/v1/session.grpc.pb.h"

namespace sagectl {
namespace {

using Clock = std::chrono::steady_clock;
namespace v1 = ::sageserve::v1;

std::vector<std::string> SessionShapeFlags() {
  return {"layers", "heads_q", "heads_kv", "head_dim", "dtype", "kv_storage", "max_tokens", "reserve_tokens", "model"};
}

absl::StatusOr<sageserve::SessionOptions> SessionOptionsFromArgs(const Args& args) {
  sageserve::SessionOptions o;
  absl::StatusOr<int64_t> layers = args.Int("layers", 1), hq = args.Int("heads_q", 32), hkv = args.Int("heads_kv", 8),
                          d = args.Int("head_dim", 128), max_tokens = args.Int("max_tokens", 4096),
                          reserve = args.Int("reserve_tokens", 0);
  for (const auto* v : {&layers, &hq, &hkv, &d, &max_tokens, &reserve}) {
    if (!v->ok()) return v->status();
  }
  o.model = args.Str("model", "");
  o.layers = static_cast<int>(*layers);
  o.heads_q = static_cast<int>(*hq);
  o.heads_kv = static_cast<int>(*hkv);
  o.head_dim = static_cast<int>(*d);
  o.max_tokens = *max_tokens;
  o.reserve_tokens = *reserve;
  const std::string dtype = args.Str("dtype", "fp16");
  if (dtype != "fp16" && dtype != "bf16") return absl::InvalidArgumentError("--dtype: fp16 or bf16");
  o.dtype = dtype == "fp16" ? v1::DTYPE_FP16 : v1::DTYPE_BF16;
  const std::string storage = args.Str("kv_storage", "int8_k_fp8_v");
  if (storage == "16bit") {
    o.kv_storage = v1::KV_STORAGE_16BIT;
  } else if (storage == "int8_k_fp8_v") {
    o.kv_storage = v1::KV_STORAGE_INT8_K_FP8_V;
  } else if (storage == "int4_k_fp8_v") {
    o.kv_storage = v1::KV_STORAGE_INT4_K_FP8_V;
  } else if (storage == "plan") {
    if (o.model.empty()) return absl::InvalidArgumentError("--kv_storage=plan: needs --model (the plan's per-layer storage)");
    o.kv_storage = v1::KV_STORAGE_UNSPECIFIED;
  } else {
    return absl::InvalidArgumentError("--kv_storage: 16bit, int8_k_fp8_v, int4_k_fp8_v or plan (with --model)");
  }
  return o;
}

std::vector<uint16_t> RandomValues(size_t n, std::mt19937& rng) {
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<uint16_t> out(n);
  for (uint16_t& x : out) x = sageserve::FloatToFp16(normal(rng));
  return out;
}

double Percentile(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v[std::min(v.size() - 1, static_cast<size_t>(p / 100.0 * static_cast<double>(v.size())))];
}

// --shared_memory=system|cuda for the decode bench: one client thread's region, holding the Q of
// its sessions' decode step (one row each, back to back, as one call's steps name them: the server
// reads CUDA Q in place as one tensor), the call's O after it, then every session's new K, then
// every session's new V (back to back too, so the server reads a call's K and V with one copy).
// The region is registered for the thread's calls and unregistered after them.
class DecodeRegion {
 public:
  static absl::StatusOr<std::unique_ptr<DecodeRegion>> Create(const sageserve::Client& client,
                                                              const SharedMemoryOptions& options,
                                                              const sageserve::SessionOptions& shape, int64_t sessions,
                                                              const std::vector<uint16_t>& q,
                                                              const std::vector<uint16_t>& kv) {
    Layout l;
    l.q_bytes = q.size() * sizeof(uint16_t);
    l.kv_bytes = kv.size() * sizeof(uint16_t);
    l.o_at = Aligned(l.q_bytes * static_cast<uint64_t>(sessions));
    l.o_bytes = sageserve::SessionOBytes(shape, sessions);
    l.k_at = Aligned(l.o_at + l.o_bytes);
    l.v_at = l.k_at + l.kv_bytes * static_cast<uint64_t>(sessions);
    const uint64_t total = l.v_at + l.kv_bytes * static_cast<uint64_t>(sessions);
    const std::string key = sageserve::SystemSharedMemory::UniqueKey("sagectl-decode");
    absl::StatusOr<std::unique_ptr<RegionBuffer>> buffer =
        options.mode == SharedMemoryMode::kSystem ? MakeSystemBuffer(key, total)
                                                  : MakeCudaBuffer(options.cuda_device, total);
    if (!buffer.ok()) return buffer.status();
    for (int64_t i = 0; i < sessions; ++i) {
      const size_t n = static_cast<size_t>(i);
      for (auto [at, values, bytes] : {std::tuple{n * l.q_bytes, q.data(), l.q_bytes},
                                       {l.k_at + n * l.kv_bytes, kv.data(), l.kv_bytes},
                                       {l.v_at + n * l.kv_bytes, kv.data(), l.kv_bytes}}) {
        if (absl::Status st = (*buffer)->Write(at, values, bytes); !st.ok()) return st;
      }
    }
    std::unique_ptr<DecodeRegion> r(new DecodeRegion(client, *std::move(buffer), key.substr(1), l));
    if (absl::Status st = r->buffer_->Register(client, r->name_); !st.ok()) return st;
    r->registered_ = true;
    return r;
  }
  ~DecodeRegion() {
    if (registered_) (void)client_.UnregisterSharedMemory(name_);
  }
  // Session i's q (one row), new K and V (one token each), and the call's O.
  v1::SharedMemoryRef Q(int64_t i) const { return Range(static_cast<uint64_t>(i) * l_.q_bytes, l_.q_bytes); }
  v1::SharedMemoryRef K(int64_t i) const { return Range(l_.k_at + static_cast<uint64_t>(i) * l_.kv_bytes, l_.kv_bytes); }
  v1::SharedMemoryRef V(int64_t i) const { return Range(l_.v_at + static_cast<uint64_t>(i) * l_.kv_bytes, l_.kv_bytes); }
  v1::SharedMemoryRef O() const { return Range(l_.o_at, l_.o_bytes); }
  // The whole call's Q, K and V (every session's, back to back): a packed call's tensors.
  v1::SharedMemoryRef AllQ() const { return Range(0, l_.o_at); }
  v1::SharedMemoryRef AllK() const { return Range(l_.k_at, l_.v_at - l_.k_at); }
  v1::SharedMemoryRef AllV() const { return Range(l_.v_at, l_.v_at - l_.k_at); }

 private:
  static constexpr uint64_t kAlign = 256;  // O (and K) start as aligned as their own allocation would be
  static uint64_t Aligned(uint64_t at) { return (at + kAlign - 1) / kAlign * kAlign; }
  // Bytes of one session's q and of its K (or V); where O, the K of all sessions and their V start.
  struct Layout {
    uint64_t q_bytes = 0, kv_bytes = 0, o_at = 0, o_bytes = 0, k_at = 0, v_at = 0;
  };
  DecodeRegion(const sageserve::Client& client, std::unique_ptr<RegionBuffer> buffer, std::string name, Layout l)
      : client_(client), buffer_(std::move(buffer)), name_(std::move(name)), l_(l) {}
  v1::SharedMemoryRef Range(uint64_t at, uint64_t bytes) const { return sageserve::SharedMemoryRange(name_, at, bytes); }

  const sageserve::Client& client_;
  std::unique_ptr<RegionBuffer> buffer_;
  std::string name_;
  Layout l_;
  bool registered_ = false;
};

}  // namespace

int RunSession(const std::string& verb, const Args& args) {
  std::vector<std::string> known = SessionShapeFlags();
  for (const char* k : {"id", "length"}) known.push_back(k);
  if (!CheckFlags(args, known)) return kExitUsage;
  auto client = Connect(args);
  if (!client.ok()) return FailUsage(client.status());
  sageserve::SessionClient sessions(**client);
  const std::string id = args.Str("id", "");
  if (verb != "list" && verb != "create" && id.empty()) return FailUsage(absl::InvalidArgumentError("--id is required"));
  if (verb == "list") {
    absl::StatusOr<v1::ListSessionsResponse> r = sessions.List();
    if (!r.ok()) return Fail(r.status());
    PrintJson(*r);
  } else if (verb == "get") {
    absl::StatusOr<v1::SessionInfo> r = sessions.Get(id);
    if (!r.ok()) return Fail(r.status());
    PrintJson(*r);
  } else if (verb == "create") {
    absl::StatusOr<sageserve::SessionOptions> o = SessionOptionsFromArgs(args);
    if (!o.ok()) return FailUsage(o.status());
    absl::StatusOr<sageserve::Session> s = sessions.Create(*o);
    if (!s.ok()) return Fail(s.status());
    std::printf("%s\n", s->id().c_str());
  } else if (verb == "truncate" || verb == "fork") {
    absl::StatusOr<int64_t> length = args.Int("length", -1);
    if (!length.ok() || (verb == "truncate" && *length < 0)) {
      return FailUsage(absl::InvalidArgumentError("--length must be an integer >= 0"));
    }
    if (verb == "truncate") {
      absl::StatusOr<v1::SessionInfo> r = sessions.Truncate(id, *length);
      if (!r.ok()) return Fail(r.status());
      PrintJson(*r);
    } else {
      absl::StatusOr<v1::ForkSessionResponse> r =
          sessions.Fork(id, *length >= 0 ? std::optional<int64_t>(*length) : std::nullopt);
      if (!r.ok()) return Fail(r.status());
      PrintJson(*r);
    }
  } else if (verb == "close") {
    if (absl::Status s = sessions.Close(id); !s.ok()) return Fail(s);
  } else {
    return FailUsage(absl::InvalidArgumentError(absl::StrCat("unknown session verb '", verb,
                                                             "' (list, get, create, truncate, fork, close)")));
  }
  return 0;
}

int RunDecodeBench(const Args& args) {
  std::vector<std::string> known = SessionShapeFlags();
  for (const char* k : {"mode", "sessions", "clients", "context", "steps", "recipe", "connections", "stream", "packed"}) {
    known.push_back(k);
  }
  for (const std::string& k : SharedMemoryFlags()) known.push_back(k);
  if (!CheckFlags(args, known)) return kExitUsage;
  const bool use_stream = args.Has("stream");  // each client's calls on one AttendSessionStream
  const bool packed = args.Has("packed");      // each call's tensors packed (AttendSessionRequest.packed)
  absl::StatusOr<SharedMemoryOptions> shm = SharedMemoryOptionsFromArgs(args);  // Q, O, K and V of each call
  if (!shm.ok()) return FailUsage(shm.status());
  absl::StatusOr<sageserve::SessionOptions> base = SessionOptionsFromArgs(args);
  if (!base.ok()) return FailUsage(base.status());
  absl::StatusOr<int64_t> n_sessions = args.Int("sessions", 1), clients = args.Int("clients", 1),
                          context = args.Int("context", 2048), steps = args.Int("steps", 16),
                          connections = args.Int("connections", 1);
  for (const auto* v : {&n_sessions, &clients, &context, &steps, &connections}) {
    if (!v->ok() || **v < 1) return FailUsage(absl::InvalidArgumentError("--sessions, --clients, --context, --steps and --connections must be positive"));
  }
  if (*n_sessions % *clients != 0) return FailUsage(absl::InvalidArgumentError("--sessions must be a multiple of --clients"));
  v1::Recipe recipe = v1::RECIPE_UNSPECIFIED;
  if (args.Has("recipe")) {
    std::string name = "RECIPE_" + args.Str("recipe", "");
    for (char& ch : name) ch = static_cast<char>(std::toupper(static_cast<unsigned char>(ch)));
    if (!v1::Recipe_Parse(name, &recipe)) return FailUsage(absl::InvalidArgumentError("--recipe: unknown recipe"));
  }
  if (!args.Has("max_tokens")) base->max_tokens = *context + *steps;
  auto client_or = Connect(args, static_cast<int>(*connections));
  if (!client_or.ok()) return FailUsage(client_or.status());
  sageserve::SessionClient sessions(**client_or);
  const sageserve::SessionOptions& o = *base;
  const int64_t per_client = *n_sessions / *clients;
  const size_t kv_row = static_cast<size_t>(o.heads_kv) * o.head_dim, q_row = static_cast<size_t>(o.heads_q) * o.head_dim;

  std::mutex mu;
  // Per call: the client's latency and the server's own account of it (v1::Timings).
  struct CallTimes {
    std::vector<double> client, prepare, queued, compute, device, kernel, total;
    void Add(double client_us, const v1::Timings& t) {
      client.push_back(client_us);
      for (auto [to, from] : {std::pair{&prepare, t.prepare_us()}, {&queued, t.queued_us()}, {&compute, t.compute_us()},
                              {&device, t.device_us()}, {&kernel, t.kernel_us()}, {&total, t.total_us()}}) {
        to->push_back(static_cast<double>(from));
      }
    }
    void Append(const CallTimes& o) {
      for (auto [to, from] : {std::pair{&client, &o.client}, {&prepare, &o.prepare}, {&queued, &o.queued},
                              {&compute, &o.compute}, {&device, &o.device}, {&kernel, &o.kernel}, {&total, &o.total}}) {
        to->insert(to->end(), from->begin(), from->end());
      }
    }
  };
  CallTimes times;
  std::atomic<int> failures{0};
  std::atomic<int64_t> layer_steps{0};
  absl::Status first_error;
  const auto fail = [&](const absl::Status& s) {
    std::lock_guard<std::mutex> lock(mu);
    if (failures++ == 0) first_error = s;
  };
  // Prefill every session (one bulk import per layer), then time the decode steps.
  std::vector<std::vector<sageserve::Session>> owned(static_cast<size_t>(*clients));
  {
    std::mt19937 rng(1);
    const std::vector<uint16_t> kp = RandomValues(static_cast<size_t>(*context) * kv_row, rng);
    for (int64_t c = 0; c < *clients; ++c) {
      for (int64_t i = 0; i < per_client; ++i) {
        absl::StatusOr<sageserve::Session> s = sessions.Create(o);
        if (!s.ok()) return Fail(s.status());
        for (int layer = 0; layer < o.layers; ++layer) {
          absl::StatusOr<v1::SessionStepResult> r = s->Step(layer, kp, kp, {});
          if (!r.ok()) return Fail(r.status());
        }
        owned[static_cast<size_t>(c)].push_back(*std::move(s));
      }
    }
  }
  // Each client thread's region, made before the clock starts.
  std::vector<std::unique_ptr<DecodeRegion>> regions(static_cast<size_t>(*clients));
  std::vector<std::vector<uint16_t>> client_q(static_cast<size_t>(*clients)), client_k(static_cast<size_t>(*clients));
  for (int64_t c = 0; c < *clients; ++c) {
    std::mt19937 rng(static_cast<uint32_t>(100 + c));
    client_k[static_cast<size_t>(c)] = RandomValues(kv_row, rng);
    client_q[static_cast<size_t>(c)] = RandomValues(q_row, rng);
    if (shm->mode == SharedMemoryMode::kNone) continue;
    absl::StatusOr<std::unique_ptr<DecodeRegion>> r =
        DecodeRegion::Create(**client_or, *shm, o, per_client, client_q[static_cast<size_t>(c)],
                             client_k[static_cast<size_t>(c)]);
    if (!r.ok()) return Fail(r.status());
    regions[static_cast<size_t>(c)] = *std::move(r);
  }
  const Clock::time_point start = Clock::now();
  std::vector<std::thread> threads;
  for (int64_t c = 0; c < *clients; ++c) {
    threads.emplace_back([&, c] {
      std::vector<sageserve::Session>& mine = owned[static_cast<size_t>(c)];
      const std::vector<uint16_t>& k = client_k[static_cast<size_t>(c)];
      const std::vector<uint16_t>& q = client_q[static_cast<size_t>(c)];
      const DecodeRegion* region = regions[static_cast<size_t>(c)].get();
      // The packed form's per-step counts and, inline, its tensors: every session's K (V, Q) in turn.
      const std::vector<int64_t> ones(mine.size(), 1);
      std::vector<uint16_t> all_k, all_q;
      if (packed && region == nullptr) {
        for (size_t i = 0; i < mine.size(); ++i) {
          all_k.insert(all_k.end(), k.begin(), k.end());
          all_q.insert(all_q.end(), q.begin(), q.end());
        }
      }
      CallTimes local;
      grpc::ClientContext stream_ctx;
      std::unique_ptr<v1::SessionService::Stub> stub;
      std::unique_ptr<grpc::ClientReaderWriter<v1::AttendSessionRequest, v1::AttendSessionResponse>> stream;
      if (use_stream) {
        stub = v1::SessionService::NewStub((*client_or)->channel(static_cast<size_t>(c)));
        // For a proxy that routes on it: the stream goes where this client's first session lives.
        if (!mine.empty()) stream_ctx.AddMetadata(sageserve::kSessionMetadataKey, mine.front().id());
        stream = stub->AttendSessionStream(&stream_ctx);
      }
      // One call: unary, or a request and its answer on the client's stream.
      const auto call = [&](const v1::AttendSessionRequest& req) -> absl::StatusOr<v1::AttendSessionResponse> {
        if (!use_stream) return sessions.Attend(req);
        v1::AttendSessionResponse resp;
        if (!stream->Write(req) || !stream->Read(&resp)) return absl::UnavailableError("AttendSessionStream ended");
        if (resp.status().code() != 0) {
          return absl::Status(static_cast<absl::StatusCode>(resp.status().code()), resp.status().message());
        }
        return resp;
      };
      for (int64_t step = 0; step < *steps && failures.load() == 0; ++step) {
        for (int layer = 0; layer < o.layers; ++layer) {
          v1::AttendSessionRequest req;
          req.set_recipe(recipe);
          for (size_t i = 0; i < mine.size(); ++i) {
            const int64_t n = static_cast<int64_t>(i);
            *req.add_steps() = packed              ? mine[i].MakePackedStep(layer)
                               : region == nullptr ? mine[i].MakeStep(layer, k, k, q)
                                                   : mine[i].MakeStep(layer, 1, region->K(n), region->V(n), 1, region->Q(n));
          }
          if (packed && region == nullptr) sageserve::SetPacked(o, ones, ones, all_k, all_k, all_q, &req);
          if (packed && region != nullptr) {
            sageserve::SetPackedShared(o, ones, ones, region->AllK(), region->AllV(), region->AllQ(), &req);
          }
          if (region != nullptr) *req.mutable_o_output() = region->O();
          const Clock::time_point t0 = Clock::now();
          absl::StatusOr<v1::AttendSessionResponse> r = call(req);
          const double client_us = std::chrono::duration<double, std::micro>(Clock::now() - t0).count();
          if (!r.ok()) return fail(r.status());
          local.Add(client_us, r->timings());
          for (size_t i = 0; i < mine.size(); ++i) mine[i].Commit(layer, r->results(static_cast<int>(i)));
          layer_steps.fetch_add(static_cast<int64_t>(mine.size()));
        }
      }
      if (use_stream) {
        stream->WritesDone();
        if (grpc::Status st = stream->Finish(); !st.ok() && failures.load() == 0) {
          fail(absl::UnavailableError(absl::StrCat("AttendSessionStream: ", st.error_message())));
        }
      }
      std::lock_guard<std::mutex> lock(mu);
      times.Append(local);
    });
  }
  for (std::thread& t : threads) t.join();
  const double seconds = std::chrono::duration<double>(Clock::now() - start).count();
  for (auto& mine : owned) {
    for (sageserve::Session& s : mine) (void)s.Close();
  }
  regions.clear();  // unregistered
  std::printf("decode%s%s: %lld sessions (%lld clients, %lld per call), context %lld, %lld steps x %d layers, Hq %d Hkv %d D %d, %s, "
              "Q, O and new K/V via %s\n",
              use_stream ? " (AttendSessionStream)" : "", packed ? " (packed)" : "",
              static_cast<long long>(*n_sessions), static_cast<long long>(*clients), static_cast<long long>(per_client),
              static_cast<long long>(*context), static_cast<long long>(*steps), o.layers, o.heads_q, o.heads_kv, o.head_dim,
              o.kv_storage == v1::KV_STORAGE_16BIT          ? "16-bit KV"
              : o.kv_storage == v1::KV_STORAGE_INT8_K_FP8_V ? "INT8 K / FP8 V"
              : o.kv_storage == v1::KV_STORAGE_INT4_K_FP8_V ? "INT4 K / FP8 V"
                                                            : "the model plan's KV storage per layer",
              shm->mode == SharedMemoryMode::kNone ? "the messages"
              : shm->mode == SharedMemoryMode::kSystem ? "system shared memory"
                                                        : "CUDA shared memory");
  const auto p50 = [](const std::vector<double>& v) { return Percentile(v, 50); };
  std::printf("per layer-step call, client: p50 %.0f us  p99 %.0f us  (%zu calls)\n", p50(times.client),
              Percentile(times.client, 99), times.client.size());
  std::printf("server per call: kernel p50 %.0f us (GPU events, 0 on the cpu engine), accepted-to-answered p50 %.0f us\n",
              p50(times.kernel), p50(times.total));
  // Where a call's time goes, each stage's own p50 (they need not add up exactly).
  std::printf("server p50 stages: prepare %.0f (decode, session worker hop, appends, Q staging), queued %.0f, "
              "compute %.0f (device %.0f, kernel %.0f), answer %.0f; client - server total %.0f us\n",
              p50(times.prepare), p50(times.queued), p50(times.compute), p50(times.device), p50(times.kernel),
              p50(times.total) - p50(times.prepare) - p50(times.queued) - p50(times.compute),
              p50(times.client) - p50(times.total));
  std::printf("client p50 minus kernel p50: %.0f us\n", p50(times.client) - p50(times.kernel));
  std::printf("session layer-steps/s: %.0f\n", static_cast<double>(layer_steps.load()) / seconds);
  if (failures.load() > 0) {
    std::fprintf(stderr, "sagectl: %d calls failed, first: %s\n", failures.load(), first_error.ToString().c_str());
    return kExitNegative;
  }
  return 0;
}

}  // namespace sagectl
