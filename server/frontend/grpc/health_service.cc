#include "server/frontend/grpc/health_service.h"

#include <deque>
#include <optional>
#include <vector>

#include "server/frontend/grpc/status_mapping.h"

namespace sage::server {

using grpc::health::v1::HealthCheckRequest;
using grpc::health::v1::HealthCheckResponse;

// One Watch call: writes the current status, then each change. One write in flight at a time;
// later changes collapse into the newest value, which is what a watcher cares about.
class HealthService::Watcher final : public grpc::ServerWriteReactor<HealthCheckResponse> {
 public:
  Watcher(HealthService* service, std::string name) : service_(service), name_(std::move(name)) {}

  // Called with service_->mu_ held.
  void Notify(ServingStatus status) {
    std::lock_guard<std::mutex> lock(mu_);
    if (finishing_) return;
    pending_ = status;
    MaybeWriteLocked();
  }
  // Called with service_->mu_ held.
  void End() {
    std::lock_guard<std::mutex> lock(mu_);
    if (finishing_) return;
    end_requested_ = true;
    MaybeWriteLocked();
  }

  void OnWriteDone(bool ok) override {
    std::lock_guard<std::mutex> lock(mu_);
    writing_ = false;
    if (!ok) {
      FinishLocked(grpc::Status::OK);
      return;
    }
    MaybeWriteLocked();
  }
  void OnCancel() override {
    std::lock_guard<std::mutex> lock(mu_);
    cancelled_ = true;
    if (!writing_) FinishLocked(ToGrpcStatus(absl::CancelledError("")));
  }
  void OnDone() override {
    service_->Unregister(this);
    delete this;
  }

 private:
  void MaybeWriteLocked() {
    if (writing_ || finishing_) return;
    if (cancelled_) {
      FinishLocked(ToGrpcStatus(absl::CancelledError("")));
      return;
    }
    if (pending_.has_value()) {
      out_.set_status(*pending_);
      pending_.reset();
      writing_ = true;
      StartWrite(&out_);
      return;
    }
    if (end_requested_) FinishLocked(grpc::Status::OK);
  }
  void FinishLocked(const grpc::Status& status) {
    if (finishing_) return;
    finishing_ = true;
    Finish(status);
  }

  HealthService* const service_;
  const std::string name_;
  std::mutex mu_;
  HealthCheckResponse out_;
  std::optional<ServingStatus> pending_;
  bool writing_ = false;
  bool finishing_ = false;
  bool cancelled_ = false;
  bool end_requested_ = false;

  friend class HealthService;
};

HealthService::HealthService() { statuses_[""] = HealthCheckResponse::NOT_SERVING; }

HealthService::~HealthService() = default;

HealthService::ServingStatus HealthService::StatusOfLocked(const std::string& service) const {
  auto it = statuses_.find(service);
  return it == statuses_.end() ? HealthCheckResponse::SERVICE_UNKNOWN : it->second;
}

void HealthService::Set(const std::string& service, ServingStatus status) {
  std::lock_guard<std::mutex> lock(mu_);
  statuses_[service] = status;
  for (Watcher* w : watchers_) {
    if (w->name_ == service) w->Notify(status);
  }
}

void HealthService::SetAll(ServingStatus status) {
  std::lock_guard<std::mutex> lock(mu_);
  for (auto& [name, s] : statuses_) s = status;
  for (Watcher* w : watchers_) w->Notify(StatusOfLocked(w->name_));
}

void HealthService::Shutdown() {
  std::lock_guard<std::mutex> lock(mu_);
  shut_down_ = true;
  for (Watcher* w : watchers_) w->End();
}

void HealthService::Unregister(Watcher* watcher) {
  std::lock_guard<std::mutex> lock(mu_);
  watchers_.erase(watcher);
}

grpc::ServerUnaryReactor* HealthService::Check(grpc::CallbackServerContext* context,
                                               const HealthCheckRequest* request,
                                               HealthCheckResponse* response) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  ServingStatus status;
  {
    std::lock_guard<std::mutex> lock(mu_);
    status = StatusOfLocked(request->service());
  }
  if (status == HealthCheckResponse::SERVICE_UNKNOWN) {
    reactor->Finish(ToGrpcStatus(absl::NotFoundError("unknown service '" + request->service() + "'")));
    return reactor;
  }
  response->set_status(status);
  reactor->Finish(grpc::Status::OK);
  return reactor;
}

grpc::ServerWriteReactor<HealthCheckResponse>* HealthService::Watch(
    grpc::CallbackServerContext* /*context*/, const HealthCheckRequest* request) {
  auto* watcher = new Watcher(this, request->service());
  std::lock_guard<std::mutex> lock(mu_);
  watchers_.insert(watcher);
  watcher->Notify(StatusOfLocked(request->service()));
  if (shut_down_) watcher->End();
  return watcher;
}

}  // namespace sage::server
