#ifndef MOEMESH_SERVICES_COMMON_SERVER_UTIL_H_
#define MOEMESH_SERVICES_COMMON_SERVER_UTIL_H_

#include <chrono>
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

// Builds and starts a server on `address` ("host:port", port 0 picks a free
// one) with health checking and reflection. Returns null on failure;
// *bound_port receives the port.
std::unique_ptr<grpc::Server> StartServer(const std::string& address, const std::vector<grpc::Service*>& services,
                                          int* bound_port);

// Channel arguments for clients of moemesh services.
grpc::ChannelArguments ClientChannelArguments();

// The start of every service's main: blocks SIGINT and SIGTERM in this and
// every later thread (WaitForTerminationSignal takes them) and parses the
// Abseil flags, which may be written with dashes.
void InitService(int argc, char** argv, const char* usage);

// Prints "metrics on HOST:PORT" (when metrics_port > 0), then "listening
// on HOST:PORT": the lines `moemesh up` and the tests wait for.
void AnnounceService(const std::string& host, int port, int metrics_port);

// Blocks until SIGINT or SIGTERM, then returns. Call once, from main.
void WaitForTerminationSignal();

// Stops a server: marks it NOT_SERVING for health checks, lets the calls
// that `in_flight` counts finish for up to `grace`, then shuts down at
// once (cancelling what is left). grpc::Server::Shutdown(deadline) alone
// would also wait out the deadline for clients that merely keep an idle
// connection open.
void ShutdownGracefully(grpc::Server* server, const std::function<int()>& in_flight,
                        std::chrono::milliseconds grace = std::chrono::seconds(5));

}  // namespace moemesh

#endif  // MOEMESH_SERVICES_COMMON_SERVER_UTIL_H_
