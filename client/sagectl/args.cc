#include "client/sagectl/args.h"

#include <algorithm>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"

namespace sagectl {

absl::StatusOr<Args> Args::Parse(const std::vector<std::string>& argv) {
  Args args;
  for (const std::string& a : argv) {
    if (a.rfind("--", 0) != 0 || a.size() == 2) {
      return absl::InvalidArgumentError(absl::StrCat("unexpected argument '", a, "' (want --key=value)"));
    }
    const size_t eq = a.find('=');
    if (eq == std::string::npos) {
      args.values_[a.substr(2)] = "true";
    } else {
      args.values_[a.substr(2, eq - 2)] = a.substr(eq + 1);
    }
  }
  return args;
}

std::string Args::Str(const std::string& key, const std::string& fallback) const {
  auto it = values_.find(key);
  return it == values_.end() ? fallback : it->second;
}

absl::StatusOr<int64_t> Args::Int(const std::string& key, int64_t fallback) const {
  auto it = values_.find(key);
  if (it == values_.end()) return fallback;
  int64_t v = 0;
  if (!absl::SimpleAtoi(it->second, &v)) {
    return absl::InvalidArgumentError(absl::StrCat("--", key, ": '", it->second, "' is not an integer"));
  }
  return v;
}

absl::StatusOr<double> Args::Double(const std::string& key, double fallback) const {
  auto it = values_.find(key);
  if (it == values_.end()) return fallback;
  double v = 0;
  if (!absl::SimpleAtod(it->second, &v)) {
    return absl::InvalidArgumentError(absl::StrCat("--", key, ": '", it->second, "' is not a number"));
  }
  return v;
}

bool Args::Flag(const std::string& key) const {
  auto it = values_.find(key);
  return it != values_.end() && (it->second == "true" || it->second == "1");
}

std::vector<std::string> Args::Unknown(const std::vector<std::string>& known) const {
  std::vector<std::string> out;
  for (const auto& [k, v] : values_) {
    if (std::find(known.begin(), known.end(), k) == known.end()) out.push_back(k);
  }
  return out;
}

}  // namespace sagectl
