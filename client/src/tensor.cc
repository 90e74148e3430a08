#include "sageserve/client/tensor.h"

#include <bit>
#include <cmath>
#include <cstring>

#include "absl/strings/str_cat.h"

namespace sageserve {
namespace {

void SetShape(const Shape3& shape, v1::Tensor* out) {
  out->clear_shape();
  out->add_shape(shape.tokens);
  out->add_shape(shape.heads);
  out->add_shape(shape.head_dim);
}

absl::Status CheckCount(size_t have, const Shape3& shape) {
  if (shape.tokens < 0 || shape.heads < 0 || shape.head_dim < 0) {
    return absl::InvalidArgumentError("tensor shape has a negative dimension");
  }
  if (have != static_cast<size_t>(shape.numel())) {
    return absl::InvalidArgumentError(absl::StrCat("tensor has ", have, " elements, shape [", shape.tokens,
                                                   ", ", shape.heads, ", ", shape.head_dim, "] needs ",
                                                   shape.numel()));
  }
  return absl::OkStatus();
}

absl::Status SetRaw(v1::DType dtype, const void* data, size_t count, const Shape3& shape, v1::Tensor* out) {
  absl::Status s = CheckCount(count, shape);
  if (!s.ok()) return s;
  out->set_dtype(dtype);
  SetShape(shape, out);
  // The wire is little-endian, as is every host we build for: a plain byte copy.
  static_assert(std::endian::native == std::endian::little, "big-endian hosts need byte swapping");
  out->mutable_data()->assign(static_cast<const char*>(data), count * DTypeSize(dtype));
  return absl::OkStatus();
}

}  // namespace

size_t DTypeSize(v1::DType dtype) {
  switch (dtype) {
    case v1::DTYPE_FP32: return 4;
    case v1::DTYPE_FP16:
    case v1::DTYPE_BF16: return 2;
    default: return 0;
  }
}

absl::Status SetTensorFp16(std::span<const uint16_t> bits, const Shape3& shape, v1::Tensor* out) {
  return SetRaw(v1::DTYPE_FP16, bits.data(), bits.size(), shape, out);
}
absl::Status SetTensorBf16(std::span<const uint16_t> bits, const Shape3& shape, v1::Tensor* out) {
  return SetRaw(v1::DTYPE_BF16, bits.data(), bits.size(), shape, out);
}
absl::Status SetTensorFp32(std::span<const float> values, const Shape3& shape, v1::Tensor* out) {
  return SetRaw(v1::DTYPE_FP32, values.data(), values.size(), shape, out);
}

absl::Status SetTensorBytes(v1::DType dtype, const Shape3& shape, std::string&& bytes, v1::Tensor* out) {
  const size_t elem = DTypeSize(dtype);
  if (elem == 0) return absl::InvalidArgumentError("tensor dtype not set");
  if (bytes.size() % elem != 0) {
    return absl::InvalidArgumentError(absl::StrCat(bytes.size(), " bytes is not a whole number of elements"));
  }
  absl::Status s = CheckCount(bytes.size() / elem, shape);
  if (!s.ok()) return s;
  out->set_dtype(dtype);
  SetShape(shape, out);
  *out->mutable_data() = std::move(bytes);
  return absl::OkStatus();
}

absl::StatusOr<std::span<const uint16_t>> Tensor16Bits(const v1::Tensor& t) {
  if (t.dtype() != v1::DTYPE_FP16 && t.dtype() != v1::DTYPE_BF16) {
    return absl::FailedPreconditionError("tensor is not FP16/BF16");
  }
  if (t.data().size() % 2 != 0) return absl::FailedPreconditionError("odd byte count for a 16-bit tensor");
  // std::string storage is malloc-aligned, so viewing it as uint16_t is safe in practice.
  return std::span<const uint16_t>(reinterpret_cast<const uint16_t*>(t.data().data()), t.data().size() / 2);
}

absl::StatusOr<std::span<const float>> TensorFp32(const v1::Tensor& t) {
  if (t.dtype() != v1::DTYPE_FP32) return absl::FailedPreconditionError("tensor is not FP32");
  if (t.data().size() % 4 != 0) return absl::FailedPreconditionError("byte count not a multiple of 4");
  return std::span<const float>(reinterpret_cast<const float*>(t.data().data()), t.data().size() / 4);
}

absl::StatusOr<std::vector<float>> TensorToFloat(const v1::Tensor& t) {
  if (t.dtype() == v1::DTYPE_FP32) {
    absl::StatusOr<std::span<const float>> f = TensorFp32(t);
    if (!f.ok()) return f.status();
    return std::vector<float>(f->begin(), f->end());
  }
  absl::StatusOr<std::span<const uint16_t>> h = Tensor16Bits(t);
  if (!h.ok()) return h.status();
  std::vector<float> out(h->size());
  const bool fp16 = t.dtype() == v1::DTYPE_FP16;
  for (size_t i = 0; i < h->size(); ++i) out[i] = fp16 ? Fp16ToFloat((*h)[i]) : Bf16ToFloat((*h)[i]);
  return out;
}

uint16_t FloatToFp16(float x) {
  const uint32_t f = std::bit_cast<uint32_t>(x);
  const uint32_t sign = (f >> 16) & 0x8000u;
  const uint32_t abs = f & 0x7FFFFFFFu;
  if (abs >= 0x7F800000u) {  // Inf or NaN.
    return static_cast<uint16_t>(sign | 0x7C00u | (abs > 0x7F800000u ? 0x200u : 0u));
  }
  if (abs >= 0x477FF000u) return static_cast<uint16_t>(sign | 0x7C00u);  // Rounds to >= 65520: Inf.
  if (abs < 0x38800000u) {  // Below the smallest normal half: subnormal or zero.
    // Add 0.5 (as a float) so the FPU rounds the mantissa to the 2^-24 grid, nearest even.
    const float magic = std::bit_cast<float>(0x3F000000u);
    const float r = std::bit_cast<float>(abs) + magic;
    return static_cast<uint16_t>(sign | (std::bit_cast<uint32_t>(r) - 0x3F000000u));
  }
  uint32_t m = abs + 0xC8000FFFu + ((abs >> 13) & 1u);  // Rebias exponent (-112 << 23) and round.
  return static_cast<uint16_t>(sign | (m >> 13));
}

float Fp16ToFloat(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t exp = (h >> 10) & 0x1Fu;
  const uint32_t man = h & 0x3FFu;
  if (exp == 0) {
    const float v = std::ldexp(static_cast<float>(man), -24);
    return sign ? -v : v;
  }
  if (exp == 31) return std::bit_cast<float>(sign | 0x7F800000u | (man << 13));
  return std::bit_cast<float>(sign | ((exp + 112) << 23) | (man << 13));
}

uint16_t FloatToBf16(float x) {
  uint32_t f = std::bit_cast<uint32_t>(x);
  if ((f & 0x7FFFFFFFu) > 0x7F800000u) return static_cast<uint16_t>((f >> 16) | 0x40u);  // Quiet NaN.
  f += 0x7FFFu + ((f >> 16) & 1u);
  return static_cast<uint16_t>(f >> 16);
}

float Bf16ToFloat(uint16_t bits) { return std::bit_cast<float>(static_cast<uint32_t>(bits) << 16); }

}  // namespace sageserve
