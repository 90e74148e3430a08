// sagectl subcommands. Each returns the process exit code.
#pragma once

#include "client/sagectl/args.h"
#include "google/protobuf/message.h"
#include "sageserve/client/client.h"

namespace sagectl {

// Connection flags shared by every command.
std::vector<std::string> ConnectionFlags();
// `connections`: ClientOptions::connections.
absl::StatusOr<std::unique_ptr<sageserve::Client>> Connect(const Args& args, int connections = 1);

int RunAttend(const Args& args);
int RunBench(const Args& args);
// `sagectl registry <verb> ...` (registry_command.cc).
int RunRegistry(const std::string& verb, const Args& args);
// `sagectl shm <verb> ...` (shm_command.cc).
int RunShm(const std::string& verb, const Args& args);
// `sagectl session <verb> ...` and `sagectl bench --mode=decode` (session_command.cc).
int RunSession(const std::string& verb, const Args& args);
int RunDecodeBench(const Args& args);

// Exit codes (docs/API.md, "sagectl exit codes"): 0 success; 1 the command ran and its answer is
// negative (health not SERVING, selftest FAILED, bench with failed requests); 2 usage (unknown
// command or option, a bad or missing flag value, an unreadable input file); 10 + the status code
// when a call failed (an RPC: the server's code, or UNAVAILABLE / DEADLINE_EXCEEDED from the
// transport), e.g. 13 INVALID_ARGUMENT, 15 NOT_FOUND, 17 PERMISSION_DENIED, 24 UNAVAILABLE.
inline constexpr int kExitNegative = 1;
inline constexpr int kExitUsage = 2;
inline constexpr int kExitStatusBase = 10;

// Prints "sagectl: <status>" to stderr and returns kExitStatusBase + its code.
int Fail(const absl::Status& status);
// Prints "sagectl: <status>" to stderr and returns kExitUsage: for flags the command cannot use.
int FailUsage(const absl::Status& status);

// True when every option given is in `known` or a connection flag; otherwise names the unknown
// ones on stderr.
bool CheckFlags(const Args& args, std::vector<std::string> known);

// Prints a message as indented JSON with every field, the form grpcurl and buf curl print.
void PrintJson(const google::protobuf::Message& message);

}  // namespace sagectl
