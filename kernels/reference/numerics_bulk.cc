// Bulk fp16/bf16 <-> float conversions, bit-identical to the scalar routines in numerics.cc.
//
// fp16: F16C's vcvtps2ph with round-to-nearest-even implements exactly EncodeFp16 (RNE, overflow to
// ±inf, subnormals, NaN quieted with the top 10 payload bits kept); vcvtph2ps implements DecodeFp16
// except for signalling NaNs, which it quiets: a block of 8 that holds one is decoded by the scalar
// routine instead. MXCSR is the default (no DAZ/FTZ: the project never sets them).
// bf16: integer RNE, branch-free so GCC vectorizes it; compiled twice (baseline and AVX2).
#include <bit>
#include <cstdint>
#include <cstring>
#include <vector>

#include "kernels/reference/numerics.h"

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#include <immintrin.h>
#define SAGE_HAVE_X86 1
#else
#define SAGE_HAVE_X86 0
#endif

namespace sage {
namespace {

inline uint16_t EncodeBf16Branchless(uint32_t bits) {
  const uint16_t rounded = static_cast<uint16_t>((bits + 0x7FFFu + ((bits >> 16) & 1u)) >> 16);
  const uint16_t quiet_nan = static_cast<uint16_t>((bits >> 16) | 0x40u);
  return (bits & 0x7FFFFFFFu) > 0x7F800000u ? quiet_nan : rounded;
}

inline void EncodeBf16Loop(const float* __restrict src, uint16_t* __restrict dst, size_t n) {
  for (size_t i = 0; i < n; ++i) {
    uint32_t bits;
    std::memcpy(&bits, src + i, 4);
    dst[i] = EncodeBf16Branchless(bits);
  }
}

inline void DecodeBf16Loop(const uint16_t* __restrict src, float* __restrict dst, size_t n) {
  for (size_t i = 0; i < n; ++i) {
    const uint32_t bits = static_cast<uint32_t>(src[i]) << 16;
    std::memcpy(dst + i, &bits, 4);
  }
}

#if SAGE_HAVE_X86
__attribute__((target("avx2"))) void EncodeBf16Avx2(const float* src, uint16_t* dst, size_t n) {
  EncodeBf16Loop(src, dst, n);
}
__attribute__((target("avx2"))) void DecodeBf16Avx2(const uint16_t* src, float* dst, size_t n) {
  DecodeBf16Loop(src, dst, n);
}

__attribute__((target("avx2,f16c"))) void EncodeFp16F16c(const float* src, uint16_t* dst, size_t n) {
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 f = _mm256_loadu_ps(src + i);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + i), _mm256_cvtps_ph(f, _MM_FROUND_TO_NEAREST_INT));
  }
  for (; i < n; ++i) dst[i] = EncodeFp16(src[i]);
}

__attribute__((target("avx2,f16c"))) void DecodeFp16F16c(const uint16_t* src, float* dst, size_t n) {
  const __m128i exp_quiet = _mm_set1_epi16(0x7E00);
  const __m128i snan_exp = _mm_set1_epi16(0x7C00);
  const __m128i mant = _mm_set1_epi16(0x03FF);
  const __m128i zero = _mm_setzero_si128();
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i));
    // Signalling NaN: exponent all ones, quiet bit clear, payload non-zero.
    const __m128i is_snan = _mm_andnot_si128(_mm_cmpeq_epi16(_mm_and_si128(h, mant), zero),
                                             _mm_cmpeq_epi16(_mm_and_si128(h, exp_quiet), snan_exp));
    if (_mm_movemask_epi8(is_snan) != 0) {
      for (size_t j = i; j < i + 8; ++j) dst[j] = DecodeFp16(src[j]);
      continue;
    }
    _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(h));
  }
  for (; i < n; ++i) dst[i] = DecodeFp16(src[i]);
}

// F16C is read from CPUID leaf 1 (ECX bit 29) rather than __builtin_cpu_supports("f16c"), which
// clang 14 does not know (the fuzz build compiles this file with clang).
bool CpuHasAvx2F16c() {
  static const bool has = [] {
    unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
    const bool f16c = __get_cpuid(1, &eax, &ebx, &ecx, &edx) != 0 && (ecx & (1u << 29)) != 0;
    return f16c && __builtin_cpu_supports("avx2");
  }();
  return has;
}
#endif

bool UseSimd(BulkPath path) {
#if SAGE_HAVE_X86
  return path == BulkPath::kAuto && CpuHasAvx2F16c();
#else
  (void)path;
  return false;
#endif
}

}  // namespace

HostSimd ActiveHostSimd() { return UseSimd(BulkPath::kAuto) ? HostSimd::kAvx2F16c : HostSimd::kScalar; }

void EncodeFp16Bulk(const float* src, uint16_t* dst, size_t n, BulkPath path) {
#if SAGE_HAVE_X86
  if (UseSimd(path)) return EncodeFp16F16c(src, dst, n);
#endif
  for (size_t i = 0; i < n; ++i) dst[i] = EncodeFp16(src[i]);
}

