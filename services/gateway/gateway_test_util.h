#ifndef MOEMESH_SERVICES_GATEWAY_GATEWAY_TEST_UTIL_H_
#define MOEMESH_SERVICES_GATEWAY_GATEWAY_TEST_UTIL_H_

#include <memory>
#include <string>
#include <vector>

#include "core/model/config.h"
#include "core/tokenizer/tokenizer.h"
#include "services/gateway/gateway.h"
#include "services/gateway/router_pool.h"
#include "services/router/local_router.h"

namespace moemesh {

// For the front ends' tests: a Gateway on the demo model, in front of a
// real router in process (LocalRouter) on loopback.
struct DemoGateway {
  static constexpr char kModel[] = "models/fortune-moe";

  explicit DemoGateway(Gateway::Options options = {}, GatewayMetrics* metrics = nullptr)
      : router(std::make_unique<LocalRouter>(kModel)),
        pool(std::make_unique<RouterPool>(std::vector<std::string>{router->address()})),
        tokenizer(std::move(*LoadTokenizer(kModel))) {
    auto config = LoadModelConfig(kModel);
    gateway = std::make_unique<Gateway>(
        tokenizer.get(), ServedModel{"fortune-moe", "deepseek_v3", config->vocab_size, config->context_length()},
        pool.get(), options, metrics);
  }

  std::unique_ptr<LocalRouter> router;
  std::unique_ptr<RouterPool> pool;
  std::unique_ptr<Tokenizer> tokenizer;
  std::unique_ptr<Gateway> gateway;
};

}  // namespace moemesh

#endif  // MOEMESH_SERVICES_GATEWAY_GATEWAY_TEST_UTIL_H_
