// `sagectl shm <verb>`: the server's registered shared-memory regions (sageserve.v1.SharedMemoryService).
//   status     [--name=N] [--json]   every region, or one
//   unregister [--name=N]            one region, or every region when --name is not given
#include <cstdio>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "client/sagectl/commands.h"

namespace sagectl {
namespace {

namespace v1 = ::sageserve::v1;

std::string Where(const v1::SharedMemoryRegionStatus& r) {
  switch (r.kind()) {
    case v1::SHARED_MEMORY_KIND_SYSTEM: return absl::StrCat(r.key(), " +", r.offset());
    case v1::SHARED_MEMORY_KIND_CUDA: return absl::StrCat("device ", r.device_id());
    default: return "-";
  }
}

const char* KindText(v1::SharedMemoryKind kind) {
  switch (kind) {
    case v1::SHARED_MEMORY_KIND_SYSTEM: return "system";
    case v1::SHARED_MEMORY_KIND_CUDA: return "cuda";
    default: return "unknown";
  }
}

int Status(const sageserve::Client& client, const Args& args) {
  if (!CheckFlags(args, {"name", "json"})) return 2;
  absl::StatusOr<v1::GetSharedMemoryStatusResponse> resp = client.GetSharedMemoryStatus(args.Str("name", ""));
  if (!resp.ok()) return Fail(resp.status());
  if (args.Flag("json")) {
    PrintJson(*resp);
    return 0;
  }
  if (resp->regions().empty()) {
    std::printf("no shared-memory regions registered\n");
    return 0;
  }
  std::printf("%-28s %-6s %14s  %-32s %6s %10s\n", "name", "kind", "bytes", "where", "pinned", "requests");
  for (const v1::SharedMemoryRegionStatus& r : resp->regions()) {
    std::printf("%-28s %-6s %14llu  %-32s %6s %10lld\n", r.name().c_str(), KindText(r.kind()),
                static_cast<unsigned long long>(r.byte_size()), Where(r).c_str(),
                r.kind() == v1::SHARED_MEMORY_KIND_SYSTEM ? (r.pinned() ? "yes" : "no") : "-",
                static_cast<long long>(r.requests()));
  }
  return 0;
}

int Unregister(const sageserve::Client& client, const Args& args) {
  if (!CheckFlags(args, {"name"})) return 2;
  absl::StatusOr<std::vector<std::string>> names = client.UnregisterSharedMemory(args.Str("name", ""));
  if (!names.ok()) return Fail(names.status());
  if (names->empty()) std::printf("no shared-memory regions were registered\n");
  for (const std::string& n : *names) std::printf("unregistered %s\n", n.c_str());
  return 0;
}

}  // namespace

int RunShm(const std::string& verb, const Args& args) {
  auto client = Connect(args);
  if (!client.ok()) return FailUsage(client.status());  // Connection flags (TLS files, deadline)
  if (verb == "status") return Status(**client, args);
  if (verb == "unregister") return Unregister(**client, args);
  std::fprintf(stderr, "sagectl shm: unknown verb '%s' (status, unregister)\n", verb.c_str());
  return 2;
}

}  // namespace sagectl
