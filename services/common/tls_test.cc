// TLS on a real socket, with certificates made here by the openssl tool:
// mutual TLS refuses a client without a certificate, with one from another
// CA, or in plaintext, and serves a valid one; a rotated server certificate
// is taken without a restart.
#include "services/common/tls.h"

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <string>
#include <thread>

#include <grpcpp/grpcpp.h>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "services/common/health_check.h"
#include "services/common/server_util.h"
#include "services/common/test_certs.h"

namespace moemesh {
namespace {

std::string g_dir;
std::string Pem(const std::string& name) { return TestCerts::Get(::testing::TempDir()).Pem(name); }
std::string Key(const std::string& name) { return TestCerts::Get(::testing::TempDir()).Key(name); }

class TlsTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() { g_dir = TestCerts::Get(::testing::TempDir()).dir(); }
  void TearDown() override {
    if (server_) server_->Shutdown(std::chrono::system_clock::now());
    ASSERT_TRUE(SetMeshTls({}).ok());
  }

  void StartServer(const TlsConfig& tls) {
    ASSERT_TRUE(SetMeshTls(tls).ok());
    server_ = moemesh::StartServer("127.0.0.1:0", {}, &port_);
    ASSERT_NE(server_, nullptr);
  }
  // A health check over a fresh channel with `tls` as the client's.
  bool Reaches(const TlsConfig& tls) {
    EXPECT_TRUE(SetMeshTls(tls).ok());
    grpc::ChannelArguments args;
    args.SetInt("grpc.use_local_subchannel_pool", 1);  // a new connection each time
    return CheckHealth(grpc::CreateCustomChannel("127.0.0.1:" + std::to_string(port_), MeshChannelCredentials(), args),
                       "", absl::Seconds(3))
        .ok();
  }

  std::unique_ptr<grpc::Server> server_;
  int port_ = 0;
};

TEST_F(TlsTest, MutualTlsServesOnlyClientsTheCaVouchesFor) {
  StartServer({Pem("server"), Key("server"), Pem("ca")});
  EXPECT_TRUE(Reaches({Pem("client"), Key("client"), Pem("ca")}));
  EXPECT_FALSE(Reaches({"", "", Pem("ca")})) << "no client certificate";
  EXPECT_FALSE(Reaches({Pem("stranger"), Key("stranger"), Pem("ca")})) << "a certificate of another CA";
  EXPECT_FALSE(Reaches({Pem("client"), Key("client"), Pem("other_ca")})) << "the server's CA not trusted";
  EXPECT_FALSE(Reaches({})) << "plaintext";
}

TEST_F(TlsTest, ExpiredCertificatesAreRefusedBothWays) {
  StartServer({Pem("server"), Key("server"), Pem("ca")});
  EXPECT_TRUE(Reaches({Pem("client"), Key("client"), Pem("ca")}));
  EXPECT_FALSE(Reaches({Pem("expired_client"), Key("expired_client"), Pem("ca")})) << "an expired client certificate";
  server_->Shutdown(std::chrono::system_clock::now());
  StartServer({Pem("expired_server"), Key("expired_server"), Pem("ca")});
  EXPECT_FALSE(Reaches({Pem("client"), Key("client"), Pem("ca")})) << "an expired server certificate";
}

TEST_F(TlsTest, ServerTlsWithoutClientAuthServesClientsWithoutCertificates) {
  TlsConfig server{Pem("server"), Key("server"), ""};
  server.client_auth = false;
  StartServer(server);
  EXPECT_TRUE(Reaches({"", "", Pem("ca")}));
  EXPECT_FALSE(Reaches({})) << "plaintext";
}

TEST_F(TlsTest, ARotatedCertificateIsTakenWithoutARestart) {
  const std::string cert = g_dir + "/live.pem", key = g_dir + "/live.key";
  std::filesystem::copy_file(Pem("server"), cert, std::filesystem::copy_options::overwrite_existing);
  std::filesystem::copy_file(Key("server"), key, std::filesystem::copy_options::overwrite_existing);
  TlsConfig server{cert, key, g_dir + "/both.pem"};
  server.refresh_s = 1;
  StartServer(server);
  const TlsConfig trusts_other{Pem("client"), Key("client"), Pem("other_ca")};
  EXPECT_FALSE(Reaches(trusts_other)) << "the server still presents the first CA's certificate";
  std::filesystem::copy_file(Pem("server2"), cert, std::filesystem::copy_options::overwrite_existing);
  std::filesystem::copy_file(Key("server2"), key, std::filesystem::copy_options::overwrite_existing);
  bool rotated = false;
  for (int i = 0; i < 40 && !rotated; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(250));
    rotated = Reaches(trusts_other);
  }
  EXPECT_TRUE(rotated) << "the new certificate was not taken";
}

TEST_F(TlsTest, HalfConfigurationsAreRefused) {
  EXPECT_FALSE(SetMeshTls({Pem("server"), "", Pem("ca")}).ok());
  EXPECT_FALSE(SetMeshTls({Pem("server"), Key("server"), ""}).ok()) << "client auth without a CA";
  EXPECT_FALSE(SetMeshTls({"/nonexistent.pem", Key("server"), Pem("ca")}).ok());
}

}  // namespace
}  // namespace moemesh
