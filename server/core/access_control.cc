#include "server/core/access_control.h"

#include <sys/stat.h>

#include <fstream>
#include <set>
#include <sstream>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "openssl/crypto.h"
#include "openssl/evp.h"
#include "server/util/log_field.h"
#include "spdlog/spdlog.h"

namespace sage::server {
namespace {

constexpr absl::string_view kCertPrefix = "cert:";
constexpr size_t kMaxFileBytes = size_t{1} << 20;

std::array<unsigned char, 32> Sha256(absl::string_view text) {
  std::array<unsigned char, 32> out{};
  unsigned int len = 0;
  (void)EVP_Digest(text.data(), text.size(), out.data(), &len, EVP_sha256(), nullptr);
  return out;
}

int64_t NowNs() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

absl::StatusOr<ScopeSet> ParseScopes(absl::string_view text) {
  ScopeSet out = 0;
  for (absl::string_view s : absl::StrSplit(text, ',')) {
    if (s == "attend") {
      out |= static_cast<ScopeSet>(Scope::kAttend);
    } else if (s == "admin") {
      out |= static_cast<ScopeSet>(Scope::kAdmin);
    } else {
      return absl::InvalidArgumentError(
          absl::StrCat("unknown scope '", LogField(std::string(s)), "' (scopes: attend, admin, comma-separated)"));
    }
  }
  return out;
}

bool ValidIdentity(absl::string_view id) {
  if (id.empty() || id.size() > 128) return false;
  for (char c : id) {
    if (!absl::ascii_isgraph(static_cast<unsigned char>(c))) return false;
  }
  return true;
}

absl::Status Unauthenticated(absl::string_view method, absl::string_view why) {
  return absl::UnauthenticatedError(absl::StrCat(method, ": ", why));
}

}  // namespace

absl::string_view ScopeName(Scope scope) { return scope == Scope::kAdmin ? "admin" : "attend"; }

absl::StatusOr<AccessTable> AccessTable::Parse(absl::string_view text, absl::string_view source) {
  AccessTable table;
  std::set<std::array<unsigned char, 32>> seen_tokens;
  std::set<std::string> seen_certs;
  int line_no = 0;
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    ++line_no;
    const auto fail = [&](absl::string_view why) {
      return absl::InvalidArgumentError(absl::StrCat(source, " line ", line_no, ": ", why));
    };
    std::vector<absl::string_view> fields;
    for (absl::string_view f : absl::StrSplit(line, absl::ByAnyChar(" \t\r"), absl::SkipEmpty())) {
      if (absl::StartsWith(f, "#")) break;  // A comment runs to the end of the line.
      fields.push_back(f);
    }
    if (fields.empty()) continue;
    if (fields.size() != 3) {
      // The line is not quoted: it may hold a token.
      return fail(absl::StrCat(fields.size(), " fields, expected 3: <token> <identity> <scope>[,<scope>] or "
                               "cert:<subject CN> <identity> <scope>[,<scope>]"));
    }
    if (!ValidIdentity(fields[1])) return fail("identity: must be 1 to 128 printable characters");
    absl::StatusOr<ScopeSet> scopes = ParseScopes(fields[2]);
    if (!scopes.ok()) return fail(scopes.status().message());
    Principal principal{std::string(fields[1]), *scopes};
    if (absl::StartsWith(fields[0], kCertPrefix)) {
      std::string cn(fields[0].substr(kCertPrefix.size()));
      if (cn.empty()) return fail("cert: needs the client certificate's subject CN after 'cert:'");
      if (!seen_certs.insert(cn).second) return fail(absl::StrCat("cert:", LogField(cn), " is listed twice"));
      table.certs_.push_back(CertEntry{std::move(cn), std::move(principal)});
      continue;
    }
    if (fields[0].size() < kMinTokenLength) {
      return fail(absl::StrCat("token is ", fields[0].size(), " characters, at least ", kMinTokenLength, " needed"));
    }
    std::array<unsigned char, 32> digest = Sha256(fields[0]);
    if (!seen_tokens.insert(digest).second) return fail("this token is listed on an earlier line too");
    table.tokens_.push_back(TokenEntry{digest, std::move(principal)});
  }
  if (table.tokens_.empty() && table.certs_.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(source, ": no tokens (an empty token file would lock every "
                                                           "caller out; remove --token_file to run without tokens)"));
  }
  return table;
}

