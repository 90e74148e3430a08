// Every malformed request gets a precise status naming the field, and the server keeps serving.
#include <functional>
#include <string>

#include "grpcpp/create_channel.h"
#include "grpcpp/impl/client_unary_call.h"
#include "grpcpp/security/credentials.h"
#include "grpcpp/support/byte_buffer.h"
#include "gtest/gtest.h"
#include "tests/server/test_support.h"

namespace sage::testing {
namespace {
namespace v1 = ::sageserve::v1;

struct BadCase {
  std::string name;
  std::function<void(v1::AttendRequest*)> mutate;
  absl::StatusCode code;
  std::string field;  // Must appear in the message.
};

std::vector<BadCase> Cases() {
  using C = absl::StatusCode;
  return {
      {"missing_q", [](v1::AttendRequest* r) { r->clear_q(); }, C::kInvalidArgument, "q"},
      {"q_dtype_unset", [](v1::AttendRequest* r) { r->mutable_q()->set_dtype(v1::DTYPE_UNSPECIFIED); }, C::kInvalidArgument, "q.dtype"},
      {"q_dtype_unknown", [](v1::AttendRequest* r) { r->mutable_q()->set_dtype(static_cast<v1::DType>(42)); }, C::kInvalidArgument, "q.dtype"},
      {"q_shape_rank", [](v1::AttendRequest* r) { r->mutable_q()->mutable_shape()->RemoveLast(); }, C::kInvalidArgument, "q.shape"},
      {"q_negative_tokens", [](v1::AttendRequest* r) { r->mutable_q()->set_shape(0, -4); }, C::kInvalidArgument, "q.shape[0]"},
      {"q_zero_heads", [](v1::AttendRequest* r) { r->mutable_q()->set_shape(1, 0); }, C::kInvalidArgument, "q.shape[1]"},
      {"head_dim_unsupported", [](v1::AttendRequest* r) { r->mutable_q()->set_shape(2, 96); }, C::kInvalidArgument, "q.shape[2]"},
      {"q_bytes_short", [](v1::AttendRequest* r) { r->mutable_q()->mutable_data()->resize(10); }, C::kInvalidArgument, "q.data"},
      {"v_bytes_long", [](v1::AttendRequest* r) { r->mutable_v()->mutable_data()->append("xx"); }, C::kInvalidArgument, "v.data"},
      {"fp32_inputs", [](v1::AttendRequest* r) {
         for (v1::Tensor* t : {r->mutable_q(), r->mutable_k(), r->mutable_v()}) {
           t->set_dtype(v1::DTYPE_FP32);
           t->mutable_data()->append(t->data());  // right size for fp32
         }
       }, C::kInvalidArgument, "q.dtype"},
      {"kv_dtype_mismatch", [](v1::AttendRequest* r) { r->mutable_k()->set_dtype(v1::DTYPE_BF16); }, C::kInvalidArgument, "k.dtype"},
      {"gqa_not_multiple", [](v1::AttendRequest* r) {
         // q 4 heads, k/v 3 heads: 4 % 3 != 0.
         for (v1::Tensor* t : {r->mutable_k(), r->mutable_v()}) {
           t->set_shape(1, 3);
           t->mutable_data()->resize(static_cast<size_t>(t->shape(0)) * 3 * t->shape(2) * 2);
         }
       }, C::kInvalidArgument, "k.shape[1]"},
      {"k_v_tokens_differ", [](v1::AttendRequest* r) {
         r->mutable_v()->set_shape(0, r->v().shape(0) / 2);
         r->mutable_v()->mutable_data()->resize(r->v().data().size() / 2);
       }, C::kInvalidArgument, "v.shape[0]"},
      {"cu_seqlens_only_q", [](v1::AttendRequest* r) { r->clear_cu_seqlens_k(); }, C::kInvalidArgument, "cu_seqlens_k"},
      {"cu_seqlens_one_entry", [](v1::AttendRequest* r) {
         r->mutable_cu_seqlens_q()->Resize(1, 0);
         r->mutable_cu_seqlens_k()->Resize(1, 0);
       }, C::kInvalidArgument, "cu_seqlens_q"},
      {"cu_seqlens_length_mismatch", [](v1::AttendRequest* r) { r->add_cu_seqlens_k(64); }, C::kInvalidArgument, "cu_seqlens_k"},
      {"cu_seqlens_not_monotonic", [](v1::AttendRequest* r) { r->set_cu_seqlens_q(1, 70); }, C::kInvalidArgument, "cu_seqlens_q"},
      {"cu_seqlens_last_not_total", [](v1::AttendRequest* r) { r->set_cu_seqlens_k(2, 60); }, C::kInvalidArgument, "cu_seqlens_k"},
      {"cu_seqlens_first_not_zero", [](v1::AttendRequest* r) { r->set_cu_seqlens_q(0, 1); }, C::kInvalidArgument, "cu_seqlens_q"},
      {"bad_mask", [](v1::AttendRequest* r) { r->set_mask(static_cast<v1::MaskMode>(9)); }, C::kInvalidArgument, "mask"},
      {"bad_scale", [](v1::AttendRequest* r) { r->set_softmax_scale(-1.0f); }, C::kInvalidArgument, "softmax_scale"},
      {"bad_recipe", [](v1::AttendRequest* r) { r->set_recipe(static_cast<v1::Recipe>(17)); }, C::kInvalidArgument, "recipe"},
      {"bad_output_dtype", [](v1::AttendRequest* r) { r->set_output_dtype(static_cast<v1::DType>(8)); }, C::kInvalidArgument, "output_dtype"},
      {"too_many_tokens", [](v1::AttendRequest* r) {
         // Over the test server's max_tokens (4096); the byte check comes after, so no payload needed.
         r->mutable_k()->set_shape(0, 5000);
       }, C::kResourceExhausted, "k.shape[0]"},
  };
}

class BadInput : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    server_ = new RunningServer();
    server::ServerOptions options = TestServerOptions();
    options.limits.max_tokens = 4096;
    StartServer(options, nullptr, server_);
  }
  static void TearDownTestSuite() {
    delete server_;
    server_ = nullptr;
  }
  static v1::AttendRequest Valid() {
    ProblemShape shape;
    shape.cu_q = {0, 20, 64};
    shape.cu_k = {0, 30, 64};
    return MakeRequest(shape, "valid");
  }
  static RunningServer* server_;
};
RunningServer* BadInput::server_ = nullptr;

