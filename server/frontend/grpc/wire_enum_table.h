// Enum mirrors between the wire (protobuf enums) and the engine: one table of rows per mapping,
// read in both directions. A value with no row maps to the wire's UNSPECIFIED (0), or is absent.
#pragma once

#include <cstddef>
#include <optional>

namespace sage::server {

template <typename Engine, typename Wire>
struct WirePair {
  Engine engine;
  Wire wire;
};

// The wire value of `value`; UNSPECIFIED (0) for a value without a row.
template <typename Engine, typename Wire, size_t N>
Wire ToWire(const WirePair<Engine, Wire> (&table)[N], Engine value) {
  for (const auto& row : table) {
    if (row.engine == value) return row.wire;
  }
  return static_cast<Wire>(0);
}

// The engine value of `wire`; nullopt for a wire value without a row (UNSPECIFIED included).
template <typename Engine, typename Wire, size_t N>
std::optional<Engine> FromWire(const WirePair<Engine, Wire> (&table)[N], Wire wire) {
  for (const auto& row : table) {
    if (row.wire == wire) return row.engine;
  }
  return std::nullopt;
}

}  // namespace sage::server
