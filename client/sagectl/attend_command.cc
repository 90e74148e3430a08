// `sagectl attend`: one request, then the answer checked against the local fp64 oracle. With
// --shared_memory=system|cuda the tensors go through a registered region (shared_memory_transport.h).
#include <chrono>
#include <cstdio>
#include <fstream>

#include "absl/strings/str_cat.h"
#include "client/sagectl/commands.h"
#include "client/sagectl/problem.h"
#include "client/sagectl/shared_memory_transport.h"
#include "kernels/reference/metrics.h"
#include "kernels/reference/oracle.h"
#include "sageserve/client/tensor.h"

namespace sagectl {

int RunAttend(const Args& args) {
  std::vector<std::string> known = ProblemFlags();
  known.push_back("id");
  known.push_back("o_file");    // O's raw bytes as answered (the output dtype), for other clients to compare
  known.push_back("lse_file");  // LSE's raw fp32 bytes (with --lse)
  for (const std::string& k : SharedMemoryFlags()) known.push_back(k);
  if (!CheckFlags(args, known)) return 2;
  absl::StatusOr<SharedMemoryOptions> shm_options = SharedMemoryOptionsFromArgs(args);
  if (!shm_options.ok()) return FailUsage(shm_options.status());
  absl::StatusOr<ProblemSpec> spec = SpecFromArgs(args);
  if (!spec.ok()) return FailUsage(spec.status());
  absl::StatusOr<HostProblem> problem = MakeProblem(*spec);
  if (!problem.ok()) return FailUsage(problem.status());
  auto client = Connect(args);
  if (!client.ok()) return FailUsage(client.status());  // Connection flags (TLS files, deadline)

  std::unique_ptr<SharedMemoryTransport> shm;
  if (shm_options->mode != SharedMemoryMode::kNone) {
    absl::StatusOr<std::unique_ptr<SharedMemoryTransport>> t =
        SharedMemoryTransport::Create(**client, *shm_options, *problem, /*slots=*/1);
    if (!t.ok()) return Fail(t.status());
    shm = *std::move(t);
  }
  const std::string id = args.Str("id", "sagectl-attend");
  sageserve::v1::AttendRequest request = shm ? shm->Request(0) : problem->ToRequest(id);
  request.set_request_id(id);
  const auto start = std::chrono::steady_clock::now();
  absl::StatusOr<sageserve::v1::AttendResponse> response = (*client)->Attend(request);
  const double rtt_us =
      std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - start).count();
  if (!response.ok()) return Fail(response.status());
  const size_t response_bytes = response->ByteSizeLong();
  if (shm) {
    // From here on the answer looks as if it had come back in the message.
    response = shm->Resolve(0, *response);
    if (!response.ok()) return Fail(response.status());
  }

  const auto& t = response->timings();
  std::printf("request %s: recipe %s, O %s [%lld, %lld, %lld]\n", response->request_id().c_str(),
              sageserve::v1::Recipe_Name(response->recipe()).c_str(),
              sageserve::v1::DType_Name(response->o().dtype()).c_str(),
              static_cast<long long>(response->o().shape(0)), static_cast<long long>(response->o().shape(1)),
              static_cast<long long>(response->o().shape(2)));
  std::printf("timing: round trip %.0f us; server queued %lld us, compute %lld us, total %lld us\n", rtt_us,
              static_cast<long long>(t.queued_us()), static_cast<long long>(t.compute_us()),
              static_cast<long long>(t.total_us()));
  std::printf("bytes: request %zu, response %zu (%s)\n", request.ByteSizeLong(), response_bytes,
              shm ? absl::StrCat("tensors in shared memory: ", shm->Describe()).c_str() : "tensors in the messages");

  for (auto [flag, tensor] : {std::pair{"o_file", &response->o()}, std::pair{"lse_file", &response->lse()}}) {
    if (!args.Has(flag)) continue;
    std::ofstream out(args.Str(flag, ""), std::ios::binary | std::ios::trunc);
    out.write(tensor->data().data(), static_cast<std::streamsize>(tensor->data().size()));
    if (!out) return FailUsage(absl::NotFoundError(absl::StrCat("cannot write --", flag, " ", args.Str(flag, ""))));
  }

  absl::StatusOr<std::vector<float>> o = sageserve::TensorToFloat(response->o());
  if (!o.ok()) return Fail(o.status());
  const auto oracle_start = std::chrono::steady_clock::now();
  absl::StatusOr<sage::ExactOutput> exact = sage::AttendExact(problem->AsInput());
  if (!exact.ok()) return Fail(exact.status());
  const double oracle_ms =
      std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - oracle_start).count();
  if (exact->o.size() != o->size()) return Fail(absl::InternalError("output size differs from the oracle's"));
  const sage::ErrorMetrics m = sage::CompareToReference(*o, exact->o);
  std::printf("accuracy vs local fp64 oracle (%.0f ms): cosine %.6f, relative L1 %.6f, RMSE %.6g, max abs %.6g\n",
              oracle_ms, m.cosine, m.relative_l1, m.rmse, m.max_abs);
  if (shm) {
    if (absl::Status st = shm->Unregister(); !st.ok()) return Fail(st);
  }
  return 0;
}

}  // namespace sagectl
