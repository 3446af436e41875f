#ifndef MOEMESH_SERVICES_ROUTER_ROUTER_SERVICE_H_
#define MOEMESH_SERVICES_ROUTER_ROUTER_SERVICE_H_

#include <atomic>

#include "moemesh/v1/router.grpc.pb.h"

namespace moemesh {

class GenerationLoop;

// gRPC adapter of a GenerationLoop, on gRPC's callback API: each Generate
// call submits one request, and the loop's thread starts the writes of its
// tokens itself as they are sampled, so a step costs no thread wake-up per
// request. Tokens of steps that came faster than the client read go out
// together in one response. A call that the client cancels, or whose
// deadline passes, is cancelled in the loop, which frees its KV cache
// before the next step.
class RouterServiceImpl final : public v1::Router::CallbackService {
 public:
  // `loop` must outlive the service.
  explicit RouterServiceImpl(GenerationLoop* loop) : loop_(loop) {}

  grpc::ServerWriteReactor<v1::RouterGenerateResponse>* Generate(grpc::CallbackServerContext* context,
                                                                 const v1::RouterGenerateRequest* request) override;
  grpc::ServerUnaryReactor* GetStatus(grpc::CallbackServerContext* context, const v1::GetStatusRequest* request,
                                      v1::RouterStatus* response) override;

  // Generate calls in progress.
  int active_calls() const { return active_.load(); }

 private:
  class GenerateCall;

  GenerationLoop* loop_;
  std::atomic<int> active_{0};
};

}  // namespace moemesh

#endif  // MOEMESH_SERVICES_ROUTER_ROUTER_SERVICE_H_
