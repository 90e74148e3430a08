// SageAttn2-8b forward on Hopper: one warpgroup per 64-row Q tile, K̂/V̂ blocks of 128 keys
// double-buffered in shared memory by the bulk-copy (TMA) engine, both products on wgmma.
//
// Per 128-key block j:
//   S = Q̂·K̂ⱼᵀ            wgmma m64n128k32 .s32.s8.s8, Q̂ and K̂ from smem descriptors, D/32 k-steps
//   s2 = S·δQ·δK·scale·log2e (masked -> -inf); m' = max(m, rowmax s2)
//   P̃ = exp2(s2 − m' + 8.807) (row max -> ~448), l = l·2^(m−m') + Σ P̃ (fp32)
//   R = e4m3(P̃)·V̂ⱼ        wgmma m64nDk32 .f32.e4m3.e4m3, P̃ from registers, fresh accumulator
//   O = O·2^(m−m') + R     (two-level accumulation: FP32 add per block)
// Epilogue: O/l·δV[c] (+v̄[c]); LSE = (m − 8.807)·ln2 + ln l + scale·(q·k̄).
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <atomic>
#include <climits>
#include <cmath>

#include "kernels/cuda/attn_sm90/attn_sm90.h"
#include "kernels/cuda/common/ptx_sm90.cuh"
#include "kernels/cuda/common/smem_attribute.h"
#include "kernels/cuda/common/status.cuh"
#include "kernels/cuda/common/wgmma_ops.cuh"

