// The renderer's output, parsed back with an independent strict parser.
#include "server/metrics/prometheus_text.h"

#include "gtest/gtest.h"
#include "tests/metrics/prometheus_parse.h"

namespace sage::metrics {
namespace {

using testing::ParseExposition;

TEST(PrometheusText, CounterAndGaugeLines) {
  Registry r;
  auto c = r.AddCounter("app_requests_total", "Requests.", {"code", "recipe"});
  auto g = r.AddGauge("app_queue_depth_requests", "Queued.", {});
  ASSERT_TRUE(c.ok() && g.ok());
  (*c)->WithLabels({"OK", "int8_qk_fp8_pv"}).Increment(3);
  (*g)->Get().Set(2);
  EXPECT_EQ(RenderPrometheusText(r),
            "# HELP app_requests_total Requests.\n"
            "# TYPE app_requests_total counter\n"
            "app_requests_total{code=\"OK\",recipe=\"int8_qk_fp8_pv\"} 3\n"
            "# HELP app_queue_depth_requests Queued.\n"
            "# TYPE app_queue_depth_requests gauge\n"
            "app_queue_depth_requests 2\n");
}

TEST(PrometheusText, HistogramHasCumulativeBucketsSumAndCount) {
  Registry r;
  auto h = r.AddHistogram("app_latency_seconds", "Latency.", {"device"}, {0.001, 0.01, 0.1});
  ASSERT_TRUE(h.ok());
  for (double v : {0.0005, 0.005, 0.005, 0.05, 3.0}) (*h)->WithLabels({"cpu"}).Observe(v);
  const std::string text = RenderPrometheusText(r);
  EXPECT_NE(text.find("app_latency_seconds_bucket{device=\"cpu\",le=\"0.001\"} 1\n"), std::string::npos) << text;
  EXPECT_NE(text.find("app_latency_seconds_bucket{device=\"cpu\",le=\"0.01\"} 3\n"), std::string::npos);
  EXPECT_NE(text.find("app_latency_seconds_bucket{device=\"cpu\",le=\"0.1\"} 4\n"), std::string::npos);
  EXPECT_NE(text.find("app_latency_seconds_bucket{device=\"cpu\",le=\"+Inf\"} 5\n"), std::string::npos);
  EXPECT_NE(text.find("app_latency_seconds_count{device=\"cpu\"} 5\n"), std::string::npos);

  absl::StatusOr<testing::ParsedExposition> parsed = ParseExposition(text);
  ASSERT_TRUE(parsed.ok()) << parsed.status() << "\n" << text;
  EXPECT_EQ(parsed->type.at("app_latency_seconds"), "histogram");
  EXPECT_DOUBLE_EQ(*parsed->Value("app_latency_seconds_sum", {{"device", "cpu"}}), 3.0605);
  EXPECT_EQ(*parsed->Value("app_latency_seconds_bucket", {{"device", "cpu"}, {"le", "+Inf"}}), 5);
}

TEST(PrometheusText, EscapesLabelValuesAndHelp) {
  Registry r;
  auto c = r.AddCounter("app_odd_total", "Back\\slash and\nnewline.", {"path"});
  ASSERT_TRUE(c.ok());
  const std::string nasty = "a\"b\\c\nd";
  (*c)->WithLabels({nasty}).Increment();
  const std::string text = RenderPrometheusText(r);
  EXPECT_NE(text.find("# HELP app_odd_total Back\\\\slash and\\nnewline.\n"), std::string::npos) << text;
  EXPECT_NE(text.find("app_odd_total{path=\"a\\\"b\\\\c\\nd\"} 1\n"), std::string::npos) << text;
  absl::StatusOr<testing::ParsedExposition> parsed = ParseExposition(text);
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  EXPECT_EQ(*parsed->Value("app_odd_total", {{"path", nasty}}), 1);
  EXPECT_EQ(parsed->help.at("app_odd_total"), "Back\\slash and\nnewline.");
}

TEST(PrometheusText, ValuesRoundTrip) {
  EXPECT_EQ(FormatPrometheusValue(0), "0");
  EXPECT_EQ(FormatPrometheusValue(42), "42");
  EXPECT_EQ(FormatPrometheusValue(0.1), "0.1");
  EXPECT_EQ(FormatPrometheusValue(1e-05), "1e-05");
  EXPECT_EQ(FormatPrometheusValue(HUGE_VAL), "+Inf");
  EXPECT_EQ(FormatPrometheusValue(-HUGE_VAL), "-Inf");
  EXPECT_EQ(FormatPrometheusValue(std::nan("")), "NaN");
  for (double v : {123456789012345.0, 3.0605, 1.0 / 3.0, 2.5e-7}) {
    EXPECT_EQ(*testing::ParseValue(FormatPrometheusValue(v)), v);
  }
}

TEST(PrometheusText, FamilyWithoutSamplesStillDeclared) {
  Registry r;
  ASSERT_TRUE(r.AddCounter("app_unused_total", "Nothing yet.", {"code"}).ok());
  const std::string text = RenderPrometheusText(r);
  EXPECT_EQ(text, "# HELP app_unused_total Nothing yet.\n# TYPE app_unused_total counter\n");
  EXPECT_TRUE(ParseExposition(text).ok());
}

TEST(PrometheusParser, RejectsWhatPrometheusWould) {
  // The checker itself must catch broken output, or the tests above prove nothing.
  EXPECT_FALSE(ParseExposition("x_total 1\n").ok());  // No TYPE.
  EXPECT_FALSE(ParseExposition("# TYPE x_total counter\nx_total{a=\"1} 1\n").ok());
  EXPECT_FALSE(ParseExposition("# TYPE x_total counter\nx_total one\n").ok());
  EXPECT_FALSE(ParseExposition(
                   "# TYPE h histogram\nh_bucket{le=\"1\"} 2\nh_bucket{le=\"+Inf\"} 1\nh_sum 0\nh_count 1\n")
                   .ok());  // Not cumulative.
  EXPECT_FALSE(ParseExposition("# TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_sum 0\nh_count 1\n").ok());
  EXPECT_TRUE(ParseExposition(
                  "# TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_bucket{le=\"+Inf\"} 1\nh_sum 0.5\nh_count 1\n")
                  .ok());
}

}  // namespace
}  // namespace sage::metrics
