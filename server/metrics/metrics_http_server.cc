#include "server/metrics/metrics_http_server.h"

#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/types.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <utility>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "server/metrics/http_request.h"
#include "server/metrics/prometheus_text.h"

namespace sage::metrics {
namespace {

constexpr int kListenBacklog = 16;

struct HostPort {
  std::string host;  // Empty: every interface.
  std::string port;
};

absl::StatusOr<HostPort> SplitHostPort(absl::string_view address) {
  const size_t colon = address.rfind(':');
  if (colon == absl::string_view::npos) {
    return absl::InvalidArgumentError(absl::StrCat("metrics address '", address, "' is not host:port"));
  }
  HostPort hp;
  absl::string_view host = address.substr(0, colon);
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') host = host.substr(1, host.size() - 2);
  hp.host = std::string(host);
  hp.port = std::string(address.substr(colon + 1));
  int port = 0;
  if (!absl::SimpleAtoi(hp.port, &port) || port < 0 || port > 65535) {
    return absl::InvalidArgumentError(absl::StrCat("metrics address '", address, "': bad port"));
  }
  return hp;
}

absl::Status Errno(absl::string_view what) {
  return absl::UnavailableError(absl::StrCat(what, ": ", std::strerror(errno)));
}

void CloseFd(int& fd) {
  if (fd >= 0) ::close(fd);
  fd = -1;
}

std::string Response(absl::string_view status, absl::string_view content_type, absl::string_view body,
                     absl::string_view extra_headers, bool include_body) {
  std::string out = absl::StrCat("HTTP/1.1 ", status, "\r\nContent-Type: ", content_type,
                                 "\r\nContent-Length: ", body.size(), "\r\n", extra_headers,
                                 "Connection: close\r\n\r\n");
  if (include_body) out.append(body.data(), body.size());
  return out;
}

}  // namespace

absl::StatusOr<std::unique_ptr<MetricsHttpServer>> MetricsHttpServer::Start(
    MetricsHttpServerOptions options) {
  if (!options.render) return absl::InvalidArgumentError("metrics server: render callback is empty");
  absl::StatusOr<HostPort> hp = SplitHostPort(options.listen_address);
  if (!hp.ok()) return hp.status();

  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
  addrinfo* found = nullptr;
  const int gai = ::getaddrinfo(hp->host.empty() ? nullptr : hp->host.c_str(), hp->port.c_str(), &hints, &found);
  if (gai != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("metrics address '", options.listen_address, "': ", ::gai_strerror(gai)));
  }
  int fd = -1;
  absl::Status last = absl::UnavailableError("no address to bind");
  for (addrinfo* ai = found; ai != nullptr && fd < 0; ai = ai->ai_next) {
    fd = ::socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC | SOCK_NONBLOCK, ai->ai_protocol);  // accept4 loops until EAGAIN
    if (fd < 0) {
      last = Errno("socket");
      continue;
    }
    const int one = 1;
    ::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (::bind(fd, ai->ai_addr, ai->ai_addrlen) != 0) {
      last = Errno(absl::StrCat("bind ", options.listen_address));
      CloseFd(fd);
      continue;
    }
    if (::listen(fd, kListenBacklog) != 0) {
      last = Errno("listen");
      CloseFd(fd);
    }
  }
  ::freeaddrinfo(found);
  if (fd < 0) return last;

  sockaddr_storage bound{};
  socklen_t len = sizeof(bound);
  if (::getsockname(fd, reinterpret_cast<sockaddr*>(&bound), &len) != 0) {
    absl::Status s = Errno("getsockname");
    CloseFd(fd);
    return s;
  }
  const int port = bound.ss_family == AF_INET6
                       ? ntohs(reinterpret_cast<const sockaddr_in6*>(&bound)->sin6_port)
                       : ntohs(reinterpret_cast<const sockaddr_in*>(&bound)->sin_port);
  int wake[2];
  if (::pipe2(wake, O_CLOEXEC | O_NONBLOCK) != 0) {
    absl::Status s = Errno("pipe2");
    CloseFd(fd);
    return s;
  }
  return std::unique_ptr<MetricsHttpServer>(
      new MetricsHttpServer(std::move(options), fd, port, wake[0], wake[1]));
}

MetricsHttpServer::MetricsHttpServer(MetricsHttpServerOptions options, int listen_fd, int port,
                                     int wake_read, int wake_write)
    : options_(std::move(options)),
      listen_fd_(listen_fd),
      port_(port),
      wake_read_(wake_read),
      wake_write_(wake_write) {
  thread_ = std::thread([this] { Serve(); });
}

MetricsHttpServer::~MetricsHttpServer() { Shutdown(); }

void MetricsHttpServer::Shutdown() {
  if (stopping_.exchange(true)) {
    if (thread_.joinable()) thread_.join();  // A concurrent caller waits for the first one.
    return;
  }
  const char byte = 1;
  while (::write(wake_write_, &byte, 1) < 0 && errno == EINTR) {
  }
  if (thread_.joinable()) thread_.join();
  CloseFd(listen_fd_);
  CloseFd(wake_read_);
  CloseFd(wake_write_);
}

