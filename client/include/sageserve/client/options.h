// How a sageserve::Client connects.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

namespace sageserve {

enum class TransportSecurity {
  kInsecure,  // Plaintext: loopback and trusted networks.
  kTls,       // TLS with the roots below (or the system roots when empty).
};

struct TlsOptions {
  std::string root_certs_pem;   // Empty: system default roots.
  std::string client_key_pem;   // Both set: mutual TLS.
  std::string client_cert_pem;
};

// One integer gRPC channel argument (grpc/impl/codegen/grpc_types.h names them).
struct ChannelArg {
  std::string name;
  int value = 0;
};

struct ClientOptions {
  std::string target = "127.0.0.1:50051";  // Any gRPC target: "host:port", "dns:///svc:port", ...
  TransportSecurity security = TransportSecurity::kInsecure;
  TlsOptions tls;
  // Per unary call; zero means no deadline. Streams take theirs from StreamOptions.
  std::chrono::milliseconds deadline{30000};
  // Receive limit; gRPC's default of 4 MiB is far too small for attention tensors.
  int64_t max_message_bytes = int64_t{512} << 20;
  // TCP connections this client opens and spreads its calls over, round robin (1..256). With 1,
  // gRPC may share the connection with other clients of the same target and settings. One HTTP/2
  // connection moves ~2.5 GB/s on loopback (its reads and writes run on one thread at a time), so
  // clients sending large tensors from many threads go faster on several (docs/BENCHMARKS.md).
  int connections = 1;
  // Extra integer gRPC channel arguments, e.g. {"grpc.http2.max_frame_size", 1 << 20}. Set after
  // the library's own, so they override them. The transport knobs of docs/RUNTIME.md, "Transport".
  std::vector<ChannelArg> channel_args;
  // Attempts per Attend call (1..5; 1 = no retries). Above 1, gRPC retries a call that the server
  // refused with RESOURCE_EXHAUSTED because its queue was full, after the delay the server asks for
  // (its retry pushback, 10 ms), and one that got UNAVAILABLE, with exponential backoff from 10 ms.
  // Other RESOURCE_EXHAUSTED errors are never retried (the server says so). Requests up to
  // retry_buffer_bytes are held for retrying; a larger one is sent once.
  int max_attempts = 1;
  int64_t retry_buffer_bytes = int64_t{16} << 20;
  // Access token of a server started with --token_file, sent on every call of every stub on this
  // client's channels as metadata `authorization: Bearer <token>`. Empty: none (servers without a
  // token file, or a client certificate mapped to an identity). Printable ASCII, no spaces.
  // Over plaintext anyone on the path can read it: use TLS beyond loopback.
  std::string token;
  // Called with the load the server reports (trailing metadata `sageserve-load`: its requests in
  // flight) after every call on this client's channels that carries it; from gRPC's threads, so
  // it must be quick and thread-safe. Empty: not read. sageserve::ClusterClient sets it.
  std::function<void(int)> on_load;
};

struct StreamOptions {
  std::chrono::milliseconds deadline{0};  // Whole-stream deadline; zero means none.
};

}  // namespace sageserve