void DecodeFp16Bulk(const uint16_t* src, float* dst, size_t n, BulkPath path) {
#if SAGE_HAVE_X86
  if (UseSimd(path)) return DecodeFp16F16c(src, dst, n);
#endif
  for (size_t i = 0; i < n; ++i) dst[i] = DecodeFp16(src[i]);
}

void EncodeBf16Bulk(const float* src, uint16_t* dst, size_t n, BulkPath path) {
#if SAGE_HAVE_X86
  if (UseSimd(path)) return EncodeBf16Avx2(src, dst, n);
#endif
  EncodeBf16Loop(src, dst, n);
}

void DecodeBf16Bulk(const uint16_t* src, float* dst, size_t n, BulkPath path) {
#if SAGE_HAVE_X86
  if (UseSimd(path)) return DecodeBf16Avx2(src, dst, n);
#endif
  DecodeBf16Loop(src, dst, n);
}

// The entry points below take untyped buffers, which may start at any byte (segments packed back
// to back in a staging buffer, a client's shared memory at the offset it chose). Reading or writing
// them as uint16_t or float needs that type's alignment (anything else is undefined behaviour), so
// a misaligned buffer goes through aligned blocks on the stack (they stay in L1) and memcpy.
namespace {
constexpr size_t kBlock = 1024;
bool AlignedFor(const void* p, size_t alignment) { return reinterpret_cast<uintptr_t>(p) % alignment == 0; }
}  // namespace

void EncodeFromFloatBulk(const float* src, void* dst, size_t n, DType to) {
  if (to != DType::kF32 && !AlignedFor(dst, alignof(uint16_t))) {
    uint16_t block[kBlock];
    auto* d = static_cast<unsigned char*>(dst);
    for (size_t i = 0; i < n; i += kBlock) {
      const size_t m = n - i < kBlock ? n - i : kBlock;
      EncodeFromFloatBulk(src + i, block, m, to);
      std::memcpy(d + 2 * i, block, 2 * m);
    }
    return;
  }
  switch (to) {
    case DType::kF32: std::memcpy(dst, src, n * sizeof(float)); return;
    case DType::kF16: EncodeFp16Bulk(src, static_cast<uint16_t*>(dst), n); return;
    case DType::kBF16: EncodeBf16Bulk(src, static_cast<uint16_t*>(dst), n); return;
  }
}

void DecodeToFloatBulk(const void* src, DType from, float* dst, size_t n) {
  if (from != DType::kF32 && !AlignedFor(src, alignof(uint16_t))) {
    uint16_t block[kBlock];
    const auto* s = static_cast<const unsigned char*>(src);
    for (size_t i = 0; i < n; i += kBlock) {
      const size_t m = n - i < kBlock ? n - i : kBlock;
      std::memcpy(block, s + 2 * i, 2 * m);
      DecodeToFloatBulk(block, from, dst + i, m);
    }
    return;
  }
  switch (from) {
    case DType::kF32: std::memcpy(dst, src, n * sizeof(float)); return;
    case DType::kF16: DecodeFp16Bulk(static_cast<const uint16_t*>(src), dst, n); return;
    case DType::kBF16: DecodeBf16Bulk(static_cast<const uint16_t*>(src), dst, n); return;
  }
}

void ConvertBulk(const void* src, DType from, void* dst, DType to, size_t n) {
  if (from == to) {
    std::memcpy(dst, src, n * DTypeSize(from));
    return;
  }
  const auto* s = static_cast<const unsigned char*>(src);
  auto* d = static_cast<unsigned char*>(dst);
  float block[kBlock];
  if (from == DType::kF32) {
    if (AlignedFor(src, alignof(float))) return EncodeFromFloatBulk(static_cast<const float*>(src), dst, n, to);
    for (size_t i = 0; i < n; i += kBlock) {
      const size_t m = n - i < kBlock ? n - i : kBlock;
      std::memcpy(block, s + 4 * i, 4 * m);
      EncodeFromFloatBulk(block, d + 2 * i, m, to);
    }
    return;
  }
  if (to == DType::kF32) {
    if (AlignedFor(dst, alignof(float))) return DecodeToFloatBulk(src, from, static_cast<float*>(dst), n);
    for (size_t i = 0; i < n; i += kBlock) {
      const size_t m = n - i < kBlock ? n - i : kBlock;
      DecodeToFloatBulk(s + 2 * i, from, block, m);
      std::memcpy(d + 4 * i, block, 4 * m);
    }
    return;
  }
  // 16-bit -> 16-bit through the float block.
  for (size_t i = 0; i < n; i += kBlock) {
    const size_t m = n - i < kBlock ? n - i : kBlock;
    DecodeToFloatBulk(s + 2 * i, from, block, m);
    EncodeFromFloatBulk(block, d + 2 * i, m, to);
  }
}

}  // namespace sage
