#include "services/gateway/gateway.h"

#include <algorithm>
#include <optional>
#include <string>
#include <vector>

#include <grpcpp/grpcpp.h>

#include "absl/strings/str_cat.h"
#include "core/common/status_macros.h"
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
  explicit InFlight(std::atomic<int>* n) : n_(n), count_(n_->fetch_add(1) + 1) {}
  ~InFlight() { n_->fetch_sub(1); }
  // Requests in progress when this one was counted, itself included: each
  // request sees its own place, so two arriving together for the last slot
  // are not both refused.
  int count() const { return count_; }

 private:
  std::atomic<int>* n_;
  const int count_;
};

std::string TokenText(const Tokenizer& tok, int id) {
  auto s = tok.Decode({&id, 1}, /*skip_special_tokens=*/false);
  return s.ok() ? *s : std::string();
}

// The code's canonical name ("OK", "INVALID_ARGUMENT", ...), as the metrics
// label it.
std::string CodeName(const absl::Status& st) { return absl::StatusCodeToString(st.code()); }

// continue_session needs a session id and a gateway that keeps sessions.
absl::Status CheckSessionFields(const v1::GenerateRequest& request, const SessionClient* sessions) {
  if (!request.continue_session()) return absl::OkStatus();
  if (request.session_id().empty()) return absl::InvalidArgumentError("continue_session: needs a session_id");
  if (sessions == nullptr) {
    return absl::FailedPreconditionError(
        "continue_session: this gateway keeps no sessions (start it with --kvcache HOST:PORT)");
  }
  return absl::OkStatus();
}

const char* ReasonName(v1::FinishReason r) {
  return r == v1::FINISH_REASON_STOP ? "stop" : r == v1::FINISH_REASON_LENGTH ? "length" : "abort";
}

}  // namespace

absl::Status Gateway::Generate(const v1::GenerateRequest& request, const RouterCallContext& new_router_call,
                               const ResponseSink& sink, ApiKeys::Lease* lease) {
  int64_t used = 0;
  const ResponseSink counted = [&](const v1::GenerateResponse& r) {
    used += r.token_ids_size() + (r.finish_reason() != v1::FINISH_REASON_UNSPECIFIED ? r.usage().prompt_tokens() : 0);
    return sink(r);
  };
  absl::Status st = GenerateImpl(request, new_router_call, lease == nullptr ? sink : counted);
  if (lease != nullptr) lease->Charge(used);
  if (metrics_) metrics_->CountStatus(CodeName(st));
  return st;
}

absl::StatusOr<std::unique_ptr<ApiKeys::Lease>> Gateway::Authorize(absl::string_view authorization,
                                                                   absl::string_view model) {
  if (options_.api_keys == nullptr) return std::unique_ptr<ApiKeys::Lease>();
  auto lease = options_.api_keys->Admit(authorization, model.empty() ? absl::string_view(model_.name) : model);
  if (!lease.ok()) Rejected(lease.status());
  return lease;
}

void Gateway::Rejected(const absl::Status& st) {
  if (metrics_) metrics_->CountRejected(CodeName(st));
}

absl::StatusOr<v1::RouterGenerateRequest> Gateway::BuildTurn(const v1::GenerateRequest& request,
                                                             std::optional<SessionTurn>* session) {
  if (!request.continue_session()) return BuildRouterRequest(request, tokenizer_, model_);
  MM_RETURN_IF_ERROR(CheckSessionFields(request, options_.sessions));
  MM_RETURN_IF_ERROR(CheckModelName(request.model(), model_));
  absl::StatusOr<SessionHistory> history = options_.sessions->Load(request.session_id());
  if (!history.ok()) {
    if (absl::IsFailedPrecondition(history.status()) || absl::IsInvalidArgument(history.status())) {
      return history.status();
    }
    return absl::UnavailableError(absl::StrCat("the session store cannot be read: ", history.status().message()));
  }
  // A later turn's text continues the conversation: no BOS in its middle.
  v1::GenerateRequest turn = request;
  if (!history->tokens.empty() && !turn.has_add_special_tokens()) turn.set_add_special_tokens(false);
  MM_ASSIGN_OR_RETURN(v1::RouterGenerateRequest routed, BuildRouterRequest(turn, tokenizer_, model_));
  const int window = options_.session_window > 0 ? std::min(options_.session_window, model_.context_length)
                                                 : model_.context_length;
  MM_ASSIGN_OR_RETURN(SessionTurn t,
                      ComposeSessionTurn(*history, routed.prompt_ids(), request.max_tokens(), window));
  routed.mutable_prompt_ids()->Assign(t.prompt.begin(), t.prompt.end());
  session->emplace(std::move(t));
  return routed;
}

