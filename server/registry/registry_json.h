// The registry file format: human-readable JSON, versioned, with an optional checksum.
//
//   {
//     "format": "sageserve-precision-registry",
//     "schema_version": 1,
//     "generation": 12,
//     "written_at": "2026-11-25T21:40:03Z",
//     "models": { "<name>": { "num_layers": 4, ..., "plan": { "entries": [...] } } },
//     "checksum": "fnv1a64:<16 hex digits of the compact dump of \"models\">"
//   }
//
// The checksum catches corruption that still parses (a flipped digit). It is optional on load so
// an operator can edit the file by hand: delete the "checksum" line after editing.
#pragma once

#include <string>
#include <string_view>

#include "absl/status/statusor.h"
#include "server/registry/registry.h"

namespace sage::registry {

inline constexpr int kRegistrySchemaVersion = 1;
inline constexpr std::string_view kRegistryFormatTag = "sageserve-precision-registry";

std::string EncodeRegistry(const RegistrySnapshot& snapshot, absl::Time written_at);

// Errors say what is wrong and where, without the file name (the store adds it):
//  DATA_LOSS: empty, truncated, not JSON, wrong structure, checksum mismatch;
//  FAILED_PRECONDITION: a schema version this build does not know.
absl::StatusOr<RegistrySnapshot> DecodeRegistry(std::string_view text);

}  // namespace sage::registry
