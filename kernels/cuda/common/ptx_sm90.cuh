// Thin PTX wrappers for Hopper: mbarriers, bulk (TMA engine) copies, wgmma control, descriptors, and
// FP8 conversion. Everything compiles to nothing useful (a trap) on archs without the feature, so
// the library builds for sm_80/sm_89 too; callers dispatch on the device's arch at run time.
#pragma once

#include <cuda_fp8.h>

#include <cstdint>

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
#define SAGE_SM90 1
#endif
#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define SAGE_SM90A 1
#endif

namespace sage::cuda::ptx {

__device__ __forceinline__ uint32_t SmemAddr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// ---- mbarrier -------------------------------------------------------------------------------
__device__ __forceinline__ void MbarInit(uint64_t* bar, uint32_t count) {
#ifdef SAGE_SM90
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;" ::"r"(SmemAddr(bar)), "r"(count) : "memory");
#endif
}
__device__ __forceinline__ void FenceMbarInit() {
#ifdef SAGE_SM90
  asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
#endif
}
__device__ __forceinline__ void MbarArriveExpectTx(uint64_t* bar, uint32_t bytes) {
#ifdef SAGE_SM90
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(SmemAddr(bar)), "r"(bytes)
               : "memory");
#endif
}
__device__ __forceinline__ void MbarWait(uint64_t* bar, uint32_t parity) {
#ifdef SAGE_SM90
  asm volatile(
      "{\n"
      ".reg .pred done;\n"
      "WAIT_%=:\n"
      "mbarrier.try_wait.parity.shared::cta.b64 done, [%0], %1;\n"
      "@!done bra WAIT_%=;\n"
      "}\n" ::"r"(SmemAddr(bar)),
      "r"(parity)
      : "memory");
#endif
}

// ---- bulk copy global -> shared on the TMA engine, completing on an mbarrier ------------------
// bytes: a multiple of 16; both addresses 16-byte aligned.
__device__ __forceinline__ void BulkCopyG2S(void* smem_dst, const void* gmem_src, uint32_t bytes, uint64_t* bar) {
#ifdef SAGE_SM90
  asm volatile(
      "cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];" ::"r"(
          SmemAddr(smem_dst)),
      "l"(gmem_src), "r"(bytes), "r"(SmemAddr(bar))
      : "memory");
#endif
}

// A CUtensorMap's box at element coordinates {x, y} global -> shared (laid out, and swizzled, as
// the map says), completing on an mbarrier. `tmap`: the map's generic address in param, const or
// global memory (a __grid_constant__ kernel parameter).
__device__ __forceinline__ void TensorCopy2dG2S(void* smem_dst, const void* tmap, int x, int y, uint64_t* bar) {
#ifdef SAGE_SM90
  asm volatile(
      "cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3}], [%4];" ::"r"(
          SmemAddr(smem_dst)),
      "l"(reinterpret_cast<uint64_t>(tmap)), "r"(x), "r"(y), "r"(SmemAddr(bar))
      : "memory");
#endif
}

// ---- wgmma control -------------------------------------------------------------------------
__device__ __forceinline__ void WgmmaFence() {
#ifdef SAGE_SM90A
  asm volatile("wgmma.fence.sync.aligned;" ::: "memory");
#endif
}
__device__ __forceinline__ void WgmmaCommit() {
#ifdef SAGE_SM90A
  asm volatile("wgmma.commit_group.sync.aligned;" ::: "memory");
#endif
}
template <int N>
__device__ __forceinline__ void WgmmaWait() {
#ifdef SAGE_SM90A
  asm volatile("wgmma.wait_group.sync.aligned %0;" ::"n"(N) : "memory");
#endif
}

// Shared-memory matrix descriptor, no swizzle (core-matrix layout of workspace.h):
// lbo = bytes between core matrices adjacent along K, sbo = bytes between 8-row groups.
__device__ __forceinline__ uint64_t MakeSmemDesc(const void* smem, uint32_t lbo, uint32_t sbo) {
  const uint64_t addr = SmemAddr(smem);
  return ((addr & 0x3FFFFu) >> 4) | (static_cast<uint64_t>((lbo >> 4) & 0x3FFFu) << 16) |
         (static_cast<uint64_t>((sbo >> 4) & 0x3FFFu) << 32);
}

// ---- FP8 -------------------------------------------------------------------------------------
// Four floats -> four e4m3 bytes, element 0 in the low byte (RN, satfinite).
__device__ __forceinline__ uint32_t PackE4M3x4(float x0, float x1, float x2, float x3) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 890
  uint16_t lo, hi;
  asm("cvt.rn.satfinite.e4m3x2.f32 %0, %1, %2;" : "=h"(lo) : "f"(x1), "f"(x0));
  asm("cvt.rn.satfinite.e4m3x2.f32 %0, %1, %2;" : "=h"(hi) : "f"(x3), "f"(x2));
  return static_cast<uint32_t>(lo) | (static_cast<uint32_t>(hi) << 16);
#else
  // No FP8 conversion instruction before sm_89: cuda_fp8.h's software path (same RN + satfinite).
  const uint32_t lo = __nv_cvt_float2_to_fp8x2(make_float2(x0, x1), __NV_SATFINITE, __NV_E4M3);
  const uint32_t hi = __nv_cvt_float2_to_fp8x2(make_float2(x2, x3), __NV_SATFINITE, __NV_E4M3);
  return lo | (hi << 16);
#endif
}

__device__ __forceinline__ float Exp2Approx(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}

}  // namespace sage::cuda::ptx
