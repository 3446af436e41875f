// moemesh-gateway: the public API of a mesh (moemesh.v1.Gateway).
//   moemesh-gateway --model DIR --routers HOST:PORT[,HOST:PORT...] [--port 0]
// Prints "listening on HOST:PORT" once serving; stops on SIGINT/SIGTERM.

#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "core/jinja/chat_template.h"
#include "core/model/config.h"
#include "core/tokenizer/tokenizer.h"
#include "prometheus/registry.h"
#include "services/common/service_main.h"
#include "services/common/file_watcher.h"
#include "services/gateway/gateway.h"
#include "services/gateway/gateway_metrics.h"
#include "services/gateway/gateway_service.h"
#include "services/gateway/http_front_end.h"
#include "services/common/http_tls.h"
#include "services/gateway/oip_service.h"
#include "services/gateway/router_pool.h"

ABSL_FLAG(std::string, model, "", "checkpoint directory (config.json and the tokenizer)");
ABSL_FLAG(std::string, model_name, "", "name clients use for the model; default: the directory's name");
ABSL_FLAG(std::string, tokenizer, "", "tokenizer.json or .model file; default: the one in --model");
ABSL_FLAG(std::string, routers, "",
          "routers, comma-separated HOST:PORT, or found again and again at dns:///NAME:PORT (every address of NAME) "
          "or file:PATH (the addresses listed)");
ABSL_FLAG(int, routers_resolve_ms, 5000, "how often --routers given as dns:/// or file: is asked for the routers");
ABSL_FLAG(int, max_in_flight, 512, "requests in progress before RESOURCE_EXHAUSTED");
ABSL_FLAG(std::string, kvcache, "",
          "a kvcache service (HOST:PORT) that keeps sessions: requests with continue_session continue the "
          "session's stored conversation");
ABSL_FLAG(int, http_port, -1,
          "port of the OpenAI-compatible HTTP API (/v1/completions, /v1/chat/completions, /v1/models, /tokenize, /detokenize, /health, "
          "/metrics); 0 picks a free one, -1 serves none");
ABSL_FLAG(std::string, chat_template, "",
          "a Jinja chat template file for /v1/chat/completions; default: the model's own (chat_template.jinja or "
          "tokenizer_config.json's chat_template)");
ABSL_FLAG(std::string, api_keys, "",
          "a JSON file of API keys ({\"keys\": [{\"name\", \"key\", \"max_streams\", \"tokens_per_minute\", "
          "\"models\"}]}): every call then presents one as \"authorization: Bearer KEY\"; default: none needed");
ABSL_FLAG(int, api_keys_refresh_s, 30,
          "the --api-keys file is read again this often when it has changed (keys added, changed, revoked without "
          "a restart); 0: read once");
ABSL_FLAG(int, http_threads, 128, "HTTP calls served at once (a stream holds one until it ends)");
ABSL_FLAG(int, session_window, 0,
          "tokens a session's turn may take, history and max_tokens included; the oldest whole turns are left out "
          "past it (0: the model's context)");

namespace moemesh {
namespace {

struct Options {
  std::string model_dir;
  std::string model_name;  // empty: the directory's name
  std::string tokenizer;   // empty: the one in model_dir, if any
  std::string routers;
  int routers_resolve_ms = 0;
  Gateway::Options gateway;  // sessions are set from `kvcache`
  std::string kvcache;
  std::string chat_template;  // empty: the model's own
  std::string api_keys;       // empty: no keys needed
  int http_port = -1, http_threads = 0;

  static Options FromFlags() {
    Options o;
    o.model_dir = absl::GetFlag(FLAGS_model);
    o.model_name = absl::GetFlag(FLAGS_model_name);
    o.tokenizer = absl::GetFlag(FLAGS_tokenizer);
    o.routers = absl::GetFlag(FLAGS_routers);
    o.routers_resolve_ms = absl::GetFlag(FLAGS_routers_resolve_ms);
    o.gateway.max_in_flight = absl::GetFlag(FLAGS_max_in_flight);
    o.gateway.session_window = absl::GetFlag(FLAGS_session_window);
    o.kvcache = absl::GetFlag(FLAGS_kvcache);
    o.http_port = absl::GetFlag(FLAGS_http_port);
    o.http_threads = absl::GetFlag(FLAGS_http_threads);
    o.chat_template = absl::GetFlag(FLAGS_chat_template);
    o.api_keys = absl::GetFlag(FLAGS_api_keys);
    return o;
  }

  absl::Status Validate() const {
    if (model_dir.empty()) return absl::InvalidArgumentError("--model DIR is required");
    if (routers.empty()) return absl::InvalidArgumentError("--routers HOST:PORT[,...] is required");
    if (routers_resolve_ms < 1) return absl::InvalidArgumentError("--routers-resolve-ms must be positive");
    if (gateway.max_in_flight < 1) return absl::InvalidArgumentError("--max-in-flight must be >= 1");
    if (gateway.session_window < 0) return absl::InvalidArgumentError("--session-window must not be negative");
    if (http_port < -1 || http_port > 65535) return absl::InvalidArgumentError("--http-port must be -1 to 65535");
    if (http_threads < 1) return absl::InvalidArgumentError("--http-threads must be >= 1");
    return absl::OkStatus();
  }

