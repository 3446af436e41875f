// moemesh-gateway: the public API of a mesh (moemesh.v1.Gateway).
//   moemesh-gateway --model DIR --routers HOST:PORT[,HOST:PORT...] [--port 0]
// Prints "listening on HOST:PORT" once serving; stops on SIGINT/SIGTERM.

#include <chrono>
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/strings/str_split.h"
#include "core/model/config.h"
#include "core/tokenizer/tokenizer.h"
#include "services/common/server_util.h"
#include "core/metrics/metrics_server.h"
#include "prometheus/registry.h"
#include "services/gateway/gateway_metrics.h"
#include "services/gateway/gateway_service.h"
#include "services/gateway/router_pool.h"

ABSL_FLAG(std::string, model, "", "checkpoint directory (config.json and the tokenizer)");
ABSL_FLAG(std::string, model_name, "", "name clients use for the model; default: the directory's name");
ABSL_FLAG(std::string, tokenizer, "", "tokenizer.json or .model file; default: the one in --model");
ABSL_FLAG(std::string, routers, "", "routers, comma-separated HOST:PORT");
ABSL_FLAG(std::string, host, "127.0.0.1", "address to listen on");
ABSL_FLAG(int, port, 0, "port to listen on; 0 picks a free one");
ABSL_FLAG(int, metrics_port, 0, "port of the Prometheus /metrics endpoint; 0 picks a free one, -1 serves none");
ABSL_FLAG(int, max_in_flight, 512, "requests in progress before RESOURCE_EXHAUSTED");

namespace {

int Fail(const std::string& msg, int code) {
  std::fprintf(stderr, "moemesh-gateway: error: %s\n", msg.c_str());
  return code;
}

}  // namespace

int main(int argc, char** argv) {
  moemesh::InitService(argc, argv, "moemesh-gateway --model DIR --routers HOST:PORT[,...] [--port P]");

  std::string model_dir = absl::GetFlag(FLAGS_model);
  if (model_dir.empty()) return Fail("--model DIR is required", 2);
  std::vector<std::string> routers = absl::StrSplit(absl::GetFlag(FLAGS_routers), ',', absl::SkipWhitespace());
  if (routers.empty()) return Fail("--routers HOST:PORT[,...] is required", 2);
  if (absl::GetFlag(FLAGS_max_in_flight) < 1) return Fail("--max-in-flight must be >= 1", 2);
  auto config = moemesh::LoadModelConfig(model_dir);
  if (!config.ok()) return Fail(std::string(config.status().message()), 2);
  std::string tok_path = absl::GetFlag(FLAGS_tokenizer).empty() ? model_dir : absl::GetFlag(FLAGS_tokenizer);
  std::unique_ptr<moemesh::Tokenizer> tokenizer;
  if (auto t = moemesh::LoadTokenizer(tok_path); t.ok()) {
    tokenizer = std::move(*t);
  } else if (absl::IsNotFound(t.status()) && absl::GetFlag(FLAGS_tokenizer).empty()) {
    std::fprintf(stderr, "moemesh-gateway: warning: %s; serving token ids only\n",
                 std::string(t.status().message()).c_str());
  } else {
    return Fail(std::string(t.status().message()), 2);
  }

  moemesh::ServedModel model;
  model.name = absl::GetFlag(FLAGS_model_name);
  if (model.name.empty()) {
    while (model_dir.size() > 1 && model_dir.back() == '/') model_dir.pop_back();
    model.name = model_dir.substr(model_dir.find_last_of('/') + 1);
  }
  model.architecture = std::string(moemesh::ArchitectureName(config->arch));
  model.vocab_size = config->vocab_size;
  model.context_length = config->context_length();

  moemesh::RouterPool pool(routers);
  moemesh::GatewayServiceImpl::Options options;
  options.max_in_flight = absl::GetFlag(FLAGS_max_in_flight);
  auto registry = std::make_shared<prometheus::Registry>();
  moemesh::GatewayMetrics metrics(*registry);
  auto started = moemesh::MetricsServer::StartIfEnabled(absl::GetFlag(FLAGS_host), absl::GetFlag(FLAGS_metrics_port),
                                                        registry);
  if (!started.ok()) return Fail(std::string(started.status().message()), 1);
  std::unique_ptr<moemesh::MetricsServer> metrics_server = std::move(*started);
  moemesh::GatewayServiceImpl service(tokenizer.get(), model, &pool, options, &metrics);
  int port = 0;
  std::string address = absl::GetFlag(FLAGS_host) + ":" + std::to_string(absl::GetFlag(FLAGS_port));
  auto server = moemesh::StartServer(address, {&service}, &port);
  if (server == nullptr) return Fail("cannot listen on " + address, 1);
  moemesh::AnnounceService(absl::GetFlag(FLAGS_host), port, metrics_server ? metrics_server->port() : 0);
  moemesh::WaitForTerminationSignal();
  moemesh::ShutdownGracefully(server.get(), [&] { return service.in_flight(); });
  (void)metrics_server.release();  // its web server takes seconds to stop; the process ends
  return 0;
}
