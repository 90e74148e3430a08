#include "server/core/session_kv_staging.h"

#include <algorithm>
#include <functional>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"

namespace sage::server {
namespace {

enum class KvTensor { kK, kV };

// One step's k or v in a region, and the span of the step that is pointed at its copy.
struct Piece {
  const SharedMemoryRegion* region = nullptr;
  const std::byte* begin = nullptr;
  size_t bytes = 0;
  size_t step = 0;
  KvTensor tensor = KvTensor::kK;
  std::span<const std::byte>* staged = nullptr;
};

std::string FieldOf(const Piece& p) {
  return absl::StrCat("steps[", p.step, "].", p.tensor == KvTensor::kK ? "k" : "v", ".shared_memory");
}

// Pieces [first, last) of one region, read as the bytes [begin, begin + bytes) into the block at `at`.
struct CopySpan {
  size_t first = 0, last = 0;
  const std::byte* begin = nullptr;
  size_t bytes = 0;
  size_t at = 0;
};

}  // namespace

absl::StatusOr<std::unique_ptr<std::byte[]>> StageSharedKv(std::span<SessionStepInput> steps) {
  std::vector<Piece> pieces;
  for (size_t i = 0; i < steps.size(); ++i) {
    SessionStepInput& st = steps[i];
    if (st.kv_on_device) continue;  // read in place by the append
    if (st.k_shared.has_value() && !st.k.empty()) {
      pieces.push_back(Piece{st.k_shared->region.get(), st.k.data(), st.k.size(), i, KvTensor::kK, &st.k});
    }
    if (st.v_shared.has_value() && !st.v.empty()) {
      pieces.push_back(Piece{st.v_shared->region.get(), st.v.data(), st.v.size(), i, KvTensor::kV, &st.v});
    }
  }
  if (pieces.empty()) return nullptr;
  // By region, then address (std::less: a total order over pointers of different mappings).
  std::sort(pieces.begin(), pieces.end(), [](const Piece& a, const Piece& b) {
    if (a.region != b.region) return std::less<const void*>()(a.region, b.region);
    return std::less<const void*>()(a.begin, b.begin);
  });
  std::vector<CopySpan> spans;
  for (size_t n = 0; n < pieces.size(); ++n) {
    const Piece& p = pieces[n];
    if (!spans.empty()) {
      CopySpan& s = spans.back();
      if (pieces[s.first].region == p.region && p.begin <= s.begin + s.bytes + kKvStagingMaxGap) {
        s.bytes = std::max(s.bytes, static_cast<size_t>(p.begin + p.bytes - s.begin));
        s.last = n + 1;
        continue;
      }
    }
    spans.push_back(CopySpan{n, n + 1, p.begin, p.bytes, 0});
  }
  size_t total = 0;
  for (CopySpan& s : spans) {
    s.at = total;
    total += s.bytes;
  }
  std::unique_ptr<std::byte[]> block(new std::byte[total]);
  for (const CopySpan& s : spans) {
    const SharedMemoryRegion& region = *pieces[s.first].region;
    std::byte* const to = block.get() + s.at;
    absl::Status copied = region.CopyOut({s.begin, s.bytes}, {to, s.bytes}, FieldOf(pieces[s.first]));
    if (!copied.ok() && s.last - s.first > 1) {
      // Which step's bytes cannot be read: each piece on its own (the error path only).
      for (size_t n = s.first; n < s.last; ++n) {
        const Piece& p = pieces[n];
        if (absl::Status one = region.CopyOut({p.begin, p.bytes}, {to + (p.begin - s.begin), p.bytes}, FieldOf(p));
            !one.ok()) {
          return one;
        }
      }
      copied = absl::OkStatus();  // every piece read; only bytes between them could not be
    }
    if (!copied.ok()) return copied;
    for (size_t n = s.first; n < s.last; ++n) {
      const Piece& p = pieces[n];
      *p.staged = std::span<const std::byte>(to + (p.begin - s.begin), p.bytes);
    }
  }
  return block;
}

}  // namespace sage::server