TEST_F(BadInput, EachCaseGetsItsCodeAndServerKeepsServing) {
  for (const BadCase& c : Cases()) {
    SCOPED_TRACE(c.name);
    v1::AttendRequest r = Valid();
    r.set_request_id(c.name);
    c.mutate(&r);
    absl::StatusOr<v1::AttendResponse> out = server_->client->Attend(r);
    EXPECT_EQ(out.status().code(), c.code) << out.status();
    EXPECT_NE(std::string(out.status().message()).find(c.field), std::string::npos) << out.status();
    // Still serving.
    absl::StatusOr<v1::AttendResponse> ok = server_->client->Attend(Valid());
    ASSERT_TRUE(ok.ok()) << ok.status();
  }
}

TEST_F(BadInput, SameCasesOnOneStreamFailOnlyThemselves) {
  std::unique_ptr<sageserve::StreamSession> stream = server_->client->OpenStream();
  std::vector<std::pair<BadCase, std::future<absl::StatusOr<v1::AttendResponse>>>> pending;
  for (const BadCase& c : Cases()) {
    v1::AttendRequest r = Valid();
    r.set_request_id(c.name);
    c.mutate(&r);
    pending.emplace_back(c, stream->Send(std::move(r)));
    v1::AttendRequest good = Valid();
    good.set_request_id("good-after-" + c.name);
    pending.emplace_back(BadCase{good.request_id(), nullptr, absl::StatusCode::kOk, ""}, stream->Send(std::move(good)));
  }
  for (auto& [c, f] : pending) {
    absl::StatusOr<v1::AttendResponse> r = f.get();
    EXPECT_EQ(r.status().code(), c.code) << c.name << ": " << r.status();
  }
  EXPECT_TRUE(stream->Close().ok());
}

// Bytes that are not an AttendRequest at all (the server reads Attend as raw bytes and parses them
// itself): INVALID_ARGUMENT saying where the protobuf breaks, and the server keeps serving.
TEST_F(BadInput, MalformedProtobufIsInvalidArgument) {
  const std::string valid = Valid().SerializeAsString();
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"truncated_in_payload", valid.substr(0, valid.size() / 2)},
      {"truncated_varint", std::string("\x0a\x80", 2)},
      {"length_past_end", std::string("\x12\xff\xff\x03\x08\x02", 6)},
      {"wire_type_7", std::string("\x0f\x00", 2)},
      {"field_zero", std::string("\x00\x01", 2)},
  };
  auto channel = grpc::CreateChannel(server_->target, grpc::InsecureChannelCredentials());
  const grpc::internal::RpcMethod method("/sageserve.v1.AttentionService/Attend",
                                         grpc::internal::RpcMethod::NORMAL_RPC);
  for (const auto& [name, bytes] : cases) {
    SCOPED_TRACE(name);
    grpc::Slice slice(bytes);
    grpc::ByteBuffer request(&slice, 1);
    grpc::ByteBuffer response;
    grpc::ClientContext context;
    const grpc::Status status = grpc::internal::BlockingUnaryCall<grpc::ByteBuffer, grpc::ByteBuffer>(
        channel.get(), method, &context, request, &response);
    EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << status.error_message();
    EXPECT_NE(status.error_message().find("malformed protobuf"), std::string::npos) << status.error_message();
    absl::StatusOr<v1::AttendResponse> ok = server_->client->Attend(Valid());
    ASSERT_TRUE(ok.ok()) << ok.status();
  }
}

TEST(MessageLimit, OversizedMessageIsResourceExhausted) {
  RunningServer s;
  server::ServerOptions options = TestServerOptions();
  options.max_message_bytes = 1 << 20;
  StartServer(options, nullptr, &s);
  ProblemShape shape;
  shape.cu_q = {0, 4096};  // 4096 x 4 x 64 x 2 B = 2 MiB > 1 MiB
  shape.cu_k = {0, 64};
  absl::StatusOr<v1::AttendResponse> r = s.client->Attend(MakeRequest(shape, "huge"));
  EXPECT_EQ(r.status().code(), absl::StatusCode::kResourceExhausted) << r.status();
  ProblemShape small;
  EXPECT_TRUE(s.client->Attend(MakeRequest(small, "small")).ok());
}

}  // namespace
}  // namespace sage::testing
