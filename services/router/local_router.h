#ifndef MOEMESH_SERVICES_ROUTER_LOCAL_ROUTER_H_
#define MOEMESH_SERVICES_ROUTER_LOCAL_ROUTER_H_

#include <memory>
#include <string>

#include <grpcpp/grpcpp.h>

#include "moemesh/v1/router.grpc.pb.h"

namespace moemesh {

class Engine;
class GenerationLoop;
class RouterServiceImpl;

// A router in this process, served over a loopback socket on a free port:
// the CPU engine of `model_dir` (experts in process), its generation loop
// and the Router service. For tests of the router's clients (the gateway)
// that need a real router but no process. Aborts when the model does not
// load (a test set-up error).
class LocalRouter {
 public:
  explicit LocalRouter(const std::string& model_dir, int kv_block_size = 16);
  ~LocalRouter();

  const std::string& address() const { return address_; }
  v1::Router::Stub* stub() const { return stub_.get(); }
  // GetStatus; an empty status when the call fails.
  v1::RouterStatus Status() const;

 private:
  std::unique_ptr<Engine> engine_;
  std::unique_ptr<GenerationLoop> loop_;
  std::unique_ptr<RouterServiceImpl> service_;
  std::unique_ptr<grpc::Server> server_;
  std::unique_ptr<v1::Router::Stub> stub_;
  std::string address_;
};

}  // namespace moemesh

#endif  // MOEMESH_SERVICES_ROUTER_LOCAL_ROUTER_H_
