// HTTPS with the mesh's certificates on a real socket (cpp-httplib's server
// set up by HttpTls, clients of cpp-httplib): a client that trusts the CA
// is served, plain HTTP and clients of another CA are not; with client
// auth, only clients with a certificate of the CA, not expired, are; a
// rotated certificate is served without a restart; unusable files are
// refused at start with the file named.
#include "services/common/http_tls.h"

#include <httplib.h>

#include <chrono>
#include <filesystem>
#include <memory>
#include <string>
#include <thread>

#include "gtest/gtest.h"
#include "services/common/test_certs.h"

namespace moemesh {
namespace {

const TestCerts& Certs() { return TestCerts::Get(::testing::TempDir()); }
std::string Pem(const std::string& name) { return Certs().Pem(name); }
std::string Key(const std::string& name) { return Certs().Key(name); }

class HttpTlsTest : public ::testing::Test {
 protected:
  void TearDown() override {
    if (server_) server_->stop();
    if (thread_.joinable()) thread_.join();
  }

  void Serve(const TlsConfig& config) {
    auto tls = HttpTls::Create(config);
    ASSERT_TRUE(tls.ok()) << tls.status();
    tls_ = std::move(*tls);
    server_ = std::make_unique<httplib::SSLServer>([t = tls_.get()](SSL_CTX& ctx) { return t->SetUp(&ctx); });
    ASSERT_TRUE(server_->is_valid());
    server_->Get("/ping", [](const httplib::Request&, httplib::Response& res) { res.set_content("pong", "text/plain"); });
    port_ = server_->bind_to_any_port("127.0.0.1");
    ASSERT_GT(port_, 0);
    thread_ = std::thread([this] { server_->listen_after_bind(); });
  }

  // GET /ping over HTTPS, trusting `ca`, with a client certificate when
  // `name` is given: whether "pong" came back.
  bool Reaches(const std::string& ca, const std::string& name = "") {
    httplib::SSLClient client("127.0.0.1", port_, name.empty() ? std::string() : Pem(name),
                              name.empty() ? std::string() : Key(name));
    client.set_ca_cert_path(ca.c_str());
    client.enable_server_certificate_verification(true);
    client.set_connection_timeout(3);
    auto res = client.Get("/ping");
    return res && res->status == 200 && res->body == "pong";
  }

  TlsConfig ServerOnly(const std::string& cert, const std::string& key) {
    TlsConfig c{cert, key, ""};
    c.client_auth = false;
    return c;
  }

  std::shared_ptr<HttpTls> tls_;
  std::unique_ptr<httplib::SSLServer> server_;
  std::thread thread_;
  int port_ = 0;
};

TEST_F(HttpTlsTest, ServesClientsThatTrustItsCaAndNoOneInPlaintext) {
  Serve(ServerOnly(Pem("server"), Key("server")));
  EXPECT_TRUE(Reaches(Pem("ca")));
  EXPECT_FALSE(Reaches(Pem("other_ca"))) << "a client that trusts another CA";
  httplib::Client plain("127.0.0.1", port_);
  plain.set_connection_timeout(3);
  plain.set_read_timeout(3);
  auto res = plain.Get("/ping");
  EXPECT_FALSE(res && res->status == 200) << "plain HTTP on the HTTPS port";
}

TEST_F(HttpTlsTest, ClientAuthServesOnlyClientsTheCaVouchesFor) {
  Serve({Pem("server"), Key("server"), Pem("ca")});
  EXPECT_TRUE(Reaches(Pem("ca"), "client"));
  EXPECT_FALSE(Reaches(Pem("ca"))) << "no client certificate";
  EXPECT_FALSE(Reaches(Pem("ca"), "stranger")) << "a certificate of another CA";
  EXPECT_FALSE(Reaches(Pem("ca"), "expired_client")) << "an expired client certificate";
}

TEST_F(HttpTlsTest, AnExpiredServerCertificateIsRefusedByClients) {
  Serve(ServerOnly(Pem("expired_server"), Key("expired_server")));
  EXPECT_FALSE(Reaches(Pem("ca")));
}

TEST_F(HttpTlsTest, ARotatedCertificateIsServedWithoutARestart) {
  const std::string dir = ::testing::TempDir() + "/http_tls_live";
  std::filesystem::create_directories(dir);
  const std::string cert = dir + "/live.pem", key = dir + "/live.key";
  const auto copy = [](const std::string& from, const std::string& to) {
    std::filesystem::copy_file(from, to, std::filesystem::copy_options::overwrite_existing);
  };
  copy(Pem("server"), cert);
  copy(Key("server"), key);
  TlsConfig config = ServerOnly(cert, key);
  config.refresh_s = 1;
  Serve(config);
  EXPECT_TRUE(Reaches(Pem("ca")));
  EXPECT_FALSE(Reaches(Pem("other_ca")));
  copy(Pem("server2"), cert);  // signed by other_ca
  copy(Key("server2"), key);
  bool rotated = false;
  for (int i = 0; i < 40 && !rotated; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    rotated = Reaches(Pem("other_ca"));
  }
  EXPECT_TRUE(rotated) << "the new certificate was not served";
  EXPECT_FALSE(Reaches(Pem("ca"))) << "the old certificate is still served";
}

TEST_F(HttpTlsTest, AHalfWrittenRotationKeepsTheLastGoodCertificate) {
  const std::string dir = ::testing::TempDir() + "/http_tls_half";
  std::filesystem::create_directories(dir);
  const std::string cert = dir + "/live.pem", key = dir + "/live.key";
  std::filesystem::copy_file(Pem("server"), cert, std::filesystem::copy_options::overwrite_existing);
  std::filesystem::copy_file(Key("server"), key, std::filesystem::copy_options::overwrite_existing);
  TlsConfig config = ServerOnly(cert, key);
  config.refresh_s = 1;
  Serve(config);
  // A new certificate without its key yet: not a pair, so not taken.
  std::filesystem::copy_file(Pem("server2"), cert, std::filesystem::copy_options::overwrite_existing);
  std::this_thread::sleep_for(std::chrono::milliseconds(1100));
  EXPECT_TRUE(Reaches(Pem("ca")));
  EXPECT_TRUE(Reaches(Pem("ca")));
}

TEST(HttpTlsCreateTest, UnusableFilesAreRefusedWithTheFileNamed) {
  TlsConfig mismatched{Pem("server"), Key("client"), ""};
  mismatched.client_auth = false;
  auto tls = HttpTls::Create(mismatched);
  ASSERT_FALSE(tls.ok());
  EXPECT_EQ(tls.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(tls.status().message().find(Key("client")), std::string::npos) << tls.status();

  TlsConfig missing{"/nonexistent/cert.pem", Key("server"), ""};
  missing.client_auth = false;
  tls = HttpTls::Create(missing);
  ASSERT_FALSE(tls.ok());
  EXPECT_NE(tls.status().message().find("/nonexistent/cert.pem"), std::string::npos) << tls.status();

  TlsConfig not_pem{Key("server"), Key("server"), ""};  // a key where the certificate should be
  not_pem.client_auth = false;
  EXPECT_EQ(HttpTls::Create(not_pem).status().code(), absl::StatusCode::kInvalidArgument);

  EXPECT_EQ(HttpTls::Create(TlsConfig()).status().code(), absl::StatusCode::kInvalidArgument) << "no certificate";
}

}  // namespace
}  // namespace moemesh
