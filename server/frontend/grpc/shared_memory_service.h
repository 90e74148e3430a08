// sageserve.v1.SharedMemoryService on the callback API. Status answers on the reactor thread (a copy
// of the registry's table); Register and Unregister map, page-lock, open or release memory, which can
// take milliseconds per GiB, so they run on a SerialWorker.
#pragma once

#include "sageserve/v1/shared_memory.grpc.pb.h"
#include "server/core/serial_worker.h"
#include "server/frontend/grpc/call_auth.h"
#include "server/shared_memory/shared_memory_registry.h"

namespace sage::server {

class SharedMemoryService final : public sageserve::v1::SharedMemoryService::CallbackService {
 public:
  // `registry` and `auth` (every call's check) must outlive the service. A caller sees its own
  // regions only; with the admin scope, every identity's.
  SharedMemoryService(SharedMemoryRegistry* registry, const CallAuthorizer* auth);
  ~SharedMemoryService() override;

  // Refuses new registrations (UNAVAILABLE) and finishes queued ones. Idempotent.
  void Shutdown();

  grpc::ServerUnaryReactor* RegisterSystemSharedMemory(grpc::CallbackServerContext* context,
                                                       const sageserve::v1::RegisterSystemSharedMemoryRequest* request,
                                                       sageserve::v1::RegisterSharedMemoryResponse* response) override;
  grpc::ServerUnaryReactor* RegisterCudaSharedMemory(grpc::CallbackServerContext* context,
                                                     const sageserve::v1::RegisterCudaSharedMemoryRequest* request,
                                                     sageserve::v1::RegisterSharedMemoryResponse* response) override;
  grpc::ServerUnaryReactor* UnregisterSharedMemory(grpc::CallbackServerContext* context,
                                                   const sageserve::v1::UnregisterSharedMemoryRequest* request,
                                                   sageserve::v1::UnregisterSharedMemoryResponse* response) override;
  grpc::ServerUnaryReactor* GetSharedMemoryStatus(grpc::CallbackServerContext* context,
                                                  const sageserve::v1::GetSharedMemoryStatusRequest* request,
                                                  sageserve::v1::GetSharedMemoryStatusResponse* response) override;

 private:
  SharedMemoryRegistry* const registry_;
  const CallAuthorizer* const auth_;
  SerialWorker worker_;
};

}  // namespace sage::server
