#ifndef MOEMESH_SERVICES_ROUTER_ROUTER_SERVICE_H_
#define MOEMESH_SERVICES_ROUTER_ROUTER_SERVICE_H_

#include <atomic>

#include "moemesh/v1/router.grpc.pb.h"

namespace moemesh {

class GenerationLoop;

// gRPC adapter of a GenerationLoop. Each Generate call submits one request
// and streams its tokens; the tokens of steps that came faster than the
// client read go out together in one response. A call that the client
// cancels, or whose deadline passes, is cancelled in the loop, which frees
// its KV cache before the next step.
class RouterServiceImpl final : public v1::Router::Service {
 public:
  // `loop` must outlive the service.
  explicit RouterServiceImpl(GenerationLoop* loop) : loop_(loop) {}

  grpc::Status Generate(grpc::ServerContext* context, const v1::RouterGenerateRequest* request,
                        grpc::ServerWriter<v1::RouterGenerateResponse>* writer) override;
  grpc::Status GetStatus(grpc::ServerContext* context, const v1::GetStatusRequest* request,
                         v1::RouterStatus* response) override;

  // Generate calls in progress.
  int active_calls() const { return active_.load(); }

 private:
  GenerationLoop* loop_;
  std::atomic<int> active_{0};
};

}  // namespace moemesh

#endif  // MOEMESH_SERVICES_ROUTER_ROUTER_SERVICE_H_
