#include "tools/moemesh/client.h"

#include <chrono>
#include <memory>

#include <grpcpp/grpcpp.h>

#include "moemesh/v1/gateway.grpc.pb.h"
#include "nlohmann/json.hpp"
#include "services/common/grpc_status.h"
#include "services/common/health_check.h"
#include "services/common/server_util.h"
#include "services/common/tls.h"

namespace moemesh {
namespace {

std::unique_ptr<v1::Gateway::Stub> Connect(const ClientOptions& opt) {
  return v1::Gateway::NewStub(
      grpc::CreateCustomChannel(opt.target, MeshChannelCredentials(), ClientChannelArguments()));
}

// The call's deadline and API key.
void SetDeadline(const ClientOptions& opt, grpc::ClientContext* ctx) {
  if (opt.timeout_ms > 0) {
    ctx->set_deadline(std::chrono::system_clock::now() + std::chrono::milliseconds(opt.timeout_ms));
  }
  if (!opt.api_key.empty()) ctx->AddMetadata("authorization", "Bearer " + opt.api_key);
}

const char* ReasonName(v1::FinishReason r) {
  switch (r) {
    case v1::FINISH_REASON_LENGTH:
      return "length";
    case v1::FINISH_REASON_STOP:
      return "stop";
    case v1::FINISH_REASON_ABORT:
      return "abort";
    default:
      return nullptr;
  }
}

// Invalid UTF-8 cannot occur in text from the gateway, but a JSON dump
// must never throw: replace rather than fail.
std::string Dump(const nlohmann::json& j) { return j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace); }

}  // namespace

absl::Status RunClientGenerate(const ClientOptions& opt, const v1::GenerateRequest& request, bool json,
                               std::ostream& out) {
  auto stub = Connect(opt);
  grpc::ClientContext ctx;
  SetDeadline(opt, &ctx);
  auto reader = stub->Generate(&ctx, request);
  v1::GenerateResponse r;
  nlohmann::json ids = nlohmann::json::array(), logprobs = nlohmann::json::array();
  std::string text;
  v1::FinishReason reason = v1::FINISH_REASON_UNSPECIFIED;
  v1::Usage usage;
  while (reader->Read(&r)) {
    for (int id : r.token_ids()) ids.push_back(id);
    text += r.text_delta();
    for (const v1::TokenLogprobs& lp : r.logprobs()) {
      nlohmann::json top = nlohmann::json::array();
      for (const v1::TopLogprob& t : lp.top()) {
        top.push_back({{"token_id", t.token_id()}, {"logprob", t.logprob()}, {"text", t.text()}});
      }
      logprobs.push_back({{"logprob", lp.logprob()}, {"top", top}});
    }
    if (r.finish_reason() != v1::FINISH_REASON_UNSPECIFIED) {
      reason = r.finish_reason();
      usage = r.usage();
    }
    if (!json) out << r.text_delta() << std::flush;
  }
  grpc::Status st = reader->Finish();
  if (!json && !text.empty()) out << std::endl;
  if (!st.ok()) return FromGrpcStatus(st);
  if (json) {
    nlohmann::json j = {{"token_ids", ids},
                        {"text", text},
                        {"finish_reason", ReasonName(reason) ? ReasonName(reason) : ""},
                        {"usage",
                         {{"prompt_tokens", usage.prompt_tokens()}, {"completion_tokens", usage.completion_tokens()}}}};
    if (request.logprobs() > 0) j["logprobs"] = logprobs;
    out << Dump(j) << std::endl;
  }
  return absl::OkStatus();
}

absl::Status RunClientTokenize(const ClientOptions& opt, const v1::TokenizeRequest& request, std::ostream& out) {
  auto stub = Connect(opt);
  grpc::ClientContext ctx;
  SetDeadline(opt, &ctx);
  v1::TokenizeResponse resp;
  grpc::Status st = stub->Tokenize(&ctx, request, &resp);
  if (!st.ok()) return FromGrpcStatus(st);
  out << Dump({{"ids", std::vector<int>(resp.ids().begin(), resp.ids().end())}}) << std::endl;
  return absl::OkStatus();
}

absl::Status RunClientDetokenize(const ClientOptions& opt, const v1::DetokenizeRequest& request, std::ostream& out) {
  auto stub = Connect(opt);
  grpc::ClientContext ctx;
  SetDeadline(opt, &ctx);
  v1::DetokenizeResponse resp;
  grpc::Status st = stub->Detokenize(&ctx, request, &resp);
  if (!st.ok()) return FromGrpcStatus(st);
  out << Dump({{"text", resp.text()}}) << std::endl;
  return absl::OkStatus();
}

absl::Status RunClientModels(const ClientOptions& opt, std::ostream& out) {
  auto stub = Connect(opt);
  grpc::ClientContext ctx;
  SetDeadline(opt, &ctx);
  v1::ListModelsResponse resp;
  grpc::Status st = stub->ListModels(&ctx, v1::ListModelsRequest(), &resp);
  if (!st.ok()) return FromGrpcStatus(st);
  for (const v1::ModelInfo& m : resp.models()) {
    out << Dump({{"name", m.name()},
                 {"architecture", m.architecture()},
                 {"context_length", m.context_length()},
                 {"vocab_size", m.vocab_size()}})
        << std::endl;
  }
  return absl::OkStatus();
}

absl::StatusOr<bool> RunClientHealth(const ClientOptions& opt, const std::string& service) {
  return CheckHealth(grpc::CreateCustomChannel(opt.target, MeshChannelCredentials(), ClientChannelArguments()),
                     service, opt.timeout_ms > 0 ? absl::Milliseconds(opt.timeout_ms) : absl::Seconds(5));
}

}  // namespace moemesh
