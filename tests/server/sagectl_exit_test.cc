// sagectl's exit status carries the failure class (docs/API.md, "sagectl exit codes"): 2 for usage,
// 10 + the status code when a call failed. Runs the real binaries.
#include <string>

#include "gtest/gtest.h"
#include "tests/server/child_server.h"

namespace sage::testing {
namespace {

const std::string kSagectl = SAGECTL_BINARY;

TEST(SagectlExit, RpcFailuresExitWithTenPlusTheirCode) {
  ChildServer server(SAGESERVE_BINARY, {});
  ASSERT_GT(server.port(), 0);
  const std::string target = " --target=" + server.target();
  std::string out;
  EXPECT_EQ(RunCommand(kSagectl + " info" + target, &out), 0) << out;
  // NOT_FOUND (5): no such model.
  EXPECT_EQ(RunCommand(kSagectl + " registry get --model=nope" + target, &out), 15) << out;
  EXPECT_NE(out.find("NOT_FOUND"), std::string::npos) << out;
  // INVALID_ARGUMENT (3), from the server: a head_dim it does not serve.
  EXPECT_EQ(RunCommand(kSagectl + " attend --q_len=8 --k_len=8 --heads_q=2 --heads_kv=2 --head_dim=48" + target, &out),
            13)
      << out;
}

TEST(SagectlExit, NoServerIsUnavailable) {
  std::string out;
  // UNAVAILABLE (14): nothing listens there (port 1 on loopback refuses at once).
  EXPECT_EQ(RunCommand(kSagectl + " info --target=127.0.0.1:1 --deadline_ms=3000", &out), 24) << out;
  EXPECT_NE(out.find("UNAVAILABLE"), std::string::npos) << out;
}

TEST(SagectlExit, UsageErrorsExitTwo) {
  std::string out;
  EXPECT_EQ(RunCommand(kSagectl + " nosuchcommand", &out), 2) << out;
  EXPECT_EQ(RunCommand(kSagectl + " info --nosuchflag=1", &out), 2) << out;
  EXPECT_EQ(RunCommand(kSagectl + " bench --target=127.0.0.1:1 --concurrency=3 --streams=4 --mode=stream", &out), 2)
      << out;
  EXPECT_EQ(RunCommand(kSagectl + " registry get --target=127.0.0.1:1", &out), 2) << out;  // --model missing
}

}  // namespace
}  // namespace sage::testing
