#include "server/metrics/prometheus_text.h"

#include <charconv>
#include <cmath>
#include <system_error>

#include "absl/strings/str_cat.h"

namespace sage::metrics {
namespace {

absl::string_view TypeName(MetricType type) {
  switch (type) {
    case MetricType::kCounter: return "counter";
    case MetricType::kGauge: return "gauge";
    case MetricType::kHistogram: return "histogram";
  }
  return "untyped";
}

// `{a="x",b="y"}` with an optional trailing `le` pair; empty when there is nothing to print.
void AppendLabels(std::string& out, std::span<const std::string> names,
                  std::span<const std::string> values, absl::string_view le) {
  if (names.empty() && le.empty()) return;
  out += '{';
  bool first = true;
  for (size_t i = 0; i < names.size(); ++i) {
    if (!first) out += ',';
    first = false;
    absl::StrAppend(&out, names[i], "=\"", EscapeLabelValue(i < values.size() ? values[i] : ""), "\"");
  }
  if (!le.empty()) {
    if (!first) out += ',';
    absl::StrAppend(&out, "le=\"", le, "\"");
  }
  out += '}';
}

void AppendSample(std::string& out, absl::string_view name, absl::string_view suffix,
                  std::span<const std::string> names, std::span<const std::string> values,
                  absl::string_view le, double value) {
  absl::StrAppend(&out, name, suffix);
  AppendLabels(out, names, values, le);
  absl::StrAppend(&out, " ", FormatPrometheusValue(value), "\n");
}

}  // namespace

std::string FormatPrometheusValue(double value) {
  if (std::isnan(value)) return "NaN";
  if (std::isinf(value)) return value > 0 ? "+Inf" : "-Inf";
  char buf[64];
  const std::to_chars_result r = std::to_chars(buf, buf + sizeof(buf), value);
  if (r.ec != std::errc()) return "NaN";  // Cannot happen with 64 bytes; keeps the output parseable.
  return std::string(buf, r.ptr);
}

std::string EscapeLabelValue(absl::string_view value) {
  std::string out;
  out.reserve(value.size());
  for (char c : value) {
    switch (c) {
      case '\\': out += "\\\\"; break;
      case '"': out += "\\\""; break;
      case '\n': out += "\\n"; break;
      default: out += c;
    }
  }
  return out;
}

std::string EscapeHelp(absl::string_view help) {
  std::string out;
  out.reserve(help.size());
  for (char c : help) {
    switch (c) {
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      default: out += c;
    }
  }
  return out;
}

std::string RenderPrometheusText(std::span<const FamilySnapshot> families) {
  std::string out;
  for (const FamilySnapshot& f : families) {
    absl::StrAppend(&out, "# HELP ", f.name, " ", EscapeHelp(f.help), "\n");
    absl::StrAppend(&out, "# TYPE ", f.name, " ", TypeName(f.type), "\n");
    for (const SampleSnapshot& s : f.samples) {
      if (f.type != MetricType::kHistogram) {
        AppendSample(out, f.name, "", f.label_names, s.label_values, "", s.value);
        continue;
      }
      const HistogramSnapshot& h = s.histogram;
      for (size_t i = 0; i < h.upper_bounds.size(); ++i) {
        AppendSample(out, f.name, "_bucket", f.label_names, s.label_values,
                     FormatPrometheusValue(h.upper_bounds[i]), static_cast<double>(h.cumulative[i]));
      }
      AppendSample(out, f.name, "_bucket", f.label_names, s.label_values, "+Inf",
                   static_cast<double>(h.count));
      AppendSample(out, f.name, "_sum", f.label_names, s.label_values, "", h.sum);
      AppendSample(out, f.name, "_count", f.label_names, s.label_values, "",
                   static_cast<double>(h.count));
    }
  }
  return out;
}

}  // namespace sage::metrics
