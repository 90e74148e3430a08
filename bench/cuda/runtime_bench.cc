// In-process timing on one shape, the baseline for `sagectl bench` against the server:
//   bare kernel   sage_attn_forward on device-resident inputs, back to back on one stream (events);
//   backend       CudaBackend::Attend from N threads (staging, H2D, kernel, D2H, float conversion),
//                 throughput, p50/p99 latency and the mean of its per-stage device timings.
//
//   sage_cuda_runtime_bench --batch=1 --q_len=128 --k_len=128 --heads_q=8 --heads_kv=8 --head_dim=128
//                           [--causal] [--concurrency=1,16] [--requests=2000] [--streams=4]
//                           [--max_batch_elements=N] [--outputs=float,native,pinned]
// --outputs: the backend rows once per EngineInput::output_form (float: O decoded to fp32, as before;
// native: O left in the kernel's 16-bit type; pinned: q/k/v in a block of the backend's pinned
// payload pool and O written back into it, as the server's wire path does; pinned_fresh: a new block
// per request, filled just before it, as the server leases one per call). --batcher_workers=W,...:
// also the dynamic batcher in front of the backend, merging vs one request per launch.
#include <cuda_runtime.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "kernels/include/sageattn.h"
#include "server/backend/engine_io.h"
#include "kernels/reference/numerics.h"
#include "kernels/reference/recipe.h"
#include "server/backend/cuda/cuda_backend.h"
#include "server/backend/cuda/kernel_config.h"
#include "server/backend/dma_copy.h"
#include "server/backend/host_buffer_pool.h"
#include "server/scheduler/dynamic_batcher.h"

namespace {

struct Flags {
  int batch = 1, heads_q = 8, heads_kv = 8, head_dim = 128, streams = 4;
  long q_len = 128, k_len = 128, requests = 2000;
  bool causal = false;
  std::vector<int> concurrency = {1, 16};
  long long max_batch_elements = 0;
  std::vector<std::string> outputs = {"float"};
  std::vector<int> batcher_workers;  // empty: no batcher rows
};

bool Parse(int argc, char** argv, Flags& f) {
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    const auto eq = a.find('=');
    const std::string key = a.substr(0, eq), val = eq == std::string::npos ? "" : a.substr(eq + 1);
    if (key == "--batch") f.batch = std::atoi(val.c_str());
    else if (key == "--q_len") f.q_len = std::atol(val.c_str());
    else if (key == "--k_len") f.k_len = std::atol(val.c_str());
    else if (key == "--heads_q") f.heads_q = std::atoi(val.c_str());
    else if (key == "--heads_kv") f.heads_kv = std::atoi(val.c_str());
    else if (key == "--head_dim") f.head_dim = std::atoi(val.c_str());
    else if (key == "--requests") f.requests = std::atol(val.c_str());
    else if (key == "--streams") f.streams = std::atoi(val.c_str());
    else if (key == "--max_batch_elements") f.max_batch_elements = std::atoll(val.c_str());
    else if (key == "--causal") f.causal = true;
    else if (key == "--batcher_workers") {
      for (size_t p = 0; p < val.size();) {
        size_t c = val.find(',', p);
        if (c == std::string::npos) c = val.size();
        f.batcher_workers.push_back(std::atoi(val.substr(p, c - p).c_str()));
        p = c + 1;
      }
    }
    else if (key == "--outputs") {
      f.outputs.clear();
      for (size_t p = 0; p < val.size();) {
        size_t c = val.find(',', p);
        if (c == std::string::npos) c = val.size();
        f.outputs.push_back(val.substr(p, c - p));
        p = c + 1;
      }
    }
    else if (key == "--concurrency") {
      f.concurrency.clear();
      for (size_t p = 0; p < val.size();) {
        size_t c = val.find(',', p);
        if (c == std::string::npos) c = val.size();
        f.concurrency.push_back(std::atoi(val.substr(p, c - p).c_str()));
        p = c + 1;
      }
    } else {
      std::fprintf(stderr, "unknown flag %s\n", a.c_str());
      return false;
    }
  }
  return true;
}

double Pct(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v[std::min(v.size() - 1, static_cast<size_t>(p / 100.0 * static_cast<double>(v.size())))];
}

