#include "tests/server/child_server.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <sstream>
#include <thread>

#include "gtest/gtest.h"

namespace sage::testing {

ChildServer::ChildServer(const std::string& binary, const std::vector<std::string>& extra_args) {
  int fds[2];
  if (pipe(fds) != 0) return;
  std::vector<std::string> args = {binary, "--listen=127.0.0.1:0"};
  args.insert(args.end(), extra_args.begin(), extra_args.end());
  pid_ = fork();
  if (pid_ == 0) {
    dup2(fds[1], STDOUT_FILENO);
    close(fds[0]);
    close(fds[1]);
    std::vector<char*> argv;
    for (std::string& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    execv(argv[0], argv.data());
    _exit(127);
  }
  close(fds[1]);
  stdout_fd_ = fds[0];
  reader_ = std::thread([this] { ReadLoop(); });
  const std::string marker = "listening on port ";
  if (WaitForOutput(marker, 10)) {
    std::string out = output();
    const size_t at = out.find(marker);
    port_ = std::atoi(out.c_str() + at + marker.size());
  }
}

void ChildServer::ReadLoop() {
  char buf[4096];
  for (;;) {
    const ssize_t n = read(stdout_fd_, buf, sizeof(buf));
    if (n <= 0) break;
    std::lock_guard<std::mutex> lock(mu_);
    output_.append(buf, static_cast<size_t>(n));
    cv_.notify_all();
  }
}

bool ChildServer::WaitForOutput(const std::string& text, int timeout_s) {
  std::unique_lock<std::mutex> lock(mu_);
  return cv_.wait_for(lock, std::chrono::seconds(timeout_s), [&] {
    const size_t at = output_.find(text);
    return at != std::string::npos && output_.find('\n', at) != std::string::npos;
  });
}

std::string ChildServer::output() {
  std::lock_guard<std::mutex> lock(mu_);
  return output_;
}

ChildServer::~ChildServer() {
  if (pid_ > 0) {
    kill(pid_, SIGKILL);
    waitpid(pid_, nullptr, 0);
  }
  if (reader_.joinable()) reader_.join();  // EOF once the child is gone.
  if (stdout_fd_ >= 0) close(stdout_fd_);
}

void ChildServer::Signal(int sig) {
  if (pid_ > 0) kill(pid_, sig);
}

int ChildServer::Wait(int timeout_s) {
  if (pid_ <= 0) return -1;
  const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(timeout_s);
  while (std::chrono::steady_clock::now() < until) {
    int status = 0;
    const pid_t r = waitpid(pid_, &status, WNOHANG);
    if (r == pid_) {
      pid_ = -1;
      return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return -1;
}

int RunCommand(const std::string& command, std::string* output) {
  output->clear();
  FILE* f = popen((command + " 2>&1").c_str(), "r");
  if (f == nullptr) return -1;
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof(buf), f)) > 0) output->append(buf, n);
  const int status = pclose(f);
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

std::filesystem::path MakeTestCertificates(const std::string& tag, const std::string& client_cn) {
  const std::filesystem::path dir =
      std::filesystem::path(::testing::TempDir()) / ("sageserve_" + tag + "_" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  const std::string script =
      "set -e; cd '" + dir.string() + "'; "
      "openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.pem -days 2 -subj /CN=test-ca 2>/dev/null; "
      "printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\\n' > server.ext; "
      "openssl req -newkey rsa:2048 -nodes -keyout server.key -out server.csr -subj /CN=localhost 2>/dev/null; "
      "openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out server.pem -days 2 "
      "-extfile server.ext 2>/dev/null; "
      "openssl req -newkey rsa:2048 -nodes -keyout client.key -out client.csr -subj /CN=" + client_cn + " 2>/dev/null; "
      "openssl x509 -req -in client.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out client.pem -days 2 "
      "2>/dev/null; "
      "openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out other.key 2>/dev/null";
  std::string out;
  if (RunCommand("bash -c \"" + script + "\"", &out) != 0) return {};
  return dir;
}

std::string ReadWholeFile(const std::filesystem::path& path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

}  // namespace sage::testing
