// The server's metric set: registers cleanly, renders parseable text, records what it is told.
#include "server/metrics/server_metrics.h"

#include <fcntl.h>
#include <unistd.h>

#include <vector>

#include "gtest/gtest.h"
#include "tests/metrics/prometheus_parse.h"

namespace sage::server {
namespace {

using metrics::testing::ParseExposition;
using metrics::testing::ParsedExposition;

TEST(ServerMetrics, DeclaresTheIssueMetricsWithConventionalNames) {
  auto m = ServerMetrics::Create();
  ASSERT_TRUE(m.ok()) << m.status();
  absl::StatusOr<ParsedExposition> parsed = ParseExposition((*m)->RenderText());
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  const std::map<std::string, std::string> expected = {
      {"sageserve_requests_total", "counter"},
      {"sageserve_rpcs_total", "counter"},
      {"sageserve_rpc_duration_seconds", "histogram"},
      {"sageserve_open_streams", "gauge"},
      {"sageserve_sessions_open", "gauge"},
      {"sageserve_kv_pages", "gauge"},
      {"sageserve_session_appended_tokens_total", "counter"},
      {"sageserve_sessions_ended_total", "counter"},
      {"sageserve_stream_queued_responses", "gauge"},
      {"sageserve_stream_queued_bytes", "gauge"},
      {"sageserve_request_errors_total", "counter"},
      {"sageserve_request_duration_seconds", "histogram"},
      {"sageserve_request_bytes_total", "counter"},
      {"sageserve_response_bytes_total", "counter"},
      {"sageserve_queue_duration_seconds", "histogram"},
      {"sageserve_queue_dropped_total", "counter"},
      {"sageserve_queue_depth_requests", "gauge"},
      {"sageserve_batches_total", "counter"},
      {"sageserve_batch_splits_total", "counter"},
      {"sageserve_batch_size_requests", "histogram"},
      {"sageserve_batch_size_tokens", "histogram"},
      {"sageserve_batch_compute_duration_seconds", "histogram"},
      {"sageserve_batch_respond_duration_seconds", "histogram"},
      {"sageserve_h2d_duration_seconds", "histogram"},
      {"sageserve_kernel_duration_seconds", "histogram"},
      {"sageserve_d2h_duration_seconds", "histogram"},
      {"sageserve_gpu_memory_used_bytes", "gauge"},
      {"sageserve_gpu_memory_total_bytes", "gauge"},
      {"sageserve_payload_pool_capacity_bytes", "gauge"},
      {"sageserve_payload_pool_in_use_bytes", "gauge"},
      {"sageserve_payload_pool_overflow_total", "counter"},
      {"sageserve_in_flight_requests", "gauge"},
      {"sageserve_build_info", "gauge"},
      {"process_resident_memory_bytes", "gauge"},
      {"process_open_fds", "gauge"},
  };
  EXPECT_EQ(parsed->type, expected);
  for (const auto& [name, type] : expected) EXPECT_FALSE(parsed->help.at(name).empty()) << name;
  // Unlabelled series start at zero rather than being absent.
  EXPECT_EQ(*parsed->Value("sageserve_request_bytes_total"), 0);
  EXPECT_EQ(*parsed->Value("sageserve_queue_depth_requests"), 0);
  EXPECT_EQ(*parsed->Value("sageserve_queue_duration_seconds_count"), 0);
  EXPECT_EQ(*parsed->Value("sageserve_in_flight_requests"), 0);
}

// The process gauges are read at each scrape: more open files and more touched memory show.
TEST(ServerMetrics, ProcessGaugesFollowTheProcess) {
  auto m = ServerMetrics::Create();
  ASSERT_TRUE(m.ok());
  absl::StatusOr<ParsedExposition> before = ParseExposition((*m)->RenderText());
  ASSERT_TRUE(before.ok()) << before.status();
  std::vector<int> fds;
  for (int i = 0; i < 10; ++i) fds.push_back(::open("/dev/null", O_RDONLY));
  std::vector<char> touched(size_t{64} << 20, 1);  // 64 MiB written: resident
  absl::StatusOr<ParsedExposition> after = ParseExposition((*m)->RenderText());
  ASSERT_TRUE(after.ok()) << after.status();
  EXPECT_EQ(*after->Value("process_open_fds"), *before->Value("process_open_fds") + 10);
  EXPECT_GE(*after->Value("process_resident_memory_bytes"),
            *before->Value("process_resident_memory_bytes") + 60.0 * (1 << 20));
  EXPECT_EQ(touched[touched.size() - 1], 1);
  for (int fd : fds) ::close(fd);
  (*m)->SetBuildInfo("1.2.3", "cpu");
  (*m)->AddInFlight(2);
  (*m)->AddInFlight(-1);
  absl::StatusOr<ParsedExposition> last = ParseExposition((*m)->RenderText());
  ASSERT_TRUE(last.ok());
  EXPECT_EQ(*last->Value("sageserve_build_info", {{"version", "1.2.3"}, {"backend", "cpu"}}), 1);
  EXPECT_EQ(*last->Value("sageserve_in_flight_requests"), 1);
}

// The pool reports cumulative overflows; the counter follows them without counting any twice.
TEST(ServerMetrics, PayloadPoolGaugesAndOverflowCounter) {
  auto m = ServerMetrics::Create();
  ASSERT_TRUE(m.ok());
  (*m)->SetPayloadPool("pinned", 512 << 20, 3 << 20, 2);
  (*m)->SetPayloadPool("pinned", 512 << 20, 1 << 20, 2);
  (*m)->SetPayloadPool("pinned", 512 << 20, 0, 5);
  absl::StatusOr<ParsedExposition> parsed = ParseExposition((*m)->RenderText());
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  EXPECT_EQ(*parsed->Value("sageserve_payload_pool_capacity_bytes", {{"memory", "pinned"}}), 512 << 20);
  EXPECT_EQ(*parsed->Value("sageserve_payload_pool_in_use_bytes", {{"memory", "pinned"}}), 0);
  EXPECT_EQ(*parsed->Value("sageserve_payload_pool_overflow_total", {{"memory", "pinned"}}), 5);
}

TEST(ServerMetrics, RecordsRequestsByMethodRecipeAndCode) {
  auto m = ServerMetrics::Create();
  ASSERT_TRUE(m.ok());
  RequestRecord ok;
  ok.recipe = "int8_qk_fp8_pv";
  ok.latency = std::chrono::microseconds(300);
  ok.bytes_in = 1000;
  ok.bytes_out = 500;
  (*m)->RecordRequest(ok);
  (*m)->RecordRequest(ok);
  RequestRecord bad = ok;
  bad.method = "AttendStream";
  bad.code = absl::StatusCode::kInvalidArgument;
  bad.bytes_out = 0;
  (*m)->RecordRequest(bad);
  (*m)->RecordQueued(std::chrono::microseconds(40));
  (*m)->RecordDropped(absl::StatusCode::kDeadlineExceeded);
  (*m)->RecordBatch(BatchRecord{"cuda:0", 3, 384, 3 * 128 * 128, std::chrono::microseconds(900)});
  (*m)->RecordBatchSplit("cuda:0");
  (*m)->RecordStages(StageRecord{"cuda:0", std::chrono::microseconds(100), std::chrono::microseconds(700),
                                 std::chrono::microseconds(50)});
  (*m)->SetQueueDepth(7);
  (*m)->SetGpuMemory("cuda:0", 1 << 30, int64_t{80} << 30);

  absl::StatusOr<ParsedExposition> p = ParseExposition((*m)->RenderText());
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_EQ(*p->Value("sageserve_requests_total",
                      {{"method", "Attend"}, {"recipe", "int8_qk_fp8_pv"}, {"code", "OK"}}),
            2);
  EXPECT_EQ(*p->Value("sageserve_requests_total",
                      {{"method", "AttendStream"}, {"recipe", "int8_qk_fp8_pv"}, {"code", "INVALID_ARGUMENT"}}),
            1);
  EXPECT_EQ(p->Sum("sageserve_request_errors_total"), 1);
  EXPECT_EQ(p->Sum("sageserve_request_errors_total", {{"code", "OK"}}), 0);
  EXPECT_EQ(*p->Value("sageserve_request_bytes_total"), 3000);
  EXPECT_EQ(*p->Value("sageserve_response_bytes_total"), 1000);
  EXPECT_EQ(*p->Value("sageserve_request_duration_seconds_count", {{"method", "Attend"}}), 2);
  EXPECT_EQ(*p->Value("sageserve_queue_duration_seconds_count"), 1);
  EXPECT_EQ(*p->Value("sageserve_queue_dropped_total", {{"code", "DEADLINE_EXCEEDED"}}), 1);
  EXPECT_EQ(*p->Value("sageserve_batches_total", {{"device", "cuda:0"}}), 1);
  EXPECT_EQ(*p->Value("sageserve_batch_splits_total", {{"device", "cuda:0"}}), 1);
  EXPECT_EQ(*p->Value("sageserve_batch_size_requests_sum", {{"device", "cuda:0"}}), 3);
  EXPECT_EQ(*p->Value("sageserve_batch_size_tokens_sum", {{"device", "cuda:0"}}), 384);
  EXPECT_EQ(*p->Value("sageserve_h2d_duration_seconds_count", {{"device", "cuda:0"}}), 1);
  EXPECT_EQ(*p->Value("sageserve_d2h_duration_seconds_count", {{"device", "cuda:0"}}), 1);
  EXPECT_DOUBLE_EQ(*p->Value("sageserve_kernel_duration_seconds_sum", {{"device", "cuda:0"}}), 0.0007);
  EXPECT_EQ(*p->Value("sageserve_queue_depth_requests"), 7);
  EXPECT_EQ(*p->Value("sageserve_gpu_memory_total_bytes", {{"device", "cuda:0"}}), 80.0 * (1 << 30));
}

}  // namespace
}  // namespace sage::server
