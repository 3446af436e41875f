#include "services/common/http_tls.h"

#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>

#include <cstdio>
#include <string>
#include <system_error>

#include "absl/strings/str_cat.h"

namespace moemesh {
namespace {

std::filesystem::file_time_type Mtime(const std::string& path) {
  std::error_code ec;
  const auto t = std::filesystem::last_write_time(path, ec);
  return ec ? std::filesystem::file_time_type() : t;
}

// OpenSSL's last error, for a message.
std::string SslError() {
  const unsigned long e = ERR_get_error();
  ERR_clear_error();
  if (e == 0) return "no PEM data";
  char buf[256];
  ERR_error_string_n(e, buf, sizeof buf);
  return buf;
}

}  // namespace

// One load of the files, freed when no handshake uses it any more.
struct HttpTls::Files {
  X509* leaf = nullptr;
  STACK_OF(X509)* chain = nullptr;  // the certificates after the leaf
  EVP_PKEY* key = nullptr;
  X509_STORE* client_ca = nullptr;  // with client_auth
  std::filesystem::file_time_type cert_time, key_time, ca_time;

  ~Files() {
    X509_free(leaf);
    sk_X509_pop_free(chain, X509_free);
    EVP_PKEY_free(key);
    X509_STORE_free(client_ca);
  }

  static absl::StatusOr<std::shared_ptr<const Files>> Load(const TlsConfig& c) {
    auto f = std::make_shared<Files>();
    f->cert_time = Mtime(c.cert);
    f->key_time = Mtime(c.key);
    f->ca_time = c.client_auth ? Mtime(c.ca) : std::filesystem::file_time_type();
    BIO* bio = BIO_new_file(c.cert.c_str(), "r");
    if (bio == nullptr) return absl::InvalidArgumentError(absl::StrCat("TLS certificate ", c.cert, " cannot be read"));
    f->leaf = PEM_read_bio_X509(bio, nullptr, nullptr, nullptr);
    f->chain = sk_X509_new_null();
    while (X509* x = PEM_read_bio_X509(bio, nullptr, nullptr, nullptr)) sk_X509_push(f->chain, x);
    BIO_free(bio);
    ERR_clear_error();  // the end of the file reads as an error
    if (f->leaf == nullptr) {
      return absl::InvalidArgumentError(absl::StrCat("TLS certificate ", c.cert, ": no PEM certificate in it"));
    }
    bio = BIO_new_file(c.key.c_str(), "r");
    if (bio == nullptr) return absl::InvalidArgumentError(absl::StrCat("TLS key ", c.key, " cannot be read"));
    f->key = PEM_read_bio_PrivateKey(bio, nullptr, nullptr, nullptr);
    BIO_free(bio);
    if (f->key == nullptr) {
      return absl::InvalidArgumentError(absl::StrCat("TLS key ", c.key, ": ", SslError()));
    }
    if (X509_check_private_key(f->leaf, f->key) != 1) {
      ERR_clear_error();
      return absl::InvalidArgumentError(
          absl::StrCat("TLS key ", c.key, " is not the key of the certificate ", c.cert));
    }
    if (c.client_auth) {
      f->client_ca = X509_STORE_new();
      if (X509_STORE_load_locations(f->client_ca, c.ca.c_str(), nullptr) != 1) {
        return absl::InvalidArgumentError(absl::StrCat("TLS CA ", c.ca, ": ", SslError()));
      }
    }
    return std::shared_ptr<const Files>(std::move(f));
  }
};

HttpTls::HttpTls(const TlsConfig& config) : config_(config), checked_(std::chrono::steady_clock::now()) {}
HttpTls::~HttpTls() = default;

absl::StatusOr<std::shared_ptr<HttpTls>> HttpTls::Create(const TlsConfig& config) {
  if (!config.server_tls()) return absl::InvalidArgumentError("HTTPS needs --tls-cert and --tls-key");
  std::shared_ptr<HttpTls> tls(new HttpTls(config));
  absl::StatusOr<std::shared_ptr<const Files>> files = Files::Load(config);
  if (!files.ok()) return files.status();
  tls->files_ = std::move(*files);
  return tls;
}

bool HttpTls::SetUp(ssl_ctx_st* ctx) {
  SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
  // The certificate goes onto each connection at its handshake, so that a
  // rotated one is served.
  SSL_CTX_set_cert_cb(ctx, &HttpTls::OnHandshake, this);
  if (config_.client_auth) {
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, nullptr);
    // The CA names a client is told to pick its certificate by.
    if (STACK_OF(X509_NAME)* names = SSL_load_client_CA_file(config_.ca.c_str())) {
      SSL_CTX_set_client_CA_list(ctx, names);
    }
    ERR_clear_error();
  }
  return true;
}

void HttpTls::RefreshIfDue() {
  const auto now = std::chrono::steady_clock::now();
  if (now - checked_ < std::chrono::seconds(config_.refresh_s)) return;
  checked_ = now;
  const bool changed = Mtime(config_.cert) != files_->cert_time || Mtime(config_.key) != files_->key_time ||
                       (config_.client_auth && Mtime(config_.ca) != files_->ca_time);
  if (!changed) return;
  // A certificate and key written one after the other may not match for a
  // moment: the last good ones stay until both load.
  absl::StatusOr<std::shared_ptr<const Files>> files = Files::Load(config_);
  if (files.ok()) {
    files_ = std::move(*files);
  } else {
    std::fprintf(stderr, "HTTPS keeps its certificate: %s\n", std::string(files.status().message()).c_str());
  }
}

int HttpTls::OnHandshake(ssl_st* ssl, void* self) {
  HttpTls* tls = static_cast<HttpTls*>(self);
  std::shared_ptr<const Files> files;
  {
    std::lock_guard<std::mutex> lock(tls->mu_);
    tls->RefreshIfDue();
    files = tls->files_;
  }
  if (SSL_use_cert_and_key(ssl, files->leaf, files->key, files->chain, 1) != 1) return 0;
  if (files->client_ca != nullptr && SSL_set1_verify_cert_store(ssl, files->client_ca) != 1) return 0;
  return 1;
}

}  // namespace moemesh
