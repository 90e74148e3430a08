// LogField (server/util/log_field.h): client text made safe for one log line.
#include "server/util/log_field.h"

#include <memory>
#include <sstream>
#include <string>

#include "absl/status/status.h"
#include "gtest/gtest.h"
#include "server/core/attend_pipeline.h"
#include "spdlog/sinks/ostream_sink.h"
#include "spdlog/spdlog.h"

namespace sage::server {
namespace {

TEST(LogField, PrintableTextIsUnchanged) {
  EXPECT_EQ(LogField("req-42_a.b:c/d e"), "req-42_a.b:c/d e");
  EXPECT_EQ(LogField(""), "");
}

TEST(LogField, LineBreaksCannotForgeALogLine) {
  const std::string forged = "x\n[2024-01-01 00:00:00.000] [error] forged\r\n";
  const std::string out = LogField(forged);
  EXPECT_EQ(out.find('\n'), std::string::npos);
  EXPECT_EQ(out.find('\r'), std::string::npos);
  EXPECT_EQ(out, "x\\n[2024-01-01 00:00:00.000] [error] forged\\r\\n");
}

TEST(LogField, ControlBytesNonAsciiQuotesAndBackslashesAreEscaped) {
  EXPECT_EQ(LogField(std::string("a\0b", 3)), "a\\x00b");
  EXPECT_EQ(LogField("\t\x1b[31mred\x7f"), "\\t\\x1b[31mred\\x7f");
  EXPECT_EQ(LogField("caf\xc3\xa9"), "caf\\xc3\\xa9");
  EXPECT_EQ(LogField("it's \"quoted\" \\ here"), "it\\'s \\\"quoted\\\" \\\\ here");
}

TEST(LogField, LongTextIsCutAndItsSizeGiven) {
  const std::string id(1 << 20, 'a');  // A 1 MiB request id.
  const std::string out = LogField(id);
  EXPECT_EQ(out, std::string(kLogFieldMaxBytes, 'a') + "...(1048576 bytes)");
  EXPECT_EQ(LogField(std::string(128, 'b')), std::string(128, 'b'));  // Exactly the limit: not cut.
  EXPECT_EQ(LogField("abcdef", 3), "abc...(6 bytes)");
  // The cut counts input bytes; escapes may lengthen what is shown, but never past 4 bytes each.
  const std::string model(100000, '\n');  // A 100 KB model name of line breaks.
  const std::string m = LogField(model);
  EXPECT_EQ(m, [] {
    std::string s;
    for (size_t i = 0; i < kLogFieldMaxBytes; ++i) s += "\\n";
    return s + "...(100000 bytes)";
  }());
  EXPECT_LE(LogField(std::string(5000, '\x01')).size(), 4 * kLogFieldMaxBytes + 32);
}

// What the server logs for a refused request: one line, the id escaped and cut short.
TEST(LogField, ThePipelineLogsARejectedRequestOnOneLine) {
  std::ostringstream captured;
  auto logger = std::make_shared<spdlog::logger>("capture", std::make_shared<spdlog::sinks::ostream_sink_st>(captured));
  logger->set_pattern("%v");
  const std::shared_ptr<spdlog::logger> previous = spdlog::default_logger();
  spdlog::set_default_logger(logger);
  BackendInfo backend;
  AttendPipeline pipeline(/*scheduler=*/nullptr, &backend, RequestLimits{});
  const std::string id = "evil\n[error] forged line" + std::string(1 << 20, 'x');
  pipeline.Reject(AttendMethod::kStream, id,
                  absl::NotFoundError("layer_key.model: no model 'm\r\nx'"), Clock::now(), 0);
  spdlog::set_default_logger(previous);
  const std::string out = captured.str();
  ASSERT_FALSE(out.empty());
  EXPECT_EQ(out.find('\n'), out.size() - 1) << "more than one line: " << out.substr(0, 300);
  EXPECT_EQ(out.find('\r'), std::string::npos);
  EXPECT_LT(out.size(), 1024u);
  EXPECT_NE(out.find("evil\\n[error] forged line"), std::string::npos) << out;
  EXPECT_NE(out.find("bytes)"), std::string::npos) << out;
}

}  // namespace
}  // namespace sage::server