struct MetricsHttpServer::Connection {
  int fd = -1;
  std::chrono::steady_clock::time_point deadline;  // Of the request, then of the response.
  std::string request;
  std::string response;  // Non-empty once the request is complete.
  size_t sent = 0;
};

void MetricsHttpServer::Serve() {
  using SteadyClock = std::chrono::steady_clock;
  std::vector<Connection> conns;
  std::vector<pollfd> fds;
  const size_t max_connections = static_cast<size_t>(std::max(1, options_.max_connections));
  for (;;) {
    // [0] the wake pipe, [1] the listener (polled only while there is room), then each connection.
    fds.clear();
    fds.push_back({wake_read_, POLLIN, 0});
    fds.push_back({listen_fd_, static_cast<short>(conns.size() < max_connections ? POLLIN : 0), 0});
    auto now = SteadyClock::now();
    int timeout_ms = -1;
    for (const Connection& c : conns) {
      fds.push_back({c.fd, static_cast<short>(c.response.empty() ? POLLIN : POLLOUT), 0});
      const auto left = std::chrono::ceil<std::chrono::milliseconds>(c.deadline - now).count();
      const int left_ms = static_cast<int>(std::clamp<int64_t>(left, 0, 1 << 30));
      if (timeout_ms < 0 || left_ms < timeout_ms) timeout_ms = left_ms;
    }
    const int n = ::poll(fds.data(), fds.size(), timeout_ms);
    if (n < 0 && errno != EINTR) break;
    if ((fds[0].revents & POLLIN) != 0 || stopping_.load()) break;
    now = SteadyClock::now();
    // Serve the open connections; fds[i + 2] is conns[i] (new ones are appended after this loop).
    size_t kept = 0;
    for (size_t i = 0; i < conns.size(); ++i) {
      Connection& c = conns[i];
      const short revents = n > 0 ? fds[i + 2].revents : 0;
      bool keep = true;
      if (revents != 0) {
        if (c.response.empty()) {
          keep = ReadRequest(c);
          if (keep && !c.response.empty()) {
            c.deadline = now + options_.read_timeout;
            keep = WriteResponse(c);  // Most responses fit the socket buffer at once.
          }
        } else {
          keep = WriteResponse(c);
        }
      }
      if (keep && now >= c.deadline) keep = false;  // Silent client, or one not reading its response.
      if (!keep) {
        CloseFd(c.fd);
        continue;
      }
      if (kept != i) conns[kept] = std::move(c);
      ++kept;
    }
    conns.resize(kept);
    if (n > 0 && (fds[1].revents & POLLIN) != 0) {
      while (conns.size() < max_connections) {
        const int conn = ::accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC | SOCK_NONBLOCK);
        if (conn < 0) break;  // EAGAIN (none left), EINTR, ECONNABORTED, EMFILE...: the next poll retries.
        Connection c;
        c.fd = conn;
        c.deadline = now + options_.read_timeout;
        conns.push_back(std::move(c));
      }
    }
  }
  for (Connection& c : conns) CloseFd(c.fd);
}

bool MetricsHttpServer::ReadRequest(Connection& c) {
  for (;;) {
    char buf[2048];
    const ssize_t got = ::recv(c.fd, buf, sizeof(buf), 0);
    if (got < 0 && errno == EINTR) continue;
    if (got < 0) return errno == EAGAIN || errno == EWOULDBLOCK;  // Nothing more for now, or an error.
    if (got == 0) return false;  // Peer closed before finishing its request.
    c.request.append(buf, static_cast<size_t>(got));
    if (c.request.find("\r\n\r\n") != std::string::npos) {
      c.response = Respond(c.request);
      c.request.clear();
      return true;
    }
    if (c.request.size() > options_.max_request_bytes) {
      served_.fetch_add(1, std::memory_order_relaxed);
      c.response = Response("431 Request Header Fields Too Large", "text/plain", "", "", false);
      c.request.clear();
      return true;
    }
  }
}

bool MetricsHttpServer::WriteResponse(Connection& c) {
  while (c.sent < c.response.size()) {
    const ssize_t n = ::send(c.fd, c.response.data() + c.sent, c.response.size() - c.sent, MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return true;  // The rest when writable.
    if (n <= 0) return false;  // Peer gone.
    c.sent += static_cast<size_t>(n);
  }
  return false;  // All sent: every response closes its connection.
}

std::string MetricsHttpServer::Respond(const std::string& request) {
  served_.fetch_add(1, std::memory_order_relaxed);
  const MetricsHttpAnswer answer = RouteMetricsRequest(request);
  switch (answer.status) {
    case MetricsHttpStatus::kBadRequest:
      return Response("400 Bad Request", "text/plain", "bad request\n", "", answer.include_body);
    case MetricsHttpStatus::kNotFound:
      return Response("404 Not Found", "text/plain", "not found; try /metrics\n", "", answer.include_body);
    case MetricsHttpStatus::kMethodNotAllowed:
      return Response("405 Method Not Allowed", "text/plain", "use GET\n", "Allow: GET, HEAD\r\n",
                      answer.include_body);
    case MetricsHttpStatus::kOk:
      break;
  }
  const std::string body = options_.render();
  return Response("200 OK", kPrometheusContentType, body, "", answer.include_body);
}

}  // namespace sage::metrics
