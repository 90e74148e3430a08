// sageserve::Client: a blocking client for sageserve.v1.AttentionService, plus streaming sessions
// that keep many requests in flight on one stream, plus SharedMemoryService's control calls.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "grpcpp/channel.h"
#include "sageserve/client/options.h"
#include "sageserve/client/stream_session.h"
#include "sageserve/v1/attention_service.grpc.pb.h"
#include "sageserve/v1/shared_memory.grpc.pb.h"

namespace sageserve {

enum class HealthStatus { kUnknown, kServing, kNotServing, kServiceUnknown };

class Client {
 public:
  static absl::StatusOr<std::unique_ptr<Client>> Create(const ClientOptions& options);

  // Blocking calls under options.deadline. Server errors come back with their gRPC code.
  absl::StatusOr<v1::AttendResponse> Attend(const v1::AttendRequest& request) const;
  absl::StatusOr<v1::GetServerInfoResponse> GetServerInfo() const;
  absl::StatusOr<v1::SelfTestResponse> SelfTest(const v1::SelfTestRequest& request = {}) const;
  // grpc.health.v1.Health/Check for `service` ("" = the whole server).
  absl::StatusOr<HealthStatus> CheckHealth(const std::string& service = "") const;

  // SharedMemoryService (same host only; see shared_memory.h for creating system memory). Blocking,
  // under options.deadline, on the first connection: these are rare control calls.
  // `name` is what requests then call the region; `key` is the shm_open name of an existing object.
  absl::Status RegisterSystemSharedMemory(const std::string& name, const std::string& key, uint64_t offset,
                                          uint64_t byte_size) const;
  // `raw_handle`: the bytes of a cudaIpcMemHandle_t; `device_id` as the server numbers its devices.
  absl::Status RegisterCudaSharedMemory(const std::string& name, std::string_view raw_handle, int device_id,
                                        uint64_t byte_size) const;
  // "" = every region. Returns the names unregistered.
  absl::StatusOr<std::vector<std::string>> UnregisterSharedMemory(const std::string& name = "") const;
  absl::StatusOr<v1::GetSharedMemoryStatusResponse> GetSharedMemoryStatus(const std::string& name = "") const;

  // A new bidirectional AttendStream (on the next of the client's connections).
  std::unique_ptr<StreamSession> OpenStream(const StreamOptions& options = {}) const;

  // The first connection's channel (for other services' stubs).
  const std::shared_ptr<grpc::Channel>& channel() const { return channels_.front(); }
  // Connection `i` (modulo their number): spreads several streams over the connections.
  const std::shared_ptr<grpc::Channel>& channel(size_t i) const { return channels_[i % channels_.size()]; }
  const ClientOptions& options() const { return options_; }

 private:
  Client(const ClientOptions& options, std::vector<std::shared_ptr<grpc::Channel>> channels);
  // Round robin over the connections.
  v1::AttentionService::Stub& NextStub() const;

  ClientOptions options_;
  std::vector<std::shared_ptr<grpc::Channel>> channels_;
  std::vector<std::unique_ptr<v1::AttentionService::Stub>> stubs_;
  std::unique_ptr<v1::SharedMemoryService::Stub> shared_memory_;
  mutable std::atomic<size_t> next_{0};
};

// gRPC status -> absl::Status: same code and message, and each google.rpc detail the server sent
// (docs/API.md, "Status codes") as a payload keyed by its type URL, e.g.
// "type.googleapis.com/google.rpc.BadRequest", holding the serialized message.
absl::Status FromGrpcStatus(const grpc::Status& status);

}  // namespace sageserve
