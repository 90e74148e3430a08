// Machine-readable error details: ToGrpcStatus attaches google.rpc.BadRequest (the field an
// INVALID_ARGUMENT names), RetryInfo (a full queue) and ResourceInfo (the region or model an error is
// about) in grpc-status-details-bin, and a client sees them on the wire with its own copy of the
// google.rpc messages, next to the unchanged code and message.
#include <grpcpp/grpcpp.h>

#include <chrono>
#include <string>

#include "google/rpc/error_details.pb.h"
#include "google/rpc/status.pb.h"
#include "gtest/gtest.h"
#include "sageserve/client/stream_session.h"
#include "sageserve/v1/attention_service.grpc.pb.h"
#include "sageserve/v1/shared_memory.grpc.pb.h"
#include "server/frontend/grpc/status_mapping.h"
#include "server/util/status_details.h"
#include "tests/server/test_support.h"

namespace sage::testing {
namespace {
namespace v1 = ::sageserve::v1;
using namespace std::chrono_literals;

google::rpc::Status Details(const grpc::Status& s) {
  google::rpc::Status rich;
  EXPECT_TRUE(rich.ParseFromString(s.error_details())) << "details do not parse";
  EXPECT_EQ(rich.code(), static_cast<int>(s.error_code()));
  EXPECT_EQ(rich.message(), s.error_message());
  return rich;
}

template <class T>
bool Find(const google::rpc::Status& rich, T* out) {
  for (const google::protobuf::Any& any : rich.details()) {
    if (any.UnpackTo(out)) return true;
  }
  return false;
}

// The BadRequest a client-library status carries as a payload keyed by its type URL.
bool BadRequestPayload(const absl::Status& status, google::rpc::BadRequest* out) {
  const auto payload = status.GetPayload("type.googleapis.com/google.rpc.BadRequest");
  return payload.has_value() && out->ParseFromString(std::string(*payload));
}

TEST(ErrorDetails, InvalidArgumentNamesTheField) {
  const grpc::Status s = server::ToGrpcStatus(
      absl::InvalidArgumentError("q.shape[2]: head_dim 80 is not supported (supported: 64, 128)"));
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(s.error_message(), "q.shape[2]: head_dim 80 is not supported (supported: 64, 128)");
  google::rpc::BadRequest bad;
  ASSERT_TRUE(Find(Details(s), &bad));
  ASSERT_EQ(bad.field_violations_size(), 1);
  EXPECT_EQ(bad.field_violations(0).field(), "q.shape[2]");
  EXPECT_EQ(bad.field_violations(0).description(), "head_dim 80 is not supported (supported: 64, 128)");
}

TEST(ErrorDetails, MessagesThatNameNoFieldGetNoBadRequest) {
  for (const char* m : {"AttendRequest: cannot read the message", "key '/x' names no object", "no colon here",
                        ": empty field", "two words: not a field path"}) {
    const grpc::Status s = server::ToGrpcStatus(absl::InvalidArgumentError(m));
    EXPECT_EQ(s.error_message(), m);
    EXPECT_TRUE(s.error_details().empty()) << m;
  }
  // A field-shaped prefix under another code is not a request field either.
  EXPECT_TRUE(server::ToGrpcStatus(absl::InternalError("q.data: lost")).error_details().empty());
}

TEST(ErrorDetails, RetryDelayAndResourceTravel) {
  const grpc::Status full = server::ToGrpcStatus(
      server::WithRetryDelay(absl::ResourceExhaustedError("request queue is full (4 waiting)"), 1250ms));
  google::rpc::RetryInfo retry;
  ASSERT_TRUE(Find(Details(full), &retry));
  EXPECT_EQ(retry.retry_delay().seconds(), 1);
  EXPECT_EQ(retry.retry_delay().nanos(), 250000000);

  const grpc::Status missing = server::ToGrpcStatus(server::WithResource(
      absl::NotFoundError("region 'r' is not registered"), "sageserve.v1.SharedMemoryRegion", "r"));
  google::rpc::ResourceInfo info;
  ASSERT_TRUE(Find(Details(missing), &info));
  EXPECT_EQ(info.resource_type(), "sageserve.v1.SharedMemoryRegion");
  EXPECT_EQ(info.resource_name(), "r");
  EXPECT_TRUE(server::ToGrpcStatus(absl::NotFoundError("plain")).error_details().empty());
}

// Over the wire, from a plain generated stub: the details arrive in the trailer.
TEST(ErrorDetails, ClientsReceiveThem) {
  server::ServerOptions options = TestServerOptions();
  options.shared_memory.policy = server::SharedMemoryPolicy::kAllow;
  RunningServer s;
  StartServer(options, nullptr, &s);
  auto channel = grpc::CreateChannel(s.target, grpc::InsecureChannelCredentials());

  ProblemShape shape;
  shape.head_dim = 80;
  v1::AttendRequest request = MakeRequest(shape, "bad-head-dim");
  v1::AttendResponse response;
  grpc::ClientContext attend_ctx;
  const grpc::Status bad = v1::AttentionService::NewStub(channel)->Attend(&attend_ctx, request, &response);
  ASSERT_EQ(bad.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << bad.error_message();
  google::rpc::BadRequest violations;
  ASSERT_TRUE(Find(Details(bad), &violations)) << bad.error_message();
  EXPECT_EQ(violations.field_violations(0).field(), "q.shape[2]");

  // The client library hands the same details on as payloads keyed by type URL.
  absl::StatusOr<v1::AttendResponse> via_client = s.client->Attend(request);
  ASSERT_EQ(via_client.status().code(), absl::StatusCode::kInvalidArgument);
  google::rpc::BadRequest from_payload;
  ASSERT_TRUE(BadRequestPayload(via_client.status(), &from_payload));
  EXPECT_EQ(from_payload.field_violations(0).field(), "q.shape[2]");
  EXPECT_EQ(via_client.status().ToString(absl::StatusToStringMode::kWithNoExtraData),
            "INVALID_ARGUMENT: " + bad.error_message());

  // On a stream, the failed request's RequestStatus carries them, and the session hands them on.
  std::unique_ptr<sageserve::StreamSession> session = s.client->OpenStream();
  absl::StatusOr<v1::AttendResponse> streamed = session->Send(request).get();
  ASSERT_EQ(streamed.status().code(), absl::StatusCode::kInvalidArgument);
  google::rpc::BadRequest streamed_bad;
  ASSERT_TRUE(BadRequestPayload(streamed.status(), &streamed_bad));
  EXPECT_EQ(streamed_bad.field_violations(0).field(), "q.shape[2]");
  ProblemShape good;
  EXPECT_TRUE(session->Send(MakeRequest(good, "after-bad")).get().ok());  // the stream goes on
  EXPECT_TRUE(session->Close().ok());

  v1::UnregisterSharedMemoryRequest unregister;
  unregister.set_name("nobody");
  v1::UnregisterSharedMemoryResponse unregistered;
  grpc::ClientContext shm_ctx;
  const grpc::Status missing =
      v1::SharedMemoryService::NewStub(channel)->UnregisterSharedMemory(&shm_ctx, unregister, &unregistered);
  ASSERT_EQ(missing.error_code(), grpc::StatusCode::NOT_FOUND) << missing.error_message();
  google::rpc::ResourceInfo info;
  ASSERT_TRUE(Find(Details(missing), &info));
  EXPECT_EQ(info.resource_type(), "sageserve.v1.SharedMemoryRegion");
  EXPECT_EQ(info.resource_name(), "nobody");
  absl::Status unregistered_by_client = s.client->UnregisterSharedMemory("nobody").status();
  EXPECT_EQ(unregistered_by_client.code(), absl::StatusCode::kNotFound);
  EXPECT_TRUE(unregistered_by_client.GetPayload("type.googleapis.com/google.rpc.ResourceInfo").has_value());
  // No details: nothing attached.
  EXPECT_FALSE(sageserve::FromGrpcStatus(grpc::Status(grpc::StatusCode::INTERNAL, "x"))
                   .GetPayload("type.googleapis.com/google.rpc.BadRequest")
                   .has_value());
  // Malformed details are dropped; code and message stand.
  const absl::Status garbled =
      sageserve::FromGrpcStatus(grpc::Status(grpc::StatusCode::NOT_FOUND, "m", std::string("\x1a\xff\xff", 3)));
  EXPECT_EQ(garbled.code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(garbled.message(), "m");
}

}  // namespace
}  // namespace sage::testing
