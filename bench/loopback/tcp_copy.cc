// The ceiling for `sagectl bench` on loopback: how fast one TCP connection moves bytes through the
// kernel with no gRPC, protobuf or attention in the way. An echo server returns every byte; the
// client writes `--mib` MiB in 1 MiB chunks while a second thread reads the echo back.
// Prints one-way and round-trip (sent + received) GB/s, the same accounting `sagectl bench` uses.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

namespace {

constexpr size_t kChunk = size_t{1} << 20;

bool WriteAll(int fd, const char* p, size_t n) {
  while (n > 0) {
    const ssize_t w = write(fd, p, n);
    if (w <= 0) return false;
    p += w;
    n -= static_cast<size_t>(w);
  }
  return true;
}

void Echo(int listen_fd) {
  const int fd = accept(listen_fd, nullptr, nullptr);
  std::vector<char> buf(kChunk);
  for (;;) {
    const ssize_t r = read(fd, buf.data(), buf.size());
    if (r <= 0 || !WriteAll(fd, buf.data(), static_cast<size_t>(r))) break;
  }
  close(fd);
}

}  // namespace

int main(int argc, char** argv) {
  size_t mib = 4096;
  for (int i = 1; i < argc; ++i) {
    if (std::strncmp(argv[i], "--mib=", 6) == 0) mib = std::strtoull(argv[i] + 6, nullptr, 10);
  }
  const int listen_fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = 0;  // Any free port.
  socklen_t len = sizeof(addr);
  if (bind(listen_fd, reinterpret_cast<sockaddr*>(&addr), len) != 0 || listen(listen_fd, 1) != 0 ||
      getsockname(listen_fd, reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
    std::perror("listen");
    return 1;
  }
  std::thread server(Echo, listen_fd);
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    std::perror("connect");
    return 1;
  }
  const size_t total = mib * kChunk;
  const auto start = std::chrono::steady_clock::now();
  std::thread reader([&] {
    std::vector<char> buf(kChunk);
    size_t got = 0;
    while (got < total) {
      const ssize_t r = read(fd, buf.data(), buf.size());
      if (r <= 0) break;
      got += static_cast<size_t>(r);
    }
  });
  std::vector<char> chunk(kChunk, 'x');
  for (size_t sent = 0; sent < total; sent += kChunk) {
    if (!WriteAll(fd, chunk.data(), kChunk)) break;
  }
  reader.join();
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  shutdown(fd, SHUT_WR);
  server.join();
  close(fd);
  close(listen_fd);
  std::printf("loopback TCP echo: %zu MiB each way in %.3f s: %.2f GB/s one way, %.2f GB/s sent+received\n",
              mib, s, static_cast<double>(total) / s / 1e9, 2.0 * static_cast<double>(total) / s / 1e9);
  return 0;
}