std::optional<Principal> AccessTable::FindToken(absl::string_view token) const {
  const std::array<unsigned char, 32> digest = Sha256(token);
  const TokenEntry* found = nullptr;
  // Every entry is compared, whatever matched: the time taken does not depend on which one did.
  for (const TokenEntry& e : tokens_) {
    const bool equal = CRYPTO_memcmp(e.digest.data(), digest.data(), digest.size()) == 0;
    if (equal && found == nullptr) found = &e;
  }
  if (found == nullptr) return std::nullopt;
  return found->principal;
}

std::optional<Principal> AccessTable::FindCert(absl::string_view common_name) const {
  for (const CertEntry& e : certs_) {
    if (e.common_name == common_name) return e.principal;
  }
  return std::nullopt;
}

absl::StatusOr<std::unique_ptr<AccessControl>> AccessControl::Create(const AccessControlOptions& options) {
  std::unique_ptr<AccessControl> ac(new AccessControl(options));
  if (options.token_file.empty()) return ac;
  absl::StatusOr<std::pair<std::shared_ptr<const AccessTable>, FileStamp>> loaded = ac->Load();
  if (!loaded.ok()) return loaded.status();
  const AccessTable& t = *loaded->first;
  if (t.cert_count() > 0 && !options.client_certificates_verified) {
    spdlog::warn("access control: {} has {} cert: lines, which apply only when the listener requires client "
                 "certificates (--tls_client_ca); they are ignored",
                 options.token_file, t.cert_count());
  }
  spdlog::info("access control: {} tokens, {} certificate identities from {}", t.token_count(), t.cert_count(),
               options.token_file);
  absl::MutexLock lock(&ac->mu_);
  ac->table_ = std::move(loaded->first);
  ac->stamp_ = loaded->second;
  ac->next_check_ns_.store(NowNs() + std::chrono::nanoseconds(options.check_interval).count());
  ac->loads_.store(1);
  return ac;
}

std::string AccessControl::warning() const {
  if (tokens_required()) return "";
  return "no --token_file: every caller that reaches the port is an administrator (it may delete models, "
         "overwrite plans and unregister shared memory); see docs/SECURITY.md, \"Access control\"";
}

absl::StatusOr<std::pair<std::shared_ptr<const AccessTable>, AccessControl::FileStamp>> AccessControl::Load() const {
  const std::string& path = options_.token_file;
  const std::string source = absl::StrCat("token file ", path);
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) return absl::NotFoundError(absl::StrCat(source, ": cannot stat it"));
  if (!S_ISREG(st.st_mode)) return absl::InvalidArgumentError(absl::StrCat(source, ": not a regular file"));
  if (static_cast<size_t>(st.st_size) > kMaxFileBytes) {
    return absl::InvalidArgumentError(absl::StrCat(source, ": ", st.st_size, " bytes, at most ", kMaxFileBytes));
  }
  if ((st.st_mode & (S_IROTH | S_IWOTH)) != 0) {
    spdlog::warn("access control: {} is readable or writable by every user of this host; chmod 600 it", path);
  }
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::PermissionDeniedError(absl::StrCat(source, ": cannot read it"));
  std::stringstream ss;
  ss << in.rdbuf();
  absl::StatusOr<AccessTable> parsed = AccessTable::Parse(ss.str(), source);
  if (!parsed.ok()) return parsed.status();
  FileStamp stamp;
  stamp.mtime_ns = int64_t{st.st_mtim.tv_sec} * 1000000000 + st.st_mtim.tv_nsec;
  stamp.size = st.st_size;
  stamp.inode = st.st_ino;
  return std::make_pair(std::make_shared<const AccessTable>(*std::move(parsed)), stamp);
}

std::shared_ptr<const AccessTable> AccessControl::table() const {
  absl::MutexLock lock(&mu_);
  return table_;
}

