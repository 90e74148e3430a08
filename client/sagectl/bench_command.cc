// `sagectl bench`: load a server with N concurrent requests of one shape and report throughput
// and latency percentiles, measured at the client (so transport and (de)serialization count).
#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <mutex>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "client/sagectl/commands.h"
#include "client/sagectl/problem.h"

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
  for (const char* k : {"concurrency", "requests", "mode", "warmup", "connections"}) known.push_back(k);
  if (!CheckFlags(args, known)) return 2;
  absl::StatusOr<ProblemSpec> spec = SpecFromArgs(args);
  if (!spec.ok()) return Fail(spec.status());
  absl::StatusOr<int64_t> concurrency = args.Int("concurrency", 4);
  absl::StatusOr<int64_t> requests = args.Int("requests", 100);
  absl::StatusOr<int64_t> warmup = args.Int("warmup", 4);
  // Clients share one HTTP/2 connection unless told otherwise; N connections spread the transport
  // work over N of gRPC's threads on both ends.
  absl::StatusOr<int64_t> connections = args.Int("connections", 1);
  if (!concurrency.ok() || !requests.ok() || !warmup.ok() || *concurrency < 1 || *requests < 1) {
    return Fail(absl::InvalidArgumentError("--concurrency and --requests must be positive integers"));
  }
  if (!connections.ok() || *connections < 1 || *connections > 256) {
    return Fail(absl::InvalidArgumentError("--connections must be an integer in [1, 256]"));
  }
  const std::string mode = args.Str("mode", "unary");
  if (mode != "unary" && mode != "stream") return Fail(absl::InvalidArgumentError("--mode: unary or stream"));
  absl::StatusOr<HostProblem> problem = MakeProblem(*spec);
  if (!problem.ok()) return Fail(problem.status());
  auto client_or = Connect(args, static_cast<int>(*connections));
  if (!client_or.ok()) return Fail(client_or.status());
  sageserve::Client& client = **client_or;

  const sageserve::v1::AttendRequest base = problem->ToRequest("bench");
  for (int64_t i = 0; i < *warmup; ++i) {
    auto r = client.Attend(base);
    if (!r.ok()) return Fail(r.status());
  }

  std::vector<Sample> samples;
  std::mutex mu;
  std::atomic<int64_t> next{0};
  std::atomic<int64_t> failures{0};
  absl::Status first_error;
  const Clock::time_point start = Clock::now();

  if (mode == "unary") {
    std::vector<std::thread> threads;
    for (int64_t c = 0; c < *concurrency; ++c) {
      threads.emplace_back([&] {
        sageserve::v1::AttendRequest request = base;  // One copy per thread, reused.
        for (int64_t i = next++; i < *requests; i = next++) {
          request.set_request_id(absl::StrCat("bench-", i));
          const Clock::time_point t0 = Clock::now();
          absl::StatusOr<sageserve::v1::AttendResponse> r = client.Attend(request);
          const double us = std::chrono::duration<double, std::micro>(Clock::now() - t0).count();
          std::lock_guard<std::mutex> lock(mu);
          if (!r.ok()) {
            if (failures++ == 0) first_error = r.status();
            continue;
          }
          samples.push_back({us, request.ByteSizeLong() + r->ByteSizeLong(), r->timings()});
        }
      });
    }
    for (std::thread& t : threads) t.join();
  } else {
    // One stream, `concurrency` requests in flight.
    std::unique_ptr<sageserve::StreamSession> session = client.OpenStream();
    std::condition_variable cv;
    int64_t in_flight = 0;
    const size_t request_bytes = base.ByteSizeLong();
    for (int64_t i = 0; i < *requests; ++i) {
      {
        std::unique_lock<std::mutex> lock(mu);
        cv.wait(lock, [&] { return in_flight < *concurrency; });
        ++in_flight;
      }
      sageserve::v1::AttendRequest request = base;
      request.set_request_id(absl::StrCat("bench-", i));
      const Clock::time_point t0 = Clock::now();
      absl::Status sent = session->Send(std::move(request), [&, t0](absl::StatusOr<sageserve::v1::AttendResponse> r) {
        const double us = std::chrono::duration<double, std::micro>(Clock::now() - t0).count();
        std::lock_guard<std::mutex> lock(mu);
        --in_flight;
        if (!r.ok()) {
          if (failures++ == 0) first_error = r.status();
        } else {
          samples.push_back({us, request_bytes + r->ByteSizeLong(), r->timings()});
        }
        cv.notify_one();
      });
      if (!sent.ok()) return Fail(sent);
    }
    absl::Status closed = session->Close();
    if (!closed.ok()) return Fail(closed);
  }
  const double wall_s = std::chrono::duration<double>(Clock::now() - start).count();

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
  std::printf("bench: mode %s, concurrency %lld, connections %lld, %zu ok / %lld failed in %.3f s\n", mode.c_str(),
              static_cast<long long>(*concurrency), static_cast<long long>(mode == "unary" ? *connections : 1),
              samples.size(), static_cast<long long>(failures.load()), wall_s);
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
    std::fprintf(stderr, "first failure: %s\n", first_error.ToString().c_str());
    return 1;
  }
  return 0;
}

}  // namespace sagectl
