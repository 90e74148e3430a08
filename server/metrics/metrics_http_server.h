// A minimal HTTP/1.1 endpoint for Prometheus scrapes, on its own port: GET /metrics answers the
// text exposition, any other path 404, any other method 405. POSIX sockets and one background
// thread that polls every open connection at once (non-blocking sockets), so idle or slow clients
// never delay a scrape on another connection; every response closes its connection. Shutdown wakes
// the thread through a pipe and joins it.
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
  // A client that has not sent its request headers within this time of connecting is disconnected;
  // so is one that has not taken its whole response within this time of it being ready.
  std::chrono::milliseconds read_timeout{2000};
  // Connections open at once; beyond this, new ones wait in the listen backlog until one closes.
  int max_connections = 64;
  // A request whose headers exceed this is answered 431 and closed.
  size_t max_request_bytes = 8192;
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
  struct Connection;
  void Serve();
  // Reads what `c` has sent; once its headers are complete, builds the response. False: close it.
  bool ReadRequest(Connection& c);
  // Writes what the socket takes of the response. False: done or failed (close it).
  bool WriteResponse(Connection& c);
  std::string Respond(const std::string& request);

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
