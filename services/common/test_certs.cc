#include "services/common/test_certs.h"

#include <unistd.h>

#include <cstdlib>
#include <filesystem>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"

namespace moemesh {
namespace {

void Shell(const std::string& cmd) { ASSERT_EQ(std::system((cmd + " 2>/dev/null").c_str()), 0) << cmd; }

}  // namespace

const TestCerts& TestCerts::Get(const std::string& root) {
  // A folder of this process's own: test binaries that ctest runs at once
  // share one temporary root, and each makes (and rotates) its files.
  static const TestCerts* certs = new TestCerts(absl::StrCat(root, "/test_certs.", getpid()));
  static const int removed_at_exit = std::atexit([] {
    std::error_code ec;
    std::filesystem::remove_all(certs->dir(), ec);
  });
  (void)removed_at_exit;
  return *certs;
}

TestCerts::TestCerts(const std::string& dir) : dir_(dir) {
  std::filesystem::remove_all(dir_);
  std::filesystem::create_directories(dir_);
  MakeCa("ca");
  MakeCa("other_ca");
  MakeLeaf("server", "ca");
  MakeLeaf("client", "ca");
  MakeLeaf("stranger", "other_ca");
  MakeLeaf("server2", "other_ca");
  MakeLeaf("expired_client", "ca", -1);
  MakeLeaf("expired_server", "ca", -1);
  Shell(absl::StrCat("cat ", Pem("ca"), " ", Pem("other_ca"), " > ", Pem("both")));
}

void TestCerts::MakeCa(const std::string& name) const {
  Shell(absl::StrCat("openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj /CN=", name,
                     " -keyout ", Key(name), " -out ", Pem(name)));
}

// `days` -1 makes one that has expired (valid until a day before it was made).
void TestCerts::MakeLeaf(const std::string& name, const std::string& ca, int days) const {
  const std::string d = dir_ + "/";
  Shell(absl::StrCat("openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=", name, " -keyout ",
                     Key(name), " -out ", d, name, ".csr"));
  Shell(absl::StrCat("printf 'subjectAltName=IP:127.0.0.1,DNS:localhost' > ", d, name, ".ext"));
  Shell(absl::StrCat("openssl x509 -req -in ", d, name, ".csr -CA ", Pem(ca), " -CAkey ", Key(ca),
                     " -CAcreateserial -days ", days, " -extfile ", d, name, ".ext -out ", Pem(name)));
}

}  // namespace moemesh
