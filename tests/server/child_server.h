// Runs the real `sageserve` binary as a child process on a free port (for signal and third-party
// client tests).
#pragma once

#include <sys/types.h>

#include <condition_variable>
#include <filesystem>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

namespace sage::testing {

class ChildServer {
 public:
  // Starts `binary` with --listen=127.0.0.1:0 plus `extra_args` and waits for its port line.
  // port() is 0 when that failed.
  ChildServer(const std::string& binary, const std::vector<std::string>& extra_args);
  ~ChildServer();  // SIGKILL if still running.

  int port() const { return port_; }
  std::string target() const { return "127.0.0.1:" + std::to_string(port_); }
  void Signal(int sig);
  // Waits for exit; returns the exit code, or -1 (killed by a signal / timeout after timeout_s).
  int Wait(int timeout_s);
  // Waits until the child's stdout (where its log goes) contains `text`.
  bool WaitForOutput(const std::string& text, int timeout_s);
  std::string output();

 private:
  void ReadLoop();

  pid_t pid_ = -1;
  int port_ = 0;
  int stdout_fd_ = -1;
  std::thread reader_;  // Drains stdout so a chatty child never blocks on a full pipe.
  std::mutex mu_;
  std::condition_variable cv_;
  std::string output_;
};

// Runs a shell command, returns its exit status and captures stdout+stderr.
int RunCommand(const std::string& command, std::string* output);

// Made with the openssl CLI in a fresh directory under the test temp dir named by `tag`: a CA
// (ca.pem), a server certificate for 127.0.0.1 and localhost (server.pem, server.key), a client
// certificate of common name `client_cn` (client.pem, client.key) and a key that belongs to no
// certificate (other.key). Empty when the openssl CLI is missing or fails.
std::filesystem::path MakeTestCertificates(const std::string& tag, const std::string& client_cn);
// The whole file; empty when it cannot be read.
std::string ReadWholeFile(const std::filesystem::path& path);

}  // namespace sage::testing
