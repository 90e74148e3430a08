// Unary callback-API handlers' two ways to answer: at once on the reactor thread (cheap reads), or
// from a SerialWorker for work that may block (disk writes, mmap and page-locking, compute).
#pragma once

#include "absl/functional/any_invocable.h"
#include "absl/status/status.h"
#include "grpcpp/support/server_callback.h"
#include "server/core/serial_worker.h"

namespace sage::server {

grpc::ServerUnaryReactor* FinishNow(grpc::CallbackServerContext* context, const absl::Status& status);

// Runs `work` on `worker` and finishes the call with its status (CANCELLED if the client gave up
// before it ran; the worker's error if it cannot take the job). The request and response stay
// valid until Finish, which only this path calls.
grpc::ServerUnaryReactor* RunOn(SerialWorker& worker, grpc::CallbackServerContext* context,
                                absl::AnyInvocable<absl::Status()> work);

}  // namespace sage::server
