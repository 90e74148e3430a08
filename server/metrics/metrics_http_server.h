// A minimal HTTP/1.1 endpoint for Prometheus scrapes, on its own port: GET /metrics answers the
// text exposition, any other path 404, any other method 405. POSIX sockets and one background
// thread serving one connection at a time (a scrape every few seconds needs no more); every
// response closes its connection. Shutdown wakes the thread through a pipe and joins it.
#pragma once

#include <atomic>
#include <chrono>
#include <functional>
#include <memory>
#include <string>
#include <thread>

#include "absl/status/statusor.h"

namespace sage::metrics {

struct MetricsHttpServerOptions {
  // "host:port"; port 0 picks a free port (see port()). "0.0.0.0:9090", "127.0.0.1:0", "[::1]:0".
  std::string listen_address = "0.0.0.0:9090";
  // A client that has not sent its request headers within this time is disconnected.
  std::chrono::milliseconds read_timeout{2000};
  // Produces the body of GET /metrics; called on the server thread.
  std::function<std::string()> render;
};

class MetricsHttpServer {
 public:
  // Binds and listens before returning, so the port is ready to scrape (and port() is known).
  static absl::StatusOr<std::unique_ptr<MetricsHttpServer>> Start(MetricsHttpServerOptions options);
  ~MetricsHttpServer();  // Shutdown().

  MetricsHttpServer(const MetricsHttpServer&) = delete;
  MetricsHttpServer& operator=(const MetricsHttpServer&) = delete;

  int port() const { return port_; }
  // Stops accepting, closes the listening socket and joins the thread. Idempotent.
  void Shutdown();
  // Requests answered so far (any status).
  int64_t requests_served() const { return served_.load(std::memory_order_relaxed); }

 private:
  MetricsHttpServer(MetricsHttpServerOptions options, int listen_fd, int port, int wake_read,
                    int wake_write);
  void Serve();
  void HandleConnection(int fd);

  const MetricsHttpServerOptions options_;
  int listen_fd_;
  const int port_;
  int wake_read_;   // Readable once Shutdown() has been called.
  int wake_write_;
  std::atomic<bool> stopping_{false};
  std::atomic<int64_t> served_{0};
  std::thread thread_;
};

}  // namespace sage::metrics
