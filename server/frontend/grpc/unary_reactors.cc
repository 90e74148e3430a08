#include "server/frontend/grpc/unary_reactors.h"

#include <utility>

#include "grpcpp/server_context.h"
#include "server/frontend/grpc/status_mapping.h"

namespace sage::server {

grpc::ServerUnaryReactor* FinishNow(grpc::CallbackServerContext* context, const absl::Status& status) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  reactor->Finish(ToGrpcStatus(status));
  return reactor;
}

grpc::ServerUnaryReactor* RunOn(SerialWorker& worker, grpc::CallbackServerContext* context,
                                absl::AnyInvocable<absl::Status()> work) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  absl::Status queued = worker.Submit([reactor, context, work = std::move(work)]() mutable {
    if (context->IsCancelled()) {
      reactor->Finish(ToGrpcStatus(absl::CancelledError("cancelled before it ran")));
      return;
    }
    reactor->Finish(ToGrpcStatus(work()));
  });
  if (!queued.ok()) reactor->Finish(ToGrpcStatus(queued));
  return reactor;
}

}  // namespace sage::server
