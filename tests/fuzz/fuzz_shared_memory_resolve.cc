// SharedMemoryRegistry::Resolve (server/shared_memory/shared_memory_registry.h) with fuzzed
// caller, region name, offset, byte_size and expected size, on a registry holding four small
// system regions of two owners (shm_fixture.h). Checks the documented contract: OK only for a
// region the caller may see (its own; another owner's only with sees_all and none of its own),
// with byte_size == expected and [offset, offset + byte_size) inside the region; the range handed
// back lies inside the region's mapping (read whole here); errors are the documented codes.
#include <fuzzer/FuzzedDataProvider.h>

#include <cstddef>
#include <cstdint>
#include <string>

#include "absl/strings/str_cat.h"
#include "tests/fuzz/fuzz_check.h"
#include "tests/fuzz/shm_fixture.h"

namespace {

using sage::fuzz::FixtureRegion;
using sage::fuzz::kFixtureRegions;

const FixtureRegion* Find(const std::string& owner, const std::string& name) {
  for (const FixtureRegion& r : kFixtureRegions) {
    if (owner == r.owner && name == r.name) return &r;
  }
  return nullptr;
}

// The region Resolve must pick, by the header's rule; null: NOT_FOUND.
const FixtureRegion* Expected(const sage::server::RegionCaller& caller, const std::string& name) {
  if (const FixtureRegion* own = Find(caller.identity, name)) return own;
  if (!caller.sees_all) return nullptr;
  const FixtureRegion* first = nullptr;  // the first owner in order
  for (const FixtureRegion& r : kFixtureRegions) {
    if (name == r.name && (first == nullptr || std::string(r.owner) < first->owner)) first = &r;
  }
  return first;
}

uint64_t PickU64(FuzzedDataProvider& in) {
  switch (in.ConsumeIntegralInRange<int>(0, 3)) {
    case 0: return in.ConsumeIntegralInRange<uint64_t>(0, 8192);
    case 1: return UINT64_MAX - in.ConsumeIntegralInRange<uint64_t>(0, 8192);
    case 2: return uint64_t{1} << in.ConsumeIntegralInRange<int>(0, 63);
    default: return in.ConsumeIntegral<uint64_t>();
  }
}

std::string PickString(FuzzedDataProvider& in, std::initializer_list<const char*> known) {
  const size_t n = known.size();
  const size_t pick = in.ConsumeIntegralInRange<size_t>(0, n);
  if (pick < n) return known.begin()[pick];
  return in.ConsumeRandomLengthString(32);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const sage::server::SharedMemoryRegistry& registry = sage::fuzz::FixtureRegistry();
  FuzzedDataProvider in(data, size);
  sage::server::RegionCaller caller;
  caller.identity = PickString(in, {"fuzz", "other", ""});
  caller.sees_all = in.ConsumeBool();
  const std::string name = PickString(in, {"r0", "r1", "r2", ""});
  const std::string field = PickString(in, {"q.shared_memory", "o_output"});
  const uint64_t offset = PickU64(in);
  const uint64_t byte_size = PickU64(in);
  const size_t expected_bytes = in.ConsumeBool() ? static_cast<size_t>(byte_size) : static_cast<size_t>(PickU64(in));

  const absl::StatusOr<sage::server::SharedRange> got =
      registry.Resolve(caller, field, name, offset, byte_size, expected_bytes);
  const FixtureRegion* region = Expected(caller, name);
  const std::string what = absl::StrCat("caller '", caller.identity, "' sees_all=", caller.sees_all, " region '", name,
                                        "' offset ", offset, " byte_size ", byte_size, " expected ", expected_bytes,
                                        ": ", got.ok() ? std::string("OK") : got.status().ToString());
  if (region == nullptr) {
    FUZZ_CHECK(!got.ok() && got.status().code() == absl::StatusCode::kNotFound, what);
    return 0;
  }
  const bool in_range = offset <= region->bytes && byte_size <= region->bytes - offset;
  const bool ok = byte_size == expected_bytes && in_range;
  FUZZ_CHECK(got.ok() == ok, what);
  if (!got.ok()) {
    FUZZ_CHECK(got.status().code() == absl::StatusCode::kInvalidArgument, what);
    return 0;
  }
  const sage::server::SharedMemoryRegionInfo& info = got->region->info();
  FUZZ_CHECK(info.owner == region->owner && info.name == name && info.byte_size == region->bytes, what);
  const std::byte* begin = got->region->data();
  FUZZ_CHECK(got->bytes.data() == begin + offset && got->bytes.size() == byte_size, what);
  FUZZ_CHECK(got->bytes.data() + got->bytes.size() <= begin + info.byte_size, what);
  // Read the range: past the object's end would fault (the mapping is not ASan's).
  uint64_t sum = 0;
  for (const std::byte b : got->bytes) sum += static_cast<uint8_t>(b);
  sage::fuzz::g_sink = sum;
  return 0;
}
