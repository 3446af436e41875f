#ifndef MOEMESH_SERVICES_COMMON_SERVER_UTIL_H_
#define MOEMESH_SERVICES_COMMON_SERVER_UTIL_H_

#include <functional>
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

// What one connection may take from a server (docs/OPERATIONS.md, "Limits"),
// each a flag of every service (ServiceMain).
struct ServerLimits {
  int max_receive_bytes = kMaxMessageBytes;  // larger messages: RESOURCE_EXHAUSTED
  int max_metadata_bytes = 16 << 10;         // a call's headers; larger: refused
  int max_streams_per_connection = 1024;     // calls at once on one connection
  int max_connection_idle_ms = 300000;       // an idle connection is closed (GOAWAY); 0: never
  // Keepalive enforcement: a client may ping at most this often when no
  // call is running; two pings too soon and the connection is closed.
  int min_ping_interval_ms = 10000;
  // Called with the method of each request that could not be parsed (it is
  // answered INVALID_ARGUMENT: parse_error_interceptor.h); may be empty.
  std::function<void(const std::string& method)> on_unparsed;
};

// Builds and starts a server on `address` ("host:port", port 0 picks a free
// one) with health checking and reflection, under `limits`. Returns null on
// failure; *bound_port receives the port.
std::unique_ptr<grpc::Server> StartServer(const std::string& address, const std::vector<grpc::Service*>& services,
                                          int* bound_port, const ServerLimits& limits);
std::unique_ptr<grpc::Server> StartServer(const std::string& address, const std::vector<grpc::Service*>& services,
                                          int* bound_port, int max_receive_bytes = kMaxMessageBytes);

// Channel arguments for clients of moemesh services.
grpc::ChannelArguments ClientChannelArguments();

}  // namespace moemesh

#endif  // MOEMESH_SERVICES_COMMON_SERVER_UTIL_H_
