#include "server/frontend/grpc/shared_memory_service.h"

#include <span>
#include <string>
#include <vector>

#include "server/frontend/grpc/unary_reactors.h"

namespace sage::server {
namespace v1 = ::sageserve::v1;

namespace {

SerialWorkerOptions WorkerOptions() {
  SerialWorkerOptions o;
  o.name = "shared-memory";
  o.max_queued = 64;
  return o;
}

v1::SharedMemoryKind ToWireKind(SharedMemoryKind kind) {
  return kind == SharedMemoryKind::kCuda ? v1::SHARED_MEMORY_KIND_CUDA : v1::SHARED_MEMORY_KIND_SYSTEM;
}

}  // namespace

SharedMemoryService::SharedMemoryService(SharedMemoryRegistry* registry, const CallAuthorizer* auth)
    : registry_(registry), auth_(auth), worker_(WorkerOptions()) {}

SharedMemoryService::~SharedMemoryService() { Shutdown(); }

void SharedMemoryService::Shutdown() { worker_.Shutdown(); }

grpc::ServerUnaryReactor* SharedMemoryService::RegisterSystemSharedMemory(
    grpc::CallbackServerContext* context, const v1::RegisterSystemSharedMemoryRequest* request,
    v1::RegisterSharedMemoryResponse* /*response*/) {
  absl::StatusOr<Principal> caller =
      auth_->Check(context, RpcMethod::kRegisterSystemSharedMemory);
  if (!caller.ok()) return FinishNow(context, caller.status());
  if (!registry_->allowed()) return FinishNow(context, registry_->CheckAllowed());
  return RunOn(worker_, context, [this, request, who = RegionCallerOf(*caller)] {
    return registry_->RegisterSystem(who, request->name(), request->key(), request->offset(), request->byte_size());
  });
}

grpc::ServerUnaryReactor* SharedMemoryService::RegisterCudaSharedMemory(
    grpc::CallbackServerContext* context, const v1::RegisterCudaSharedMemoryRequest* request,
    v1::RegisterSharedMemoryResponse* /*response*/) {
  absl::StatusOr<Principal> caller =
      auth_->Check(context, RpcMethod::kRegisterCudaSharedMemory);
  if (!caller.ok()) return FinishNow(context, caller.status());
  if (!registry_->allowed()) return FinishNow(context, registry_->CheckAllowed());
  return RunOn(worker_, context, [this, request, who = RegionCallerOf(*caller)] {
    const std::span<const std::byte> handle(reinterpret_cast<const std::byte*>(request->raw_handle().data()),
                                            request->raw_handle().size());
    return registry_->RegisterCuda(who, request->name(), handle, request->device_id(), request->byte_size());
  });
}

grpc::ServerUnaryReactor* SharedMemoryService::UnregisterSharedMemory(
    grpc::CallbackServerContext* context, const v1::UnregisterSharedMemoryRequest* request,
    v1::UnregisterSharedMemoryResponse* response) {
  absl::StatusOr<Principal> caller =
      auth_->Check(context, RpcMethod::kUnregisterSharedMemory);
  if (!caller.ok()) return FinishNow(context, caller.status());
  return RunOn(worker_, context, [this, request, response, who = RegionCallerOf(*caller)]() -> absl::Status {
    absl::StatusOr<std::vector<std::string>> names = registry_->Unregister(who, request->name());
    if (!names.ok()) return names.status();
    for (std::string& n : *names) response->add_names(std::move(n));
    return absl::OkStatus();
  });
}

grpc::ServerUnaryReactor* SharedMemoryService::GetSharedMemoryStatus(grpc::CallbackServerContext* context,
                                                                     const v1::GetSharedMemoryStatusRequest* request,
                                                                     v1::GetSharedMemoryStatusResponse* response) {
  absl::StatusOr<Principal> caller =
      auth_->Check(context, RpcMethod::kGetSharedMemoryStatus);
  if (!caller.ok()) return FinishNow(context, caller.status());
  absl::StatusOr<std::vector<SharedMemoryRegionInfo>> regions =
      registry_->Status(RegionCallerOf(*caller), request->name());
  if (!regions.ok()) return FinishNow(context, regions.status());
  for (const SharedMemoryRegionInfo& r : *regions) {
    v1::SharedMemoryRegionStatus* s = response->add_regions();
    s->set_name(r.name);
    s->set_kind(ToWireKind(r.kind));
    s->set_key(r.key);
    s->set_offset(r.offset);
    s->set_device_id(r.kind == SharedMemoryKind::kCuda ? r.device : 0);
    s->set_byte_size(r.byte_size);
    s->set_pinned(r.memory == MemoryKind::kPinned);
    s->set_requests(r.requests);
  }
  return FinishNow(context, absl::OkStatus());
}

}  // namespace sage::server
