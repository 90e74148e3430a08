// Building and reading wire tensors from host buffers. Setting copies the bytes exactly once (into
// the protobuf message, which owns them) unless you move a std::string in; reading returns views
// into the message, no copy.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "sageserve/v1/tensor.pb.h"

namespace sageserve {

// [tokens, heads, head_dim] of a packed varlen tensor.
struct Shape3 {
  int64_t tokens = 0;
  int64_t heads = 0;
  int64_t head_dim = 0;
  int64_t numel() const { return tokens * heads * head_dim; }
};

size_t DTypeSize(v1::DType dtype);  // 0 for DTYPE_UNSPECIFIED.

// Copies numel() elements from `data` (host memory, little-endian) into `out`.
// INVALID_ARGUMENT when the span length does not match the shape.
absl::Status SetTensorFp16(std::span<const uint16_t> fp16_bits, const Shape3& shape, v1::Tensor* out);
absl::Status SetTensorBf16(std::span<const uint16_t> bf16_bits, const Shape3& shape, v1::Tensor* out);
absl::Status SetTensorFp32(std::span<const float> values, const Shape3& shape, v1::Tensor* out);
// Takes ownership of already-serialized bytes without copying.
absl::Status SetTensorBytes(v1::DType dtype, const Shape3& shape, std::string&& bytes, v1::Tensor* out);

// Views of a received tensor's bytes. FAILED_PRECONDITION on a dtype mismatch or a byte count
// that is not a whole number of elements.
absl::StatusOr<std::span<const uint16_t>> Tensor16Bits(const v1::Tensor& t);  // FP16 or BF16
absl::StatusOr<std::span<const float>> TensorFp32(const v1::Tensor& t);
// Decodes any dtype to fp32 (one pass, allocates the result).
absl::StatusOr<std::vector<float>> TensorToFloat(const v1::Tensor& t);

// IEEE binary16 and bfloat16, round to nearest even.
uint16_t FloatToFp16(float x);
float Fp16ToFloat(uint16_t bits);
uint16_t FloatToBf16(float x);
float Bf16ToFloat(uint16_t bits);

}  // namespace sageserve
