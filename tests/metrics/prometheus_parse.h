// A strict little parser of the Prometheus text format 0.0.4, for tests: reads what the renderer
// wrote back into samples and checks the format's rules on the way (TYPE before samples, one HELP
// and TYPE per family, histogram buckets cumulative and ending in +Inf == _count).
#pragma once

#include <cstdlib>
#include <map>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"

namespace sage::metrics::testing {

struct ParsedSample {
  std::string name;  // Full sample name, e.g. "x_seconds_bucket".
  std::map<std::string, std::string> labels;
  double value = 0.0;
};

struct ParsedExposition {
  std::map<std::string, std::string> help;  // family -> help (unescaped)
  std::map<std::string, std::string> type;  // family -> counter|gauge|histogram
  std::vector<ParsedSample> samples;

  // The value of the sample with exactly these labels, or NOT_FOUND.
  absl::StatusOr<double> Value(absl::string_view name, const std::map<std::string, std::string>& labels = {}) const {
    for (const ParsedSample& s : samples) {
      if (s.name == name && s.labels == labels) return s.value;
    }
    return absl::NotFoundError(absl::StrCat("no sample ", name));
  }
  // Sum over all samples of `name` whose labels include `subset`.
  double Sum(absl::string_view name, const std::map<std::string, std::string>& subset = {}) const {
    double total = 0;
    for (const ParsedSample& s : samples) {
      if (s.name != name) continue;
      bool match = true;
      for (const auto& [k, v] : subset) {
        auto it = s.labels.find(k);
        match &= it != s.labels.end() && it->second == v;
      }
      if (match) total += s.value;
    }
    return total;
  }
};

inline bool IsNameChar(char c, bool first) {
  return c == '_' || c == ':' || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
         (!first && c >= '0' && c <= '9');
}

inline absl::StatusOr<double> ParseValue(absl::string_view text) {
  if (text == "+Inf") return HUGE_VAL;
  if (text == "-Inf") return -HUGE_VAL;
  if (text == "NaN") return std::nan("");
  std::string s(text);
  char* end = nullptr;
  const double v = std::strtod(s.c_str(), &end);
  if (s.empty() || end != s.c_str() + s.size()) return absl::InvalidArgumentError(absl::StrCat("bad value '", text, "'"));
  return v;
}

// The family a sample belongs to, given the declared types.
inline std::string FamilyOf(const std::string& sample, const std::map<std::string, std::string>& types) {
  if (types.count(sample)) return sample;
  for (absl::string_view suffix : {"_bucket", "_sum", "_count"}) {
    if (sample.size() > suffix.size() && absl::string_view(sample).substr(sample.size() - suffix.size()) == suffix) {
      std::string base = sample.substr(0, sample.size() - suffix.size());
      auto it = types.find(base);
      if (it != types.end() && it->second == "histogram") return base;
    }
  }
  return "";
}

inline absl::StatusOr<ParsedExposition> ParseExposition(absl::string_view text) {
  ParsedExposition out;
  if (!text.empty() && text.back() != '\n') return absl::InvalidArgumentError("does not end in a newline");
  int line_no = 0;
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    ++line_no;
    const std::string where = absl::StrCat("line ", line_no, ": ");
    if (line.empty()) continue;
    if (line[0] == '#') {
      std::vector<absl::string_view> parts = absl::StrSplit(line, absl::MaxSplits(' ', 3));
      if (parts.size() < 3 || (parts[1] != "HELP" && parts[1] != "TYPE")) continue;  // A comment.
      const std::string family(parts[2]);
      const std::string rest = parts.size() > 3 ? std::string(parts[3]) : "";
      if (parts[1] == "HELP") {
        if (out.help.count(family)) return absl::InvalidArgumentError(where + "second HELP for " + family);
        std::string unescaped;
        for (size_t i = 0; i < rest.size(); ++i) {
          if (rest[i] == '\\' && i + 1 < rest.size()) {
            unescaped += rest[i + 1] == 'n' ? '\n' : rest[i + 1];
            ++i;
          } else {
            unescaped += rest[i];
          }
        }
        out.help[family] = unescaped;
      } else {
        if (out.type.count(family)) return absl::InvalidArgumentError(where + "second TYPE for " + family);
        if (rest != "counter" && rest != "gauge" && rest != "histogram" && rest != "summary" && rest != "untyped") {
          return absl::InvalidArgumentError(where + "unknown type " + rest);
        }
        out.type[family] = rest;
      }
      continue;
    }
    ParsedSample sample;
    size_t i = 0;
    while (i < line.size() && IsNameChar(line[i], i == 0)) ++i;
    if (i == 0) return absl::InvalidArgumentError(where + "no metric name");
    sample.name = std::string(line.substr(0, i));
    if (i < line.size() && line[i] == '{') {
      ++i;
      while (i < line.size() && line[i] != '}') {
        const size_t start = i;
        while (i < line.size() && IsNameChar(line[i], i == start)) ++i;
        const std::string label(line.substr(start, i - start));
        if (label.empty() || i + 1 >= line.size() || line[i] != '=' || line[i + 1] != '"') {
          return absl::InvalidArgumentError(where + "bad label");
        }
        i += 2;
        std::string value;
        while (i < line.size() && line[i] != '"') {
          if (line[i] == '\\' && i + 1 < line.size()) {
            const char e = line[i + 1];
            if (e != '\\' && e != '"' && e != 'n') return absl::InvalidArgumentError(where + "bad escape");
            value += e == 'n' ? '\n' : e;
            i += 2;
          } else {
            value += line[i++];
          }
        }
        if (i >= line.size()) return absl::InvalidArgumentError(where + "unterminated label value");
        ++i;  // closing quote
        if (sample.labels.count(label)) return absl::InvalidArgumentError(where + "repeated label " + label);
        sample.labels[label] = value;
        if (i < line.size() && line[i] == ',') ++i;
      }
      if (i >= line.size()) return absl::InvalidArgumentError(where + "unterminated label set");
      ++i;  // '}'
    }
    if (i >= line.size() || line[i] != ' ') return absl::InvalidArgumentError(where + "no space before value");
    absl::StatusOr<double> value = ParseValue(line.substr(i + 1));
    if (!value.ok()) return absl::InvalidArgumentError(where + std::string(value.status().message()));
    sample.value = *value;
    if (FamilyOf(sample.name, out.type).empty()) {
      return absl::InvalidArgumentError(where + "sample " + sample.name + " before its TYPE line");
    }
    out.samples.push_back(std::move(sample));
  }

