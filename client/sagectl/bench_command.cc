// `sagectl bench`: load a server with N concurrent requests of one shape and report throughput
// and latency percentiles, measured at the client (so transport and (de)serialization count).
// With --shared_memory=system|cuda the tensors travel through a registered region instead of the
// messages (shared_memory_transport.h), and answers are checked against the bytes path.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "client/sagectl/commands.h"
#include "client/sagectl/problem.h"
#include "client/sagectl/shared_memory_transport.h"

namespace sagectl {
namespace {

using Clock = std::chrono::steady_clock;

struct Sample {
  double latency_us = 0;
  size_t bytes = 0;  // request + response on the wire (protobuf size)
  sageserve::v1::Timings server;  // the response's own timings
};

double Percentile(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const size_t i = std::min(v.size() - 1, static_cast<size_t>(p / 100.0 * static_cast<double>(v.size())));
  return v[i];
}

}  // namespace

int RunBench(const Args& args) {
  std::vector<std::string> known = ProblemFlags();
  for (const char* k : {"concurrency", "requests", "mode", "warmup", "connections", "streams"}) known.push_back(k);
  for (const std::string& k : SharedMemoryFlags()) known.push_back(k);
  if (!CheckFlags(args, known)) return 2;
  absl::StatusOr<SharedMemoryOptions> shm_options = SharedMemoryOptionsFromArgs(args);
  if (!shm_options.ok()) return FailUsage(shm_options.status());
  absl::StatusOr<ProblemSpec> spec = SpecFromArgs(args);
  if (!spec.ok()) return FailUsage(spec.status());
  absl::StatusOr<int64_t> concurrency = args.Int("concurrency", 4);
  absl::StatusOr<int64_t> requests = args.Int("requests", 100);
  absl::StatusOr<int64_t> warmup = args.Int("warmup", 4);
  // Clients share one HTTP/2 connection unless told otherwise; N connections spread the transport
  // work over N of gRPC's threads on both ends.
  absl::StatusOr<int64_t> connections = args.Int("connections", 1);
  if (!concurrency.ok() || !requests.ok() || !warmup.ok() || *concurrency < 1 || *requests < 1) {
    return FailUsage(absl::InvalidArgumentError("--concurrency and --requests must be positive integers"));
  }
  if (!connections.ok() || *connections < 1 || *connections > 256) {
    return FailUsage(absl::InvalidArgumentError("--connections must be an integer in [1, 256]"));
  }
  const std::string mode = args.Str("mode", "unary");
  if (mode != "unary" && mode != "stream") return FailUsage(absl::InvalidArgumentError("--mode: unary or stream"));
  // Stream mode: one AttendStream per connection unless told otherwise. A stream's messages are
  // read and written one at a time on each end, so one stream bounds the rate whatever the load.
  absl::StatusOr<int64_t> streams = args.Int("streams", std::min(*connections, *concurrency));
  if (!streams.ok() || *streams < 1 || *streams > *concurrency) {
    return FailUsage(absl::InvalidArgumentError("--streams must be an integer in [1, --concurrency]"));
  }
  absl::StatusOr<HostProblem> problem = MakeProblem(*spec);
  if (!problem.ok()) return FailUsage(problem.status());
  auto client_or = Connect(args, static_cast<int>(*connections));
  if (!client_or.ok()) return FailUsage(client_or.status());  // Connection flags (TLS files, deadline)
  sageserve::Client& client = **client_or;

  const sageserve::v1::AttendRequest base = problem->ToRequest("bench");
  // Shared memory: one slot (inputs + outputs) per request that can be in flight. The bytes path's
  // answer to the same problem is what every checked answer must equal, bit for bit.
  std::unique_ptr<SharedMemoryTransport> shm;
  sageserve::v1::AttendResponse expected;
  std::vector<char> checked(static_cast<size_t>(*concurrency), 0);  // per slot; written by its owner only
  std::atomic<int64_t> verified{0};
  if (shm_options->mode != SharedMemoryMode::kNone) {
    absl::StatusOr<std::unique_ptr<SharedMemoryTransport>> t =
        SharedMemoryTransport::Create(client, *shm_options, *problem, static_cast<int>(*concurrency));
    if (!t.ok()) return Fail(t.status());
    shm = *std::move(t);
    absl::StatusOr<sageserve::v1::AttendResponse> reference = client.Attend(base);
    if (!reference.ok()) return Fail(reference.status());
    expected = *std::move(reference);
  }
  for (int64_t i = 0; i < *warmup; ++i) {
    auto r = client.Attend(shm ? shm->Request(0) : base);
    if (!r.ok()) return Fail(r.status());
    if (shm) {
      if (absl::Status st = shm->Verify(0, *r, expected); !st.ok()) return Fail(st);
      ++verified;
    }
  }
  // The first timed answer of each slot is checked; stale outputs from the warmup must not pass.
  if (shm) {
    if (absl::Status st = shm->PoisonOutputs(); !st.ok()) return Fail(st);
  }
  // Checks a slot's first answer, off the clock; an error counts the request as failed.
  auto check_first = [&](int slot, const sageserve::v1::AttendResponse& r) -> absl::Status {
    if (!shm || checked[slot]) return absl::OkStatus();
    checked[slot] = 1;
    absl::Status st = shm->Verify(slot, r, expected);
    if (st.ok()) ++verified;
    return st;
  };

  std::vector<Sample> samples;
  std::mutex mu;
  std::atomic<int64_t> next{0};
  std::atomic<int64_t> failures{0};
  absl::Status first_error;
  const Clock::time_point start = Clock::now();

  // One answer (or failure) of `slot`, timed by the caller; only the first per slot pays for the check.
  auto record = [&](int slot, double us, size_t request_bytes, absl::StatusOr<sageserve::v1::AttendResponse> r) {
    if (r.ok()) {
      if (absl::Status st = check_first(slot, *r); !st.ok()) r = st;
    }
    std::lock_guard<std::mutex> lock(mu);
    if (!r.ok()) {
      if (failures++ == 0) first_error = r.status();
      return;
    }
    samples.push_back({us, request_bytes + r->ByteSizeLong(), r->timings()});
  };
  if (mode == "unary") {
    std::vector<std::thread> threads;
    for (int64_t c = 0; c < *concurrency; ++c) {
      threads.emplace_back([&, slot = static_cast<int>(c)] {
        // One copy per thread, reused; with shared memory the thread owns its slot's ranges.
        sageserve::v1::AttendRequest request = shm ? shm->Request(slot) : base;
        for (int64_t i = next++; i < *requests; i = next++) {
          request.set_request_id(absl::StrCat("bench-", i));
          const Clock::time_point t0 = Clock::now();
          absl::StatusOr<sageserve::v1::AttendResponse> r = client.Attend(request);
          const double us = std::chrono::duration<double, std::micro>(Clock::now() - t0).count();
          record(slot, us, request.ByteSizeLong(), std::move(r));
        }
      });
    }
    for (std::thread& t : threads) t.join();
  } else {
    // `streams` streams (spread over the connections), each keeping its share of the `concurrency`
    // slots in flight. A slot's answer sends its next request from the result callback (a gRPC
    // thread), so the load costs no thread hand-off per request: a feeding thread woken for every
    // answer used about as much CPU as the server did, on the same cores.
    const size_t request_bytes = shm ? shm->Request(0).ByteSizeLong() : base.ByteSizeLong();
    struct StreamLoad {
      std::unique_ptr<sageserve::StreamSession> session;
      std::mutex mu;
      std::condition_variable idle_cv;
      int active = 0;  // slots with a request in flight
    };
    std::vector<std::unique_ptr<StreamLoad>> loads;
    for (int64_t st = 0; st < *streams; ++st) {
      loads.push_back(std::make_unique<StreamLoad>());
      loads.back()->session = client.OpenStream();
    }
    // Sends slot's next request on `load`, or retires the slot when none is left or sending failed.
    std::function<void(StreamLoad&, int)> issue = [&](StreamLoad& load, int slot) {
      const int64_t i = next++;
      absl::Status sent = absl::OkStatus();
      if (i < *requests) {
        sageserve::v1::AttendRequest request = shm ? shm->Request(slot) : base;
        request.set_request_id(absl::StrCat("bench-", i));
        const Clock::time_point t0 = Clock::now();
        sent = load.session->Send(std::move(request),
                                  [&, t0, slot, l = &load](absl::StatusOr<sageserve::v1::AttendResponse> r) {
                                    const double us =
                                        std::chrono::duration<double, std::micro>(Clock::now() - t0).count();
                                    // Before the slot is reused.
                                    record(slot, us, request_bytes, std::move(r));
                                    issue(*l, slot);
                                  });
        if (sent.ok()) return;
        std::lock_guard<std::mutex> lock(mu);
        if (failures++ == 0) first_error = sent;
      }
      std::lock_guard<std::mutex> lock(load.mu);
      if (--load.active == 0) load.idle_cv.notify_all();
    };
    for (int64_t st = 0; st < *streams; ++st) {
      StreamLoad& load = *loads[st];
      std::vector<int> slots;
      for (int slot = static_cast<int>(st); slot < *concurrency; slot += static_cast<int>(*streams)) {
        slots.push_back(slot);
      }
      {
        std::lock_guard<std::mutex> lock(load.mu);
        load.active = static_cast<int>(slots.size());
      }
      for (int slot : slots) issue(load, slot);
    }
    for (auto& load : loads) {
      {
        // Every slot retired: nothing more will be sent, and the callbacks' captures may go.
        std::unique_lock<std::mutex> lock(load->mu);
        load->idle_cv.wait(lock, [&] { return load->active == 0; });
      }
      if (absl::Status closed = load->session->Close(); !closed.ok()) {
        std::lock_guard<std::mutex> lock(mu);
        if (failures++ == 0) first_error = closed;
      }
    }
  }
  const double wall_s = std::chrono::duration<double>(Clock::now() - start).count();
  absl::Status unregistered = shm ? shm->Unregister() : absl::OkStatus();

  std::vector<double> lat, srv_total, srv_queued, srv_compute, srv_kernel, srv_device, srv_over_kernel, srv_over_device;
  size_t bytes = 0;
  for (const Sample& s : samples) {
    lat.push_back(s.latency_us);
    bytes += s.bytes;
    srv_total.push_back(static_cast<double>(s.server.total_us()));
    srv_queued.push_back(static_cast<double>(s.server.queued_us()));
    srv_compute.push_back(static_cast<double>(s.server.compute_us()));
    srv_kernel.push_back(static_cast<double>(s.server.kernel_us()));
    srv_device.push_back(static_cast<double>(s.server.device_us()));
    srv_over_kernel.push_back(static_cast<double>(s.server.total_us() - s.server.kernel_us()));
    srv_over_device.push_back(static_cast<double>(s.server.total_us() - s.server.device_us()));
  }
  const double n = static_cast<double>(samples.size());
  const double tokens = n * static_cast<double>(problem->total_q());
  std::printf("bench: mode %s, concurrency %lld, connections %lld%s, %zu ok / %lld failed in %.3f s\n", mode.c_str(),
              static_cast<long long>(*concurrency), static_cast<long long>(*connections),
              mode == "stream" ? absl::StrCat(", streams ", *streams).c_str() : "", samples.size(),
              static_cast<long long>(failures.load()), wall_s);
  if (shm) {
    std::printf("transport: %s; request/response bytes below are metadata only; "
                "%lld answers bit-exact vs the bytes path\n",
                shm->Describe().c_str(), static_cast<long long>(verified.load()));
  } else {
    std::printf("transport: tensor bytes in the gRPC messages\n");
  }
  std::printf("shape: batch %d, q %lld, k %lld tokens/seq, heads %d/%d, D %d, %s; %.2f MB per request+response\n",
              spec->batch, static_cast<long long>(spec->q_len), static_cast<long long>(spec->k_len),
              spec->heads_q, spec->heads_kv, spec->head_dim,
              sageserve::v1::DType_Name(spec->dtype).c_str(), n > 0 ? static_cast<double>(bytes) / n / 1e6 : 0.0);
  std::printf("throughput: %.1f req/s, %.0f tokens/s, %.3f GB/s (request + response bytes)\n", n / wall_s,
              tokens / wall_s, static_cast<double>(bytes) / wall_s / 1e9);
  std::printf("latency us: p50 %.0f, p90 %.0f, p99 %.0f, max %.0f\n", Percentile(lat, 50), Percentile(lat, 90),
              Percentile(lat, 99), lat.empty() ? 0.0 : *std::max_element(lat.begin(), lat.end()));
  // The server's view (response timings: accepted after parsing -> response encoded; no transport).
  std::printf("server us: total p50 %.0f p99 %.0f; queued p50 %.0f; compute p50 %.0f; kernel p50 %.0f; "
              "device (h2d+kernel+d2h) p50 %.0f; total - kernel p50 %.0f p99 %.0f; total - device p50 %.0f p99 %.0f\n",
              Percentile(srv_total, 50), Percentile(srv_total, 99), Percentile(srv_queued, 50),
              Percentile(srv_compute, 50), Percentile(srv_kernel, 50), Percentile(srv_device, 50),
              Percentile(srv_over_kernel, 50), Percentile(srv_over_kernel, 99), Percentile(srv_over_device, 50),
              Percentile(srv_over_device, 99));
  if (failures > 0) {
    std::fprintf(stderr, "first failure: %s\n", first_error.ToString(absl::StatusToStringMode::kWithNoExtraData).c_str());
    return kExitNegative;  // It ran; some requests failed.
  }
  if (!unregistered.ok()) return Fail(unregistered);
  return 0;
}

}  // namespace sagectl
