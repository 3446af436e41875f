#include "services/router/local_router.h"

#include <chrono>
#include <cstdio>
#include <cstdlib>

#include "core/engine/engine.h"
#include "core/engine/generation_loop.h"
#include "core/engine/scheduler.h"
#include "services/common/server_util.h"
#include "services/router/router_service.h"
#include "services/common/tls.h"

namespace moemesh {

LocalRouter::LocalRouter(const std::string& model_dir, int kv_block_size) {
  EngineOptions o;
  o.kv_block_size = kv_block_size;
  auto engine = Engine::Create(model_dir, o);
  if (!engine.ok()) {
    std::fprintf(stderr, "LocalRouter: %s\n", std::string(engine.status().message()).c_str());
    std::abort();
  }
  engine_ = std::move(*engine);
  loop_ = std::make_unique<GenerationLoop>(engine_->NewScheduler(64, 2048), 256);
  service_ = std::make_unique<RouterServiceImpl>(loop_.get());
  int port = 0;
  server_ = StartServer("127.0.0.1:0", {service_.get()}, &port);
  if (server_ == nullptr) {
    std::fprintf(stderr, "LocalRouter: cannot listen on a loopback port\n");
    std::abort();
  }
  address_ = "127.0.0.1:" + std::to_string(port);
  stub_ = v1::Router::NewStub(grpc::CreateChannel(address_, MeshChannelCredentials()));
}

LocalRouter::~LocalRouter() {
  server_->Shutdown(std::chrono::system_clock::now());
  loop_.reset();
}

v1::RouterStatus LocalRouter::Status() const {
  grpc::ClientContext ctx;
  v1::RouterStatus s;
  if (!stub_->GetStatus(&ctx, v1::GetStatusRequest(), &s).ok()) s.Clear();
  return s;
}

}  // namespace moemesh
