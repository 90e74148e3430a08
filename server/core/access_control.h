// Who may call what: bearer tokens and mutual-TLS identities mapped to scopes, read from the token
// file (--token_file), and the check every RPC handler makes before any work. Protobuf- and
// gRPC-free: the frontend (frontend/grpc/call_auth.h) reads the credentials off the call and names
// the scope each method needs; docs/SECURITY.md, "Access control", is the operator's view.
//
// Token file, one entry a line, `#` starts a comment (at the start of a field):
//   <token> <identity> <scope>[,<scope>]            a bearer token (>= 16 characters)
//   cert:<subject CN> <identity> <scope>[,<scope>]   a client certificate's common name (mTLS)
// Scopes: attend, admin (admin implies attend). Only SHA-256 digests of the tokens are kept, and a
// presented token is compared against every one of them in constant time.
#pragma once

#include <array>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include "absl/strings/string_view.h"
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"

namespace sage::server {

enum class Scope : uint8_t {
  kAttend = 1,  // Attend, streams, self test, server info, registry reads, one's own shared memory.
  kAdmin = 2,   // Registry writes and calibration, every caller's shared memory. Implies kAttend.
};

absl::string_view ScopeName(Scope scope);

// Bitmask of Scope values.
using ScopeSet = uint8_t;
inline constexpr ScopeSet kAllScopes = static_cast<ScopeSet>(Scope::kAttend) | static_cast<ScopeSet>(Scope::kAdmin);

// Tokens shorter than this are refused in the token file.
inline constexpr size_t kMinTokenLength = 16;
// Every caller's identity when the server runs without a token file.
inline constexpr absl::string_view kAnonymousIdentity = "anonymous";

// An authenticated caller.
struct Principal {
  std::string identity;
  ScopeSet scopes = 0;
  bool Has(Scope s) const {
    // admin implies attend
    if ((scopes & static_cast<ScopeSet>(Scope::kAdmin)) != 0) return true;
    return (scopes & static_cast<ScopeSet>(s)) != 0;
  }
  bool admin() const { return Has(Scope::kAdmin); }
};

// What a call presented. `authorization` is the raw value of the call's authorization header(s)
// (none: empty vector); `cert_common_name` the peer certificate's CN when the listener required
// and verified a client certificate (else empty).
struct CallCredentials {
  std::vector<absl::string_view> authorization;
  absl::string_view cert_common_name;
};

// A parsed token file. Immutable.
class AccessTable {
 public:
  // `source` names the file in errors ("token file /etc/x line 3: ..."). Errors never quote a token.
  static absl::StatusOr<AccessTable> Parse(absl::string_view text, absl::string_view source);

  // The caller holding `token`, compared in constant time against every token of the table.
  std::optional<Principal> FindToken(absl::string_view token) const;
  std::optional<Principal> FindCert(absl::string_view common_name) const;
  size_t token_count() const { return tokens_.size(); }
  size_t cert_count() const { return certs_.size(); }

 private:
  struct TokenEntry {
    std::array<unsigned char, 32> digest{};
    Principal principal;
  };
  struct CertEntry {
    std::string common_name;
    Principal principal;
  };
  std::vector<TokenEntry> tokens_;
  std::vector<CertEntry> certs_;
};

struct AccessControlOptions {
  // The token file. Empty: no access control; every caller is kAnonymousIdentity with every scope.
  std::string token_file;
  // Whether the listener requires and verifies client certificates; `cert:` lines only apply then.
  bool client_certificates_verified = false;
  // The file's mtime (and size, inode) is looked at no more often than this, lazily, on a call.
  std::chrono::milliseconds check_interval{1000};
};

class AccessControl {
 public:
  // Reads the token file, if any. A missing, unreadable or malformed file is an error naming the
  // file and the line: the server must not start without the access control it was told to use.
  static absl::StatusOr<std::unique_ptr<AccessControl>> Create(const AccessControlOptions& options);

  bool tokens_required() const { return !options_.token_file.empty(); }
  // The operator-facing warning when tokens are not required (empty otherwise).
  std::string warning() const;

  // Who the caller is. UNAUTHENTICATED (naming `method`, never echoing the token) for a missing,
  // malformed or unknown token, or without a token, for an unmapped client certificate. A
  // presented token is authoritative: an unknown one fails even if the certificate is mapped.
  // Looks at the token file's mtime first when check_interval has passed.
  absl::StatusOr<Principal> Authenticate(const CallCredentials& credentials, absl::string_view method);
  // PERMISSION_DENIED naming the identity, `method` and the scope it needs, unless `caller` has it.
  static absl::Status Authorize(const Principal& caller, Scope needed, absl::string_view method);
  // Both.
  absl::StatusOr<Principal> Check(const CallCredentials& credentials, Scope needed, absl::string_view method);

  // Re-reads the token file now (SIGHUP). On error the tokens in use stay and the error is logged
  // and returned. OK without a token file.
  absl::Status Reload();
  // Reloads when the file's mtime, size or inode changed since the last load, at most once per
  // check_interval (the first caller past the interval does it).
  void MaybeReload();

  // How many times a file was loaded successfully (the start counts as one).
  int64_t loads() const { return loads_.load(); }

 private:
  struct FileStamp {
    int64_t mtime_ns = 0;
    int64_t size = -1;
    uint64_t inode = 0;
    bool operator==(const FileStamp&) const = default;
  };
  explicit AccessControl(const AccessControlOptions& options) : options_(options) {}
  absl::StatusOr<std::pair<std::shared_ptr<const AccessTable>, FileStamp>> Load() const;
  std::shared_ptr<const AccessTable> table() const;

  const AccessControlOptions options_;
  mutable absl::Mutex mu_;
  std::shared_ptr<const AccessTable> table_ ABSL_GUARDED_BY(mu_);
  FileStamp stamp_ ABSL_GUARDED_BY(mu_);
  absl::Mutex reload_mu_;  // One reload at a time.
  std::atomic<int64_t> next_check_ns_{0};
  std::atomic<int64_t> loads_{0};
};

}  // namespace sage::server