namespace sage::cuda {

// Shared-memory tiles and wgmma strides per head dim (outside the anonymous namespace: members of
// an internal-linkage class that an arch's pass never uses would warn).
inline constexpr int kSm90KvStages = 2;  // K/V double buffering

template <int D>
struct Sm90Tile {
  static constexpr int kQBytes = kQTileRows * D;     // Q̂ tile image
  static constexpr int kKBytes = kKBlockRows * D;    // K̂ block image
  static constexpr int kVBytes = D * kKBlockRows;    // V̂ block image (D × 128)
  static constexpr int kSmemBytes = kQBytes + kSm90KvStages * (kKBytes + kVBytes);
  static constexpr int kQkSteps = D / 32;            // k32 steps of Q·Kᵀ
  static constexpr int kPvSteps = kKBlockRows / 32;  // k32 steps of P·V
  static constexpr uint32_t kQkSbo = D / kCoreBytes * kCoreRows * kCoreBytes;          // next 8 rows
  static constexpr uint32_t kVSbo = kKBlockRows / kCoreBytes * kCoreRows * kCoreBytes;  // next 8 channels
  static constexpr uint32_t kLbo = kCoreRows * kCoreBytes;                             // next 16 bytes of K
  static_assert(D == 64 || D == 128, "head dims 64 and 128");
  static_assert(kSmemBytes <= 227 * 1024, "shared memory");
};

namespace {

constexpr int kThreads = 128;              // one warpgroup
[[maybe_unused]] constexpr float kLog2e = 1.4426950408889634f;
[[maybe_unused]] constexpr float kLn2 = 0.6931471805599453f;
[[maybe_unused]] constexpr float kFp8Offset = 8.807f;       // log2(448): the row max of P̃ lands at ~448 (E4M3 max)
[[maybe_unused]] constexpr int kStages = kSm90KvStages;
[[maybe_unused]] constexpr int kMagicBits = 0x4B400000;     // bits of kMagic = 1.5·2^23
[[maybe_unused]] constexpr float kMagic = 12582912.0f;
// 3 CTAs per SM: 3 × 72 KB of shared memory at D = 128 fits in 227 KB, and caps registers at 168.
constexpr int kMinCtasPerSm = 3;


template <int D>
__device__ __forceinline__ void WgmmaPv(float (&acc)[D / 2], const uint32_t (&a)[4], uint64_t desc, int accumulate) {
  if constexpr (D == 128) {
    ptx::WgmmaE4M3RS_m64n128k32(acc, a, desc, accumulate);
  } else {
    ptx::WgmmaE4M3RS_m64n64k32(acc, a, desc, accumulate);
  }
}

template <bool kBf16>
__device__ __forceinline__ void Store2(void* o, int64_t elem, float x, float y) {
  if constexpr (kBf16) {
    *reinterpret_cast<__nv_bfloat162*>(static_cast<__nv_bfloat16*>(o) + elem) = __floats2bfloat162_rn(x, y);
  } else {
    *reinterpret_cast<__half2*>(static_cast<__half*>(o) + elem) = __floats2half2_rn(x, y);
  }
}

template <int D, bool kBf16>
__global__ void __launch_bounds__(kThreads, kMinCtasPerSm) AttnSm90Kernel(const __grid_constant__ AttnSm90Params p) {
#ifdef SAGE_SM90A
  using T = Sm90Tile<D>;
  extern __shared__ __align__(128) unsigned char smem[];
  __shared__ __align__(8) uint64_t bar_q, bar_k[kStages], bar_v[kStages];
  unsigned char* s_q = smem;
  unsigned char* s_k = smem + T::kQBytes;
  unsigned char* s_v = s_k + kStages * T::kKBytes;

  const int b = blockIdx.z, h = blockIdx.y;
  const int q_start = p.cu_q[b], q_len = p.cu_q[b + 1] - q_start;
  const int k_len = p.cu_k[b + 1] - p.cu_k[b];
  // Causal: the heaviest (last) tiles first.
  const int tile = p.causal ? static_cast<int>(gridDim.x) - 1 - static_cast<int>(blockIdx.x) : static_cast<int>(blockIdx.x);
  if (tile * kQTileRows >= q_len) return;
  const int hk = h / (p.num_q_heads / p.num_kv_heads);
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32, g = lane / 4, t = lane % 4;
  const int diag = k_len - q_len;  // bottom-right causal: row i sees keys j <= i + diag
  int n_blocks = (k_len + kKBlockRows - 1) / kKBlockRows;
  if (p.causal) {
    const int max_key = min(q_len - 1, tile * kQTileRows + kQTileRows - 1) + diag;
    n_blocks = max_key < 0 ? 0 : min(n_blocks, max_key / kKBlockRows + 1);
  }
  const int64_t pq = PaddedQStart(p.cu_q, b) + int64_t{tile} * kQTileRows;
  const int64_t pk = PaddedKStart(p.cu_k, b);
  const int8_t* g_q = p.ws.q_i8 + (int64_t{h} * p.ws.q_cap + pq) * D;
  const int8_t* g_k = p.ws.k_i8 + (int64_t{hk} * p.ws.k_cap + pk) * D;
  const uint8_t* g_v = p.ws.v_f8 + (int64_t{hk} * p.ws.k_cap + pk) * D;
  const float* k_scale = p.ws.k_scale + (int64_t{hk} * p.ws.k_blocks + pk / kKBlockRows) * kKGroupsPerBlock + t;
  const float q_scale = p.ws.q_scale[(int64_t{h} * p.ws.q_tiles + pq / kQTileRows) * kQGroupsPerTile + warp * 8 + g];
  const float scale_log2 = p.softmax_scale * kLog2e;

  if (n_blocks > 0 && tid == 0) {
    ptx::MbarInit(&bar_q, 1);
    for (int s = 0; s < kStages; ++s) {
      ptx::MbarInit(&bar_k[s], 1);
      ptx::MbarInit(&bar_v[s], 1);
    }
    ptx::FenceMbarInit();
    ptx::MbarArriveExpectTx(&bar_q, T::kQBytes);
    ptx::BulkCopyG2S(s_q, g_q, T::kQBytes, &bar_q);
    ptx::MbarArriveExpectTx(&bar_k[0], T::kKBytes);
    ptx::BulkCopyG2S(s_k, g_k, T::kKBytes, &bar_k[0]);
    ptx::MbarArriveExpectTx(&bar_v[0], T::kVBytes);
    ptx::BulkCopyG2S(s_v, g_v, T::kVBytes, &bar_v[0]);
  }
  __syncthreads();

  float o[D / 2], o_blk[D / 2];
#pragma unroll
  for (int i = 0; i < D / 2; ++i) o[i] = o_blk[i] = 0.f;
  float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.f, 0.f};
  const int row0 = tile * kQTileRows + warp * 16 + g;  // rows of this thread: row0, row0 + 8

