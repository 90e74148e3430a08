// sageserve.v1 registry messages <-> the registry's C++ types (server/registry).
#pragma once

#include <memory>
#include <vector>

#include "absl/status/statusor.h"
#include "sageserve/v1/registry.pb.h"
#include "server/backend/backend.h"
#include "server/frontend/grpc/request_codec.h"
#include "server/registry/calibrate_model.h"
#include "server/registry/registry.h"

namespace sage::server {

// INVALID_ARGUMENT naming the field for enum values out of range; range checks are left to
// registry::ValidateModelSpec / ValidatePlan, which name the field too.
absl::StatusOr<registry::ModelSpec> ModelSpecFromWire(const sageserve::v1::ModelSpec& wire);
void ModelSpecToWire(const registry::ModelSpec& spec, sageserve::v1::ModelSpec* wire);

absl::StatusOr<registry::Plan> PlanFromWire(const sageserve::v1::Plan& wire);
// `default_recipe`: what uncovered cells run on this server.
void PlanToWire(const registry::Plan& plan, Recipe default_recipe, sageserve::v1::Plan* wire);

void ModelInfoToWire(const registry::ModelRecord& record, const server::BackendInfo& backend,
                     sageserve::v1::ModelInfo* wire);

void CalibrationToWire(const registry::CalibrationOutcome& outcome, Recipe default_recipe,
                       sageserve::v1::CalibrateResponse* wire);

// Calibration samples decoded like Attend requests (same checks, same field names, prefixed with
// "samples[i]."). The views point into `samples`, which must outlive the result.
struct DecodedSamples {
  std::vector<std::unique_ptr<DecodedRequest>> decoded;  // Owns default cu_seqlens.
  std::vector<sageserve::v1::AttendRequest> requests;     // Owns the tensor bytes.
  std::vector<registry::CalibrationSample> samples;
};
absl::StatusOr<std::unique_ptr<DecodedSamples>> DecodeCalibrationSamples(
    std::vector<sageserve::v1::CalibrationSample> samples, const BackendInfo& backend,
    const RequestLimits& limits);

}  // namespace sage::server