#define CHECK_CUDA(x)                                                               \
  do {                                                                              \
    cudaError_t e_ = (x);                                                           \
    if (e_ != cudaSuccess) {                                                        \
      std::fprintf(stderr, "%s: %s\n", #x, cudaGetErrorString(e_));                 \
      return 1;                                                                     \
    }                                                                               \
  } while (0)

namespace server = sage::server;
using sage::server::EngineInput;
using sage::server::EngineOutput;
using sage::RecipeConfig;

// One client thread's request in a pinned block of the backend's payload pool (as the server's wire
// path receives it): q/k/v copied in once, O written back into the block.
struct PinnedRequest {
  server::HostBlockRef block;
  EngineInput in;
};

absl::StatusOr<PinnedRequest> PlacePinned(server::AttentionBackend& backend, const EngineInput& like) {
  server::HostBufferPool* pool = backend.host_buffers();
  if (pool == nullptr) return absl::UnavailableError("backend has no payload pool");
  const size_t qb = like.q.bytes(), kb = like.k.bytes(), vb = like.v.bytes();
  absl::StatusOr<server::HostBlockRef> b = pool->Acquire(qb + kb + vb + qb);
  if (!b.ok()) return b.status();
  PinnedRequest r;
  r.block = *b;
  r.in = like;
  std::byte* base = r.block->data();
  server::CopyForDma(base, like.q.data, qb);  // as the server's wire path copies payloads
  server::CopyForDma(base + qb, like.k.data, kb);
  server::CopyForDma(base + qb + kb, like.v.data, vb);
  r.in.q.data = base;
  r.in.k.data = base + qb;
  r.in.v.data = base + qb + kb;
  r.in.memory = r.block->memory();
  r.in.output.memory = r.block->memory();
  r.in.output.form = sage::server::OutputForm::kNativeInto;
  r.in.output.o_into = std::span<std::byte>(base + qb + kb + vb, qb);
  return r;
}

// The dynamic batcher in front of the backend, no gRPC: `clients` closed-loop threads submit pinned
// requests; merging on vs off (one request per launch) with `workers` launch threads. This is where
// batching pays when the launch, not transport, is the bottleneck.
void RunBatcherRows(server::AttentionBackend& backend, const EngineInput& in, const RecipeConfig& cfg, const Flags& f) {
  for (int workers : f.batcher_workers) {
    for (server::MergePolicy merge : {server::MergePolicy::kNever, server::MergePolicy::kMergeCompatible}) {
      for (int clients : f.concurrency) {
        server::BatcherOptions bo;
        bo.worker_threads = workers;
        bo.merge = merge;
        bo.device_label = "cuda";
        bo.launch_timing = server::LaunchTiming::kBackendReportsStages;
        auto batcher = server::DynamicBatcher::Create(bo, &backend);
        if (!batcher.ok()) { std::fprintf(stderr, "batcher: %s\n", batcher.status().ToString().c_str()); return; }
        std::atomic<long> next{0}, failed{0};
        long launches_before = 0;
        for (const auto& s : backend.DeviceStatsSnapshot()) launches_before += s.batches;
        std::mutex mu;
        std::vector<double> lat;
        const auto t0 = std::chrono::steady_clock::now();
        std::vector<std::thread> threads;
        for (int c = 0; c < clients; ++c) {
          threads.emplace_back([&] {
            absl::StatusOr<PinnedRequest> mine = PlacePinned(backend, in);
            if (!mine.ok()) { failed++; return; }
            std::mutex done_mu;
            std::condition_variable done_cv;
            for (long i = next++; i < f.requests; i = next++) {
              bool done = false;
              bool ok = false;
              server::WorkItem item;
              item.input = mine->in;
              item.config = cfg;
              item.done = [&](absl::StatusOr<EngineOutput> out, const server::WorkTimings&) {
                std::lock_guard<std::mutex> lock(done_mu);
                ok = out.ok();
                done = true;
                done_cv.notify_one();
              };
              const auto a = std::chrono::steady_clock::now();
              if (!(*batcher)->Submit(std::move(item)).ok()) { failed++; continue; }
              std::unique_lock<std::mutex> lock(done_mu);
              done_cv.wait(lock, [&] { return done; });
              const double us = std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - a).count();
              if (!ok) { failed++; continue; }
              std::lock_guard<std::mutex> g(mu);
              lat.push_back(us);
            }
          });
        }
        for (auto& t : threads) t.join();
        const double wall = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        (*batcher)->Shutdown(server::DrainMode::kFinishQueued);
        long launches = -launches_before;
        for (const auto& s : backend.DeviceStatsSnapshot()) launches += s.batches;
        std::printf("batcher (%s, %d workers) clients %d: %zu ok / %ld failed, %.1f req/s, %.1f requests/launch, "
                    "latency us p50 %.0f p99 %.0f\n",
                    merge == server::MergePolicy::kNever ? "one request per launch" : "merging", workers, clients,
                    lat.size(), failed.load(), static_cast<double>(lat.size()) / wall,
                    launches > 0 ? static_cast<double>(lat.size()) / static_cast<double>(launches) : 0.0, Pct(lat, 50),
                    Pct(lat, 99));
      }
    }
  }
}

}  // namespace

