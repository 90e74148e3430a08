// Builds a request with the installed client library and calls a server that is not there: proves
// headers, link and runtime work from outside the sageserve tree.
#include <cstdio>
#include <vector>

#include "sageserve/client/client.h"
#include "sageserve/client/tensor.h"

int main() {
  sageserve::ClientOptions options;
  options.target = "127.0.0.1:1";  // Nothing listens on port 1.
  options.deadline = std::chrono::milliseconds(500);
  auto client = sageserve::Client::Create(options);
  if (!client.ok()) {
    std::fprintf(stderr, "Create: %s\n", client.status().ToString().c_str());
    return 1;
  }
  const sageserve::Shape3 shape{16, 2, 64};
  std::vector<uint16_t> data(static_cast<size_t>(shape.numel()), sageserve::FloatToFp16(0.5f));
  sageserve::v1::AttendRequest request;
  request.set_request_id("consumer");
  for (auto* t : {request.mutable_q(), request.mutable_k(), request.mutable_v()}) {
    if (!sageserve::SetTensorFp16(data, shape, t).ok()) return 1;
  }
  auto response = (*client)->Attend(request);
  if (response.ok()) {
    std::fprintf(stderr, "unexpected success\n");
    return 1;
  }
  std::printf("consumer ok: request %zu bytes; call failed as expected: %s\n", request.ByteSizeLong(),
              response.status().ToString().c_str());
  return 0;
}
