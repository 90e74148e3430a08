// The metrics endpoint's request-line parsing and routing (server/metrics/http_request.h), without
// sockets; metrics_http_server_test covers the same answers over a real connection.
#include "server/metrics/http_request.h"

#include <string>

#include "gtest/gtest.h"

namespace sage::metrics {
namespace {

TEST(HttpRequestLine, SplitsMethodTargetAndVersion) {
  HttpRequestLine line;
  ASSERT_TRUE(ParseHttpRequestLine("GET /metrics?x=1&y HTTP/1.1\r\nHost: a\r\n\r\n", &line));
  EXPECT_EQ(line.method, "GET");
  EXPECT_EQ(line.target, "/metrics");  // the query is dropped
  EXPECT_EQ(line.version, "HTTP/1.1");
}

TEST(HttpRequestLine, WithoutCrlfTheWholeTextIsTheLine) {
  HttpRequestLine line;
  ASSERT_TRUE(ParseHttpRequestLine("HEAD / HTTP/1.0", &line));
  EXPECT_EQ(line.method, "HEAD");
  EXPECT_EQ(line.target, "/");
  EXPECT_EQ(line.version, "HTTP/1.0");
}

TEST(HttpRequestLine, RefusesMalformedLines) {
  HttpRequestLine line;
  for (const char* bad : {"", "GET", "GET /metrics", "GET /metrics\r\n HTTP/1.1\r\n\r\n",
                                "GET /metrics FTP/1.1\r\n\r\n", "GET /metrics HTTP\r\n\r\n", "\r\n\r\n"}) {
    EXPECT_FALSE(ParseHttpRequestLine(bad, &line)) << bad;
  }
}

TEST(HttpRequestLine, EmptyMethodAndTargetStillParse) {
  // As before the extraction: only the two spaces and "HTTP/" are required.
  HttpRequestLine line;
  ASSERT_TRUE(ParseHttpRequestLine("  HTTP/1.1\r\n\r\n", &line));
  EXPECT_EQ(line.method, "");
  EXPECT_EQ(line.target, "");
  ASSERT_TRUE(ParseHttpRequestLine("GET /metrics HTTP/1.1 extra\r\n\r\n", &line));
  EXPECT_EQ(line.version, "HTTP/1.1 extra");
}

void ExpectAnswer(const std::string& request, MetricsHttpStatus status, bool body) {
  const MetricsHttpAnswer answer = RouteMetricsRequest(request);
  EXPECT_EQ(answer.status, status) << request;
  EXPECT_EQ(answer.include_body, body) << request;
}

TEST(RouteMetricsRequest, AnswersAsTheEndpointDoes) {
  ExpectAnswer("GET /metrics HTTP/1.1\r\n\r\n", MetricsHttpStatus::kOk, true);
  ExpectAnswer("HEAD /metrics HTTP/1.1\r\n\r\n", MetricsHttpStatus::kOk, false);
  ExpectAnswer("GET /metrics?name[]=x HTTP/1.1\r\n\r\n", MetricsHttpStatus::kOk, true);
  ExpectAnswer("GET / HTTP/1.1\r\n\r\n", MetricsHttpStatus::kNotFound, true);
  ExpectAnswer("HEAD /other HTTP/1.1\r\n\r\n", MetricsHttpStatus::kNotFound, false);
  ExpectAnswer("POST /other HTTP/1.1\r\n\r\n", MetricsHttpStatus::kNotFound, true);  // 404 before 405
  ExpectAnswer("POST /metrics HTTP/1.1\r\n\r\n", MetricsHttpStatus::kMethodNotAllowed, true);
  ExpectAnswer("get /metrics HTTP/1.1\r\n\r\n", MetricsHttpStatus::kMethodNotAllowed, true);
  ExpectAnswer("GET /metrics\r\n\r\n", MetricsHttpStatus::kBadRequest, true);
  ExpectAnswer("garbage\r\n\r\n", MetricsHttpStatus::kBadRequest, true);
}

}  // namespace
}  // namespace sage::metrics
