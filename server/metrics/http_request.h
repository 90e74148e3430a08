// The request head of the metrics endpoint (metrics_http_server.cc), parsed without sockets: the
// request line's method and target, and what the endpoint answers to it. Pure functions, so the
// unit tests and the fuzz target (tests/fuzz) reach them directly.
#pragma once

#include "absl/strings/string_view.h"

namespace sage::metrics {

// The request line "METHOD SP request-target SP HTTP-version" of a request head: the bytes up to
// the first CRLF (all of them when there is none). The views point into the parsed text.
struct HttpRequestLine {
  absl::string_view method;   // before the first space
  absl::string_view target;   // between the first and the second space, without "?query"
  absl::string_view version;  // everything after the second space; starts with "HTTP/"
};

// False (a 400) when the line has fewer than two spaces or its version does not start with "HTTP/".
bool ParseHttpRequestLine(absl::string_view request, HttpRequestLine* line);

// What the metrics endpoint answers.
enum class MetricsHttpStatus {
  kOk,                // 200: the exposition (GET and HEAD of /metrics)
  kBadRequest,        // 400
  kNotFound,          // 404: any other target
  kMethodNotAllowed,  // 405: /metrics with a method other than GET or HEAD
};

struct MetricsHttpAnswer {
  MetricsHttpStatus status = MetricsHttpStatus::kBadRequest;
  bool include_body = true;  // false for HEAD (200 and 404)
};

// The answer to a complete request head (up to and including its blank line, or at least its
// request line).
MetricsHttpAnswer RouteMetricsRequest(absl::string_view request);

}  // namespace sage::metrics
