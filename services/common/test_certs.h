#ifndef MOEMESH_SERVICES_COMMON_TEST_CERTS_H_
#define MOEMESH_SERVICES_COMMON_TEST_CERTS_H_

#include <string>

namespace moemesh {

// Certificates for TLS tests, made by the openssl tool in a folder of
// their own: CAs "ca" and "other_ca"; leaves (for 127.0.0.1 and localhost)
// "server", "client" and "expired_client", "expired_server" (expired a
// day ago) signed by ca; "stranger" and "server2" signed by other_ca; and
// "both" (ca and other_ca in one file, .pem only). Made once per process.
class TestCerts {
 public:
  // A folder of this process's own under `root` (a test's temporary
  // directory), removed at exit.
  static const TestCerts& Get(const std::string& root);

  std::string Pem(const std::string& name) const { return dir_ + "/" + name + ".pem"; }
  std::string Key(const std::string& name) const { return dir_ + "/" + name + ".key"; }
  const std::string& dir() const { return dir_; }

 private:
  explicit TestCerts(const std::string& dir);
  void MakeCa(const std::string& name) const;
  void MakeLeaf(const std::string& name, const std::string& ca, int days = 2) const;

  std::string dir_;
};

}  // namespace moemesh

#endif  // MOEMESH_SERVICES_COMMON_TEST_CERTS_H_
