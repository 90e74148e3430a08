// DecodeRegistry (server/registry/registry_json.h), the registry file's loader, over arbitrary
// text: a Status, never a crash; errors are DATA_LOSS or FAILED_PRECONDITION as documented. A
// snapshot it accepts must survive EncodeRegistry and DecodeRegistry again unchanged
// (SnapshotsEqual), and the second encoding must equal the first (the format is canonical).
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "absl/time/time.h"
#include "server/registry/registry_json.h"
#include "tests/fuzz/fuzz_check.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  const absl::StatusOr<sage::registry::RegistrySnapshot> first = sage::registry::DecodeRegistry(text);
  if (!first.ok()) {
    const absl::StatusCode code = first.status().code();
    FUZZ_CHECK(code == absl::StatusCode::kDataLoss || code == absl::StatusCode::kFailedPrecondition,
               first.status().ToString());
    return 0;
  }
  const absl::Time written_at = absl::FromUnixSeconds(1'700'000'000);
  const std::string encoded = sage::registry::EncodeRegistry(*first, written_at);
  const absl::StatusOr<sage::registry::RegistrySnapshot> second = sage::registry::DecodeRegistry(encoded);
  FUZZ_CHECK(second.ok(), "re-encoded snapshot does not decode: " + second.status().ToString() + "\n" + encoded);
  FUZZ_CHECK(sage::registry::SnapshotsEqual(*first, *second), "round trip changed the snapshot:\n" + encoded);
  const std::string again = sage::registry::EncodeRegistry(*second, written_at);
  FUZZ_CHECK(again == encoded, "encoding is not stable:\n" + encoded + "\n---\n" + again);
  return 0;
}
