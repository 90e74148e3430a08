#include "server/frontend/etcd/etcd_registry_store.h"

#include <algorithm>
#include <chrono>
#include <utility>

#include "absl/strings/str_cat.h"
#include "grpcpp/grpcpp.h"
#include "server/registry/registry_json.h"

namespace sage::registry {
namespace {

absl::Status FromGrpc(const grpc::Status& s, const char* what) {
  return absl::Status(static_cast<absl::StatusCode>(s.error_code()),
                      absl::StrCat("etcd ", what, ": ", s.error_message()));
}

void SetDeadline(grpc::ClientContext& ctx, absl::Duration timeout) {
  ctx.set_deadline(std::chrono::system_clock::now() +
                   std::chrono::milliseconds(absl::ToInt64Milliseconds(timeout)));
}

}  // namespace

EtcdStore::EtcdStore(const EtcdStoreOptions& options, std::string key)
    : options_(options), key_(std::move(key)) {}

EtcdStore::~EtcdStore() = default;

absl::StatusOr<std::unique_ptr<EtcdStore>> EtcdStore::Open(const EtcdStoreOptions& options) {
  if (options.endpoint.empty()) return absl::InvalidArgumentError("etcd store: no endpoint");
  std::string prefix = options.prefix;
  while (!prefix.empty() && prefix.back() == '/') prefix.pop_back();
  auto store = std::unique_ptr<EtcdStore>(new EtcdStore(options, prefix + "/registry"));
  // Plaintext only for now; TLS (grpc::SslCredentials with CA/cert/key) is not wired yet.
  grpc::ChannelArguments args;
  const int backoff_ms = static_cast<int>(absl::ToInt64Milliseconds(options.max_reconnect_backoff));
  args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, std::min(backoff_ms, 100));
  args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, backoff_ms);
  store->kv_ = etcdserverpb::KV::NewStub(grpc::CreateCustomChannel(
      options.endpoint, grpc::InsecureChannelCredentials(), args));
  return store;
}

int64_t EtcdStore::last_revision() const {
  std::lock_guard<std::mutex> lock(mu_);
  return revision_;
}

absl::StatusOr<EtcdLoadResult> EtcdStore::Load() {
  etcdserverpb::RangeRequest req;
  req.set_key(key_);
  etcdserverpb::RangeResponse resp;
  grpc::ClientContext ctx;
  SetDeadline(ctx, options_.rpc_timeout);
  if (grpc::Status s = kv_->Range(&ctx, req, &resp); !s.ok()) return FromGrpc(s, "range");
  EtcdLoadResult result;
  if (resp.kvs_size() > 0) {
    const etcdserverpb::KeyValue& kv = resp.kvs(0);
    absl::StatusOr<RegistrySnapshot> decoded = DecodeRegistry(kv.value());
    if (!decoded.ok()) {
      // Refused, never applied: the key is shared, so it is not moved aside either (another
      // replica or an operator may be mid-repair); the operator rewrites or deletes it.
      return absl::Status(decoded.status().code(),
                          absl::StrCat("etcd key ", key_, " (mod_revision ", kv.mod_revision(),
                                       "): ", decoded.status().message()));
    }
    result.snapshot = *std::move(decoded);
    result.found = true;
    result.mod_revision = kv.mod_revision();
  }
  std::lock_guard<std::mutex> lock(mu_);
  revision_ = result.mod_revision;
  return result;
}

absl::Status EtcdStore::Save(const RegistrySnapshot& snapshot) {
  std::lock_guard<std::mutex> lock(mu_);  // Serializes writers: each compares the last write's revision.
  etcdserverpb::TxnRequest txn;
  etcdserverpb::Compare* cmp = txn.add_compare();
  cmp->set_key(key_);
  cmp->set_target(etcdserverpb::Compare::MOD);
  cmp->set_result(etcdserverpb::Compare::EQUAL);
  cmp->set_mod_revision(revision_);  // 0 for a key that does not exist yet: etcd compares 0.
  etcdserverpb::PutRequest* put = txn.add_success()->mutable_request_put();
  put->set_key(key_);
  put->set_value(EncodeRegistry(snapshot, absl::Now()));
  // On a lost race, read the key's current revision in the same transaction for the message.
  txn.add_failure()->mutable_request_range()->set_key(key_);
  etcdserverpb::TxnResponse resp;
  grpc::ClientContext ctx;
  SetDeadline(ctx, options_.rpc_timeout);
  if (grpc::Status s = kv_->Txn(&ctx, txn, &resp); !s.ok()) return FromGrpc(s, "txn");
  if (!resp.succeeded()) {
    int64_t current = 0;
    if (resp.responses_size() > 0 && resp.responses(0).response_range().kvs_size() > 0) {
      current = resp.responses(0).response_range().kvs(0).mod_revision();
    }
    return absl::AbortedError(absl::StrCat("etcd key ", key_, " changed concurrently: expected mod_revision ",
                                           revision_, ", found ", current, "; re-read and retry"));
  }
  revision_ = resp.header().revision();  // A put's mod_revision is the txn's revision.
  return absl::OkStatus();
}

}  // namespace sage::registry
