#ifndef MOEMESH_SERVICES_COMMON_SERVER_UTIL_H_
#define MOEMESH_SERVICES_COMMON_SERVER_UTIL_H_

#include <memory>
#include <string>
#include <vector>

#include <grpcpp/grpcpp.h>

namespace moemesh {

// Largest message a moemesh service or client accepts: a prefill chunk of
// hidden states is tens of MB on large models.
constexpr int kMaxMessageBytes = 512 << 20;

// Flags may be written with dashes (--shard-index); Abseil wants
// underscores. Returns argv with the flag names rewritten.
std::vector<std::string> NormalizeFlagNames(int argc, char** argv);

// Builds and starts a server on `address` ("host:port", port 0 picks a free
// one) with health checking and reflection, refusing messages larger than
// `max_receive_bytes` (RESOURCE_EXHAUSTED). Returns null on failure;
// *bound_port receives the port.
std::unique_ptr<grpc::Server> StartServer(const std::string& address, const std::vector<grpc::Service*>& services,
                                          int* bound_port, int max_receive_bytes = kMaxMessageBytes);

// Channel arguments for clients of moemesh services.
grpc::ChannelArguments ClientChannelArguments();

}  // namespace moemesh

#endif  // MOEMESH_SERVICES_COMMON_SERVER_UTIL_H_
