// EncodeAttendOutput: O given as the kernel's 16-bit codes (EngineOutput::o_native) gives the same
// response bytes as O given as float, for every pair of kernel and requested dtype.
#include <cstdint>
#include <cstring>
#include <random>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/reference/numerics.h"
#include "server/frontend/grpc/request_codec.h"

namespace sage::server {
namespace {

TEST(RequestCodec, NativeOutputEncodesLikeFloatOutput) {
  DecodedRequest req;
  req.core.input.q = TensorView{DType::kF16, nullptr, 5, 3, 64};
  req.core.input.lse = LseMode::kNatural;
  const size_t n = 5 * 3 * 64;
  std::mt19937 rng(3);
  std::normal_distribution<float> nd(0.0f, 2.0f);
  for (DType kernel : {DType::kF16, DType::kBF16}) {
    EngineOutput native;
    native.o_native_dtype = kernel;
    std::vector<uint16_t> codes(n);
    for (uint16_t& h : codes) {
      const float x = nd(rng);
      h = kernel == DType::kF16 ? EncodeFp16(x) : EncodeBf16(x);
    }
    codes[7] = kernel == DType::kF16 ? 0x7C00 : 0x7F80;  // inf
    codes[9] = 0x8001;                                     // negative subnormal
    native.o_native.assign(reinterpret_cast<const char*>(codes.data()), n * 2);
    native.lse.assign(15, 1.5f);
    EngineOutput as_float;
    as_float.lse = native.lse;
    as_float.o.resize(n);
    DecodeToFloatBulk(codes.data(), kernel, as_float.o.data(), n);
    for (DType out : {DType::kF16, DType::kBF16, DType::kF32}) {
      req.core.output_dtype = out;
      sageserve::v1::AttendResponse a, b;
      ASSERT_TRUE(EncodeAttendOutput(native, req, &a).ok());  // a copy: `native` is reused
      ASSERT_TRUE(EncodeAttendOutput(as_float, req, &b).ok());
      EXPECT_EQ(a.o().data(), b.o().data()) << DTypeName(kernel) << " -> " << DTypeName(out);
      EXPECT_EQ(a.o().data().size(), n * DTypeSize(out));
      EXPECT_EQ(a.lse().data(), b.lse().data());
      if (out == kernel) {
        EXPECT_EQ(std::memcmp(a.o().data().data(), codes.data(), n * 2), 0);
        // Moved in, not copied: the source string gives its buffer away.
        EngineOutput moved = native;
        const char* buffer = moved.o_native.data();
        sageserve::v1::AttendResponse c;
        ASSERT_TRUE(EncodeAttendOutput(std::move(moved), req, &c).ok());
        EXPECT_EQ(c.o().data().data(), buffer);
        EXPECT_EQ(c.o().data(), a.o().data());
      }
      // And the float path is the scalar reference encoder, element by element.
      for (size_t i = 0; i < n && out != DType::kF32; ++i) {
        uint16_t h;
        std::memcpy(&h, b.o().data().data() + 2 * i, 2);
        ASSERT_EQ(h, out == DType::kF16 ? EncodeFp16(as_float.o[i]) : EncodeBf16(as_float.o[i])) << i;
      }
    }
  }
}

}  // namespace
}  // namespace sage::server
