// The metrics endpoint's request-head parsing (server/metrics/http_request.h) over arbitrary
// bytes: never a crash, the views stay inside the request's first line, and the answer agrees
// with the parsed line (200 only for GET/HEAD /metrics, 400 exactly when the line is malformed).
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "server/metrics/http_request.h"
#include "tests/fuzz/fuzz_check.h"

namespace {

bool Inside(absl::string_view part, absl::string_view whole) {
  return part.empty() || (part.data() >= whole.data() && part.data() + part.size() <= whole.data() + whole.size());
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using sage::metrics::MetricsHttpStatus;
  // An exact-size heap copy: ASan sees a read past its end.
  const std::string request(reinterpret_cast<const char*>(data), size);
  const absl::string_view first_line = absl::string_view(request).substr(0, request.find("\r\n"));

  sage::metrics::HttpRequestLine line;
  const bool parsed = sage::metrics::ParseHttpRequestLine(request, &line);
  const sage::metrics::MetricsHttpAnswer answer = sage::metrics::RouteMetricsRequest(request);
  FUZZ_CHECK((answer.status == MetricsHttpStatus::kBadRequest) == !parsed, "400 iff the line is malformed");
  if (!parsed) {
    FUZZ_CHECK(answer.include_body, "400 has a body");
    return 0;
  }
  FUZZ_CHECK(Inside(line.method, first_line) && Inside(line.target, first_line) && Inside(line.version, first_line),
             "views outside the request line");
  FUZZ_CHECK(line.method.find(' ') == absl::string_view::npos, "method with a space");
  FUZZ_CHECK(line.target.find(' ') == absl::string_view::npos, "target with a space");
  FUZZ_CHECK(line.target.find('?') == absl::string_view::npos, "target keeps its query");
  FUZZ_CHECK(line.version.substr(0, 5) == "HTTP/", "version");
  FUZZ_CHECK(line.version.find("\r\n") == absl::string_view::npos, "version runs past the line");
  switch (answer.status) {
    case MetricsHttpStatus::kOk:
      FUZZ_CHECK(line.target == "/metrics" && (line.method == "GET" || line.method == "HEAD"), "200");
      FUZZ_CHECK(answer.include_body == (line.method == "GET"), "200 body");
      break;
    case MetricsHttpStatus::kNotFound:
      FUZZ_CHECK(line.target != "/metrics", "404");
      FUZZ_CHECK(answer.include_body == (line.method != "HEAD"), "404 body");
      break;
    case MetricsHttpStatus::kMethodNotAllowed:
      FUZZ_CHECK(line.target == "/metrics" && line.method != "GET" && line.method != "HEAD", "405");
      FUZZ_CHECK(answer.include_body, "405 body");
      break;
    case MetricsHttpStatus::kBadRequest:
      FUZZ_CHECK(false, "unreachable");
  }
  return 0;
}
