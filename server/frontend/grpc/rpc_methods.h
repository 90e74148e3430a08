// Every RPC the server answers, in one table: the enum handlers name themselves by, gRPC's full
// method name, the scope access control asks for, and whether the metrics count it under its own
// name. Handlers pass an RpcMethod, so a misspelt method name cannot compile; a test checks the
// table against the services' descriptors.
#pragma once

#include <array>
#include <cstddef>
#include <optional>
#include <string_view>

#include "server/core/access_control.h"

namespace sage::server {

enum class RpcMethod {
  kAttend,
  kAttendStream,
  kGetServerInfo,
  kSelfTest,
  kRegisterModel,
  kListModels,
  kGetModel,
  kDeleteModel,
  kGetPlan,
  kSetPlan,
  kCalibrate,
  kRegisterSystemSharedMemory,
  kRegisterCudaSharedMemory,
  kUnregisterSharedMemory,
  kGetSharedMemoryStatus,
  kCreateSession,
  kAttendSession,
  kForkSession,
  kTruncateSession,
  kCloseSession,
  kGetSession,
  kListSessions,
  kAttendSessionStream,
};

struct RpcMethodInfo {
  RpcMethod method;
  std::string_view name;  // gRPC's full method name, "/package.Service/Method"
  Scope scope;
};

// In enum order (checked below). Attend scope on shared memory means one's own regions; admin sees
// every identity's (shared_memory_registry.h).
inline constexpr std::array<RpcMethodInfo, 23> kRpcMethods = {{
    {RpcMethod::kAttend, "/sageserve.v1.AttentionService/Attend", Scope::kAttend},
    {RpcMethod::kAttendStream, "/sageserve.v1.AttentionService/AttendStream", Scope::kAttend},
    {RpcMethod::kGetServerInfo, "/sageserve.v1.AttentionService/GetServerInfo", Scope::kAttend},
    {RpcMethod::kSelfTest, "/sageserve.v1.AttentionService/SelfTest", Scope::kAttend},
    {RpcMethod::kRegisterModel, "/sageserve.v1.RegistryService/RegisterModel", Scope::kAdmin},
    {RpcMethod::kListModels, "/sageserve.v1.RegistryService/ListModels", Scope::kAttend},
    {RpcMethod::kGetModel, "/sageserve.v1.RegistryService/GetModel", Scope::kAttend},
    {RpcMethod::kDeleteModel, "/sageserve.v1.RegistryService/DeleteModel", Scope::kAdmin},
    {RpcMethod::kGetPlan, "/sageserve.v1.RegistryService/GetPlan", Scope::kAttend},
    {RpcMethod::kSetPlan, "/sageserve.v1.RegistryService/SetPlan", Scope::kAdmin},
    {RpcMethod::kCalibrate, "/sageserve.v1.RegistryService/Calibrate", Scope::kAdmin},
    {RpcMethod::kRegisterSystemSharedMemory, "/sageserve.v1.SharedMemoryService/RegisterSystemSharedMemory",
     Scope::kAttend},
    {RpcMethod::kRegisterCudaSharedMemory, "/sageserve.v1.SharedMemoryService/RegisterCudaSharedMemory",
     Scope::kAttend},
    {RpcMethod::kUnregisterSharedMemory, "/sageserve.v1.SharedMemoryService/UnregisterSharedMemory",
     Scope::kAttend},
    {RpcMethod::kGetSharedMemoryStatus, "/sageserve.v1.SharedMemoryService/GetSharedMemoryStatus", Scope::kAttend},
    // Attend scope: one's own sessions; admin sees and may close every identity's.
    {RpcMethod::kCreateSession, "/sageserve.v1.SessionService/CreateSession", Scope::kAttend},
    {RpcMethod::kAttendSession, "/sageserve.v1.SessionService/AttendSession", Scope::kAttend},
    {RpcMethod::kForkSession, "/sageserve.v1.SessionService/ForkSession", Scope::kAttend},
    {RpcMethod::kTruncateSession, "/sageserve.v1.SessionService/TruncateSession", Scope::kAttend},
    {RpcMethod::kCloseSession, "/sageserve.v1.SessionService/CloseSession", Scope::kAttend},
    {RpcMethod::kGetSession, "/sageserve.v1.SessionService/GetSession", Scope::kAttend},
    {RpcMethod::kListSessions, "/sageserve.v1.SessionService/ListSessions", Scope::kAttend},
    {RpcMethod::kAttendSessionStream, "/sageserve.v1.SessionService/AttendSessionStream", Scope::kAttend},
}};

constexpr bool RpcMethodsInEnumOrder() {
  for (size_t i = 0; i < kRpcMethods.size(); ++i) {
    if (static_cast<size_t>(kRpcMethods[i].method) != i) return false;
  }
  return true;
}
static_assert(RpcMethodsInEnumOrder(), "kRpcMethods must list the methods in RpcMethod order");

constexpr const RpcMethodInfo& InfoOf(RpcMethod m) { return kRpcMethods[static_cast<size_t>(m)]; }

// The table row of a full method name; nullopt for anything else.
constexpr std::optional<RpcMethod> RpcMethodNamed(std::string_view name) {
  for (const RpcMethodInfo& m : kRpcMethods) {
    if (m.name == name) return m.method;
  }
  return std::nullopt;
}

// Methods of other services the server also answers (open to everyone: probes and tools send no
// tokens); the metrics count them under their own names.
inline constexpr std::array<std::string_view, 4> kOpenRpcMethods = {
    "/grpc.health.v1.Health/Check",
    "/grpc.health.v1.Health/Watch",
    "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
    "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
};

}  // namespace sage::server
