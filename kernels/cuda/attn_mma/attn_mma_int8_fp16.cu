// SAGE_RECIPE_INT8_QK_FP16_PV on mma.sync: INT8 Q̂·K̂ᵀ (m16n8k32 s8, int32 accumulation) from the
// workspace images, P̃ and V in fp16 (bf16 V is converted to fp16 in shared memory) on m16n8k16 with
// fp32 accumulation.
#include "kernels/cuda/attn_mma/attn_mma_launch.cuh"

namespace sage::cuda {

sage_status_t LaunchAttnMmaInt8Fp16(const AttnMmaParams& p, sage_stream_t stream, std::string* error) {
  using namespace attn_mma;
  if (sage_status_t s = Validate(p, WorkspaceNeed::kInt8Qk, error); s != SAGE_OK) return s;
  if (p.dtype == SAGE_DTYPE_BF16)
    return LaunchForHeadDim<QkOperand::kInt8, PvOperand::kF16, VSource::kRawBF16>(p, stream, error);
  return LaunchForHeadDim<QkOperand::kInt8, PvOperand::kF16, VSource::kRawF16>(p, stream, error);
}

}  // namespace sage::cuda
