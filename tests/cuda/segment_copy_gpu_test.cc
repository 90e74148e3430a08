// sage_copy_segments (kernels/cuda/copy/segment_copy.cu) against memcpy: every segment lands
// byte for byte, nothing outside a segment changes (the whole destination starts poisoned), for
// sizes around the 16-byte word and the grid sizing, equal and unequal misalignments of the two ends,
// and a table read from pinned host memory as well as from device memory. Argument errors are named.
#include <gtest/gtest.h>

#include <cstring>
#include <random>
#include <vector>

#include "tests/cuda/gpu_test_util.h"

namespace sage::gputest {
namespace {

struct Piece {
  size_t src_at, dst_at, bytes;
};

// Lays `sizes` out in a source and a destination buffer with the given extra offsets (to misalign
// the ends), copies them with one launch and checks the whole destination.
void CheckCopies(const std::vector<size_t>& sizes, size_t src_skew, size_t dst_skew, bool table_on_host) {
  std::vector<Piece> pieces;
  size_t src_end = 0, dst_end = 0;
  for (size_t n : sizes) {
    src_end = (src_end + 255) / 256 * 256 + src_skew;
    dst_end = (dst_end + 255) / 256 * 256 + 64 + dst_skew;  // a poisoned gap between pieces
    pieces.push_back(Piece{src_end, dst_end, n});
    src_end += n;
    dst_end += n;
  }
  dst_end += 64;
  std::vector<unsigned char> src(src_end);
  std::mt19937 rng(static_cast<uint32_t>(src_end * 7 + src_skew * 131 + dst_skew));
  for (auto& b : src) b = static_cast<unsigned char>(rng());

  Stream stream;
  ASSERT_NE(stream.get(), nullptr);
  DeviceBuffer d_src(src_end), d_dst(dst_end);
  ASSERT_TRUE(d_src.Upload(src.data(), src.size(), stream.get()).ok());
  ASSERT_TRUE(d_dst.Poison(stream.get()).ok());

  std::vector<sage_copy_segment_t> table;
  uint64_t max_bytes = 0;
  for (const Piece& p : pieces) {
    table.push_back(sage_copy_segment_t{d_src.as<unsigned char>() + p.src_at, d_dst.as<unsigned char>() + p.dst_at, p.bytes});
    max_bytes = std::max<uint64_t>(max_bytes, p.bytes);
  }
  const size_t table_bytes = table.size() * sizeof(sage_copy_segment_t);
  DeviceBuffer d_table;
  sage_copy_segment_t* h_table = nullptr;
  const sage_copy_segment_t* table_ptr = nullptr;
  if (table_on_host) {
    SAGE_CUDA_ASSERT(cudaHostAlloc(reinterpret_cast<void**>(&h_table), table_bytes, cudaHostAllocPortable));
    std::memcpy(h_table, table.data(), table_bytes);
    table_ptr = h_table;
  } else {
    ASSERT_TRUE(d_table.Upload(table, stream.get()).ok());
    table_ptr = d_table.as<sage_copy_segment_t>();
  }
  ASSERT_EQ(sage_copy_segments(table_ptr, static_cast<int>(table.size()), max_bytes, stream.sage()), SAGE_OK)
      << sage_last_error();
  std::vector<unsigned char> got;
  ASSERT_TRUE(d_dst.Download(&got, stream.get()).ok());
  if (h_table) cudaFreeHost(h_table);

  std::vector<unsigned char> want(dst_end, 0xFF);
  for (const Piece& p : pieces) std::memcpy(want.data() + p.dst_at, src.data() + p.src_at, p.bytes);
  ASSERT_EQ(got.size(), want.size());
  size_t wrong = 0, first = 0;
  for (size_t i = 0; i < want.size(); ++i) {
    if (got[i] != want[i] && wrong++ == 0) first = i;
  }
  EXPECT_EQ(wrong, 0u) << "first differing byte at " << first << " (src skew " << src_skew << ", dst skew "
                       << dst_skew << ")";
}

const std::vector<size_t> kSizes = {0, 1, 15, 16, 17, 255, 4096 + 3, 65536, 262144, (size_t{3} << 20) + 5};

TEST(SegmentCopy, AlignedEndsMatchMemcpy) {
  SAGE_SKIP_WITHOUT_GPU();
  CheckCopies(kSizes, 0, 0, /*table_on_host=*/false);
}

TEST(SegmentCopy, EquallyMisalignedEndsCopyHeadAndTail) {
  SAGE_SKIP_WITHOUT_GPU();
  for (size_t skew : {1, 7, 8, 15}) CheckCopies(kSizes, skew, skew, false);
}

TEST(SegmentCopy, UnequallyMisalignedEndsFallBackToBytes) {
  SAGE_SKIP_WITHOUT_GPU();
  CheckCopies(kSizes, 0, 3, false);
  CheckCopies(kSizes, 5, 0, false);
  CheckCopies(kSizes, 8, 2, false);
}

TEST(SegmentCopy, TableInPinnedHostMemory) {
  SAGE_SKIP_WITHOUT_GPU();
  CheckCopies({262144, 262144, 262144, 1024}, 0, 0, /*table_on_host=*/true);
}

TEST(SegmentCopy, ManySegmentsInOneLaunch) {
  SAGE_SKIP_WITHOUT_GPU();
  std::vector<size_t> sizes;
  for (int i = 0; i < 700; ++i) sizes.push_back(static_cast<size_t>(16 * (1 + i % 37) + (i % 3)));
  CheckCopies(sizes, 0, 0, false);
}

TEST(SegmentCopy, ArgumentErrorsAreNamed) {
  SAGE_SKIP_WITHOUT_GPU();
  Stream stream;
  EXPECT_EQ(sage_copy_segments(nullptr, 0, 0, stream.sage()), SAGE_OK);  // nothing to do
  EXPECT_EQ(sage_copy_segments(nullptr, -1, 0, stream.sage()), SAGE_ERR_INVALID_ARGUMENT);
  EXPECT_NE(std::string(sage_last_error()).find("count -1"), std::string::npos) << sage_last_error();
  EXPECT_EQ(sage_copy_segments(nullptr, 3, 16, stream.sage()), SAGE_ERR_INVALID_ARGUMENT);
  EXPECT_NE(std::string(sage_last_error()).find("null table"), std::string::npos) << sage_last_error();
  DeviceBuffer table(sizeof(sage_copy_segment_t));
  EXPECT_EQ(sage_copy_segments(table.as<sage_copy_segment_t>(), 1, 16, nullptr), SAGE_ERR_INVALID_ARGUMENT);
  EXPECT_NE(std::string(sage_last_error()).find("default stream"), std::string::npos) << sage_last_error();
  EXPECT_EQ(sage_copy_segments(table.as<sage_copy_segment_t>(), 70000, 16, stream.sage()), SAGE_ERR_UNSUPPORTED);
}

}  // namespace
}  // namespace sage::gputest