absl::Status Gateway::GenerateImpl(const v1::GenerateRequest& request, const RouterCallContext& new_router_call,
                                   const ResponseSink& sink) {
  std::optional<SessionTurn> session;
  absl::StatusOr<v1::RouterGenerateRequest> routed = BuildTurn(request, &session);
  if (!routed.ok()) {
    Rejected(routed.status());
    return routed.status();
  }
  InFlight counted(&in_flight_);
  if (counted.count() > options_.max_in_flight) {
    absl::Status st = absl::ResourceExhaustedError(absl::StrCat(
        "the gateway is at its limit of ", options_.max_in_flight, " requests in progress; retry later"));
    Rejected(st);
    return st;
  }
  std::optional<GatewayMetrics::Request> track;
  if (metrics_) track.emplace(metrics_);
  std::vector<int> output_ids;
  std::vector<std::string> stops(request.stop().begin(), request.stop().end());
  const bool skip_special = request.has_skip_special_tokens() ? request.skip_special_tokens() : true;
  // Without a tokenizer only token ids go back (no stops: checked above).
  std::optional<TextStream> text;
  if (tokenizer_ != nullptr) text.emplace(tokenizer_, skip_special, std::move(stops));
  auto stopped = [&] { return text && text->stopped(); };
  v1::Usage usage;
  usage.set_prompt_tokens(routed->prompt_ids_size());
  absl::Status last = absl::UnavailableError("no router is configured");
  const RouterPool::Choice choice = routers_->Choose(request.session_id());
  for (int r : choice.order) {
    std::unique_ptr<grpc::ClientContext> call = new_router_call();
    auto reader = choice.members->stubs[r]->Generate(call.get(), *routed);
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
            return piece.status();
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
        // Saved before the client hears the end, so that its next turn reads
        // this one. A session that cannot be saved (another turn wrote first,
        // the store is down) is counted, not the request failed.
        if (session && !options_.sessions->Save(request.session_id(), NextHistory(*session, output_ids)).ok() &&
            metrics_) {
          metrics_->CountSessionSaveError();
        }
        if (track) track->Finish(ReasonName(reason), usage.prompt_tokens(), output_ids);
        if (stopped()) call->TryCancel();  // the router may still be generating
      }
      if (!sink(out)) {
        call->TryCancel();
        reader->Finish();
        return absl::CancelledError("the client went away");
      }
    }
    absl::Status st = FromGrpcStatus(reader->Finish());
    if (finished) return absl::OkStatus();
    if (st.ok()) return absl::InternalError("the router ended the stream without a finish reason");
    // Nothing was sent yet: another router can take the whole request.
    if (!received && absl::IsUnavailable(st)) {
      last = st;
      continue;
    }
    return st;
  }
  absl::Status st = absl::UnavailableError(absl::StrCat("no router could take the request: ", last.message()));
  Rejected(st);
  if (track) track->Refused();
  return st;
}

absl::Status Gateway::Check(const v1::GenerateRequest& request) const {
  MM_RETURN_IF_ERROR(CheckSessionFields(request, options_.sessions));
  return BuildRouterRequest(request, tokenizer_, model_).status();
}

absl::Status Gateway::Tokenize(const v1::TokenizeRequest& request, v1::TokenizeResponse* response) const {
  MM_RETURN_IF_ERROR(CheckModelName(request.model(), model_));
  if (tokenizer_ == nullptr) return NoTokenizer("Tokenize");
  MM_ASSIGN_OR_RETURN(std::vector<int> ids, tokenizer_->Encode(request.text(), request.add_special_tokens()));
  response->mutable_ids()->Add(ids.begin(), ids.end());
  return absl::OkStatus();
}

absl::Status Gateway::Detokenize(const v1::DetokenizeRequest& request, v1::DetokenizeResponse* response) const {
  MM_RETURN_IF_ERROR(CheckModelName(request.model(), model_));
  if (tokenizer_ == nullptr) return NoTokenizer("Detokenize");
  std::vector<int> ids(request.ids().begin(), request.ids().end());
  for (int t : ids) {
    if (t < 0 || t >= tokenizer_->vocab_size()) {
      return absl::InvalidArgumentError(absl::StrCat("ids: ", t, " is outside the tokenizer's vocabulary [0, ",
                                                     tokenizer_->vocab_size(), ")"));
    }
  }
  MM_ASSIGN_OR_RETURN(std::string text, tokenizer_->Decode(ids, request.skip_special_tokens()));
  response->set_text(std::move(text));
  return absl::OkStatus();
}

absl::Status Gateway::ListModels(const v1::ListModelsRequest&, v1::ListModelsResponse* response) const {
  v1::ModelInfo* m = response->add_models();
  m->set_name(model_.name);
  m->set_architecture(model_.architecture);
  m->set_context_length(model_.context_length);
  m->set_vocab_size(model_.vocab_size);
  return absl::OkStatus();
}

}  // namespace moemesh
