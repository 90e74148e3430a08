#include "server/metrics/http_request.h"

namespace sage::metrics {

bool ParseHttpRequestLine(absl::string_view request, HttpRequestLine* line) {
  // Request line: METHOD SP request-target SP HTTP-version.
  const absl::string_view text = request.substr(0, request.find("\r\n"));
  const size_t sp1 = text.find(' ');
  const size_t sp2 = sp1 == absl::string_view::npos ? sp1 : text.find(' ', sp1 + 1);
  if (sp2 == absl::string_view::npos || text.substr(sp2 + 1).substr(0, 5) != "HTTP/") return false;
  line->method = text.substr(0, sp1);
  line->target = text.substr(sp1 + 1, sp2 - sp1 - 1);
  line->target = line->target.substr(0, line->target.find('?'));  // Scrapers may add parameters; none are used.
  line->version = text.substr(sp2 + 1);
  return true;
}

MetricsHttpAnswer RouteMetricsRequest(absl::string_view request) {
  HttpRequestLine line;
  if (!ParseHttpRequestLine(request, &line)) return {MetricsHttpStatus::kBadRequest, true};
  if (line.target != "/metrics") return {MetricsHttpStatus::kNotFound, line.method != "HEAD"};
  if (line.method != "GET" && line.method != "HEAD") return {MetricsHttpStatus::kMethodNotAllowed, true};
  return {MetricsHttpStatus::kOk, line.method == "GET"};
}

}  // namespace sage::metrics
