#ifndef MOEMESH_SERVICES_GATEWAY_CALL_AUTH_H_
#define MOEMESH_SERVICES_GATEWAY_CALL_AUTH_H_

#include <string>

#include <grpcpp/server_context.h>

namespace moemesh {

// A gRPC call's `authorization` metadata ("Bearer KEY"), or empty.
inline std::string AuthorizationOf(const grpc::ServerContext& context) {
  const auto& md = context.client_metadata();
  auto it = md.find("authorization");
  return it == md.end() ? std::string() : std::string(it->second.data(), it->second.size());
}

}  // namespace moemesh

#endif  // MOEMESH_SERVICES_GATEWAY_CALL_AUTH_H_
