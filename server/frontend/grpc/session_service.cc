#include "server/frontend/grpc/session_service.h"

#include <algorithm>
#include <chrono>
#include <functional>
#include <memory>
#include <string>
#include <utility>

#include "absl/strings/str_cat.h"
#include "server/frontend/grpc/deadline.h"
#include "server/frontend/grpc/load_report.h"
#include "server/frontend/grpc/request_codec.h"
#include "server/frontend/grpc/session_codec.h"
#include "server/frontend/grpc/session_stream_reactor.h"
#include "server/frontend/grpc/status_mapping.h"
#include "server/frontend/grpc/unary_reactors.h"
#include "server/util/log_field.h"
#include "spdlog/spdlog.h"

namespace sage::server {
namespace {

namespace v1 = ::sageserve::v1;

SessionCaller CallerOf(const Principal& p) { return SessionCaller{p.identity, p.admin()}; }

// AttendSessionStream: requests one stream may have read and not yet answered.
constexpr int kStreamMaxPending = 64;

}  // namespace

SessionService::SessionService(SessionAttend* sessions, const CallAuthorizer* auth, ServerMetrics* metrics,
                               const SharedMemoryRegistry* shared_memory, int workers, int max_queued)
    : sessions_(sessions), auth_(auth), metrics_(metrics), shared_memory_(shared_memory) {
  for (int i = 0; i < std::max(1, workers); ++i) {
    workers_.push_back(std::make_unique<SerialWorker>(
        SerialWorkerOptions{absl::StrCat("session worker ", i), std::max(1, max_queued)}));
  }
}

SessionService::~SessionService() { Shutdown(); }

void SessionService::Shutdown() {
  for (auto& w : workers_) w->Shutdown();
}

grpc::ServerUnaryReactor* SessionService::CreateSession(grpc::CallbackServerContext* context,
                                                        const v1::CreateSessionRequest* request,
                                                        v1::CreateSessionResponse* response) {
  absl::StatusOr<Principal> caller = auth_->Check(context, RpcMethod::kCreateSession);
  if (!caller.ok()) return FinishNow(context, caller.status());
  absl::StatusOr<SessionShape> shape = ShapeFromWire(*request);
  if (!shape.ok()) return FinishNow(context, shape.status());
  absl::StatusOr<SessionInfo> info = sessions_->CreateSession(CallerOf(*caller), *shape, request->reserve_tokens());
  if (!info.ok()) return FinishNow(context, info.status());
  response->set_session_id(info->id);
  InfoToWire(*info, response->mutable_info());
  spdlog::debug("session {} created for '{}'", info->id, LogField(caller->identity));
  return FinishNow(context, absl::OkStatus());
}

grpc::ServerUnaryReactor* SessionService::AttendSession(grpc::CallbackServerContext* context,
                                                        const v1::AttendSessionRequest* request,
                                                        v1::AttendSessionResponse* response) {
  const auto accepted = std::chrono::steady_clock::now();
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  // Every answer carries the server's load (load_report.h), for clients balancing over replicas.
  const AttendPipeline* pipeline = &sessions_->pipeline();
  const auto finish = [reactor, context, pipeline](const grpc::Status& status) {
    AddLoadReport(*pipeline, *context);
    reactor->Finish(status);
  };
  absl::StatusOr<Principal> caller = auth_->Check(context, RpcMethod::kAttendSession);
  if (!caller.ok()) {
    finish(ToGrpcStatus(caller.status()));
    return reactor;
  }
  const SharedMemoryAccess shared_memory{shared_memory_, RegionCallerOf(*caller)};
  absl::StatusOr<SessionAttendRequest> decoded = DecodeAttendSession(*request, &shared_memory);
  if (!decoded.ok()) {
    finish(ToGrpcStatus(decoded.status()));
    return reactor;
  }
  decoded->accepted = accepted;
  response->set_request_id(request->request_id());
  const size_t first = decoded->steps.empty() ? 0 : std::hash<std::string>()(decoded->steps.front().session_id);
  const bool on_caller = sessions_->StartsOnCaller(CallerOf(*caller), *decoded) && caller_starts_.TryEnter();
  // The request message (whose bytes the steps view) and the context stay valid until Finish.
  auto job = [this, finish, request, response, context, on_caller, accepted, who = CallerOf(*caller),
              call = *std::move(decoded)]() mutable {
    if (!on_caller && context->IsCancelled()) {
      finish(grpc::Status(grpc::StatusCode::CANCELLED, "cancelled before it ran"));
      return;
    }
    absl::Status started = sessions_->Start(
        who, std::move(call), SteadyDeadline(*context), [context] { return context->IsCancelled(); },
        [finish, request, response, accepted](absl::StatusOr<SessionAttendResult> result) {
          if (!result.ok()) {
            finish(ToGrpcStatus(result.status()));
            return;
          }
          ResultToWire(*result, *request, response);
          response->mutable_timings()->set_total_us(
              std::chrono::duration_cast<std::chrono::microseconds>(std::chrono::steady_clock::now() - accepted).count());
          finish(grpc::Status::OK);
        });
    if (!started.ok()) finish(ToGrpcStatus(started));
  };
  if (on_caller) {  // a decode step: started here, no hop to a session worker
    job();
    caller_starts_.Leave();
    return reactor;
  }
  absl::Status queued = RunOnWorker(first, std::move(job));
  if (!queued.ok()) finish(ToGrpcStatus(queued));
  return reactor;
}

absl::Status SessionService::RunOnWorker(size_t key, absl::AnyInvocable<void()> job) {
  caller_starts_.WorkerJobQueued();
  absl::Status queued = workers_[key % workers_.size()]->Submit([this, job = std::move(job)]() mutable {
    job();
    caller_starts_.WorkerJobDone();
  });
  if (!queued.ok()) caller_starts_.WorkerJobDone();
  return queued;
}

grpc::ServerUnaryReactor* SessionService::ForkSession(grpc::CallbackServerContext* context,
                                                      const v1::ForkSessionRequest* request,
                                                      v1::ForkSessionResponse* response) {
  absl::StatusOr<Principal> caller = auth_->Check(context, RpcMethod::kForkSession);
  if (!caller.ok()) return FinishNow(context, caller.status());
  std::optional<int64_t> length;
  if (request->has_length()) length = request->length();
  absl::StatusOr<SessionInfo> info = sessions_->store().Fork(CallerOf(*caller), request->session_id(), length);
  if (!info.ok()) return FinishNow(context, info.status());
  response->set_session_id(info->id);
  InfoToWire(*info, response->mutable_info());
  return FinishNow(context, absl::OkStatus());
}

grpc::ServerUnaryReactor* SessionService::TruncateSession(grpc::CallbackServerContext* context,
                                                          const v1::TruncateSessionRequest* request,
                                                          v1::TruncateSessionResponse* response) {
  absl::StatusOr<Principal> caller = auth_->Check(context, RpcMethod::kTruncateSession);
  if (!caller.ok()) return FinishNow(context, caller.status());
  absl::StatusOr<SessionInfo> info =
      sessions_->store().Truncate(CallerOf(*caller), request->session_id(), request->length());
  if (!info.ok()) return FinishNow(context, info.status());
  InfoToWire(*info, response->mutable_info());
  return FinishNow(context, absl::OkStatus());
}

grpc::ServerUnaryReactor* SessionService::CloseSession(grpc::CallbackServerContext* context,
                                                       const v1::CloseSessionRequest* request,
                                                       v1::CloseSessionResponse* /*response*/) {
  absl::StatusOr<Principal> caller = auth_->Check(context, RpcMethod::kCloseSession);
  if (!caller.ok()) return FinishNow(context, caller.status());
  return FinishNow(context, sessions_->store().Close(CallerOf(*caller), request->session_id()));
}

grpc::ServerUnaryReactor* SessionService::GetSession(grpc::CallbackServerContext* context,
                                                     const v1::GetSessionRequest* request,
                                                     v1::GetSessionResponse* response) {
  absl::StatusOr<Principal> caller = auth_->Check(context, RpcMethod::kGetSession);
  if (!caller.ok()) return FinishNow(context, caller.status());
  absl::StatusOr<SessionInfo> info = sessions_->store().Get(CallerOf(*caller), request->session_id());
  if (!info.ok()) return FinishNow(context, info.status());
  InfoToWire(*info, response->mutable_info());
  return FinishNow(context, absl::OkStatus());
}

grpc::ServerUnaryReactor* SessionService::ListSessions(grpc::CallbackServerContext* context,
                                                       const v1::ListSessionsRequest* /*request*/,
                                                       v1::ListSessionsResponse* response) {
  absl::StatusOr<Principal> caller = auth_->Check(context, RpcMethod::kListSessions);
  if (!caller.ok()) return FinishNow(context, caller.status());
  for (const SessionInfo& info : sessions_->store().List(CallerOf(*caller))) InfoToWire(info, response->add_sessions());
  const SessionStoreStats stats = sessions_->store().Stats();
  response->set_pages_free(stats.pool.pages_free);
  response->set_pages_total(stats.pool.pages_total);
  return FinishNow(context, absl::OkStatus());
}

grpc::ServerBidiReactor<v1::AttendSessionRequest, v1::AttendSessionResponse>* SessionService::AttendSessionStream(
    grpc::CallbackServerContext* context) {
  // Checked once, at the stream's start: every request on it is the same caller's.
  absl::StatusOr<Principal> caller = auth_->Check(context, RpcMethod::kAttendSessionStream);
  if (!caller.ok()) {
    if (metrics_ != nullptr) metrics_->RecordRpc(RpcRecord{SessionStreamMethodLabel(), caller.status().code(), {}});
    return new RefusedBidiReactor<v1::AttendSessionRequest, v1::AttendSessionResponse>(ToGrpcStatus(caller.status()));
  }
  return new SessionStreamReactor(
      context, sessions_, CallerOf(*caller), SharedMemoryAccess{shared_memory_, RegionCallerOf(*caller)},
      [this](size_t key, absl::AnyInvocable<void()> job) { return RunOnWorker(key, std::move(job)); },
      kStreamMaxPending, &caller_starts_, metrics_);
}

}  // namespace sage::server
