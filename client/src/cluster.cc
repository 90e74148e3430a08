#include "sageserve/client/cluster.h"

#include <netdb.h>
#include <sys/socket.h>
#include <arpa/inet.h>

#include <algorithm>
#include <atomic>
#include <set>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "status_conversion.h"

namespace sageserve {

struct ClusterClient::Replica {
  std::string target;
  std::unique_ptr<Client> client;
  std::string instance;  // guarded by ClusterClient::mu_
  int in_flight = 0;     // guarded by ClusterClient::mu_
  std::atomic<int> reported_load{0};
  int64_t calls = 0;  // guarded by ClusterClient::mu_
  std::chrono::steady_clock::time_point down_until{};
  bool listed = true;
};

namespace {

constexpr std::string_view kDnsPrefix = "dns:///";

std::string_view InstanceOf(std::string_view session_id) { return session_id.substr(0, session_id.find('.')); }

}  // namespace

ClusterClient::ClusterClient(const ClusterOptions& options) : options_(options) {}
ClusterClient::~ClusterClient() = default;

absl::StatusOr<std::unique_ptr<ClusterClient>> ClusterClient::Create(const ClusterOptions& options) {
  if (options.targets.empty()) return absl::InvalidArgumentError("ClusterOptions.targets: at least one");
  std::unique_ptr<ClusterClient> c(new ClusterClient(options));
  if (options.targets.size() == 1 && options.targets[0].rfind(kDnsPrefix, 0) == 0) {
    const std::string_view rest = std::string_view(options.targets[0]).substr(kDnsPrefix.size());
    const size_t colon = rest.rfind(':');
    int port = 0;
    if (colon == std::string_view::npos || colon == 0 || !absl::SimpleAtoi(std::string(rest.substr(colon + 1)), &port) || port <= 0 ||
        port > 65535) {
      return absl::InvalidArgumentError(absl::StrCat("ClusterOptions.targets: expected dns:///name:port, got '",
                                                     options.targets[0], "'"));
    }
    c->dns_host_ = std::string(rest.substr(0, colon));
    c->dns_port_ = port;
    if (absl::Status s = c->Resolve(); !s.ok()) return s;
    return c;
  }
  std::lock_guard<std::mutex> lock(c->mu_);
  for (const std::string& t : options.targets) {
    if (absl::Status s = c->AddLocked(t); !s.ok()) return s;
  }
  return c;
}

absl::Status ClusterClient::AddLocked(const std::string& target) const {
  auto r = std::make_unique<Replica>();
  r->target = target;
  ClientOptions o = options_.client;
  o.target = target;
  Replica* raw = r.get();
  o.on_load = [raw](int load) { raw->reported_load.store(load, std::memory_order_relaxed); };
  absl::StatusOr<std::unique_ptr<Client>> client = Client::Create(o);
  if (!client.ok()) return client.status();
  r->client = *std::move(client);
  replicas_.push_back(std::move(r));
  return absl::OkStatus();
}

absl::Status ClusterClient::Resolve() const {
  addrinfo hints{};
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* found = nullptr;
  const int rc = getaddrinfo(dns_host_.c_str(), std::to_string(dns_port_).c_str(), &hints, &found);
  std::set<std::string> targets;
  for (addrinfo* a = found; rc == 0 && a != nullptr; a = a->ai_next) {
    char host[INET6_ADDRSTRLEN] = {};
    if (a->ai_family == AF_INET) {
      inet_ntop(AF_INET, &reinterpret_cast<sockaddr_in*>(a->ai_addr)->sin_addr, host, sizeof(host));
      targets.insert(absl::StrCat(host, ":", dns_port_));
    } else if (a->ai_family == AF_INET6) {
      inet_ntop(AF_INET6, &reinterpret_cast<sockaddr_in6*>(a->ai_addr)->sin6_addr, host, sizeof(host));
      targets.insert(absl::StrCat("[", host, "]:", dns_port_));
    }
  }
  if (found != nullptr) freeaddrinfo(found);
  std::lock_guard<std::mutex> lock(mu_);
  resolved_at_ = std::chrono::steady_clock::now();
  if (targets.empty()) {  // keep the last answer; with none at all, nothing can be called
    if (replicas_.empty()) {
      return absl::UnavailableError(absl::StrCat(dns_host_, ": cannot be resolved (", gai_strerror(rc), ")"));
    }
    return absl::OkStatus();
  }
  for (const std::string& t : targets) {
    auto it = std::find_if(replicas_.begin(), replicas_.end(), [&t](const auto& r) { return r->target == t; });
    if (it == replicas_.end()) {
      if (absl::Status s = AddLocked(t); !s.ok()) return s;
    }
  }
  for (auto& r : replicas_) r->listed = targets.contains(r->target);
  return absl::OkStatus();
}

void ClusterClient::MaybeResolve() const {
  if (dns_host_.empty()) return;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (std::chrono::steady_clock::now() - resolved_at_ < options_.resolve_every) return;
  }
  (void)Resolve();  // a failed lookup keeps the replicas known
}

