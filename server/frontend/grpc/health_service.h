// grpc.health.v1.Health, served from our own generated code so reflection can describe it
// (gRPC 1.51's built-in health service is not visible to reflection).
#pragma once

#include <map>
#include <mutex>
#include <set>
#include <string>

#include "grpc/health/v1/health.grpc.pb.h"

namespace sage::server {

class HealthService final : public grpc::health::v1::Health::CallbackService {
 public:
  using ServingStatus = grpc::health::v1::HealthCheckResponse::ServingStatus;

  // "" (the whole server) starts as NOT_SERVING until SetAll(SERVING).
  HealthService();
  ~HealthService() override;

  // Registers `service` (a fully qualified name, or "") with a status, notifying watchers.
  void Set(const std::string& service, ServingStatus status);
  // Every registered name to `status` (SERVING at start, NOT_SERVING when draining).
  void SetAll(ServingStatus status);
  // Ends every Watch call (OK), so server shutdown does not wait on them.
  void Shutdown();

  grpc::ServerUnaryReactor* Check(grpc::CallbackServerContext* context,
                                  const grpc::health::v1::HealthCheckRequest* request,
                                  grpc::health::v1::HealthCheckResponse* response) override;
  grpc::ServerWriteReactor<grpc::health::v1::HealthCheckResponse>* Watch(
      grpc::CallbackServerContext* context,
      const grpc::health::v1::HealthCheckRequest* request) override;

  class Watcher;

 private:
  friend class Watcher;
  ServingStatus StatusOfLocked(const std::string& service) const;
  void Unregister(Watcher* watcher);

  std::mutex mu_;
  std::map<std::string, ServingStatus> statuses_;
  std::set<Watcher*> watchers_;
  bool shut_down_ = false;
};

}  // namespace sage::server
