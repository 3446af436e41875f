#ifndef MOEMESH_SERVICES_COMMON_HTTP_TLS_H_
#define MOEMESH_SERVICES_COMMON_HTTP_TLS_H_

#include <chrono>
#include <filesystem>
#include <memory>
#include <mutex>

#include "absl/status/statusor.h"
#include "services/common/tls.h"

struct ssl_ctx_st;
struct ssl_st;

namespace moemesh {

// TLS for the gateway's HTTP port with the mesh's certificate (TlsConfig,
// the same files as its gRPC port): TLS 1.2 or later, the certificate chain
// and key from `cert` and `key`, and with client_auth a client certificate
// that chains to `ca` required. The files are checked again at a handshake
// at most every `refresh_s` seconds and read anew when they changed, so a
// rotated certificate (or CA) is served without a restart; files that do
// not load keep the last good ones. Thread-safe.
class HttpTls {
 public:
  // Reads the files now: INVALID_ARGUMENT naming the file that cannot be
  // used (unreadable, not PEM, a key that is not the certificate's).
  static absl::StatusOr<std::shared_ptr<HttpTls>> Create(const TlsConfig& config);
  ~HttpTls();

  // Sets a server's context up (cpp-httplib's SSLServer callback).
  bool SetUp(ssl_ctx_st* ctx);

 private:
  struct Files;
  explicit HttpTls(const TlsConfig& config);
  // At a handshake: the current certificate, key and client CA onto `ssl`.
  static int OnHandshake(ssl_st* ssl, void* self);
  void RefreshIfDue();

  const TlsConfig config_;
  std::mutex mu_;
  std::shared_ptr<const Files> files_;  // the last good ones
  std::chrono::steady_clock::time_point checked_;
};

}  // namespace moemesh

#endif  // MOEMESH_SERVICES_COMMON_HTTP_TLS_H_
