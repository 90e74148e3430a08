// sagectl subcommands. Each returns the process exit code.
#pragma once

#include "client/sagectl/args.h"
#include "sageserve/client/client.h"

namespace sagectl {

// Connection flags shared by every command.
std::vector<std::string> ConnectionFlags();
absl::StatusOr<std::unique_ptr<sageserve::Client>> Connect(const Args& args);

int RunAttend(const Args& args);
int RunBench(const Args& args);
// `sagectl registry <verb> ...` (registry_command.cc).
int RunRegistry(const std::string& verb, const Args& args);

// Prints "sagectl: <status>" to stderr and returns 1.
int Fail(const absl::Status& status);

}  // namespace sagectl
