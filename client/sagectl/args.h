// sagectl's command line: `sagectl <command> [--key=value | --flag]...`. Kept tiny and local (the
// server alone uses absl flags).
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace sagectl {

class Args {
 public:
  // argv after the command name. INVALID_ARGUMENT on anything that is not --key[=value].
  static absl::StatusOr<Args> Parse(const std::vector<std::string>& argv);

  std::string Str(const std::string& key, const std::string& fallback) const;
  absl::StatusOr<int64_t> Int(const std::string& key, int64_t fallback) const;
  absl::StatusOr<double> Double(const std::string& key, double fallback) const;
  bool Flag(const std::string& key) const;  // --key, --key=true/1
  bool Has(const std::string& key) const { return values_.count(key) > 0; }
  // Keys not in `known`, for a helpful error.
  std::vector<std::string> Unknown(const std::vector<std::string>& known) const;

 private:
  std::map<std::string, std::string> values_;
};

}  // namespace sagectl
