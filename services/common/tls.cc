#include "services/common/tls.h"

#include <filesystem>

#include <grpcpp/security/credentials.h>
#include <grpcpp/security/server_credentials.h>
#include <grpcpp/security/tls_certificate_provider.h>
#include <grpcpp/security/tls_credentials_options.h>

#include "absl/strings/str_cat.h"

namespace moemesh {
namespace {

TlsConfig& Config() {
  static TlsConfig* config = new TlsConfig();
  return *config;
}

}  // namespace

absl::Status SetMeshTls(const TlsConfig& config) {
  if (config.cert.empty() != config.key.empty()) {
    return absl::InvalidArgumentError("--tls-cert and --tls-key go together");
  }
  if (config.server_tls() && config.client_auth && config.ca.empty()) {
    return absl::InvalidArgumentError(
        "--tls-client-auth (mutual TLS, the default) needs --tls-ca to verify clients; or pass "
        "--tls-client-auth=false");
  }
  for (const std::string* f : {&config.cert, &config.key, &config.ca}) {
    if (!f->empty() && !std::filesystem::is_regular_file(*f)) {
      return absl::InvalidArgumentError(absl::StrCat("TLS file ", *f, " cannot be read"));
    }
  }
  if (config.refresh_s < 1) return absl::InvalidArgumentError("the TLS refresh interval must be >= 1 s");
  Config() = config;
  return absl::OkStatus();
}

const TlsConfig& MeshTls() { return Config(); }

std::shared_ptr<grpc::ServerCredentials> MeshServerCredentials() {
  const TlsConfig& c = Config();
  if (!c.server_tls()) return grpc::InsecureServerCredentials();
  auto provider = std::make_shared<grpc::experimental::FileWatcherCertificateProvider>(
      c.key, c.cert, c.client_auth ? c.ca : std::string(), static_cast<unsigned>(c.refresh_s));
  grpc::experimental::TlsServerCredentialsOptions options(provider);
  options.watch_identity_key_cert_pairs();
  if (c.client_auth) {
    options.watch_root_certs();
    options.set_cert_request_type(GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY);
  } else {
    options.set_cert_request_type(GRPC_SSL_DONT_REQUEST_CLIENT_CERTIFICATE);
  }
  return grpc::experimental::TlsServerCredentials(options);
}

std::shared_ptr<grpc::ChannelCredentials> MeshChannelCredentials() {
  const TlsConfig& c = Config();
  if (c.ca.empty()) return grpc::InsecureChannelCredentials();
  auto provider = c.cert.empty() ? std::make_shared<grpc::experimental::FileWatcherCertificateProvider>(
                                       c.ca, static_cast<unsigned>(c.refresh_s))
                                 : std::make_shared<grpc::experimental::FileWatcherCertificateProvider>(
                                       c.key, c.cert, c.ca, static_cast<unsigned>(c.refresh_s));
  grpc::experimental::TlsChannelCredentialsOptions options;
  options.set_certificate_provider(provider);
  options.watch_root_certs();
  if (!c.cert.empty()) options.watch_identity_key_cert_pairs();
  return grpc::experimental::TlsCredentials(options);
}

}  // namespace moemesh