  // Histogram rules, per family and label set (without le).
  for (const auto& [family, type] : out.type) {
    if (type != "histogram") continue;
    std::map<std::map<std::string, std::string>, std::vector<std::pair<double, double>>> buckets;
    for (const ParsedSample& s : out.samples) {
      if (s.name != family + "_bucket") continue;
      auto labels = s.labels;
      auto le = labels.find("le");
      if (le == labels.end()) return absl::InvalidArgumentError(family + ": bucket without le");
      absl::StatusOr<double> bound = ParseValue(le->second);
      if (!bound.ok()) return bound.status();
      labels.erase(le);
      buckets[labels].push_back({*bound, s.value});
    }
    for (const auto& [labels, list] : buckets) {
      for (size_t i = 1; i < list.size(); ++i) {
        if (!(list[i].first > list[i - 1].first)) return absl::InvalidArgumentError(family + ": le not increasing");
        if (list[i].second < list[i - 1].second) return absl::InvalidArgumentError(family + ": buckets not cumulative");
      }
      if (list.empty() || list.back().first != HUGE_VAL) return absl::InvalidArgumentError(family + ": no +Inf bucket");
      absl::StatusOr<double> count = out.Value(family + "_count", labels);
      if (!count.ok() || *count != list.back().second) {
        return absl::InvalidArgumentError(family + ": +Inf bucket differs from _count");
      }
      if (!out.Value(family + "_sum", labels).ok()) return absl::InvalidArgumentError(family + ": no _sum");
    }
  }
  return out;
}

}  // namespace sage::metrics::testing
