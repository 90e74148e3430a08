#include "kernels/reference/oracle.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <thread>

#include "kernels/reference/numerics.h"

namespace sage {

int VisibleKeys(MaskMode mask, int q_row, int q_len, int k_len) {
  if (mask != MaskMode::kCausal) return k_len;
  // Bottom-right alignment: the last query row sees every key.
  const int64_t bound = static_cast<int64_t>(q_row) + 1 + (k_len - q_len);
  return static_cast<int>(std::clamp<int64_t>(bound, 0, k_len));
}

absl::StatusOr<ExactOutput> AttendExact(const AttnInput& in) {
  if (absl::Status s = ValidateInput(in); !s.ok()) return s;
  const std::vector<float> q = ToFloatVector(in.q);
  const std::vector<float> k = ToFloatVector(in.k);
  const std::vector<float> v = ToFloatVector(in.v);
  const int hq = in.q.heads;
  const int hkv = in.k.heads;
  const int d = in.q.head_dim;
  const int group = hq / hkv;
  const double scale = static_cast<double>(in.scale());

  ExactOutput out;
  out.o.assign(static_cast<size_t>(in.q.numel()), 0.0);
  out.lse.assign(static_cast<size_t>(in.q.tokens) * hq, -std::numeric_limits<double>::infinity());

  // One work item per (global query row, head); each thread owns a strided share of the rows.
  const int64_t rows = in.q.tokens * hq;
  auto worker = [&](int64_t first, int64_t stride) {
    std::vector<double> scores;
    for (int64_t item = first; item < rows; item += stride) {
      const int64_t token = item / hq;
      const int h = static_cast<int>(item % hq);
      const int kvh = h / group;
      const auto seq_it = std::upper_bound(in.cu_seqlens_q.begin(), in.cu_seqlens_q.end(), token);
      const auto b = static_cast<size_t>(seq_it - in.cu_seqlens_q.begin() - 1);
      const int q_row = static_cast<int>(token - in.cu_seqlens_q[b]);
      const int q_len = in.cu_seqlens_q[b + 1] - in.cu_seqlens_q[b];
      const int k0 = in.cu_seqlens_k[b];
      const int k_len = in.cu_seqlens_k[b + 1] - k0;
      const int visible = VisibleKeys(in.mask, q_row, q_len, k_len);
      if (visible == 0) continue;
      const float* qr = &q[static_cast<size_t>((token * hq + h) * d)];
      scores.resize(static_cast<size_t>(visible));
      double mx = -std::numeric_limits<double>::infinity();
      for (int j = 0; j < visible; ++j) {
        const float* kr = &k[(static_cast<size_t>(k0 + j) * hkv + kvh) * d];
        double dot = 0.0;
        for (int c = 0; c < d; ++c) dot += static_cast<double>(qr[c]) * static_cast<double>(kr[c]);
        scores[j] = dot * scale;
        mx = std::max(mx, scores[j]);
      }
      double sum = 0.0;
      double* o = &out.o[static_cast<size_t>((token * hq + h) * d)];
      for (int j = 0; j < visible; ++j) {
        const double p = std::exp(scores[j] - mx);
        sum += p;
        const float* vr = &v[(static_cast<size_t>(k0 + j) * hkv + kvh) * d];
        for (int c = 0; c < d; ++c) o[c] += p * static_cast<double>(vr[c]);
      }
      for (int c = 0; c < d; ++c) o[c] /= sum;
      out.lse[static_cast<size_t>(token * hq + h)] = mx + std::log(sum);
    }
  };
  const int threads = static_cast<int>(std::clamp<int64_t>(std::thread::hardware_concurrency(), 1, 16));
  std::vector<std::thread> pool;
  for (int t = 1; t < threads; ++t) pool.emplace_back(worker, t, threads);
  worker(0, threads);
  for (auto& th : pool) th.join();
  return out;
}

}  // namespace sage
