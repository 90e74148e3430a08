// sageserve::ClusterClient: one client over several sageserve replicas (docs/DEPLOY.md,
// "Routing"); the C++ twin of Python's sageserve.Cluster.
//
// Stateless Attend goes to the replica with the lowest load: this client's calls in flight there
// plus the load the replica last reported (trailing metadata `sageserve-load`, read by
// ClientOptions.on_load); ties rotate. A replica answering UNAVAILABLE is set aside for
// `down_for` and the call goes to the next one. Sessions are created on the least-loaded replica
// (ForNewSession) and their calls go to the replica whose instance (GetServerInfo.instance) starts
// the session id (ForSession); when none does, the status is UNAVAILABLE with the owner-gone
// payload (IsSessionOwnerGone), as SessionClient's own calls report a dead owner.
#pragma once

#include <chrono>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "sageserve/client/client.h"
#include "sageserve/client/options.h"

namespace sageserve {

struct ClusterOptions {
  // "host:port" of each replica, or one "dns:///name:port" (e.g. a Kubernetes headless Service),
  // resolved again every `resolve_every`.
  std::vector<std::string> targets;
  ClientOptions client;  // for every replica; its target and on_load are set per replica
  std::chrono::milliseconds down_for{1000};
  std::chrono::milliseconds resolve_every{5000};
};

class ClusterClient {
 public:
  // INVALID_ARGUMENT for no targets or a malformed dns:/// one; UNAVAILABLE when a name does not
  // resolve at all.
  static absl::StatusOr<std::unique_ptr<ClusterClient>> Create(const ClusterOptions& options);
  ~ClusterClient();

  // Client::Attend on the least-loaded replica, on the next one while UNAVAILABLE.
  absl::StatusOr<v1::AttendResponse> Attend(const v1::AttendRequest& request) const;

  // The least-loaded replica's client, to create a session on (SessionClient(*client)). Call
  // Created(client, id) with the new session's id so ForSession needs no round trip for it.
  absl::StatusOr<const Client*> ForNewSession() const;
  void Created(const Client* on, std::string_view session_id) const;
  // The client of the replica holding `session_id`; UNAVAILABLE with the owner-gone payload when
  // no replica of the cluster is its server instance.
  absl::StatusOr<const Client*> ForSession(std::string_view session_id) const;

  struct ReplicaStatus {
    std::string target;
    std::string instance;  // empty until learned
    int in_flight = 0;
    int reported_load = 0;
    int64_t calls = 0;  // answered through this ClusterClient's Attend
    bool listed = true;
  };
  std::vector<ReplicaStatus> Replicas() const;

 private:
  struct Replica;
  explicit ClusterClient(const ClusterOptions& options);
  absl::Status Resolve() const;           // DNS targets: add new addresses, unlist gone ones
  absl::Status AddLocked(const std::string& target) const;
  void MaybeResolve() const;
  Replica* Pick(const std::vector<const Replica*>& exclude) const;  // counts the call in flight
  void Done(Replica* r, bool failed) const;

  const ClusterOptions options_;
  std::string dns_host_;
  int dns_port_ = 0;
  mutable std::mutex mu_;
  mutable std::vector<std::unique_ptr<Replica>> replicas_;  // guarded by mu_; never removed
  mutable size_t next_ = 0;                                 // guarded by mu_
  mutable std::chrono::steady_clock::time_point resolved_at_{};
};

}  // namespace sageserve
