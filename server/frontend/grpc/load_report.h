// The load a replica reports so clients can balance stateless calls over several servers
// (docs/DEPLOY.md, "Routing"): the requests it has accepted and not finished (queued or
// computing; not the call being answered), sent as trailing metadata on every Attend,
// AttendSession and GetServerInfo answer, errors included, and in GetServerInfo.load.
#pragma once

#include <string>

#include "grpcpp/server_context.h"
#include "server/core/attend_pipeline.h"

namespace sage::server {

inline constexpr char kLoadMetadataKey[] = "sageserve-load";

inline void AddLoadReport(const AttendPipeline& pipeline, grpc::CallbackServerContext& context) {
  context.AddTrailingMetadata(kLoadMetadataKey, std::to_string(pipeline.in_flight()));
}

}  // namespace sage::server
