// The /metrics endpoint over a real loopback socket.
#include "server/metrics/metrics_http_server.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <string>
#include <thread>
#include <vector>

#include "gtest/gtest.h"
#include "server/metrics/prometheus_text.h"
#include "tests/metrics/http_client.h"
#include "tests/metrics/prometheus_parse.h"

namespace sage::metrics {
namespace {

using testing::HttpGet;
using testing::HttpRequest;

class MetricsHttpServerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto c = registry_.AddCounter("test_scrapes_total", "Scrapes.", {});
    ASSERT_TRUE(c.ok());
    scrapes_ = *c;
    MetricsHttpServerOptions options;
    options.listen_address = "127.0.0.1:0";
    options.read_timeout = std::chrono::milliseconds(300);
    options.render = [this] {
      scrapes_->Get().Increment();
      return RenderPrometheusText(registry_);
    };
    auto server = MetricsHttpServer::Start(std::move(options));
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = *std::move(server);
  }

  Registry registry_;
  CounterFamily* scrapes_ = nullptr;
  std::unique_ptr<MetricsHttpServer> server_;
};

TEST_F(MetricsHttpServerTest, EphemeralPortIsReported) { EXPECT_GT(server_->port(), 0); }

TEST_F(MetricsHttpServerTest, ServesTheExpositionOnGetMetrics) {
  for (int i = 1; i <= 3; ++i) {
    absl::StatusOr<testing::HttpResponse> r = HttpGet(server_->port(), "/metrics");
    ASSERT_TRUE(r.ok()) << r.status();
    EXPECT_EQ(r->status, 200) << r->headers;
    EXPECT_NE(r->headers.find("Content-Type: text/plain; version=0.0.4"), std::string::npos) << r->headers;
    EXPECT_NE(r->headers.find(absl::StrCat("Content-Length: ", r->body.size())), std::string::npos);
    absl::StatusOr<testing::ParsedExposition> parsed = testing::ParseExposition(r->body);
    ASSERT_TRUE(parsed.ok()) << parsed.status();
    EXPECT_EQ(*parsed->Value("test_scrapes_total"), i);  // Rendered after this scrape's increment.
  }
  EXPECT_EQ(server_->requests_served(), 3);
}

TEST_F(MetricsHttpServerTest, QueryStringIsIgnoredAndHeadHasNoBody) {
  absl::StatusOr<testing::HttpResponse> r = HttpGet(server_->port(), "/metrics?name[]=x");
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->status, 200);
  r = HttpRequest(server_->port(), "HEAD", "/metrics");
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->status, 200);
  EXPECT_TRUE(r->body.empty());
}

TEST_F(MetricsHttpServerTest, OtherPathsAre404AndOtherMethods405) {
  absl::StatusOr<testing::HttpResponse> r = HttpGet(server_->port(), "/");
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->status, 404);
  r = HttpGet(server_->port(), "/metricsx");
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->status, 404);
  r = HttpRequest(server_->port(), "POST", "/metrics");
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->status, 405);
  EXPECT_NE(r->headers.find("Allow: GET, HEAD"), std::string::npos);
  absl::StatusOr<std::string> raw = testing::HttpExchange(server_->port(), "garbage\r\n\r\n");
  ASSERT_TRUE(raw.ok());
  EXPECT_EQ(raw->substr(0, 12), "HTTP/1.1 400");
}

TEST_F(MetricsHttpServerTest, SilentClientTimesOutAndOthersAreServedAfterwards) {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(server_->port()));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
  ASSERT_EQ(::send(fd, "GET /met", 8, 0), 8);  // ...and never finishes the request.
  absl::StatusOr<testing::HttpResponse> r = HttpGet(server_->port(), "/metrics");
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->status, 200);
  char buf[16];
  EXPECT_EQ(::recv(fd, buf, sizeof(buf), 0), 0);  // The server hung up on the silent one.
  ::close(fd);
}

