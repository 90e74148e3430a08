// DecodeAttendRequest (server/frontend/grpc/request_codec.h): any AttendRequest protobuf accepts,
// against the CPU backend's BackendInfo and default RequestLimits, gets a Status, never a crash;
// an accepted one passes ValidateInput and its views lie inside memory ASan can check (read here).
//
// Input: byte 0 picks the variant, the rest is the serialized AttendRequest.
//   bit 0: shared memory: a registry with regions r0 and r1 of the caller "fuzz" (and two of
//          another identity, which must stay invisible); else none (refused: FAILED_PRECONDITION).
//   bit 1: the tensor bytes arrive beside the message (ExternalTensors, the zero-copy wire path),
//          each in its own exact-size heap buffer, with room for O and LSE.
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "kernels/reference/attention_problem.h"
#include "kernels/reference/recipe.h"
#include "server/frontend/grpc/request_codec.h"
#include "tests/fuzz/fuzz_check.h"
#include "tests/fuzz/shm_fixture.h"

namespace {

using sage::server::BackendInfo;

const BackendInfo& CpuInfo() {
  static const BackendInfo info = [] {
    BackendInfo b;  // as server/backend/cpu_backend.cc reports it
    b.kind = sage::server::BackendKind::kCpu;
    b.devices.push_back({"cpu (fuzz)", "x86_64", 0});
    b.head_dims.assign(std::begin(sage::kSupportedHeadDims), std::end(sage::kSupportedHeadDims));
    b.recipes.assign(std::begin(sage::kAllRecipes), std::end(sage::kAllRecipes));
    b.default_recipe = sage::Recipe::kInt8QkFp8Pv;
    return b;
  }();
  return info;
}

// Reads every byte of the view (ASan reports a view past its memory).
uint64_t Touch(const void* data, size_t n) {
  const auto* p = static_cast<const volatile uint8_t*>(data);
  uint64_t sum = 0;
  for (size_t i = 0; i < n; ++i) sum += p[i];
  return sum;
}

std::span<const std::byte> Own(std::vector<std::byte>& keep, const std::string& bytes) {
  keep.assign(reinterpret_cast<const std::byte*>(bytes.data()),
              reinterpret_cast<const std::byte*>(bytes.data()) + bytes.size());
  return keep;
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int* /*argc*/, char*** /*argv*/) {
  sage::fuzz::SilenceProtobufLogs();
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const uint8_t variant = data[0];
  sageserve::v1::AttendRequest request;
  if (!request.ParseFromArray(data + 1, static_cast<int>(size - 1))) return 0;

  sage::server::SharedMemoryAccess access;
  const sage::server::SharedMemoryAccess* shm = nullptr;
  if ((variant & 1) != 0) {
    access.registry = &sage::fuzz::FixtureRegistry();
    access.caller = {"fuzz", false};
    shm = &access;
  }

  sage::server::ExternalTensors external;
  std::vector<std::byte> q, k, v, o, lse;
  const sage::server::ExternalTensors* ext = nullptr;
  if ((variant & 2) != 0) {
    external.q = Own(q, request.q().data());
    external.k = Own(k, request.k().data());
    external.v = Own(v, request.v().data());
    o.resize(external.q.size());
    lse.resize(request.return_lse() ? external.q.size() / 32 : 0);
    external.o = o;
    external.lse = lse;
    if (request.has_q()) request.mutable_q()->clear_data();
    if (request.has_k()) request.mutable_k()->clear_data();
    if (request.has_v()) request.mutable_v()->clear_data();
    ext = &external;
  }

  const sage::server::RequestLimits limits;
  const auto decoded = sage::server::DecodeAttendRequest(request, CpuInfo(), limits, ext, shm);
  if (!decoded.ok()) {
    FUZZ_CHECK(decoded.status().code() != absl::StatusCode::kOk, "error status that is OK");
    FUZZ_CHECK(decoded.status().code() != absl::StatusCode::kInternal &&
                   decoded.status().code() != absl::StatusCode::kUnknown,
               "a bad request is the client's error, not INTERNAL/UNKNOWN: " + decoded.status().ToString());
    if (shm == nullptr) {  // without a registry nothing may resolve to memory
      FUZZ_CHECK(decoded.status().code() != absl::StatusCode::kNotFound, decoded.status().ToString());
    }
    return 0;
  }
  FUZZ_CHECK(*decoded != nullptr, "OK without a request");
  const sage::server::AttendRequest& core = (*decoded)->core;
  const absl::Status valid = sage::ValidateInput(core.input);
  FUZZ_CHECK(valid.ok(), "decoded input fails ValidateInput: " + valid.ToString());
  uint64_t sum = Touch(core.input.q.data, core.input.q.bytes()) + Touch(core.input.k.data, core.input.k.bytes()) +
                 Touch(core.input.v.data, core.input.v.bytes());
  sum += Touch(core.input.cu_seqlens_q.data(), core.input.cu_seqlens_q.size_bytes());
  sum += Touch(core.input.cu_seqlens_k.data(), core.input.cu_seqlens_k.size_bytes());
  sum += Touch(core.output.client_o.data(), core.output.client_o.size());
  sum += Touch(core.output.client_lse.data(), core.output.client_lse.size());
  FUZZ_CHECK(core.output.o_bytes == core.input.q.bytes(), "o_bytes");
  if (!core.output.client_o.empty()) {
    FUZZ_CHECK(shm != nullptr, "client output without a registry");
  }
  if (shm == nullptr) FUZZ_CHECK(core.regions.empty(), "regions without a registry");
  for (const auto& region : core.regions) {
    FUZZ_CHECK(region->info().owner == "fuzz", "resolved another identity's region " + region->info().name);
  }
  sage::fuzz::g_sink = sum;
  return 0;
}
