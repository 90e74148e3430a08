// AttendStream: many requests in flight on one bidirectional stream. Each request read is queued
// at once (the next read starts immediately); responses are written in completion order, one write
// in flight at a time. A bad request yields an AttendResponse with a non-OK status, not a failed
// stream. The stream ends once the client half-closed and every request has been answered.
// Messages are read and written as raw bytes through attend_wire.h (one copy of the tensors in,
// none out).
#pragma once

#include <atomic>
#include <deque>
#include <memory>
#include <mutex>

#include "absl/status/status.h"
#include "sageserve/v1/attention_service.grpc.pb.h"
#include "server/frontend/grpc/attend_call.h"

namespace sage::server {

class AttendStreamReactor final : public grpc::ServerBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer> {
 public:
  AttendStreamReactor(grpc::CallbackServerContext* context, AttendBackends backends, HostBufferPool* payload_pool);

  void OnReadDone(bool ok) override;
  void OnWriteDone(bool ok) override;
  void OnCancel() override;
  void OnDone() override;

 private:
  struct Slot : WireCallState {
    grpc::ByteBuffer out;  // what is written
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

  grpc::CallbackServerContext* const context_;
  const AttendBackends backends_;
  HostBufferPool* const payload_pool_;
  grpc::ByteBuffer incoming_;
  std::atomic<bool> cancelled_{false};

  std::mutex mu_;
  std::deque<std::shared_ptr<Slot>> write_queue_;  // Front is being written when writing_.
  int outstanding_ = 0;     // Queued or running requests.
  bool reads_done_ = false;
  bool writing_ = false;
  bool write_failed_ = false;
  bool finished_ = false;
};

}  // namespace sage::server
