// API keys on every front end of the gateway, over real sockets: gRPC
// (moemesh.v1.Gateway and the Open Inference Protocol) and HTTP. Refusals
// come before any router call and are counted; /health, /metrics,
// ServerLive and ServerReady stay open.
#include <httplib.h>

#include <chrono>
#include <memory>
#include <string>

#include <grpcpp/grpcpp.h>

#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "prometheus/registry.h"
#include "prometheus/text_serializer.h"
#include "services/common/server_util.h"
#include "services/gateway/api_keys.h"
#include "services/gateway/gateway_metrics.h"
#include "services/gateway/gateway_service.h"
#include "services/gateway/gateway_test_util.h"
#include "services/gateway/http_front_end.h"
#include "services/gateway/oip_service.h"

namespace moemesh {
namespace {

class AuthTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::vector<ApiKeys::Key> keys(2);
    keys[0] = {"good", "sk-good", 0, 0, {}};
    keys[1] = {"elsewhere", "sk-elsewhere", 0, 0, {"another-model"}};
    keys_ = std::move(*ApiKeys::FromKeys(std::move(keys)));
    registry_ = std::make_shared<prometheus::Registry>();
    metrics_ = std::make_unique<GatewayMetrics>(*registry_);
    Gateway::Options o;
    o.api_keys = keys_.get();
    demo_ = std::make_unique<DemoGateway>(o, metrics_.get());
    gateway_ = demo_->gateway.get();
    service_ = std::make_unique<GatewayServiceImpl>(gateway_);
    oip_ = std::make_unique<OipServiceImpl>(gateway_, "fortune-moe");
    int port = 0;
    server_ = StartServer("127.0.0.1:0", {service_.get(), oip_.get()}, &port);
    auto channel = grpc::CreateCustomChannel("127.0.0.1:" + std::to_string(port), grpc::InsecureChannelCredentials(),
                                             ClientChannelArguments());
    stub_ = v1::Gateway::NewStub(channel);
    oip_stub_ = inference::GRPCInferenceService::NewStub(channel);
    http_ = std::move(*HttpFrontEnd::Start({}, gateway_, registry_));
    client_ = std::make_unique<httplib::Client>("127.0.0.1", http_->port());
  }
  void TearDown() override { server_->Shutdown(std::chrono::system_clock::now()); }

  grpc::StatusCode Generate(const std::string& authorization) {
    grpc::ClientContext ctx;
    if (!authorization.empty()) ctx.AddMetadata("authorization", authorization);
    v1::GenerateRequest r;
    r.set_text("Life is");
    r.set_max_tokens(3);
    auto reader = stub_->Generate(&ctx, r);
    v1::GenerateResponse resp;
    while (reader->Read(&resp)) {
    }
    return reader->Finish().error_code();
  }

  int Rejected(const std::string& reason) {
    const std::string text = prometheus::TextSerializer().Serialize(registry_->Collect());
    const std::string line = "moemesh_requests_rejected_total{reason=\"" + reason + "\"} ";
    const size_t at = text.find(line);
    return at == std::string::npos ? 0 : std::atoi(text.c_str() + at + line.size());
  }

  std::unique_ptr<ApiKeys> keys_;
  std::shared_ptr<prometheus::Registry> registry_;
  std::unique_ptr<GatewayMetrics> metrics_;
  std::unique_ptr<DemoGateway> demo_;
  Gateway* gateway_ = nullptr;
  std::unique_ptr<GatewayServiceImpl> service_;
  std::unique_ptr<OipServiceImpl> oip_;
  std::unique_ptr<grpc::Server> server_;
  std::unique_ptr<v1::Gateway::Stub> stub_;
  std::unique_ptr<inference::GRPCInferenceService::Stub> oip_stub_;
  std::unique_ptr<HttpFrontEnd> http_;
  std::unique_ptr<httplib::Client> client_;
};

TEST_F(AuthTest, GrpcApiNeedsAKnownKeyForItsModel) {
  EXPECT_EQ(Generate(""), grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_EQ(Generate("Bearer sk-wrong"), grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_EQ(Generate("Bearer sk-elsewhere"), grpc::StatusCode::PERMISSION_DENIED);
  EXPECT_EQ(Generate("Bearer sk-good"), grpc::StatusCode::OK);
  EXPECT_EQ(Rejected("UNAUTHENTICATED"), 2);
  EXPECT_EQ(Rejected("PERMISSION_DENIED"), 1);
  grpc::ClientContext ctx;
  v1::ListModelsResponse models;
  EXPECT_EQ(stub_->ListModels(&ctx, {}, &models).error_code(), grpc::StatusCode::UNAUTHENTICATED);
}

TEST_F(AuthTest, OpenInferenceProtocolNeedsAKeyButItsProbesDoNot) {
  grpc::ClientContext live_ctx;
  inference::ServerLiveResponse live;
  EXPECT_TRUE(oip_stub_->ServerLive(&live_ctx, {}, &live).ok());
  inference::ModelInferRequest r;
  r.set_model_name("fortune-moe");
  auto* in = r.add_inputs();
  in->set_name("text_input");
  in->set_datatype("BYTES");
  in->add_shape(1);
  in->mutable_contents()->add_bytes_contents("Life is");
  for (const auto& [authorization, code] : {std::pair{"", grpc::StatusCode::UNAUTHENTICATED},
                                            std::pair{"Bearer sk-good", grpc::StatusCode::OK}}) {
    grpc::ClientContext ctx;
    if (*authorization) ctx.AddMetadata("authorization", authorization);
    inference::ModelInferResponse out;
    EXPECT_EQ(oip_stub_->ModelInfer(&ctx, r, &out).error_code(), code) << authorization;
  }
}

TEST_F(AuthTest, HttpApiNeedsAKeyButHealthAndMetricsDoNot) {
  const std::string body = R"({"prompt": "Life is", "max_tokens": 3})";
  auto res = client_->Post("/v1/completions", body, "application/json");
  EXPECT_EQ(res->status, 401);
  EXPECT_EQ(nlohmann::json::parse(res->body)["error"]["type"], "authentication_error");
  res = client_->Post("/v1/completions", {{"Authorization", "Bearer sk-elsewhere"}}, body, "application/json");
  EXPECT_EQ(res->status, 403);
  res = client_->Post("/v1/completions", {{"Authorization", "Bearer sk-good"}}, body, "application/json");
  EXPECT_EQ(res->status, 200) << res->body;
  res = client_->Post("/v1/chat/completions", R"({"messages": [{"role": "user", "content": "x"}]})",
                      "application/json");
  EXPECT_EQ(res->status, 401);
  for (const char* path : {"/v1/models"}) {
    EXPECT_EQ(client_->Get(path)->status, 401) << path;
    EXPECT_EQ(client_->Get(path, {{"Authorization", "Bearer sk-good"}})->status, 200) << path;
  }
  EXPECT_EQ(client_->Post("/tokenize", R"({"prompt": "x"})", "application/json")->status, 401);
  EXPECT_EQ(client_->Get("/health")->status, 200);
  EXPECT_EQ(client_->Get("/metrics")->status, 200);
}

}  // namespace
}  // namespace moemesh
