// RunStaging (server/backend/cuda/host_staging.*): the multi-threaded split of large copies and
// conversions gives exactly the bytes of the one-thread path, for segments of mixed dtypes whose
// boundaries do not line up with the threads' ranges.
#include "server/backend/cuda/host_staging.h"

#include <cstdint>
#include <cstddef>
#include <cstring>
#include <random>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/reference/numerics.h"

namespace sage::server {
namespace {

TEST(HostStaging, ThreadedEqualsSerialAcrossSegmentsAndDtypes) {
  std::mt19937 rng(7);
  std::normal_distribution<float> nd(0.0f, 4.0f);
  const std::vector<size_t> sizes = {1, 1000003, 77, 2500001, 0, 640000};
  std::vector<std::vector<float>> f32(sizes.size());
  std::vector<std::vector<uint16_t>> f16(sizes.size());
  for (size_t i = 0; i < sizes.size(); ++i) {
    f32[i].resize(sizes[i]);
    for (float& x : f32[i]) x = nd(rng);
    f16[i].resize(sizes[i]);
    EncodeFp16Bulk(f32[i].data(), f16[i].data(), sizes[i]);
  }
  // Destination layouts: all segments back to back in one buffer, like the pinned staging.
  const auto build = [&](std::vector<unsigned char>* dst, std::vector<StageSegment>* segs) {
    size_t bytes = 0;
    for (size_t i = 0; i < sizes.size(); ++i) bytes += sizes[i] * 4;
    dst->assign(bytes, 0xAB);
    size_t at = 0;
    for (size_t i = 0; i < sizes.size(); ++i) {
      StageSegment s;
      s.elements = sizes[i];
      switch (i % 3) {
        case 0: s = {f16[i].data(), DType::kF16, dst->data() + at, DType::kF16, sizes[i]}; break;     // copy
        case 1: s = {f32[i].data(), DType::kF32, dst->data() + at, DType::kBF16, sizes[i]}; break;    // encode
        default: s = {f16[i].data(), DType::kF16, dst->data() + at, DType::kF32, sizes[i]}; break;    // decode
      }
      at += sizes[i] * DTypeSize(s.dst_dtype);
      segs->push_back(s);
    }
  };
  std::vector<unsigned char> serial, threaded;
  std::vector<StageSegment> a, b;
  build(&serial, &a);
  build(&threaded, &b);
  StagingOptions one;
  one.parallel_min_bytes = SIZE_MAX;
  RunStaging(a, one);
  StagingOptions many;
  many.parallel_min_bytes = 1;
  many.bytes_per_thread = 1 << 16;
  many.max_threads = 7;
  RunStaging(b, many);
  EXPECT_EQ(serial, threaded);
  // And the serial path matches the scalar reference.
  for (size_t i = 0; i < sizes.size(); ++i) {
    for (size_t j = 0; j < sizes[i]; j += 997) {
      const unsigned char* base = static_cast<const unsigned char*>(a[i].dst);
      switch (i % 3) {
        case 0: { uint16_t h; std::memcpy(&h, base + 2 * j, 2); ASSERT_EQ(h, f16[i][j]); break; }
        case 1: { uint16_t h; std::memcpy(&h, base + 2 * j, 2); ASSERT_EQ(h, EncodeBf16(f32[i][j])); break; }
        default: { float x; std::memcpy(&x, base + 4 * j, 4); ASSERT_EQ(x, DecodeFp16(f16[i][j])); break; }
      }
    }
  }
}

TEST(HostStaging, EmptyIsANoOp) {
  RunStaging({});
  StageSegment s;
  RunStaging(std::span<const StageSegment>(&s, 1));
}

}  // namespace
}  // namespace sage::server
