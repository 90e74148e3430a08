// Client-supplied text (request ids, model names, error messages that quote them) made safe for one
// log line: every byte that is not printable ASCII is escaped, so a client cannot start a forged
// line or hide text with control characters, and the text is cut short, so a 1 MiB id costs the
// log a line, not a megabyte. Any layer may use it: header-only, no dependencies beyond Abseil.
//
//   spdlog::warn("request '{}' failed: {}", LogField(id), LogField(status.ToString(), kLogStatusMaxBytes));
#pragma once

#include <cstddef>
#include <string>
#include <string_view>

#include "absl/strings/str_cat.h"

namespace sage::server {

inline constexpr size_t kLogFieldMaxBytes = 128;    // ids, model names
inline constexpr size_t kLogStatusMaxBytes = 1024;  // error messages (they may quote client text)

// `s` with \n, \r, \t, \\, \" and \' escaped C-style, any other byte outside printable ASCII
// (0x20..0x7e) as \xNN, and, when longer than `max_bytes`, only its first `max_bytes` bytes shown,
// followed by "...(N bytes)" with N the whole input's size.
inline std::string LogField(std::string_view s, size_t max_bytes = kLogFieldMaxBytes) {
  static constexpr char kHex[] = "0123456789abcdef";
  const bool cut = s.size() > max_bytes;
  const std::string_view shown = cut ? s.substr(0, max_bytes) : s;
  std::string out;
  out.reserve(shown.size() + (cut ? 24 : 0));
  for (const char ch : shown) {
    const auto c = static_cast<unsigned char>(ch);
    switch (c) {
      case '\n': out += "\\n"; break;
      case '\r': out += "\\r"; break;
      case '\t': out += "\\t"; break;
      case '\\': out += "\\\\"; break;
      case '"': out += "\\\""; break;
      case '\'': out += "\\'"; break;
      default:
        if (c < 0x20 || c > 0x7e) {
          out += "\\x";
          out.push_back(kHex[c >> 4]);
          out.push_back(kHex[c & 0xf]);
        } else {
          out.push_back(ch);
        }
    }
  }
  if (cut) absl::StrAppend(&out, "...(", s.size(), " bytes)");
  return out;
}

}  // namespace sage::server