int main(int argc, char** argv) {
  using namespace sage;
  Flags f;
  if (!Parse(argc, argv, f)) return 2;
  const int64_t tq = f.batch * f.q_len, tk = f.batch * f.k_len;
  std::mt19937 rng(7);
  std::normal_distribution<float> nd(0.f, 1.f);
  std::vector<uint16_t> q(static_cast<size_t>(tq * f.heads_q * f.head_dim)),
      k(static_cast<size_t>(tk * f.heads_kv * f.head_dim)), v(k.size());
  for (auto* vec : {&q, &k, &v}) {
    for (auto& x : *vec) x = EncodeFp16(nd(rng));
  }
  std::vector<int32_t> cuq(static_cast<size_t>(f.batch + 1)), cuk(cuq.size());
  for (int b = 0; b <= f.batch; ++b) {
    cuq[static_cast<size_t>(b)] = static_cast<int32_t>(b * f.q_len);
    cuk[static_cast<size_t>(b)] = static_cast<int32_t>(b * f.k_len);
  }
  EngineInput in;
  in.q = {DType::kF16, q.data(), tq, f.heads_q, f.head_dim};
  in.k = {DType::kF16, k.data(), tk, f.heads_kv, f.head_dim};
  in.v = {DType::kF16, v.data(), tk, f.heads_kv, f.head_dim};
  in.cu_seqlens_q = cuq;
  in.cu_seqlens_k = cuk;
  in.mask = f.causal ? MaskMode::kCausal : MaskMode::kNone;
  const RecipeConfig cfg = ConfigFor(Recipe::kInt8QkFp8Pv);
  std::printf("shape: batch %d, q %ld, k %ld, heads %d/%d, D %d, %s, int8_qk_fp8_pv\n", f.batch, f.q_len, f.k_len,
              f.heads_q, f.heads_kv, f.head_dim, f.causal ? "causal" : "full");

  // Bare kernel on device-resident data.
  {
    CHECK_CUDA(cudaSetDevice(0));
    cudaStream_t st;
    CHECK_CUDA(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking));
    void *dq, *dk, *dv, *dout, *dcq, *dck, *dws = nullptr;
    CHECK_CUDA(cudaMalloc(&dq, q.size() * 2));
    CHECK_CUDA(cudaMalloc(&dk, k.size() * 2));
    CHECK_CUDA(cudaMalloc(&dv, v.size() * 2));
    CHECK_CUDA(cudaMalloc(&dout, q.size() * 2));
    CHECK_CUDA(cudaMalloc(&dcq, cuq.size() * 4));
    CHECK_CUDA(cudaMalloc(&dck, cuk.size() * 4));
    CHECK_CUDA(cudaMemcpy(dq, q.data(), q.size() * 2, cudaMemcpyHostToDevice));
    CHECK_CUDA(cudaMemcpy(dk, k.data(), k.size() * 2, cudaMemcpyHostToDevice));
    CHECK_CUDA(cudaMemcpy(dv, v.data(), v.size() * 2, cudaMemcpyHostToDevice));
    CHECK_CUDA(cudaMemcpy(dcq, cuq.data(), cuq.size() * 4, cudaMemcpyHostToDevice));
    CHECK_CUDA(cudaMemcpy(dck, cuk.data(), cuk.size() * 4, cudaMemcpyHostToDevice));
    sage_attn_params_t p{};
    p.config = *server::ToKernelConfig(cfg);
    p.dtype = SAGE_DTYPE_F16;
    p.q = dq; p.k = dk; p.v = dv; p.o = dout;
    p.cu_seqlens_q = static_cast<const int32_t*>(dcq);
    p.cu_seqlens_k = static_cast<const int32_t*>(dck);
    p.batch = f.batch;
    p.max_seqlen_q = static_cast<int32_t>(f.q_len);
    p.max_seqlen_k = static_cast<int32_t>(f.k_len);
    p.total_q = tq; p.total_k = tk;
    p.num_q_heads = f.heads_q; p.num_kv_heads = f.heads_kv; p.head_dim = f.head_dim;
    p.mask = f.causal ? SAGE_MASK_CAUSAL : SAGE_MASK_NONE;
    p.softmax_scale = in.scale();
    size_t ws = 0;
    if (sage_attn_workspace_size(&p, &ws) != SAGE_OK) { std::fprintf(stderr, "ws: %s\n", sage_last_error()); return 1; }
    if (ws) CHECK_CUDA(cudaMalloc(&dws, ws));
    p.workspace = dws; p.workspace_bytes = ws;
    cudaEvent_t e0, e1;
    CHECK_CUDA(cudaEventCreate(&e0));
    CHECK_CUDA(cudaEventCreate(&e1));
    const int iters = std::max(20, static_cast<int>(std::min<long>(f.requests, 2000)));
    for (int i = 0; i < 10; ++i) sage_attn_forward(&p, reinterpret_cast<sage_stream_t>(st));
    CHECK_CUDA(cudaEventRecord(e0, st));
    for (int i = 0; i < iters; ++i) {
      if (sage_attn_forward(&p, reinterpret_cast<sage_stream_t>(st)) != SAGE_OK) { std::fprintf(stderr, "%s\n", sage_last_error()); return 1; }
    }
    CHECK_CUDA(cudaEventRecord(e1, st));
    CHECK_CUDA(cudaEventSynchronize(e1));
    float ms = 0;
    CHECK_CUDA(cudaEventElapsedTime(&ms, e0, e1));
    // One launch at a time, host-synchronized, as the server does per batch.
    std::vector<double> one;
    for (int i = 0; i < std::min(iters, 500); ++i) {
      const auto t0 = std::chrono::steady_clock::now();
      sage_attn_forward(&p, reinterpret_cast<sage_stream_t>(st));
      CHECK_CUDA(cudaStreamSynchronize(st));
      one.push_back(std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - t0).count());
    }
    std::printf("kernel: %.1f us/launch back-to-back (quantize+attend, %d launches), %.1f us p50 launch+sync\n",
                ms * 1e3 / iters, iters, Pct(one, 50));
    for (void* ptr : {dq, dk, dv, dout, dcq, dck, dws}) if (ptr) cudaFree(ptr);
    cudaStreamDestroy(st);
  }

  server::CudaBackendOptions bo;
  bo.streams_per_device = f.streams;
  if (f.max_batch_elements > 0) bo.pool.max_batch_elements = f.max_batch_elements;
  const auto t_create = std::chrono::steady_clock::now();
  auto backend = server::CreateCudaBackend(bo);
  if (!backend.ok()) { std::fprintf(stderr, "backend: %s\n", backend.status().ToString().c_str()); return 1; }
  std::printf("backend: %zu device(s), %d streams each, created in %.2f s\n", (*backend)->info().devices.size(),
              f.streams, std::chrono::duration<double>(std::chrono::steady_clock::now() - t_create).count());
  for (int i = 0; i < 10; ++i) (void)(*backend)->Attend(in, cfg);
  for (const std::string& output : f.outputs) {
  // "pinned": what the server's wire path does with the CUDA backend's payload pool: each thread's
  // q/k/v sit in a pinned block, copied to the device from there, and O lands back in the block.
  in.output.form = output == "float" ? sage::server::OutputForm::kFloat : sage::server::OutputForm::kNativeAllowed;
  for (int conc : f.concurrency) {
    std::vector<double> lat, h2d, ker, d2h;
    std::mutex mu;
    std::atomic<long> next{0};
    std::atomic<long> failed{0};
    const auto t0 = std::chrono::steady_clock::now();
    std::vector<std::thread> threads;
    for (int c = 0; c < conc; ++c) {
      threads.emplace_back([&] {
        EngineInput mine = in;
        server::HostBlockRef block;
        if (output == "pinned") {
          absl::StatusOr<PinnedRequest> placed = PlacePinned(**backend, in);
          if (!placed.ok()) { std::fprintf(stderr, "pinned block: %s\n", placed.status().ToString().c_str()); failed++; return; }
          block = placed->block;
          mine = placed->in;
        }
        // "pinned_fresh": like the server, every request lands in a newly leased block, written just
        // before the launch (the copy is outside the timed call), with the last 8 blocks still held.
        std::vector<server::HostBlockRef> recent;
        for (long i = next++; i < f.requests; i = next++) {
          if (output == "pinned_fresh") {
            absl::StatusOr<PinnedRequest> placed = PlacePinned(**backend, in);
            if (!placed.ok()) { failed++; continue; }
            if (recent.size() == 8) recent.erase(recent.begin());
            recent.push_back(placed->block);
            mine = placed->in;
          }
          const auto a = std::chrono::steady_clock::now();
          auto r = (*backend)->Attend(mine, cfg);
          const double us = std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - a).count();
          std::lock_guard<std::mutex> lock(mu);
          if (!r.ok() || !r->device_timings) { failed++; continue; }
          lat.push_back(us);
          h2d.push_back(r->device_timings->h2d_us);
          ker.push_back(r->device_timings->kernel_us);
          d2h.push_back(r->device_timings->d2h_us);
        }
      });
    }
    for (auto& t : threads) t.join();
    const double wall = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    std::printf("backend (O %s) concurrency %d: %zu ok / %ld failed, %.1f req/s, latency us p50 %.0f p99 %.0f; "
                "stage p50 us: h2d %.1f kernel %.1f d2h %.1f\n",
                output.c_str(), conc, lat.size(), failed.load(), static_cast<double>(lat.size()) / wall, Pct(lat, 50),
                Pct(lat, 99), Pct(h2d, 50), Pct(ker, 50), Pct(d2h, 50));
  }
  }
  RunBatcherRows(**backend, in, cfg, f);
  return 0;
}
