// Q, K and V tiles in one launch, and the launch policy of the quantization pass. A small request
// (128 tokens) spends more time launching five quantization kernels than running them: each launch
// is a driver call on the host and a gap on the GPU. The fused kernel runs the per-tensor kernels'
// own tile code (quantize_qk_tile.cuh, quantize_v_block.cuh), so the bytes it writes are the same.
#include <cuda_runtime.h>

#include "kernels/cuda/common/status.cuh"
#include "kernels/cuda/quant/quant_common.cuh"
#include "kernels/cuda/quant/quantize.h"
#include "kernels/cuda/quant/quantize_qk_tile.cuh"
#include "kernels/cuda/quant/quantize_v_block.cuh"

namespace sage::cuda {
namespace {

// The one-dimensional grid: K tiles of every (sequence, kv head), then Q tiles of every (sequence,
// q head), then (when V is quantized) V blocks laid out like the K tiles.
struct QkvGrid {
  int k_tiles = 0;       // K/V blocks per (sequence, kv head): ceil(max_seqlen_k / 128)
  int q_tiles = 0;       // Q tiles per (sequence, q head): ceil(max_seqlen_q / 64)
  int64_t k_blocks = 0;  // k_tiles × Hkv × batch
  int64_t q_blocks = 0;  // q_tiles × Hq × batch
};

template <int D>
union QkvSmem {
  QkTileSmemFor<true, D> k;
  QkTileSmemFor<false, D> q;
  VBlockSmem<D> v;
};

// Block `i` of one part of the grid, laid out tile-fastest: which tile of which head of which sequence.
struct TileAt {
  int tile, head, seq;
  __device__ TileAt(int64_t i, int tiles, int heads)
      : tile(static_cast<int>(i % tiles)),
        head(static_cast<int>(i / tiles % heads)),
        seq(static_cast<int>(i / tiles / heads)) {}
};

template <bool kBf16, int D, bool kInt4>
__global__ void __launch_bounds__(kQuantThreads) QuantizeQkvKernel(QuantParams p, QkvGrid g) {
  __shared__ QkvSmem<D> smem;
  int64_t i = blockIdx.x;
  if (i < g.k_blocks) {
    const TileAt t(i, g.k_tiles, p.num_kv_heads);
    QuantizeQKTile<kBf16, D, true, kInt4>(p, t.tile, t.head, t.seq, smem.k);
    return;
  }
  i -= g.k_blocks;
  if (i < g.q_blocks) {
    const TileAt t(i, g.q_tiles, p.num_q_heads);
    QuantizeQKTile<kBf16, D, false, kInt4>(p, t.tile, t.head, t.seq, smem.q);
    return;
  }
  const TileAt t(i - g.q_blocks, g.k_tiles, p.num_kv_heads);
  QuantizeVBlock<kBf16, D>(p, t.tile, t.head, t.seq, smem.v);
}

template <bool kBf16, int D>
sage_status_t LaunchQkvT(const QuantParams& p, const QkvGrid& g, int64_t blocks, cudaStream_t stream) {
  if (p.int4) {
    QuantizeQkvKernel<kBf16, D, true><<<static_cast<unsigned>(blocks), kQuantThreads, 0, stream>>>(p, g);
  } else {
    QuantizeQkvKernel<kBf16, D, false><<<static_cast<unsigned>(blocks), kQuantThreads, 0, stream>>>(p, g);
  }
  SAGE_CHECK_LAUNCH("QuantizeQkvKernel");
  return SAGE_OK;
}

}  // namespace

sage_status_t LaunchQuantizeQkv(const QuantParams& p, bool quantize_v, cudaStream_t stream) {
  if (p.head_dim != 64 && p.head_dim != 128) {
    return Fail(SAGE_ERR_UNSUPPORTED, "quantize q/k/v: head_dim %d unsupported (64, 128)", p.head_dim);
  }
  QkvGrid g;
  g.k_tiles = (p.max_seqlen_k + kKBlockRows - 1) / kKBlockRows;
  g.q_tiles = (p.max_seqlen_q + kQTileRows - 1) / kQTileRows;
  g.k_blocks = int64_t{g.k_tiles} * p.num_kv_heads * p.batch;
  g.q_blocks = int64_t{g.q_tiles} * p.num_q_heads * p.batch;
  const int64_t blocks = g.k_blocks + g.q_blocks + (quantize_v ? g.k_blocks : 0);
  if (blocks == 0) return SAGE_OK;
  if (blocks > int64_t{0x7FFFFFFF}) {
    return Fail(SAGE_ERR_UNSUPPORTED, "quantize q/k/v: %lld tiles exceed one launch's grid",
                static_cast<long long>(blocks));
  }
  if (p.head_dim == 64) return p.bf16 ? LaunchQkvT<true, 64>(p, g, blocks, stream) : LaunchQkvT<false, 64>(p, g, blocks, stream);
  return p.bf16 ? LaunchQkvT<true, 128>(p, g, blocks, stream) : LaunchQkvT<false, 128>(p, g, blocks, stream);
}

sage_status_t LaunchQuantizeAll(const QuantParams& p, bool quantize_v, cudaStream_t stream, QuantLaunch how,
                                const InlineCuSeqlens* cu) {
  const bool one_chunk = p.ws.stat_chunks <= 1;
  // Large problems keep one kernel per tensor: there the launches are cheap next to the work, and
  // the V and Q tiles run at the occupancy of their own (smaller) kernels.
  if (how == QuantLaunch::kAuto) how = one_chunk ? QuantLaunch::kFused : QuantLaunch::kSeparate;
  if (how == QuantLaunch::kFused) {
    SAGE_RETURN_IF_ERROR(
        LaunchKvStats(p, one_chunk ? KvFinalize::kInStatsPass : KvFinalize::kSeparateKernel, cu, stream));
    SAGE_RETURN_IF_ERROR(LaunchQuantizeQkv(p, quantize_v, stream));
  } else {
    SAGE_RETURN_IF_ERROR(LaunchKvStats(p, KvFinalize::kSeparateKernel, cu, stream));
    SAGE_RETURN_IF_ERROR(LaunchQuantizeK(p, stream));
    SAGE_RETURN_IF_ERROR(LaunchQuantizeQ(p, stream));
    if (quantize_v) SAGE_RETURN_IF_ERROR(LaunchQuantizeV(p, stream));
  }
  if (p.smooth_q) SAGE_RETURN_IF_ERROR(LaunchDeltaS(p, stream));
  return SAGE_OK;
}

}  // namespace sage::cuda