  for (int j = 0; j < n_blocks; ++j) {
    const int stage = j % kStages;
    const uint32_t parity = (j / kStages) & 1;
    if (j > 0) __syncthreads();  // block j−1 fully consumed: its stage may be refilled
    if (tid == 0 && j + 1 < n_blocks) {
      const int ns = (j + 1) % kStages;
      ptx::MbarArriveExpectTx(&bar_k[ns], T::kKBytes);
      ptx::BulkCopyG2S(s_k + ns * T::kKBytes, g_k + int64_t{j + 1} * T::kKBytes, T::kKBytes, &bar_k[ns]);
      ptx::MbarArriveExpectTx(&bar_v[ns], T::kVBytes);
      ptx::BulkCopyG2S(s_v + ns * T::kVBytes, g_v + int64_t{j + 1} * T::kVBytes, T::kVBytes, &bar_v[ns]);
    }
    if (j == 0) ptx::MbarWait(&bar_q, 0);
    ptx::MbarWait(&bar_k[stage], parity);

    // ---- S = Q̂·K̂ᵀ (int32) ----
    int32_t s[64];
    const unsigned char* k_tile = s_k + stage * T::kKBytes;
    ptx::WgmmaFence();
#pragma unroll
    for (int kk = 0; kk < T::kQkSteps; ++kk) {
      ptx::WgmmaS8SS_m64n128k32(s, ptx::MakeSmemDesc(s_q + kk * 2 * kCoreRows * kCoreBytes, T::kLbo, T::kQkSbo),
                                ptx::MakeSmemDesc(k_tile + kk * 2 * kCoreRows * kCoreBytes, T::kLbo, T::kQkSbo), kk > 0);
    }
    ptx::WgmmaCommit();
    ptx::WgmmaWait<0>();

    // ---- dequantize, mask, online softmax (log2 domain) ----
    const float sc = q_scale * k_scale[j * kKGroupsPerBlock] * scale_log2;
    const int key0 = j * kKBlockRows;
    const bool need_mask = key0 + kKBlockRows > k_len || (p.causal && key0 + kKBlockRows - 1 > tile * kQTileRows + diag);
    // The S registers are reused in place: int32 scores, then (masked path) fp32 scores, then P̃.
    float mx[2];
    if (!need_mask) {
      // Fast path (no masked key in the block): thread-local row max on the integers (sc > 0), then one FFMA per
      // element feeds exp2: acc·sc − base = (magic + acc)·sc − (magic·sc + base), where magic + acc
      // is an exact float built with an integer add (no I2F: sageattention2.md §8.4; |acc| <= 127²·256
      // < 2^22). Rounding of the folded constant shifts a whole row-block by ~1e-7·magic·sc in log2
      // units, far below the e4m3 step of P̃.
      int im[2] = {INT_MIN, INT_MIN};
#pragma unroll
      for (int i = 0; i < 64; ++i) im[(i >> 1) & 1] = max(im[(i >> 1) & 1], s[i]);
      // Scale before the quad reduction: the four threads of a row hold different K groups (δK).
      mx[0] = __int2float_rn(im[0]) * sc;
      mx[1] = __int2float_rn(im[1]) * sc;
    } else {
      mx[0] = mx[1] = -INFINITY;
#pragma unroll
      for (int i = 0; i < 16; ++i) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          float v = (__int_as_float(s[4 * i + e] + kMagicBits) - kMagic) * sc;  // exact int -> float
          const int col = key0 + 8 * i + 2 * t + (e & 1);
          const int row = row0 + (e >= 2 ? 8 : 0);
          if (col >= k_len || (p.causal && col > row + diag)) v = -INFINITY;
          s[4 * i + e] = __float_as_int(v);
          mx[e >> 1] = fmaxf(mx[e >> 1], v);
        }
      }
    }
    float alpha[2], base[2];
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 1));
      mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 2));
      const float m_new = fmaxf(m[r], mx[r]);
      alpha[r] = m[r] == -INFINITY ? 1.f : ptx::Exp2Approx(m[r] - m_new);
      base[r] = m_new == -INFINITY ? 0.f : m_new - kFp8Offset;
      m[r] = m_new;
    }
    float rs[2] = {0.f, 0.f};
    if (!need_mask) {
      const float c[2] = {-(kMagic * sc) - base[0], -(kMagic * sc) - base[1]};
#pragma unroll
      for (int i = 0; i < 64; ++i) {
        const float pv = ptx::Exp2Approx(fmaf(__int_as_float(s[i] + kMagicBits), sc, c[(i >> 1) & 1]));
        rs[(i >> 1) & 1] += pv;
        s[i] = __float_as_int(pv);
      }
    } else {
#pragma unroll
      for (int i = 0; i < 64; ++i) {
        const float pv = ptx::Exp2Approx(__int_as_float(s[i]) - base[(i >> 1) & 1]);
        rs[(i >> 1) & 1] += pv;
        s[i] = __float_as_int(pv);
      }
    }
    l[0] = l[0] * alpha[0] + rs[0];
    l[1] = l[1] * alpha[1] + rs[1];
