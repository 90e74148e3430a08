// GPU quantizers (kernels/cuda/quant) against the CPU quantizers of kernels/reference/quantize.h,
// element by element through the workspace layout of kernels/cuda/internal/workspace.h.
//
// Rules: scales and means agree to 1e-5 relative (fp32 sums in another order); an integer code may
// differ by at most 1, and only where the CPU scale and GPU scale differ or x·inv sits within
// rounding of a .5 boundary: at most 0.2% of the codes. FP8 V codes: at most one e4m3 step apart
// on at most 0.2% of the codes. Pad rows of each tile are zero.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "kernels/cuda/internal/workspace.h"
#include "kernels/cuda/quant/quantize.h"
#include "kernels/reference/quantize.h"
#include "tests/cuda/gpu_test_util.h"

namespace sage::gputest {
namespace {

using cuda::ComputeWorkspaceLayout;
using cuda::WorkspaceLayout;
using cuda::WorkspaceShape;

struct QuantCase {
  const char* name;
  int d;
  int hq, hkv;
  std::vector<int> q_lens, k_lens;
  sage_granularity_t gran;
  sage_qk_smoothing_t smoothing;
  bool int4;
  bool smooth_v;
  DType dtype;
};

QuantGranularity RefGran(sage_granularity_t g) {
  return g == SAGE_GRAN_PER_BLOCK ? QuantGranularity::kPerBlock
         : g == SAGE_GRAN_PER_WARP ? QuantGranularity::kPerWarp
                                   : QuantGranularity::kPerThread;
}

bool Close(float a, float b, float rel) { return std::abs(a - b) <= rel * std::max(std::abs(a), std::abs(b)) + 1e-30f; }

class QuantTest : public ::testing::TestWithParam<QuantCase> {};

// One case on the GPU: inputs uploaded, workspace laid out and poisoned, quantizer params filled.
struct PreparedCase {
  HostProblem p;
  DeviceProblem dp;
  WorkspaceShape ws_shape;
  WorkspaceLayout layout;
  cuda::QuantParams qp;
};

void Prepare(const QuantCase& qc, cudaStream_t stream, PreparedCase& out) {
  ProblemSpec spec;
  spec.q_lens = qc.q_lens;
  spec.k_lens = qc.k_lens;
  spec.hq = qc.hq;
  spec.hkv = qc.hkv;
  spec.d = qc.d;
  spec.dtype = qc.dtype;
  spec.dist = InputDist::kOutliers;
  spec.seed = 31 + qc.d;
  out.p = MakeProblem(spec);
  const HostProblem& p = out.p;
  ASSERT_TRUE(out.dp.Upload(p, stream).ok());

  WorkspaceShape& ws_shape = out.ws_shape;
  ws_shape.total_q = p.total_q();
  ws_shape.total_k = p.total_k();
  ws_shape.batch = static_cast<int>(qc.q_lens.size());
  ws_shape.num_q_heads = qc.hq;
  ws_shape.num_kv_heads = qc.hkv;
  ws_shape.head_dim = qc.d;
  ws_shape.max_seqlen_k = p.max_k();
  ws_shape.int8_qk = !qc.int4;
  ws_shape.fp8_v = true;
  ws_shape.smooth_q = qc.smoothing == SAGE_SMOOTH_QK;
  ws_shape.smooth_v = qc.smooth_v;
  out.layout = ComputeWorkspaceLayout(ws_shape);
  ASSERT_TRUE(out.dp.workspace.Allocate(out.layout.total_bytes).ok());
  ASSERT_TRUE(out.dp.workspace.Poison(stream).ok());

  cuda::QuantParams& qp = out.qp;
  qp.q = out.dp.q.get();
  qp.k = out.dp.k.get();
  qp.v = out.dp.v.get();
  qp.bf16 = qc.dtype == DType::kBF16;
  qp.cu_q = out.dp.cu_q.as<int32_t>();
  qp.cu_k = out.dp.cu_k.as<int32_t>();
  qp.batch = ws_shape.batch;
  qp.num_q_heads = qc.hq;
  qp.num_kv_heads = qc.hkv;
  qp.head_dim = qc.d;
  qp.max_seqlen_q = p.max_q();
  qp.max_seqlen_k = p.max_k();
  qp.granularity = qc.gran;
  qp.smooth_k = qc.smoothing != SAGE_SMOOTH_NONE;
  qp.smooth_q = qc.smoothing == SAGE_SMOOTH_QK;
  qp.smooth_v = qc.smooth_v;
  qp.int4 = qc.int4;
  qp.ws = cuda::MakeWorkspaceView(out.dp.workspace.get(), out.layout);
}

TEST_P(QuantTest, MatchesCpuQuantizers) {
  SAGE_SKIP_WITHOUT_GPU();
  const QuantCase& qc = GetParam();
  Stream stream;
  PreparedCase prepared;
  Prepare(qc, stream.get(), prepared);
  if (HasFatalFailure()) return;
  const HostProblem& p = prepared.p;
  DeviceProblem& dp = prepared.dp;
  const WorkspaceShape& ws_shape = prepared.ws_shape;
  const WorkspaceLayout& layout = prepared.layout;
  const cuda::QuantParams& qp = prepared.qp;
  const int d = qc.d;
  ASSERT_EQ(cuda::LaunchQuantizeAll(qp, true, stream.get()), SAGE_OK) << sage_last_error();
  std::vector<uint8_t> ws;
  ASSERT_TRUE(dp.workspace.Download(&ws, stream.get()).ok());
  auto f32 = [&](size_t off, int64_t i) {
    float x;
    std::memcpy(&x, ws.data() + off + 4 * i, 4);
    return x;
  };

  const std::vector<float> qf = ToFloatVector(p.Input().q), kf = ToFloatVector(p.Input().k),
                           vf = ToFloatVector(p.Input().v);
  const QkType type = qc.int4 ? QkType::kInt4 : QkType::kInt8;
  const QkSmoothing smoothing = qc.smoothing == SAGE_SMOOTH_NONE ? QkSmoothing::kNone
                                : qc.smoothing == SAGE_SMOOTH_K  ? QkSmoothing::kK
                                                                 : QkSmoothing::kQK;
  absl::StatusOr<QkQuantized> rq = QuantizeQ(qf, qc.hq, d, p.cu_q, type, RefGran(qc.gran), smoothing);
  absl::StatusOr<QkQuantized> rk = QuantizeK(kf, qc.hkv, d, p.cu_k, type, RefGran(qc.gran), smoothing);
  absl::StatusOr<VQuantized> rv = QuantizeV(vf, qc.hkv, d, p.cu_k, qc.smooth_v ? VSmoothing::kMean : VSmoothing::kNone);
  ASSERT_TRUE(rq.ok() && rk.ok() && rv.ok());

  // Integer code of (head, padded row, channel) from an INT8 or packed INT4 tile image.
  auto code = [&](size_t base_off, int64_t head, int64_t prow, int c, int64_t cap, int tile_rows) -> int {
    const int row_bytes = qc.int4 ? d / 2 : d;
    const int64_t tile0 = prow / tile_rows * tile_rows;
    const int64_t byte = (head * cap + tile0) * row_bytes +
                         cuda::TileImageOffset(static_cast<int>(prow - tile0), qc.int4 ? c / 2 : c, row_bytes);
    const uint8_t b = ws[base_off + byte];
    if (!qc.int4) return static_cast<int8_t>(b);
    const int nib = (c % 2) ? (b >> 4) : (b & 0xF);
    return nib >= 8 ? nib - 16 : nib;
  };

  const size_t q_img = qc.int4 ? layout.q_i4 : layout.q_i8, k_img = qc.int4 ? layout.k_i4 : layout.k_i8;
  const int batch = ws_shape.batch;
  int64_t q_bad = 0, q_total = 0, k_bad = 0, k_total = 0, v_bad = 0, v_total = 0;
  for (int b = 0; b < batch; ++b) {
    const int64_t pq = cuda::PaddedQStart(p.cu_q.data(), b), pk = cuda::PaddedKStart(p.cu_k.data(), b);
    const int q_len = p.cu_q[b + 1] - p.cu_q[b], k_len = p.cu_k[b + 1] - p.cu_k[b];
    for (int h = 0; h < qc.hq; ++h) {
      for (int i = 0; i < static_cast<int>(cuda::RoundUp(q_len, 64)); ++i) {
        const int64_t prow = pq + i;
        const float gpu_scale =
            f32(layout.q_scale, (h * layout.q_tiles + prow / 64) * 32 + cuda::QScaleGroup(static_cast<int>(prow % 64)));
        if (i >= q_len) {
          for (int c = 0; c < d; ++c) ASSERT_EQ(code(q_img, h, prow, c, layout.q_cap, 64), 0) << "Q pad row " << i;
          continue;
        }
        const int64_t tok = p.cu_q[b] + i;
        const float cpu_scale = rq->scales[tok * qc.hq + h];
        ASSERT_TRUE(Close(gpu_scale, cpu_scale, 1e-5f)) << "q scale b" << b << " h" << h << " row " << i << ": "
                                                        << gpu_scale << " vs " << cpu_scale;
        for (int c = 0; c < d; ++c) {
          const int g = code(q_img, h, prow, c, layout.q_cap, 64), r = rq->values[(tok * qc.hq + h) * d + c];
          ASSERT_LE(std::abs(g - r), 1) << "q code b" << b << " h" << h << " row " << i << " c" << c;
          q_bad += g != r;
          ++q_total;
        }
      }
    }
    for (int h = 0; h < qc.hkv; ++h) {
      for (int c = 0; c < d; ++c) {
        if (qc.smoothing != SAGE_SMOOTH_NONE) {
          ASSERT_TRUE(Close(f32(layout.k_mean, (b * qc.hkv + h) * d + c), rk->means[(b * qc.hkv + h) * d + c], 1e-5f))
              << "k mean";
        }
        ASSERT_TRUE(Close(f32(layout.v_scale, (b * qc.hkv + h) * d + c), rv->scales[(b * qc.hkv + h) * d + c], 1e-5f))
            << "v scale b" << b << " h" << h << " c" << c;
      }
      for (int j = 0; j < static_cast<int>(cuda::RoundUp(k_len, 128)); ++j) {
        const int64_t prow = pk + j;
        if (j >= k_len) {
          for (int c = 0; c < d; ++c) {
            ASSERT_EQ(code(k_img, h, prow, c, layout.k_cap, 128), 0) << "K pad row " << j;
            ASSERT_EQ(ws[layout.v_f8 + cuda::VImageByte(h, prow, c, d, layout.k_cap)], 0) << "V pad row " << j;
          }
          continue;
        }
        const int64_t tok = p.cu_k[b] + j;
        const float gpu_scale =
            f32(layout.k_scale, (h * layout.k_blocks + prow / 128) * 4 + cuda::KScaleGroup(static_cast<int>(prow % 128)));
        ASSERT_TRUE(Close(gpu_scale, rk->scales[tok * qc.hkv + h], 1e-5f)) << "k scale b" << b << " key " << j;
        for (int c = 0; c < d; ++c) {
          const int g = code(k_img, h, prow, c, layout.k_cap, 128), r = rk->values[(tok * qc.hkv + h) * d + c];
          ASSERT_LE(std::abs(g - r), 1) << "k code b" << b << " key " << j << " c" << c;
          k_bad += g != r;
          ++k_total;
          const uint8_t gv = ws[layout.v_f8 + cuda::VImageByte(h, prow, c, d, layout.k_cap)];
          const uint8_t rv8 = rv->codes[(tok * qc.hkv + h) * d + c];
          // Adjacent e4m3 codes of one sign differ by 1 in the low 7 bits.
          ASSERT_LE(std::abs((gv & 0x7F) - (rv8 & 0x7F)) + ((gv ^ rv8) & 0x80 ? ((gv & 0x7F) + (rv8 & 0x7F) > 1) * 100 : 0),
                    1)
              << "v code b" << b << " key " << j << " c" << c;
          v_bad += gv != rv8;
          ++v_total;
        }
      }
    }
  }
  EXPECT_LE(q_bad, q_total / 500) << q_bad << " of " << q_total << " Q codes off by one";
  EXPECT_LE(k_bad, k_total / 500) << k_bad << " of " << k_total << " K codes off by one";
  EXPECT_LE(v_bad, v_total / 500) << v_bad << " of " << v_total << " V codes one step apart";
  std::printf("  [%s] codes off by one: q %lld/%lld k %lld/%lld v %lld/%lld\n", qc.name, static_cast<long long>(q_bad),
              static_cast<long long>(q_total), static_cast<long long>(k_bad), static_cast<long long>(k_total),
              static_cast<long long>(v_bad), static_cast<long long>(v_total));

  if (qc.smoothing == SAGE_SMOOTH_QK) {
    // q̄ per tile (CPU numbers tiles in sequence order) and ΔS against a CPU ΔS over the same means.
    int cpu_tile = 0;
    for (int b = 0; b < batch; ++b) {
      const int q_len = p.cu_q[b + 1] - p.cu_q[b], k_len = p.cu_k[b + 1] - p.cu_k[b];
      const int64_t t0 = cuda::PaddedQStart(p.cu_q.data(), b) / 64;
      for (int t = 0; t < (q_len + 63) / 64; ++t, ++cpu_tile) {
        for (int h = 0; h < qc.hq; ++h) {
          const int hk = h / (qc.hq / qc.hkv);
          std::vector<float> qbar(d), ksm(static_cast<size_t>(k_len) * d), ds(k_len);
          for (int c = 0; c < d; ++c) {
            qbar[c] = f32(layout.q_mean, (h * layout.q_tiles + t0 + t) * d + c);
            ASSERT_TRUE(Close(qbar[c], rq->means[(static_cast<int64_t>(cpu_tile) * qc.hq + h) * d + c], 1e-5f)) << "q mean";
          }
          for (int j = 0; j < k_len; ++j)
            for (int c = 0; c < d; ++c)
              ksm[j * d + c] = kf[((p.cu_k[b] + j) * qc.hkv + hk) * d + c] - rk->means[(b * qc.hkv + hk) * d + c];
          DeltaS(qbar.data(), ksm.data(), d, k_len, d, ds.data());
          for (int j = 0; j < k_len; ++j) {
            const float g = f32(layout.delta_s, (h * layout.q_tiles + t0 + t) * layout.ds_cols + j);
            ASSERT_NEAR(g, ds[j], 1e-4f * (1.f + std::abs(ds[j]))) << "delta_s tile " << t << " key " << j;
          }
        }
      }
    }
  }
}

// The launch plans write the same bytes: the fused Q/K/V launch and the in-pass finalize run the
// per-tensor kernels' code. Every byte of the workspace is compared (it starts poisoned, so a
// region one plan writes and the other leaves alone shows too).
// With cu_seqlens in the kernel parameters (host_cu_seqlens_q/k) too: the device copies start
// poisoned, the statistics kernel stores them, and every later kernel reads what it stored.
TEST_P(QuantTest, EveryLaunchPlanWritesTheSameBytes) {
  SAGE_SKIP_WITHOUT_GPU();
  const QuantCase& qc = GetParam();
  Stream stream;
  std::vector<uint8_t> reference;
  struct Plan {
    cuda::QuantLaunch how;
    bool inline_cu;
  };
  for (const Plan plan : {Plan{cuda::QuantLaunch::kSeparate, false}, Plan{cuda::QuantLaunch::kFused, false},
                          Plan{cuda::QuantLaunch::kAuto, false}, Plan{cuda::QuantLaunch::kSeparate, true},
                          Plan{cuda::QuantLaunch::kFused, true}}) {
    const cuda::QuantLaunch how = plan.how;
    PreparedCase prepared;
    Prepare(qc, stream.get(), prepared);
    if (HasFatalFailure()) return;
    const HostProblem& p = prepared.p;
    cuda::InlineCuSeqlens cu;
    if (plan.inline_cu) {
      ASSERT_LE(p.cu_q.size(), static_cast<size_t>(SAGE_INLINE_CU_SEQLENS_MAX + 1));
      ASSERT_TRUE(prepared.dp.cu_q.Poison(stream.get()).ok() && prepared.dp.cu_k.Poison(stream.get()).ok());
      cu.count = static_cast<int>(p.cu_q.size());
      std::copy(p.cu_q.begin(), p.cu_q.end(), cu.q);
      std::copy(p.cu_k.begin(), p.cu_k.end(), cu.k);
      cu.q_dst = prepared.dp.cu_q.as<int32_t>();
      cu.k_dst = prepared.dp.cu_k.as<int32_t>();
    }
    ASSERT_EQ(cuda::LaunchQuantizeAll(prepared.qp, true, stream.get(), how, plan.inline_cu ? &cu : nullptr), SAGE_OK)
        << sage_last_error();
    if (plan.inline_cu) {
      std::vector<int32_t> cu_q, cu_k;
      ASSERT_TRUE(prepared.dp.cu_q.Download(&cu_q, stream.get()).ok() && prepared.dp.cu_k.Download(&cu_k, stream.get()).ok());
      cu_q.resize(p.cu_q.size());
      cu_k.resize(p.cu_k.size());
      EXPECT_EQ(cu_q, p.cu_q) << "stored cu_seqlens_q";
      EXPECT_EQ(cu_k, p.cu_k) << "stored cu_seqlens_k";
    }
    std::vector<uint8_t> ws;
    ASSERT_TRUE(prepared.dp.workspace.Download(&ws, stream.get()).ok());
    if (how == cuda::QuantLaunch::kSeparate && !plan.inline_cu) {
      reference = std::move(ws);
      continue;
    }
    ASSERT_EQ(ws.size(), reference.size());
    size_t first = ws.size();
    for (size_t i = 0; i < ws.size() && first == ws.size(); ++i) {
      if (ws[i] != reference[i]) first = i;
    }
    EXPECT_EQ(first, ws.size()) << "plan " << static_cast<int>(how) << (plan.inline_cu ? " with inline cu_seqlens" : "")
                                << " differs from one kernel per tensor first at byte " << first << " of " << ws.size();
  }
}

const QuantCase kCases[] = {
    {"int8_thread_d128", 128, 4, 2, {130, 1, 257}, {}, SAGE_GRAN_PER_THREAD, SAGE_SMOOTH_K, false, false, DType::kF16},
    {"int8_thread_d64_bf16", 64, 4, 4, {77, 300}, {}, SAGE_GRAN_PER_THREAD, SAGE_SMOOTH_K, false, false, DType::kBF16},
    {"int8_warp", 128, 2, 1, {200, 64}, {150, 300}, SAGE_GRAN_PER_WARP, SAGE_SMOOTH_K, false, true, DType::kF16},
    {"int8_block_nosmooth", 64, 2, 2, {129, 5}, {}, SAGE_GRAN_PER_BLOCK, SAGE_SMOOTH_NONE, false, false, DType::kF16},
    {"int4_qk_smoothing", 128, 4, 2, {100, 1, 190}, {}, SAGE_GRAN_PER_THREAD, SAGE_SMOOTH_QK, true, false, DType::kF16},
    {"int4_d64_bf16", 64, 2, 1, {65, 128}, {70, 256}, SAGE_GRAN_PER_THREAD, SAGE_SMOOTH_QK, true, true, DType::kBF16},
    // Over kStatsChunkRows (512) keys: the automatic plan keeps one kernel per tensor.
    {"int8_long_keys", 128, 4, 2, {96, 33}, {700, 1300}, SAGE_GRAN_PER_THREAD, SAGE_SMOOTH_K, false, true, DType::kF16},
};

INSTANTIATE_TEST_SUITE_P(Cases, QuantTest, ::testing::ValuesIn(kCases),
                         [](const ::testing::TestParamInfo<QuantCase>& info) { return std::string(info.param.name); });

}  // namespace
}  // namespace sage::gputest
