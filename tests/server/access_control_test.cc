// core/access_control: the token file's format (errors name the line and never quote a token),
// lookups, UNAUTHENTICATED vs PERMISSION_DENIED, admin implying attend, reload keeping the old
// tokens on a bad file, and client-certificate identities only on a verifying listener.
#include "server/core/access_control.h"

#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>
#include <thread>

#include "gtest/gtest.h"

namespace sage::server {
namespace {

constexpr char kAdmin[] = "admin-token-0123456789";
constexpr char kAlice[] = "alice-token-0123456789";

std::string GoodFile() {
  return std::string("# sageserve tokens\n\n") + kAdmin + " ops admin\n" + kAlice +
         "   alice\tattend   # trailing comment\n"
         "cert:worker-7 batch attend,admin\n";
}

CallCredentials Bearer(const std::string& value) {
  static std::string header;  // outlives the returned view within each use below
  header = "Bearer " + value;
  CallCredentials c;
  c.authorization.push_back(header);
  return c;
}

std::string WriteTemp(const std::string& text, const std::string& tag) {
  const std::string path = ::testing::TempDir() + "/sage_tokens_" + tag + "_" + std::to_string(::getpid());
  std::ofstream(path, std::ios::trunc) << text;
  return path;
}

TEST(AccessTable, ParsesTokensCertsAndComments) {
  absl::StatusOr<AccessTable> t = AccessTable::Parse(GoodFile(), "f");
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_EQ(t->token_count(), 2u);
  EXPECT_EQ(t->cert_count(), 1u);
  std::optional<Principal> alice = t->FindToken(kAlice);
  ASSERT_TRUE(alice.has_value());
  EXPECT_EQ(alice->identity, "alice");
  EXPECT_TRUE(alice->Has(Scope::kAttend));
  EXPECT_FALSE(alice->Has(Scope::kAdmin));
  std::optional<Principal> admin = t->FindToken(kAdmin);
  ASSERT_TRUE(admin.has_value());
  EXPECT_TRUE(admin->Has(Scope::kAttend)) << "admin implies attend";
  EXPECT_TRUE(admin->Has(Scope::kAdmin));
  EXPECT_FALSE(t->FindToken("alice-token-012345678").has_value());  // a prefix
  EXPECT_FALSE(t->FindToken("").has_value());
  std::optional<Principal> cert = t->FindCert("worker-7");
  ASSERT_TRUE(cert.has_value());
  EXPECT_EQ(cert->identity, "batch");
  EXPECT_FALSE(t->FindCert("worker-8").has_value());
}

TEST(AccessTable, ErrorsNameTheLineAndNeverQuoteTheToken) {
  struct Case {
    std::string text;
    std::string expect;
  };
  const Case cases[] = {
      {"# c\nshort-secret x attend\n", "line 2: token is 12 characters, at least 16"},
      {"\n\nsecret-secret-secret x attend,root\n", "line 3: unknown scope 'root'"},
      {"secret-secret-secret x\n", "line 1: 2 fields, expected 3"},
      {"secret-secret-secret x attend extra\n", "line 1: 4 fields"},
      {"secret-secret-secret x attend\nsecret-secret-secret y admin\n", "line 2: this token is listed on an earlier line"},
      {"cert: x attend\n", "line 1: cert: needs the client certificate's subject CN"},
      {"cert:a x attend\ncert:a y admin\n", "line 2: cert:a is listed twice"},
      {"# only comments\n", "no tokens"},
  };
  for (const Case& c : cases) {
    absl::StatusOr<AccessTable> t = AccessTable::Parse(c.text, "token file F");
    ASSERT_FALSE(t.ok()) << c.text;
    EXPECT_EQ(t.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_NE(t.status().message().find(c.expect), std::string::npos) << t.status();
    EXPECT_NE(t.status().message().find("token file F"), std::string::npos) << t.status();
    EXPECT_EQ(t.status().message().find("secret"), std::string::npos) << "quotes the token: " << t.status();
  }
}

TEST(AccessControl, WithoutTokenFileEveryoneIsAnonymousAdmin) {
  absl::StatusOr<std::unique_ptr<AccessControl>> ac = AccessControl::Create({});
  ASSERT_TRUE(ac.ok());
  EXPECT_FALSE((*ac)->tokens_required());
  EXPECT_NE((*ac)->warning().find("administrator"), std::string::npos);
  absl::StatusOr<Principal> p = (*ac)->Check(CallCredentials{}, Scope::kAdmin, "/x/Y");
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_EQ(p->identity, kAnonymousIdentity);
}

TEST(AccessControl, UnauthenticatedAndPermissionDenied) {
  const std::string path = WriteTemp(GoodFile(), "codes");
  AccessControlOptions o;
  o.token_file = path;
  absl::StatusOr<std::unique_ptr<AccessControl>> made = AccessControl::Create(o);
  ASSERT_TRUE(made.ok()) << made.status();
  AccessControl& ac = **made;
  EXPECT_TRUE(ac.tokens_required());
  EXPECT_TRUE(ac.warning().empty());
  const std::string m = "/sageserve.v1.RegistryService/RegisterModel";

  absl::StatusOr<Principal> none = ac.Check(CallCredentials{}, Scope::kAttend, m);
  EXPECT_EQ(none.status().code(), absl::StatusCode::kUnauthenticated);
  EXPECT_NE(none.status().message().find(m), std::string::npos);

  absl::StatusOr<Principal> unknown = ac.Check(Bearer("wrong-secret-0123456789"), Scope::kAttend, m);
  EXPECT_EQ(unknown.status().code(), absl::StatusCode::kUnauthenticated);
  EXPECT_EQ(unknown.status().message().find("wrong-secret"), std::string::npos) << unknown.status();

  CallCredentials basic;
  basic.authorization.push_back("Basic YWxpY2U6cHc=");
  EXPECT_EQ(ac.Check(basic, Scope::kAttend, m).status().code(), absl::StatusCode::kUnauthenticated);
  CallCredentials two;
  const std::string h = std::string("Bearer ") + kAlice;
  two.authorization = {h, h};
  EXPECT_EQ(ac.Check(two, Scope::kAttend, m).status().code(), absl::StatusCode::kUnauthenticated);

  absl::StatusOr<Principal> denied = ac.Check(Bearer(kAlice), Scope::kAdmin, m);
  EXPECT_EQ(denied.status().code(), absl::StatusCode::kPermissionDenied);
  EXPECT_NE(denied.status().message().find(m), std::string::npos) << denied.status();
  EXPECT_NE(denied.status().message().find("'admin' scope"), std::string::npos) << denied.status();
  EXPECT_EQ(denied.status().message().find(kAlice), std::string::npos);

  EXPECT_TRUE(ac.Check(Bearer(kAlice), Scope::kAttend, m).ok());
  CallCredentials lower;
  const std::string lh = std::string("bearer ") + kAdmin;
  lower.authorization.push_back(lh);
  EXPECT_TRUE(ac.Check(lower, Scope::kAdmin, m).ok()) << "the scheme is case-insensitive";

  // A certificate CN counts only on a listener that verifies client certificates.
  CallCredentials cert;
  cert.cert_common_name = "worker-7";
  EXPECT_EQ(ac.Check(cert, Scope::kAttend, m).status().code(), absl::StatusCode::kUnauthenticated);
  std::filesystem::remove(path);
}

TEST(AccessControl, CertificateIdentities) {
  const std::string path = WriteTemp(GoodFile(), "certs");
  AccessControlOptions o;
  o.token_file = path;
  o.client_certificates_verified = true;
  absl::StatusOr<std::unique_ptr<AccessControl>> ac = AccessControl::Create(o);
  ASSERT_TRUE(ac.ok()) << ac.status();
  CallCredentials cert;
  cert.cert_common_name = "worker-7";
  absl::StatusOr<Principal> p = (*ac)->Check(cert, Scope::kAdmin, "/m");
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_EQ(p->identity, "batch");
  cert.cert_common_name = "stranger";
  EXPECT_EQ((*ac)->Check(cert, Scope::kAttend, "/m").status().code(), absl::StatusCode::kUnauthenticated);
  // A presented token decides, even beside a mapped certificate.
  CallCredentials both = Bearer("unknown-token-0123456789");
  both.cert_common_name = "worker-7";
  EXPECT_EQ((*ac)->Check(both, Scope::kAttend, "/m").status().code(), absl::StatusCode::kUnauthenticated);
  std::filesystem::remove(path);
}

TEST(AccessControl, BadFileAtStartNamesTheLine) {
  const std::string path = WriteTemp("# tokens\nadmin-token-0123456789 ops superuser\n", "bad");
  AccessControlOptions o;
  o.token_file = path;
  absl::StatusOr<std::unique_ptr<AccessControl>> ac = AccessControl::Create(o);
  ASSERT_FALSE(ac.ok());
  EXPECT_NE(ac.status().message().find(path + " line 2: unknown scope 'superuser'"), std::string::npos) << ac.status();
  o.token_file = path + ".missing";
  EXPECT_EQ(AccessControl::Create(o).status().code(), absl::StatusCode::kNotFound);
  std::filesystem::remove(path);
}

TEST(AccessControl, ReloadRevokesAndABadFileKeepsTheOldTokens) {
  const std::string path = WriteTemp(GoodFile(), "reload");
  AccessControlOptions o;
  o.token_file = path;
  o.check_interval = std::chrono::milliseconds(0);
  absl::StatusOr<std::unique_ptr<AccessControl>> made = AccessControl::Create(o);
  ASSERT_TRUE(made.ok()) << made.status();
  AccessControl& ac = **made;
  ASSERT_TRUE(ac.Check(Bearer(kAlice), Scope::kAttend, "/m").ok());

  // A bad file: the tokens in force stay (explicit reload, then the lazy mtime check).
  std::ofstream(path, std::ios::trunc) << "alice-token-0123456789 alice\n";
  EXPECT_FALSE(ac.Reload().ok());
  EXPECT_TRUE(ac.Check(Bearer(kAlice), Scope::kAttend, "/m").ok());
  EXPECT_EQ(ac.loads(), 1);

  // Alice revoked: picked up by the mtime check on the next call.
  std::this_thread::sleep_for(std::chrono::milliseconds(20));
  std::ofstream(path, std::ios::trunc) << kAdmin << " ops admin\n";
  EXPECT_EQ(ac.Check(Bearer(kAlice), Scope::kAttend, "/m").status().code(), absl::StatusCode::kUnauthenticated);
  EXPECT_TRUE(ac.Check(Bearer(kAdmin), Scope::kAdmin, "/m").ok());
  EXPECT_EQ(ac.loads(), 2);
  std::filesystem::remove(path);
}

}  // namespace
}  // namespace sage::server
