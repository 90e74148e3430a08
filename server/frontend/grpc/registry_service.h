// sageserve.v1.RegistryService on the callback API. Reads (List/Get/GetPlan) answer on the
// reactor thread: they only copy from an in-memory snapshot. Writes (fsync'd to the state
// directory) and calibrations (seconds of compute on the backend) run on two SerialWorkers, never
// in a reactor; a calibration does not hold up a RegisterModel queued behind it.
#pragma once

#include <cstdint>
#include <memory>

#include "sageserve/v1/registry.grpc.pb.h"
#include "server/backend/backend.h"
#include "server/frontend/grpc/call_auth.h"
#include "server/frontend/grpc/request_codec.h"
#include "server/registry/calibrator.h"
#include "server/registry/registry.h"
#include "server/core/serial_worker.h"

namespace sage::server {

struct RegistryServiceOptions {
  // Sample bytes one Calibrate call may stream (Q+K+V of all samples); beyond → RESOURCE_EXHAUSTED.
  int64_t max_calibration_bytes = int64_t{1} << 30;
  int max_calibration_samples = 4096;
  int max_queued_calibrations = 4;  // Waiting behind the running one.
  int max_queued_writes = 64;
  RequestLimits limits;  // Applied to every sample, as to Attend requests.
};

class RegistryService final : public sageserve::v1::RegistryService::CallbackService {
 public:
  // `registry`, `backend` and `auth` (every call's check) must outlive the service. The default
  // `auth` is a server's without a token file (every caller an administrator); SageServer passes its own.
  RegistryService(registry::Registry* registry, AttentionBackend* backend, const RegistryServiceOptions& options,
                  const CallAuthorizer* auth = OpenAuthorizer());
  ~RegistryService() override;

  // Refuses new work (UNAVAILABLE) and finishes what is queued. Call after the gRPC server has
  // stopped accepting calls; idempotent.
  void Shutdown();

  grpc::ServerUnaryReactor* RegisterModel(grpc::CallbackServerContext* context,
                                          const sageserve::v1::RegisterModelRequest* request,
                                          sageserve::v1::RegisterModelResponse* response) override;
  grpc::ServerUnaryReactor* ListModels(grpc::CallbackServerContext* context,
                                       const sageserve::v1::ListModelsRequest* request,
                                       sageserve::v1::ListModelsResponse* response) override;
  grpc::ServerUnaryReactor* GetModel(grpc::CallbackServerContext* context,
                                     const sageserve::v1::GetModelRequest* request,
                                     sageserve::v1::GetModelResponse* response) override;
  grpc::ServerUnaryReactor* DeleteModel(grpc::CallbackServerContext* context,
                                        const sageserve::v1::DeleteModelRequest* request,
                                        sageserve::v1::DeleteModelResponse* response) override;
  grpc::ServerUnaryReactor* GetPlan(grpc::CallbackServerContext* context,
                                    const sageserve::v1::GetPlanRequest* request,
                                    sageserve::v1::GetPlanResponse* response) override;
  grpc::ServerUnaryReactor* SetPlan(grpc::CallbackServerContext* context,
                                    const sageserve::v1::SetPlanRequest* request,
                                    sageserve::v1::SetPlanResponse* response) override;
  grpc::ServerReadReactor<sageserve::v1::CalibrateRequest>* Calibrate(
      grpc::CallbackServerContext* context, sageserve::v1::CalibrateResponse* response) override;

 private:
  class CalibrateReactor;

  registry::Registry* const registry_;
  const CallAuthorizer* const auth_;
  AttentionBackend* const backend_;
  const RegistryServiceOptions options_;
  registry::Calibrator calibrator_;
  SerialWorker writes_;
  SerialWorker calibrations_;
};

}  // namespace sage::server
