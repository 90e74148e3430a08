// The client's tensor helpers: conversions agree with the engine's, shapes are checked, and moving
// bytes in does not copy.
#include <cmath>
#include <random>

#include "gtest/gtest.h"
#include "kernels/reference/numerics.h"
#include "sageserve/client/tensor.h"

namespace {
namespace v1 = ::sageserve::v1;

TEST(Tensor, HalfDecodingMatchesEngineForAllCodes) {
  for (uint32_t bits = 0; bits < 0x10000u; ++bits) {
    const float a = sageserve::Fp16ToFloat(static_cast<uint16_t>(bits));
    const float b = sage::DecodeFp16(static_cast<uint16_t>(bits));
    if (std::isnan(b)) {
      EXPECT_TRUE(std::isnan(a)) << bits;
    } else {
      EXPECT_EQ(a, b) << bits;
    }
    const float c = sageserve::Bf16ToFloat(static_cast<uint16_t>(bits));
    const float d = sage::DecodeBf16(static_cast<uint16_t>(bits));
    EXPECT_TRUE(c == d || (std::isnan(c) && std::isnan(d))) << bits;
  }
}

TEST(Tensor, EncodingMatchesEngine) {
  std::mt19937 rng(3);
  std::uniform_int_distribution<uint32_t> any;
  for (int i = 0; i < 200000; ++i) {
    const float x = std::bit_cast<float>(any(rng));
    if (std::isnan(x)) continue;
    EXPECT_EQ(sageserve::FloatToFp16(x), sage::EncodeFp16(x)) << x;
    EXPECT_EQ(sageserve::FloatToBf16(x), sage::EncodeBf16(x)) << x;
  }
  for (float x : {0.0f, -0.0f, 1.0f, 65504.0f, 65520.0f, 1e-8f, 5.9604645e-8f, INFINITY, -INFINITY}) {
    EXPECT_EQ(sageserve::FloatToFp16(x), sage::EncodeFp16(x)) << x;
  }
}

TEST(Tensor, SetChecksShapeAndMoveDoesNotCopy) {
  v1::Tensor t;
  std::vector<uint16_t> data(2 * 3 * 64);
  EXPECT_TRUE(sageserve::SetTensorFp16(data, {2, 3, 64}, &t).ok());
  EXPECT_EQ(t.data().size(), data.size() * 2);
  EXPECT_EQ(t.shape_size(), 3);
  EXPECT_EQ(sageserve::SetTensorFp16(data, {2, 3, 128}, &t).code(), absl::StatusCode::kInvalidArgument);

  std::string bytes(4 * 1024 * 64 * 2, '\0');
  const char* buffer = bytes.data();
  EXPECT_TRUE(sageserve::SetTensorBytes(v1::DTYPE_BF16, {1024, 4, 64}, std::move(bytes), &t).ok());
  EXPECT_EQ(t.data().data(), buffer) << "bytes were copied";
  auto view = sageserve::Tensor16Bits(t);
  ASSERT_TRUE(view.ok());
  EXPECT_EQ(reinterpret_cast<const char*>(view->data()), buffer) << "view copied";
  EXPECT_EQ(sageserve::TensorFp32(t).status().code(), absl::StatusCode::kFailedPrecondition);
}

TEST(Tensor, TensorToFloatDecodes) {
  v1::Tensor t;
  std::vector<float> values = {1.0f, -2.5f, 0.125f};
  ASSERT_TRUE(sageserve::SetTensorFp32(values, {1, 1, 3}, &t).ok());
  EXPECT_EQ(*sageserve::TensorToFloat(t), values);
  std::vector<uint16_t> half = {sageserve::FloatToFp16(1.0f), sageserve::FloatToFp16(-2.5f), sageserve::FloatToFp16(0.125f)};
  ASSERT_TRUE(sageserve::SetTensorFp16(half, {1, 1, 3}, &t).ok());
  EXPECT_EQ(*sageserve::TensorToFloat(t), values);
}

}  // namespace
