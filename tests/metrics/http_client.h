// A blocking one-shot HTTP/1.1 client over a loopback socket, for tests of the /metrics endpoint.
#pragma once

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"

namespace sage::metrics::testing {

struct HttpResponse {
  int status = 0;
  std::string headers;  // Status line and headers, CRLF-separated.
  std::string body;
};

// Sends `raw` to 127.0.0.1:port and reads until the server closes the connection.
inline absl::StatusOr<std::string> HttpExchange(int port, absl::string_view raw) {
  const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return absl::InternalError("socket");
  timeval timeout{10, 0};
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof(timeout));
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    ::close(fd);
    return absl::UnavailableError(absl::StrCat("connect to port ", port, " failed"));
  }
  size_t sent = 0;
  while (sent < raw.size()) {
    const ssize_t n = ::send(fd, raw.data() + sent, raw.size() - sent, MSG_NOSIGNAL);
    if (n <= 0) break;
    sent += static_cast<size_t>(n);
  }
  std::string response;
  char buf[4096];
  for (;;) {
    const ssize_t n = ::recv(fd, buf, sizeof(buf), 0);
    if (n <= 0) break;
    response.append(buf, static_cast<size_t>(n));
  }
  ::close(fd);
  return response;
}

inline absl::StatusOr<HttpResponse> HttpRequest(int port, absl::string_view method, absl::string_view path) {
  absl::StatusOr<std::string> raw = HttpExchange(
      port, absl::StrCat(method, " ", path, " HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: test\r\n\r\n"));
  if (!raw.ok()) return raw.status();
  const size_t split = raw->find("\r\n\r\n");
  if (split == std::string::npos) return absl::DataLossError(absl::StrCat("no header end in '", *raw, "'"));
  HttpResponse r;
  r.headers = raw->substr(0, split);
  r.body = raw->substr(split + 4);
  // "HTTP/1.1 200 OK"
  if (r.headers.size() < 12 || !absl::SimpleAtoi(absl::string_view(r.headers).substr(9, 3), &r.status)) {
    return absl::DataLossError(absl::StrCat("bad status line in '", r.headers, "'"));
  }
  return r;
}

inline absl::StatusOr<HttpResponse> HttpGet(int port, absl::string_view path) {
  return HttpRequest(port, "GET", path);
}

}  // namespace sage::metrics::testing
