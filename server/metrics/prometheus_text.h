// Prometheus text exposition format 0.0.4 (what GET /metrics returns).
//
//   # HELP sageserve_requests_total Completed Attend calls.
//   # TYPE sageserve_requests_total counter
//   sageserve_requests_total{code="OK",recipe="int8_qk_fp8_pv"} 42
//   # TYPE sageserve_queue_duration_seconds histogram
//   sageserve_queue_duration_seconds_bucket{le="0.001"} 3
//   sageserve_queue_duration_seconds_bucket{le="+Inf"} 4
//   sageserve_queue_duration_seconds_sum 0.0123
//   sageserve_queue_duration_seconds_count 4
#pragma once

#include <span>
#include <string>

#include "absl/strings/string_view.h"
#include "server/metrics/metrics_registry.h"

namespace sage::metrics {

inline constexpr absl::string_view kPrometheusContentType = "text/plain; version=0.0.4; charset=utf-8";

std::string RenderPrometheusText(std::span<const FamilySnapshot> families);
inline std::string RenderPrometheusText(const Registry& registry) {
  const std::vector<FamilySnapshot> families = registry.Collect();
  return RenderPrometheusText(families);
}

// Sample values the way Prometheus parses them: shortest round-trip decimal, "+Inf", "-Inf", "NaN".
std::string FormatPrometheusValue(double value);
// Label values escape backslash, double quote and newline; HELP text escapes backslash and newline.
std::string EscapeLabelValue(absl::string_view value);
std::string EscapeHelp(absl::string_view help);

}  // namespace sage::metrics
