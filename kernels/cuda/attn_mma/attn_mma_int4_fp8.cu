// SAGE_RECIPE_INT4_QK_FP8_PV on mma.sync: packed INT4 Q̂·K̂ᵀ (m16n8k64 s4, int32 accumulation) with
// per-thread scales and ΔS (Q+K smoothing) added after dequantization, P̃ rounded to e4m3 with the
// static 448 offset, V̂ e4m3; both widened exactly to fp16 for m16n8k16 with fp32 accumulation.
// On sm_90 the s4 mma is emulated in software (about 52 TOPS): correct but slow, never the default.
#include "kernels/cuda/attn_mma/attn_mma_launch.cuh"

namespace sage::cuda {

sage_status_t LaunchAttnMmaInt4Fp8(const AttnMmaParams& p, sage_stream_t stream, std::string* error) {
  using namespace attn_mma;
  if (sage_status_t s = Validate(p, WorkspaceNeed::kInt4QkFp8V, error); s != SAGE_OK) return s;
  return LaunchForHeadDim<QkOperand::kInt4, PvOperand::kFp8, VSource::kFp8Image>(p, stream, error);
}

sage_status_t LaunchAttnMma(const AttnMmaParams& p, sage_stream_t stream, std::string* error) {
  switch (p.recipe) {
    case SAGE_RECIPE_UNQUANTIZED: return LaunchAttnMmaUnquantized(p, stream, error);
    case SAGE_RECIPE_INT8_QK_FP16_PV: return LaunchAttnMmaInt8Fp16(p, stream, error);
    case SAGE_RECIPE_INT4_QK_FP8_PV: return LaunchAttnMmaInt4Fp8(p, stream, error);
    case SAGE_RECIPE_INT8_QK_FP8_PV: break;
  }
  return attn_mma::Fail(SAGE_ERR_UNSUPPORTED, error, "attn_mma: recipe is served by attn_sm90, not attn_mma");
}

}  // namespace sage::cuda
