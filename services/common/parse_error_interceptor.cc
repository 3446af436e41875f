#include "services/common/parse_error_interceptor.h"

#include <string>

#include <grpcpp/support/server_interceptor.h>
#include <grpcpp/support/status.h>

namespace moemesh {
namespace {

using grpc::experimental::InterceptionHookPoints;

class ParseErrorInterceptor : public grpc::experimental::Interceptor {
 public:
  ParseErrorInterceptor(const char* method, const std::function<void(const std::string&)>* on_unparsed)
      : method_(method), on_unparsed_(on_unparsed) {}

  void Intercept(grpc::experimental::InterceptorBatchMethods* methods) override {
    // The handler's request arrives parsed, or (unparsable) as null.
    if (methods->QueryInterceptionHookPoint(InterceptionHookPoints::POST_RECV_MESSAGE) &&
        methods->GetRecvMessage() == nullptr) {
      unparsed_ = true;
    }
    if (unparsed_ && methods->QueryInterceptionHookPoint(InterceptionHookPoints::PRE_SEND_STATUS) &&
        methods->GetSendStatus().error_code() == grpc::StatusCode::INTERNAL) {
      if (*on_unparsed_) (*on_unparsed_)(method_);
      methods->ModifySendStatus(grpc::Status(
          grpc::StatusCode::INVALID_ARGUMENT,
          "the request is not a valid message of " + method_ +
              ": a string field (a prompt's text, a model name, a stop sequence...) holds bytes that are not "
              "UTF-8, which protobuf refuses; send text as UTF-8, or the bytes are not this message at all"));
    }
    methods->Proceed();
  }

 private:
  const std::string method_;
  const std::function<void(const std::string&)>* on_unparsed_;  // the factory's
  bool unparsed_ = false;
};

class Factory : public grpc::experimental::ServerInterceptorFactoryInterface {
 public:
  explicit Factory(std::function<void(const std::string&)> on_unparsed) : on_unparsed_(std::move(on_unparsed)) {}

  grpc::experimental::Interceptor* CreateServerInterceptor(grpc::experimental::ServerRpcInfo* info) override {
    // Streams of requests end with a null message too: only calls of one.
    const auto type = info->type();
    if (type != grpc::experimental::ServerRpcInfo::Type::UNARY &&
        type != grpc::experimental::ServerRpcInfo::Type::SERVER_STREAMING) {
      return nullptr;
    }
    return new ParseErrorInterceptor(info->method(), &on_unparsed_);
  }

 private:
  const std::function<void(const std::string&)> on_unparsed_;
};

}  // namespace

std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface> NewParseErrorInterceptorFactory(
    std::function<void(const std::string& method)> on_unparsed) {
  return std::make_unique<Factory>(std::move(on_unparsed));
}

}  // namespace moemesh