absl::Status AccessControl::Reload() {
  if (!tokens_required()) return absl::OkStatus();
  absl::MutexLock one(&reload_mu_);
  absl::StatusOr<std::pair<std::shared_ptr<const AccessTable>, FileStamp>> loaded = Load();
  if (!loaded.ok()) {
    spdlog::error("access control: reload failed, the previous tokens stay in force: {}",
                  LogField(loaded.status().ToString(), kLogStatusMaxBytes));
    return loaded.status();
  }
  spdlog::info("access control: reloaded {} ({} tokens, {} certificate identities)", options_.token_file,
               loaded->first->token_count(), loaded->first->cert_count());
  absl::MutexLock lock(&mu_);
  table_ = std::move(loaded->first);
  stamp_ = loaded->second;
  loads_.fetch_add(1);
  return absl::OkStatus();
}

void AccessControl::MaybeReload() {
  if (!tokens_required()) return;
  const int64_t now = NowNs();
  int64_t next = next_check_ns_.load(std::memory_order_relaxed);
  if (now < next) return;
  // One caller per interval looks at the file; the others go on with the tokens in force.
  if (!next_check_ns_.compare_exchange_strong(next, now + std::chrono::nanoseconds(options_.check_interval).count())) {
    return;
  }
  struct stat st {};
  FileStamp current;
  if (::stat(options_.token_file.c_str(), &st) == 0) {
    current.mtime_ns = int64_t{st.st_mtim.tv_sec} * 1000000000 + st.st_mtim.tv_nsec;
    current.size = st.st_size;
    current.inode = st.st_ino;
  }
  {
    absl::MutexLock lock(&mu_);
    if (current == stamp_) return;
    // Remember what was seen so that a bad file is reported once, not on every check.
    stamp_ = current;
  }
  (void)Reload();
}

absl::StatusOr<Principal> AccessControl::Authenticate(const CallCredentials& credentials, absl::string_view method) {
  if (!tokens_required()) return Principal{std::string(kAnonymousIdentity), kAllScopes};
  MaybeReload();
  std::shared_ptr<const AccessTable> t = table();
  if (credentials.authorization.size() > 1) {
    return Unauthenticated(method, "more than one authorization header");
  }
  if (credentials.authorization.size() == 1) {
    absl::string_view value = absl::StripAsciiWhitespace(credentials.authorization.front());
    constexpr absl::string_view kBearer = "bearer ";
    if (value.size() <= kBearer.size() || !absl::StartsWithIgnoreCase(value, kBearer)) {
      return Unauthenticated(method, "the authorization header is not 'Bearer <token>'");
    }
    absl::string_view token = absl::StripLeadingAsciiWhitespace(value.substr(kBearer.size()));
    std::optional<Principal> p = t->FindToken(token);
    if (!p) return Unauthenticated(method, "unknown or revoked token");
    return *std::move(p);
  }
  if (options_.client_certificates_verified && !credentials.cert_common_name.empty()) {
    std::optional<Principal> p = t->FindCert(credentials.cert_common_name);
    if (p) return *std::move(p);
    return Unauthenticated(method, absl::StrCat("no token, and the client certificate (CN '",
                                                LogField(std::string(credentials.cert_common_name)),
                                                "') maps to no identity in the token file"));
  }
  return Unauthenticated(method, "this server requires a token (metadata 'authorization: Bearer <token>')");
}

absl::Status AccessControl::Authorize(const Principal& caller, Scope needed, absl::string_view method) {
  if (caller.Has(needed)) return absl::OkStatus();
  return absl::PermissionDeniedError(absl::StrCat(method, " needs the '", ScopeName(needed), "' scope; identity '",
                                                  caller.identity, "' does not have it"));
}

absl::StatusOr<Principal> AccessControl::Check(const CallCredentials& credentials, Scope needed,
                                               absl::string_view method) {
  absl::StatusOr<Principal> p = Authenticate(credentials, method);
  if (!p.ok()) return p.status();
  if (absl::Status s = Authorize(*p, needed, method); !s.ok()) return s;
  return p;
}

}  // namespace sage::server
