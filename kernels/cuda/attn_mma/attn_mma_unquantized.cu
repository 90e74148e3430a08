// SAGE_RECIPE_UNQUANTIZED on mma.sync: fp16 (or bf16) Q·Kᵀ and P·V on m16n8k16, fp32 accumulation.
// The precision registry's fallback and the GPU reference for calibration.
#include "kernels/cuda/attn_mma/attn_mma_launch.cuh"

namespace sage::cuda {

sage_status_t LaunchAttnMmaUnquantized(const AttnMmaParams& p, sage_stream_t stream, std::string* error) {
  using namespace attn_mma;
  if (sage_status_t s = Validate(p, WorkspaceNeed::kNone, error); s != SAGE_OK) return s;
  if (p.dtype == SAGE_DTYPE_BF16)
    return LaunchForHeadDim<QkOperand::kBF16, PvOperand::kBF16, VSource::kRawBF16>(p, stream, error);
  return LaunchForHeadDim<QkOperand::kF16, PvOperand::kF16, VSource::kRawF16>(p, stream, error);
}

}  // namespace sage::cuda
