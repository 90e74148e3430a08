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

// Prints "sagectl: <status>" to stderr and returns 1.
int Fail(const absl::Status& status);

// True when every option given is in `known` or a connection flag; otherwise names the unknown
// ones on stderr.
bool CheckFlags(const Args& args, std::vector<std::string> known);

// Prints a message as indented JSON with every field, the form grpcurl and buf curl print.
void PrintJson(const google::protobuf::Message& message);

}  // namespace sagectl