#pragma unroll
    for (int i = 0; i < D / 2; ++i) o[i] *= alpha[(i >> 1) & 1];

    // P̃ -> e4m3 A fragments: k-step kb covers keys 32kb..32kb+31; with V̂'s token permutation the
    // accumulator columns {2t, 2t+1, 8+2t, 9+2t} of each 16-key slab are A's k = 4t..4t+3.
    uint32_t a[T::kPvSteps][4];
#pragma unroll
    for (int kb = 0; kb < T::kPvSteps; ++kb) {
      const int i0 = 4 * kb;
      a[kb][0] = ptx::PackE4M3x4(__int_as_float(s[4 * i0 + 0]), __int_as_float(s[4 * i0 + 1]), __int_as_float(s[4 * (i0 + 1) + 0]), __int_as_float(s[4 * (i0 + 1) + 1]));
      a[kb][1] = ptx::PackE4M3x4(__int_as_float(s[4 * i0 + 2]), __int_as_float(s[4 * i0 + 3]), __int_as_float(s[4 * (i0 + 1) + 2]), __int_as_float(s[4 * (i0 + 1) + 3]));
      a[kb][2] = ptx::PackE4M3x4(__int_as_float(s[4 * (i0 + 2) + 0]), __int_as_float(s[4 * (i0 + 2) + 1]), __int_as_float(s[4 * (i0 + 3) + 0]), __int_as_float(s[4 * (i0 + 3) + 1]));
      a[kb][3] = ptx::PackE4M3x4(__int_as_float(s[4 * (i0 + 2) + 2]), __int_as_float(s[4 * (i0 + 2) + 3]), __int_as_float(s[4 * (i0 + 3) + 2]), __int_as_float(s[4 * (i0 + 3) + 3]));
    }

    // ---- R = P̂·V̂ (fresh fp32 accumulator), O += R ----
    ptx::MbarWait(&bar_v[stage], parity);
    const unsigned char* v_tile = s_v + stage * T::kVBytes;
    ptx::WgmmaFence();
#pragma unroll
    for (int kb = 0; kb < T::kPvSteps; ++kb) {
      WgmmaPv<D>(o_blk, a[kb], ptx::MakeSmemDesc(v_tile + kb * 2 * kCoreRows * kCoreBytes, T::kLbo, T::kVSbo), kb > 0);
    }
    ptx::WgmmaCommit();
    ptx::WgmmaWait<0>();
#pragma unroll
    for (int i = 0; i < D / 2; ++i) o[i] += o_blk[i];
  }

  // ---- epilogue ----
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    l[r] += __shfl_xor_sync(0xffffffffu, l[r], 1);
    l[r] += __shfl_xor_sync(0xffffffffu, l[r], 2);
  }
  // l = 0: a row that sees no key (O = 0). l NaN or Inf only comes from non-finite inputs (P is at
  // most 2^offset per key), and P̃'s e4m3 packing saturates an Inf to a finite 448: answer NaN, never
  // a finite O (docs/NUMERICS.md, "Non-finite inputs").
  const auto inverse = [](float x) { return x == 0.f ? 0.f : (x > 0.f && x < INFINITY ? 1.f / x : __int_as_float(0x7fc00000)); };
  const float inv_l[2] = {inverse(l[0]), inverse(l[1])};
  const int64_t vs_base = (int64_t{b} * p.num_kv_heads + hk) * D;
