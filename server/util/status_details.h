// Machine-readable hints an error carries next to its code and message, as absl::Status payloads.
// Any layer can attach them (no protobuf needed here); ToGrpcStatus (server/frontend/grpc/status_mapping.cc)
// turns them into google.rpc detail messages in the grpc-status-details-bin trailer. The field of an
// INVALID_ARGUMENT needs no payload: the "field: what" convention of every validator names it.
#pragma once

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/cord.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"

namespace sage::server {

// Payload keys (private to the server; never sent as such).
inline constexpr absl::string_view kRetryDelayPayload = "sageserve.internal/retry_delay_ms";
inline constexpr absl::string_view kResourcePayload = "sageserve.internal/resource";  // "type\nname"

// The retry hint of a full request queue: at tens of thousands of requests per second, a queue of a
// few hundred drains in milliseconds.
inline constexpr std::chrono::milliseconds kQueueFullRetryDelay{10};

// The request may succeed if sent again after `delay` (google.rpc.RetryInfo).
inline absl::Status WithRetryDelay(absl::Status status, std::chrono::milliseconds delay) {
  status.SetPayload(kRetryDelayPayload, absl::Cord(absl::StrCat(delay.count())));
  return status;
}

// The error is about resource `name` of kind `type`, e.g. "sageserve.v1.SharedMemoryRegion"
// (google.rpc.ResourceInfo).
inline absl::Status WithResource(absl::Status status, absl::string_view type, absl::string_view name) {
  status.SetPayload(kResourcePayload, absl::Cord(absl::StrCat(type, "\n", name)));
  return status;
}

inline std::optional<std::chrono::milliseconds> RetryDelayOf(const absl::Status& status) {
  const auto p = status.GetPayload(kRetryDelayPayload);
  int64_t ms = 0;
  if (!p.has_value() || !absl::SimpleAtoi(std::string(*p), &ms) || ms < 0) return std::nullopt;
  return std::chrono::milliseconds(ms);
}

// {type, name} of WithResource, if set.
inline std::optional<std::pair<std::string, std::string>> ResourceOf(const absl::Status& status) {
  const auto p = status.GetPayload(kResourcePayload);
  if (!p.has_value()) return std::nullopt;
  const std::string text(*p);
  const size_t nl = text.find('\n');
  if (nl == std::string::npos) return std::nullopt;
  return std::make_pair(text.substr(0, nl), text.substr(nl + 1));
}

}  // namespace sage::server
