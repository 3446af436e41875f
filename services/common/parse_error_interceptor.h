#ifndef MOEMESH_SERVICES_COMMON_PARSE_ERROR_INTERCEPTOR_H_
#define MOEMESH_SERVICES_COMMON_PARSE_ERROR_INTERCEPTOR_H_

#include <functional>
#include <memory>
#include <string>

namespace grpc::experimental {
class ServerInterceptorFactoryInterface;
}  // namespace grpc::experimental

namespace moemesh {

// A request gRPC cannot parse into its method's message (most often a
// string field holding bytes that are not UTF-8, which proto3 refuses; or
// bytes that are not the message at all) ends, by gRPC's own doing, with
// INTERNAL and an empty message. This server interceptor answers such a
// call of one request message (unary or server streaming) with
// INVALID_ARGUMENT saying what to fix instead, and tells `on_unparsed`
// (when set) the method. StartServer installs it.
std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface> NewParseErrorInterceptorFactory(
    std::function<void(const std::string& method)> on_unparsed = nullptr);

}  // namespace moemesh

#endif  // MOEMESH_SERVICES_COMMON_PARSE_ERROR_INTERCEPTOR_H_
