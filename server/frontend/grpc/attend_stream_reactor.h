// AttendStream: many requests in flight on one bidirectional stream. Each request read is queued
// at once (the next read starts immediately, within the stream's limits below); responses are
// written in completion order, one write in flight at a time. A bad request yields an
// AttendResponse with a non-OK status, not a failed stream. The stream ends once the client
// half-closed and every request has been answered.
//
// Backpressure: a client that sends but does not read would otherwise have every answer buffered
// here. Once a stream owes StreamLimits::max_pending_responses answers (requests running or answers
// not yet written) or its unwritten answers reach max_queued_bytes, the reactor stops reading from
// it; the next completed write resumes reading when the stream is under both again. Requests then
// wait in the transport (HTTP/2 flow control stalls the client's writes), and none is lost. Over
// all streams, once unwritten answers reach max_server_queued_bytes, new requests on any stream
// are answered RESOURCE_EXHAUSTED.
// Messages are read and written as raw bytes through attend_wire.h (one copy of the tensors in,
// none out).
#pragma once

#include <atomic>
#include <deque>
#include <memory>
#include <mutex>

#include <cstdint>

#include "absl/status/status.h"
#include "sageserve/v1/attention_service.grpc.pb.h"
#include "server/frontend/grpc/attend_call.h"
#include "server/frontend/grpc/rpc_methods.h"
#include "server/metrics/server_metrics.h"

namespace sage::server {

// How much of its answers an AttendStream may hold for a client that does not take them.
struct StreamLimits {
  // Per stream: requests read and not yet answered on the wire (running, or answered and waiting to
  // be written). At this many the stream reads nothing more until a write completes. At least 1.
  int32_t max_pending_responses = 64;
  // Per stream: bytes of answers waiting to be written; at this the stream stops reading likewise.
  // An answer larger than this is still written (alone). <= 0: no byte limit.
  int64_t max_queued_bytes = int64_t{64} << 20;
  // All streams: bytes of answers waiting to be written; at this, new requests on any stream are
  // answered RESOURCE_EXHAUSTED (the stream goes on). <= 0: no limit.
  int64_t max_server_queued_bytes = int64_t{1} << 30;
};

// The answers waiting to be written over every stream of one service (and the metrics' gauges).
class StreamQueueTotals {
 public:
  // `metrics` may be null; otherwise it must outlive this.
  StreamQueueTotals(int64_t max_bytes, ServerMetrics* metrics) : max_bytes_(max_bytes), metrics_(metrics) {}

  void Add(int64_t responses, int64_t bytes) {
    responses_.fetch_add(responses, std::memory_order_relaxed);
    bytes_.fetch_add(bytes, std::memory_order_relaxed);
    if (metrics_ != nullptr) metrics_->AddStreamQueued(responses, bytes);
  }
  int64_t responses() const { return responses_.load(std::memory_order_relaxed); }
  int64_t bytes() const { return bytes_.load(std::memory_order_relaxed); }
  ServerMetrics* metrics() const { return metrics_; }
  // OK, or the RESOURCE_EXHAUSTED a new stream request is answered with.
  absl::Status Admit() const;

 private:
  const int64_t max_bytes_;
  ServerMetrics* const metrics_;
  std::atomic<int64_t> responses_{0};
  std::atomic<int64_t> bytes_{0};
};

// AttendStream's label in the RPC metrics (gRPC's full method name, from rpc_methods.h).
inline absl::string_view StreamMethodLabel() {
  const std::string_view name = InfoOf(RpcMethod::kAttendStream).name;
  return absl::string_view(name.data(), name.size());
}

class AttendStreamReactor final : public grpc::ServerBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer> {
 public:
  // `totals` (shared by the service's streams) must outlive the reactor.
  // `caller`: whose shared-memory regions the stream's requests may name (checked at its start).
  AttendStreamReactor(grpc::CallbackServerContext* context, AttendBackends backends, RegionCaller caller,
                      HostBufferPool* payload_pool,
                      const StreamLimits& limits, StreamQueueTotals* totals);
  ~AttendStreamReactor() override;

  void OnReadDone(bool ok) override;
  void OnWriteDone(bool ok) override;
  void OnCancel() override;
  void OnDone() override;

 private:
  struct Slot : WireCallState {
    grpc::ByteBuffer out;  // what is written
    int64_t out_bytes = 0;
  };

  // The next answer to write, claimed under mu_ (writing_ set); the write itself starts after the
  // lock is dropped, so a socket write never holds up the threads completing or reading requests.
  struct NextWrite {
    grpc::ByteBuffer* message = nullptr;
    grpc::WriteOptions options;
  };

  void Complete(std::shared_ptr<Slot> slot, const absl::Status& status);
  NextWrite ClaimNextWriteLocked();
  void StartClaimedWrite(const NextWrite& next);
  // True when the caller must call Finish() after dropping the lock.
  bool ShouldFinishLocked();
  void FinishIf(bool finish);
  // True when the stream owes as many answers, or holds as many unwritten bytes, as it may.
  bool AtLimitLocked() const;
  void PopFrontLocked();
  void ClearQueueLocked();

  grpc::CallbackServerContext* const context_;
  const AttendBackends backends_;
  const RegionCaller caller_;
  HostBufferPool* const payload_pool_;
  const StreamLimits limits_;
  StreamQueueTotals* const totals_;
  const MetricsClock::time_point started_ = MetricsClock::now();
  grpc::ByteBuffer incoming_;
  std::atomic<bool> cancelled_{false};

  std::mutex mu_;
  std::deque<std::shared_ptr<Slot>> write_queue_;  // Front is being written when writing_.
  int64_t queued_bytes_ = 0;  // Σ out_bytes over write_queue_.
  int outstanding_ = 0;     // Queued or running requests.
  bool reads_done_ = false;
  bool read_paused_ = false;    // At the limits: no read started; the next write done resumes it.
  bool resuming_read_ = false;  // A StartRead is being issued outside the lock: no Finish meanwhile.
  bool writing_ = false;
  bool write_failed_ = false;
  bool finished_ = false;
};

}  // namespace sage::server
