// gRPC deadlines are system_clock; the scheduler measures with steady_clock.
#pragma once

#include <chrono>
#include <optional>

#include "grpcpp/server_context.h"
#include "server/scheduler/scheduler.h"

namespace sage::server {

inline std::optional<Clock::time_point> SteadyDeadline(const grpc::CallbackServerContext& context) {
  const auto deadline = context.deadline();
  const auto now = std::chrono::system_clock::now();
  // "No deadline" is time_point::max(); anything a year out is treated the same (and the
  // subtraction below cannot overflow).
  if (deadline > now + std::chrono::hours(24 * 365)) return std::nullopt;
  return Clock::now() + std::chrono::duration_cast<Clock::duration>(deadline - now);
}

}  // namespace sage::server
