#ifndef MOEMESH_SERVICES_COMMON_TLS_H_
#define MOEMESH_SERVICES_COMMON_TLS_H_

#include <memory>
#include <string>

#include "absl/status/status.h"

namespace grpc {
class ChannelCredentials;
class ServerCredentials;
}  // namespace grpc

namespace moemesh {

// TLS for the mesh's gRPC ports and calls (docs/OPERATIONS.md, "TLS"), set
// once per process from the common flags (--tls-cert, --tls-key, --tls-ca,
// --tls-client-auth). The files are PEM and are read again every
// `refresh_s` seconds, so rotated certificates are taken without a restart.
struct TlsConfig {
  std::string cert;  // this process's certificate chain
  std::string key;   // and its private key
  std::string ca;    // roots that peers' certificates must chain to
  // The servers here require and verify a client certificate (mutual TLS;
  // needs `ca`). Off for a gateway whose public clients have none.
  bool client_auth = true;
  int refresh_s = 60;

  bool server_tls() const { return !cert.empty(); }
};

// Sets the process's TLS: INVALID_ARGUMENT for a half-given pair, client
// auth without a CA, or a file that cannot be read.
absl::Status SetMeshTls(const TlsConfig& config);
const TlsConfig& MeshTls();

// What this process's servers listen with: TLS (mutual with client_auth)
// when a certificate is set, else plaintext.
std::shared_ptr<grpc::ServerCredentials> MeshServerCredentials();
// What this process's calls to other services use: TLS when a CA is set
// (verifying the server, presenting this process's certificate when it has
// one), else plaintext.
std::shared_ptr<grpc::ChannelCredentials> MeshChannelCredentials();

}  // namespace moemesh

#endif  // MOEMESH_SERVICES_COMMON_TLS_H_
