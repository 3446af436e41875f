#include "services/gateway/gateway_service.h"

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <grpcpp/grpcpp.h>

#include "absl/strings/str_cat.h"
#include "core/tokenizer/tokenizer.h"
#include "services/common/grpc_status.h"
#include "services/gateway/gateway_metrics.h"
#include "services/gateway/router_pool.h"
#include "services/gateway/text_stream.h"

namespace moemesh {
namespace {

// Counts a request in progress for as long as it lives.
class InFlight {
 public:
  explicit InFlight(std::atomic<int>* n) : n_(n) { n_->fetch_add(1); }
  ~InFlight() { n_->fetch_sub(1); }

 private:
  std::atomic<int>* n_;
};

std::string TokenText(const Tokenizer& tok, int id) {
  auto s = tok.Decode({&id, 1}, /*skip_special_tokens=*/false);
  return s.ok() ? *s : std::string();
}

std::string CodeName(grpc::StatusCode code) {
  return absl::StatusCodeToString(static_cast<absl::StatusCode>(code));
}

const char* ReasonName(v1::FinishReason r) {
  return r == v1::FINISH_REASON_STOP ? "stop" : r == v1::FINISH_REASON_LENGTH ? "length" : "abort";
}

}  // namespace

grpc::Status GatewayServiceImpl::Generate(grpc::ServerContext* context, const v1::GenerateRequest* request,
                                          grpc::ServerWriter<v1::GenerateResponse>* writer) {
  grpc::Status st = GenerateImpl(context, request, writer);
  if (metrics_) metrics_->CountStatus(CodeName(st.error_code()));
  return st;
}

void GatewayServiceImpl::Rejected(const grpc::Status& st) {
  if (metrics_) metrics_->CountRejected(CodeName(st.error_code()));
}

grpc::Status GatewayServiceImpl::GenerateImpl(grpc::ServerContext* context, const v1::GenerateRequest* request,
                                              grpc::ServerWriter<v1::GenerateResponse>* writer) {
  absl::StatusOr<v1::RouterGenerateRequest> routed = BuildRouterRequest(*request, tokenizer_, model_);
  if (!routed.ok()) {
    grpc::Status st = ToGrpcStatus(routed.status());
    Rejected(st);
    return st;
  }
  InFlight counted(&in_flight_);
  if (in_flight_.load() > options_.max_in_flight) {
    grpc::Status st(grpc::StatusCode::RESOURCE_EXHAUSTED,
                    absl::StrCat("the gateway is at its limit of ", options_.max_in_flight,
                                 " requests in progress; retry later"));
    Rejected(st);
    return st;
  }
  std::optional<GatewayMetrics::Request> track;
  if (metrics_) track.emplace(metrics_);
  std::vector<int> output_ids;
  std::vector<std::string> stops(request->stop().begin(), request->stop().end());
  const bool skip_special = request->has_skip_special_tokens() ? request->skip_special_tokens() : true;
  // Without a tokenizer only token ids go back (no stops: checked above).
  std::optional<TextStream> text;
  if (tokenizer_ != nullptr) text.emplace(tokenizer_, skip_special, std::move(stops));
  auto stopped = [&] { return text && text->stopped(); };
  v1::Usage usage;
  usage.set_prompt_tokens(routed->prompt_ids_size());
  grpc::Status last(grpc::StatusCode::UNAVAILABLE, "no router is configured");
  for (int r : routers_->Order(request->session_id())) {
    // Carries the client's deadline and cancellation to the router.
    std::unique_ptr<grpc::ClientContext> call = grpc::ClientContext::FromServerContext(*context);
    auto reader = routers_->stub(r)->Generate(call.get(), *routed);
    v1::RouterGenerateResponse in;
    bool received = false, finished = false;
    while (!finished && reader->Read(&in)) {
      received = true;
      if (track && in.queue_seconds() > 0) track->QueueTime(in.queue_seconds());
      v1::GenerateResponse out;
      for (int i = 0; i < in.token_ids_size() && !stopped(); ++i) {
        const int id = in.token_ids(i);
        if (text) {
          absl::StatusOr<std::string> piece = text->Add(id);
          if (!piece.ok()) {
            call->TryCancel();
            reader->Finish();
            return ToGrpcStatus(piece.status());
          }
          out.mutable_text_delta()->append(*piece);
        }
        out.add_token_ids(id);
        if (i < in.logprobs_size()) {
          v1::TokenLogprobs* lp = out.add_logprobs();
          *lp = in.logprobs(i);
          if (tokenizer_ != nullptr) {
            for (v1::TopLogprob& t : *lp->mutable_top()) t.set_text(TokenText(*tokenizer_, t.token_id()));
          }
        }
      }
      usage.set_completion_tokens(usage.completion_tokens() + out.token_ids_size());
      output_ids.insert(output_ids.end(), out.token_ids().begin(), out.token_ids().end());
      if (track) track->Tokens(out.token_ids_size());
      v1::FinishReason reason = stopped() ? v1::FINISH_REASON_STOP : in.finish_reason();
      if (reason != v1::FINISH_REASON_UNSPECIFIED) {
        if (text && !stopped()) {
          absl::StatusOr<std::string> rest = text->Finish();
          if (rest.ok()) out.mutable_text_delta()->append(*rest);
        }
        out.set_finish_reason(reason);
        *out.mutable_usage() = usage;
        finished = true;
        if (track) track->Finish(ReasonName(reason), usage.prompt_tokens(), output_ids);
        if (stopped()) call->TryCancel();  // the router may still be generating
      }
      if (!writer->Write(out)) {
        call->TryCancel();
        reader->Finish();
        return grpc::Status(grpc::StatusCode::CANCELLED, "the client went away");
      }
    }
    grpc::Status st = reader->Finish();
    if (finished) return grpc::Status::OK;
    if (st.ok()) return grpc::Status(grpc::StatusCode::INTERNAL, "the router ended the stream without a finish reason");
    // Nothing was sent yet: another router can take the whole request.
    if (!received && st.error_code() == grpc::StatusCode::UNAVAILABLE) {
      last = st;
      continue;
    }
    return st;
  }
  grpc::Status st(grpc::StatusCode::UNAVAILABLE,
                  absl::StrCat("no router could take the request: ", last.error_message()));
  Rejected(st);
  if (track) track->Refused();
  return st;
}

grpc::Status GatewayServiceImpl::Tokenize(grpc::ServerContext*, const v1::TokenizeRequest* request,
                                          v1::TokenizeResponse* response) {
  if (absl::Status st = CheckModelName(request->model(), model_); !st.ok()) return ToGrpcStatus(st);
  if (tokenizer_ == nullptr) return ToGrpcStatus(NoTokenizer("Tokenize"));
  absl::StatusOr<std::vector<int>> ids = tokenizer_->Encode(request->text(), request->add_special_tokens());
  if (!ids.ok()) return ToGrpcStatus(ids.status());
  response->mutable_ids()->Add(ids->begin(), ids->end());
  return grpc::Status::OK;
}

grpc::Status GatewayServiceImpl::Detokenize(grpc::ServerContext*, const v1::DetokenizeRequest* request,
                                            v1::DetokenizeResponse* response) {
  if (absl::Status st = CheckModelName(request->model(), model_); !st.ok()) return ToGrpcStatus(st);
  if (tokenizer_ == nullptr) return ToGrpcStatus(NoTokenizer("Detokenize"));
  std::vector<int> ids(request->ids().begin(), request->ids().end());
  for (int t : ids) {
    if (t < 0 || t >= tokenizer_->vocab_size()) {
      return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                          absl::StrCat("ids: ", t, " is outside the tokenizer's vocabulary [0, ",
                                       tokenizer_->vocab_size(), ")"));
    }
  }
  absl::StatusOr<std::string> text = tokenizer_->Decode(ids, request->skip_special_tokens());
  if (!text.ok()) return ToGrpcStatus(text.status());
  response->set_text(*text);
  return grpc::Status::OK;
}

grpc::Status GatewayServiceImpl::ListModels(grpc::ServerContext*, const v1::ListModelsRequest*,
                                            v1::ListModelsResponse* response) {
  v1::ModelInfo* m = response->add_models();
  m->set_name(model_.name);
  m->set_architecture(model_.architecture);
  m->set_context_length(model_.context_length);
  m->set_vocab_size(model_.vocab_size);
  return grpc::Status::OK;
}

}  // namespace moemesh