#pragma unroll
  for (int i = 0; i < D / 8; ++i) {
    const int c = 8 * i + 2 * t;
    const float sv0 = p.ws.v_scale[vs_base + c], sv1 = p.ws.v_scale[vs_base + c + 1];
    const float vm0 = p.ws.v_mean ? p.ws.v_mean[vs_base + c] : 0.f;
    const float vm1 = p.ws.v_mean ? p.ws.v_mean[vs_base + c + 1] : 0.f;
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      const int row = row0 + 8 * r;
      if (row < q_len) {
        const bool any = l[r] != 0.f;  // a NaN row sum (non-finite inputs) is written as NaN, not 0
        const float x = any ? o[4 * i + 2 * r] * inv_l[r] * sv0 + vm0 : 0.f;
        const float y = any ? o[4 * i + 2 * r + 1] * inv_l[r] * sv1 + vm1 : 0.f;
        Store2<kBf16>(p.o, (int64_t{q_start + row} * p.num_q_heads + h) * D + c, x, y);
      }
    }
  }
  if (p.lse != nullptr && t == 0) {
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      const int row = row0 + 8 * r;
      if (row < q_len) {
        float lse = -INFINITY;
        if (l[r] != 0.f) {
          lse = (m[r] - kFp8Offset) * kLn2 + logf(l[r]);
          if (p.lse_k_correction) lse += p.softmax_scale * p.ws.q_kdot[int64_t{h} * p.ws.q_cap + pq + warp * 16 + g + 8 * r];
        }
        p.lse[int64_t{q_start + row} * p.num_q_heads + h] = lse;
      }
    }
  }
#else
  (void)p;
  __trap();
#endif
}

template <int D, bool kBf16>
sage_status_t LaunchT(const AttnSm90Params& p, cudaStream_t stream) {
  using T = Sm90Tile<D>;
  auto kernel = AttnSm90Kernel<D, kBf16>;
  static std::atomic<uint64_t> smem_set{0};
  SAGE_CUDA_TRY(SetMaxDynamicSmemOnce(reinterpret_cast<const void*>(kernel), T::kSmemBytes, smem_set));
  const int tiles = (p.max_seqlen_q + kQTileRows - 1) / kQTileRows;
  if (tiles == 0 || p.batch == 0) return SAGE_OK;
  kernel<<<dim3(tiles, p.num_q_heads, p.batch), kThreads, T::kSmemBytes, stream>>>(p);
  SAGE_CHECK_LAUNCH("AttnSm90Kernel");
  return SAGE_OK;
}

}  // namespace

bool AttnSm90Available(int device) {
  // Cached per device: this runs on every forward call, and device properties are slow to query.
  constexpr int kMaxDevices = 64;
  static std::atomic<int> cache[kMaxDevices];  // 0 unknown, 1 yes, 2 no
  if (device >= 0 && device < kMaxDevices) {
    const int c = cache[device].load(std::memory_order_relaxed);
    if (c != 0) return c == 1;
  }
  int major = 0, minor = 0;
  bool ok = cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device) == cudaSuccess &&
            cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device) == cudaSuccess &&
            major == 9 && minor == 0;
  if (ok) {
    cudaFuncAttributes attr{};
    ok = cudaFuncGetAttributes(&attr, AttnSm90Kernel<128, false>) == cudaSuccess && attr.binaryVersion == 90;
  }
  (void)cudaGetLastError();
  if (device >= 0 && device < kMaxDevices) cache[device].store(ok ? 1 : 2, std::memory_order_relaxed);
  return ok;
}

sage_status_t LaunchAttnSm90(const AttnSm90Params& p, cudaStream_t stream) {
  if (p.head_dim == 64) return p.bf16 ? LaunchT<64, true>(p, stream) : LaunchT<64, false>(p, stream);
  if (p.head_dim == 128) return p.bf16 ? LaunchT<128, true>(p, stream) : LaunchT<128, false>(p, stream);
  return Fail(SAGE_ERR_UNSUPPORTED, "attention (sm90): head_dim %d unsupported (64, 128)", p.head_dim);
}

}  // namespace sage::cuda
