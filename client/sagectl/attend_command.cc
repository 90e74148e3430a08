// `sagectl attend`: one request, then the answer checked against the local fp64 oracle.
#include <chrono>
#include <cstdio>

#include "client/sagectl/commands.h"
#include "client/sagectl/problem.h"
#include "kernels/reference/metrics.h"
#include "kernels/reference/oracle.h"
#include "sageserve/client/tensor.h"

namespace sagectl {

int RunAttend(const Args& args) {
  std::vector<std::string> known = ProblemFlags();
  known.push_back("id");
  if (!CheckFlags(args, known)) return 2;
  absl::StatusOr<ProblemSpec> spec = SpecFromArgs(args);
  if (!spec.ok()) return Fail(spec.status());
  absl::StatusOr<HostProblem> problem = MakeProblem(*spec);
  if (!problem.ok()) return Fail(problem.status());
  auto client = Connect(args);
  if (!client.ok()) return Fail(client.status());

  const sageserve::v1::AttendRequest request = problem->ToRequest(args.Str("id", "sagectl-attend"));
  const auto start = std::chrono::steady_clock::now();
  absl::StatusOr<sageserve::v1::AttendResponse> response = (*client)->Attend(request);
  const double rtt_us =
      std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - start).count();
  if (!response.ok()) return Fail(response.status());

  const auto& t = response->timings();
  std::printf("request %s: recipe %s, O %s [%lld, %lld, %lld]\n", response->request_id().c_str(),
              sageserve::v1::Recipe_Name(response->recipe()).c_str(),
              sageserve::v1::DType_Name(response->o().dtype()).c_str(),
              static_cast<long long>(response->o().shape(0)), static_cast<long long>(response->o().shape(1)),
              static_cast<long long>(response->o().shape(2)));
  std::printf("timing: round trip %.0f us; server queued %lld us, compute %lld us, total %lld us\n", rtt_us,
              static_cast<long long>(t.queued_us()), static_cast<long long>(t.compute_us()),
              static_cast<long long>(t.total_us()));
  std::printf("bytes: request %zu, response %zu\n", request.ByteSizeLong(), response->ByteSizeLong());

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
  return 0;
}

}  // namespace sagectl