  // The served model's name: --model-name, or the directory's.
  std::string ServedName() const {
    if (!model_name.empty()) return model_name;
    std::string dir = model_dir;
    while (dir.size() > 1 && dir.back() == '/') dir.pop_back();
    return dir.substr(dir.find_last_of('/') + 1);
  }
};

int Main(int argc, char** argv) {
  ServiceMain service_main("moemesh-gateway", argc, argv,
                           "moemesh-gateway --model DIR --routers HOST:PORT[,...] [--port P]");
  // The public API takes text prompts, not tensors: a smaller bound.
  service_main.set_default_max_message_bytes(16 << 20);
  const Options options = Options::FromFlags();
  if (absl::Status st = options.Validate(); !st.ok()) return service_main.Fail(st, 2);

  absl::StatusOr<ModelConfig> config = LoadModelConfig(options.model_dir);
  if (!config.ok()) return service_main.Fail(config.status(), 2);
  std::unique_ptr<Tokenizer> tokenizer;
  if (auto t = LoadTokenizer(options.tokenizer.empty() ? options.model_dir : options.tokenizer); t.ok()) {
    tokenizer = std::move(*t);
  } else if (absl::IsNotFound(t.status()) && options.tokenizer.empty()) {
    service_main.Warn(absl::StrCat(t.status().message(), "; serving token ids only"));
  } else {
    return service_main.Fail(t.status(), 2);
  }
  ServedModel model;
  model.name = options.ServedName();
  model.architecture = std::string(ArchitectureName(config->arch));
  model.vocab_size = config->vocab_size;
  model.context_length = config->context_length();

  absl::StatusOr<std::unique_ptr<RouterPool>> pool = RouterPool::Create(options.routers, options.routers_resolve_ms);
  if (!pool.ok()) return service_main.Fail(pool.status(), 2);
  auto registry = std::make_shared<prometheus::Registry>();
  GatewayMetrics metrics(*registry);
  // Sessions hold token ids: they belong to this model name and vocabulary.
  std::unique_ptr<SessionClient> sessions;
  Gateway::Options gateway_options = options.gateway;
  if (!options.kvcache.empty()) {
    sessions = std::make_unique<SessionClient>(
        options.kvcache, HashBytes(absl::StrCat("moemesh-session/1 ", model.name, " vocab=", model.vocab_size)));
    gateway_options.sessions = sessions.get();
  }
  std::unique_ptr<ApiKeys> api_keys;
  std::unique_ptr<FileWatcher> keys_watcher;  // stops before api_keys goes
  if (!options.api_keys.empty()) {
    auto k = ApiKeys::Load(options.api_keys);
    if (!k.ok()) return service_main.Fail(k.status(), 2);
    api_keys = std::move(*k);
    gateway_options.api_keys = api_keys.get();
    if (const int every = absl::GetFlag(FLAGS_api_keys_refresh_s); every > 0) {
      keys_watcher = std::make_unique<FileWatcher>(options.api_keys, absl::Seconds(every), [&] {
        if (absl::Status st = api_keys->Reload(options.api_keys); !st.ok()) {
          service_main.Warn(absl::StrCat("API keys not reloaded, the old ones stay: ", st.message()));
        }
      });
    }
  }
  Gateway gateway(tokenizer.get(), model, pool->get(), gateway_options, &metrics);
  GatewayServiceImpl service(&gateway);
  OipServiceImpl oip(&gateway, model.name);  // the Open Inference Protocol, on the same port
  std::unique_ptr<jinja::ChatTemplate> chat_template;  // outlives the front end
  std::unique_ptr<HttpFrontEnd> http;  // stops after the gRPC server (destroyed after Serve returns)
  if (options.http_port >= 0) {
    if (auto t = jinja::ChatTemplate::Load(options.model_dir, options.chat_template); t.ok()) {
      chat_template = std::move(*t);
    } else if (absl::IsNotFound(t.status()) && options.chat_template.empty()) {
      service_main.Warn(absl::StrCat(t.status().message(), "; /v1/chat/completions refuses requests"));
    } else {
      return service_main.Fail(t.status(), 2);
    }
    HttpFrontEnd::Options ho;
    ho.chat_template = chat_template.get();
    ho.host = service_main.host();
    ho.port = options.http_port;
    ho.threads = options.http_threads;
    if (MeshTls().server_tls()) {  // the gRPC port's certificate serves HTTPS too
      auto tls = HttpTls::Create(MeshTls());
      if (!tls.ok()) return service_main.Fail(tls.status(), 2);
      ho.tls = std::move(*tls);
    }
    auto h = HttpFrontEnd::Start(ho, &gateway, registry);
    if (!h.ok()) return service_main.Fail(h.status(), 1);
    http = std::move(*h);
    std::printf("%s on %s:%d\n", ho.tls ? "https" : "http", ho.host.c_str(), http->port());
    std::fflush(stdout);
  }
  service_main.set_service_names(
      {v1::Gateway::service_full_name(), inference::GRPCInferenceService::service_full_name()});
  // A request that cannot be parsed never reaches the gateway's logic: count it here.
  service_main.set_on_unparsed([&metrics](const std::string&) {
    metrics.CountRejected("INVALID_ARGUMENT");
    metrics.CountStatus("INVALID_ARGUMENT");
  });
  return service_main.Serve({&service, &oip}, registry, [&] { return gateway.in_flight(); });
}

}  // namespace
}  // namespace moemesh

int main(int argc, char** argv) { return moemesh::Main(argc, argv); }