ClusterClient::Replica* ClusterClient::Pick(const std::vector<const Replica*>& exclude) const {
  MaybeResolve();
  std::lock_guard<std::mutex> lock(mu_);
  const auto now = std::chrono::steady_clock::now();
  std::vector<Replica*> up, all;
  for (auto& r : replicas_) {
    if (!r->listed || std::find(exclude.begin(), exclude.end(), r.get()) != exclude.end()) continue;
    all.push_back(r.get());
    if (r->down_until <= now) up.push_back(r.get());
  }
  std::vector<Replica*>& candidates = up.empty() ? all : up;  // all set aside: try them anyway
  if (candidates.empty()) return nullptr;
  const auto score = [](const Replica* r) { return r->in_flight + r->reported_load.load(std::memory_order_relaxed); };
  int best = score(candidates.front());
  for (Replica* r : candidates) best = std::min(best, score(r));
  std::vector<Replica*> ties;
  for (Replica* r : candidates) {
    if (score(r) == best) ties.push_back(r);
  }
  Replica* chosen = ties[next_++ % ties.size()];
  ++chosen->in_flight;
  return chosen;
}

void ClusterClient::Done(Replica* r, bool failed) const {
  std::lock_guard<std::mutex> lock(mu_);
  --r->in_flight;
  ++r->calls;
  if (failed) r->down_until = std::chrono::steady_clock::now() + options_.down_for;
}

absl::StatusOr<v1::AttendResponse> ClusterClient::Attend(const v1::AttendRequest& request) const {
  std::vector<const Replica*> tried;
  absl::Status last = absl::UnavailableError("no replica of the cluster can take the call");
  for (;;) {
    Replica* r = Pick(tried);
    if (r == nullptr) return last;
    tried.push_back(r);
    absl::StatusOr<v1::AttendResponse> response = r->client->Attend(request);
    const bool unavailable = !response.ok() && response.status().code() == absl::StatusCode::kUnavailable;
    Done(r, unavailable);
    if (!unavailable) return response;
    last = response.status();
  }
}

absl::StatusOr<const Client*> ClusterClient::ForNewSession() const {
  Replica* r = Pick({});
  if (r == nullptr) return absl::UnavailableError("no replica of the cluster can take a new session");
  Done(r, false);  // the session's own calls are the caller's to count
  return r->client.get();
}

void ClusterClient::Created(const Client* on, std::string_view session_id) const {
  std::lock_guard<std::mutex> lock(mu_);
  for (auto& r : replicas_) {
    if (r->client.get() == on) r->instance = std::string(InstanceOf(session_id));
  }
}

absl::StatusOr<const Client*> ClusterClient::ForSession(std::string_view session_id) const {
  const std::string_view instance = InstanceOf(session_id);
  MaybeResolve();
  // Replicas not yet asked first, then those whose instance may be stale (a restart): each once.
  std::vector<Replica*> unknown, known;
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (auto& r : replicas_) {
      if (r->instance == instance) return r->client.get();
      (r->instance.empty() ? unknown : known).push_back(r.get());
    }
  }
  for (const std::vector<Replica*>* ask : {&unknown, &known}) {
    for (Replica* r : *ask) {  // outside the lock: a round trip each
      absl::StatusOr<v1::GetServerInfoResponse> info = r->client->GetServerInfo();
      if (!info.ok()) continue;
      std::lock_guard<std::mutex> lock(mu_);
      r->instance = info->instance();
      if (r->instance == instance) return r->client.get();
    }
  }
  return SessionOwnerGone(absl::StrCat("session ", std::string(session_id), ": no replica of this cluster is server instance ",
                                       std::string(instance),
                                       " (it died or restarted, was removed, or the session is another cluster's); "
                                       "create a new session"),
                          session_id);
}

std::vector<ClusterClient::ReplicaStatus> ClusterClient::Replicas() const {
  MaybeResolve();
  std::lock_guard<std::mutex> lock(mu_);
  std::vector<ReplicaStatus> out;
  for (const auto& r : replicas_) {
    out.push_back(ReplicaStatus{r->target, r->instance, r->in_flight, r->reported_load.load(), r->calls, r->listed});
  }
  return out;
}

}  // namespace sageserve
