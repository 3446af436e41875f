#ifndef MOEMESH_SERVICES_GATEWAY_HTTP_FRONT_END_H_
#define MOEMESH_SERVICES_GATEWAY_HTTP_FRONT_END_H_

#include <memory>
#include <string>
#include <thread>

#include "absl/status/statusor.h"

namespace prometheus {
class Registry;
}  // namespace prometheus

namespace moemesh {

class Gateway;
class HttpTls;
namespace jinja {
class ChatTemplate;
}  // namespace jinja

// The gateway's OpenAI-compatible HTTP API (docs/OPERATIONS.md, "HTTP API")
// on a port of its own, over cpp-httplib, in front of the same Gateway
// logic as the gRPC API:
//   POST /v1/completions and POST /v1/chat/completions (streaming by
//   server-sent events, or not), GET /v1/models, POST /tokenize (a prompt,
//   or chat messages), POST /detokenize, GET /health, and GET /metrics (the
//   registry's metrics, when given).
// Each call runs on a worker of a pool of `threads`; a stream holds one for
// its duration.
class HttpFrontEnd {
 public:
  struct Options {
    std::string host = "127.0.0.1";
    int port = 0;  // 0 picks a free one
    int threads = 128;
    // The model's chat template (must outlive the front end); null: chat
    // requests are refused with a message saying so.
    const jinja::ChatTemplate* chat_template = nullptr;
    // Serve HTTPS with these certificates (services/common/http_tls.h);
    // null: plain HTTP.
    std::shared_ptr<HttpTls> tls;
  };
  // `gateway` (and `registry`, when not null) must outlive the front end.
  static absl::StatusOr<std::unique_ptr<HttpFrontEnd>> Start(const Options& options, Gateway* gateway,
                                                             std::shared_ptr<prometheus::Registry> registry);
  // Stops serving and waits for the calls in progress.
  ~HttpFrontEnd();

  int port() const { return port_; }

 private:
  HttpFrontEnd() = default;
  struct Server;
  std::unique_ptr<Server> server_;
  std::thread thread_;
  int port_ = 0;
};

}  // namespace moemesh

#endif  // MOEMESH_SERVICES_GATEWAY_HTTP_FRONT_END_H_