TEST_F(MetricsHttpServerTest, ConcurrentScrapesAllSucceed) {
  std::atomic<int> ok{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&] {
      for (int i = 0; i < 10; ++i) {
        absl::StatusOr<testing::HttpResponse> r = HttpGet(server_->port(), "/metrics");
        if (r.ok() && r->status == 200) ok.fetch_add(1);
      }
    });
  }
  for (std::thread& t : threads) t.join();
  EXPECT_EQ(ok.load(), 40);
}

// Idle connections must not hold up a scrape on another one (they used to be served one at a time,
// each until its read timeout: 8 idle sockets cost 16 s, past Prometheus' 10 s scrape timeout).
TEST(MetricsHttpServerConcurrency, IdleConnectionsDoNotDelayAScrape) {
  MetricsHttpServerOptions options;
  options.listen_address = "127.0.0.1:0";  // Default read_timeout (2 s).
  options.render = [] { return std::string("up 1\n"); };
  auto server = MetricsHttpServer::Start(std::move(options));
  ASSERT_TRUE(server.ok()) << server.status();
  const int port = (*server)->port();
  std::vector<int> idle;
  for (int i = 0; i < 8; ++i) {
    const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(static_cast<uint16_t>(port));
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ASSERT_EQ(::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
    idle.push_back(fd);  // Sends nothing.
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(50));  // Let the server accept them first.
  const auto start = std::chrono::steady_clock::now();
  absl::StatusOr<testing::HttpResponse> r = HttpGet(port, "/metrics");
  const auto took = std::chrono::steady_clock::now() - start;
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->status, 200);
  EXPECT_EQ(r->body, "up 1\n");
  EXPECT_LT(took, std::chrono::seconds(1))
      << std::chrono::duration_cast<std::chrono::milliseconds>(took).count() << " ms";
  for (int fd : idle) ::close(fd);
}

TEST(MetricsHttpServerConcurrency, OversizedRequestIs431) {
  MetricsHttpServerOptions options;
  options.listen_address = "127.0.0.1:0";
  options.max_request_bytes = 1024;
  options.render = [] { return std::string("up 1\n"); };
  auto server = MetricsHttpServer::Start(std::move(options));
  ASSERT_TRUE(server.ok()) << server.status();
  absl::StatusOr<std::string> raw = testing::HttpExchange(
      (*server)->port(), absl::StrCat("GET /metrics HTTP/1.1\r\nX-Pad: ", std::string(4096, 'a'), "\r\n\r\n"));
  ASSERT_TRUE(raw.ok()) << raw.status();
  EXPECT_EQ(raw->substr(0, 12), "HTTP/1.1 431") << *raw;
}

TEST_F(MetricsHttpServerTest, ShutdownClosesThePortAndIsIdempotent) {
  const int port = server_->port();
  server_->Shutdown();
  server_->Shutdown();
  EXPECT_FALSE(HttpGet(port, "/metrics").ok());
  server_.reset();
}

TEST(MetricsHttpServerStart, RejectsBadAddressesAndBusyPorts) {
  MetricsHttpServerOptions options;
  options.render = [] { return std::string(); };
  options.listen_address = "no-port";
  EXPECT_FALSE(MetricsHttpServer::Start(options).ok());
  options.listen_address = "127.0.0.1:99999";
  EXPECT_FALSE(MetricsHttpServer::Start(options).ok());
  options.listen_address = "127.0.0.1:0";
  options.render = nullptr;
  EXPECT_FALSE(MetricsHttpServer::Start(options).ok());

  options.render = [] { return std::string(); };
  auto first = MetricsHttpServer::Start(options);
  ASSERT_TRUE(first.ok()) << first.status();
  options.listen_address = absl::StrCat("127.0.0.1:", (*first)->port());
  EXPECT_FALSE(MetricsHttpServer::Start(options).ok());  // Address in use.
}

}  // namespace
}  // namespace sage::metrics
