#include "services/router/router_service.h"

#include <memory>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "core/engine/generation_loop.h"
#include "services/common/generate_params_proto.h"
#include "services/common/drain.h"
#include "services/common/grpc_status.h"

namespace moemesh {
namespace {

v1::FinishReason ToProto(FinishReason r) {
  return r == FinishReason::kStop ? v1::FINISH_REASON_STOP : v1::FINISH_REASON_LENGTH;
}

}  // namespace

// One Generate call. Owned by itself until gRPC is done with it (OnDone)
// and by the loop's event callback until the loop drops the request;
// whichever lets go last deletes it. At most one write is outstanding;
// events that arrive meanwhile wait in `pending_` and go out together.
class RouterServiceImpl::GenerateCall : public grpc::ServerWriteReactor<v1::RouterGenerateResponse> {
 public:
  GenerateCall(RouterServiceImpl* service, const v1::RouterGenerateRequest* request)
      : service_(service), with_logprobs_(request->logprobs() > 0) {
    service_->active_.fetch_add(1);
  }
  ~GenerateCall() override { service_->active_.fetch_sub(1); }

  void Start(std::shared_ptr<GenerateCall> self, const v1::RouterGenerateRequest* request) {
    self_ = self;
    if (absl::Status st = RefuseWhileDraining("this router"); !st.ok()) {
      absl::MutexLock l(&mu_);
      FinishOnce(ToGrpcStatus(st));
      return;
    }
    std::vector<int> prompt(request->prompt_ids().begin(), request->prompt_ids().end());
    absl::StatusOr<int64_t> id =
        service_->loop_->Submit(std::move(prompt), GenerateParamsFromProto(*request),
                                [self](const StepEvent& ev) { self->OnEvent(ev); });
    absl::MutexLock l(&mu_);
    if (!id.ok()) {
      FinishOnce(ToGrpcStatus(id.status()));
      return;
    }
    id_ = *id;
    submitted_ = true;
    if (cancelled_) service_->loop_->Cancel(id_);  // OnCancel came first
  }

  // From the loop's thread.
  void OnEvent(const StepEvent& ev) {
    absl::MutexLock l(&mu_);
    if (finished_) return;
    pending_.push_back(ev);
    Pump();
  }

  void OnWriteDone(bool ok) override {
    absl::MutexLock l(&mu_);
    writing_ = false;
    if (!ok) {  // the client is gone
      CancelInLoop();
      FinishOnce(grpc::Status(grpc::StatusCode::CANCELLED, "the client went away"));
      return;
    }
    Pump();
  }

  void OnCancel() override {
    absl::MutexLock l(&mu_);
    cancelled_ = true;
    CancelInLoop();
    if (!writing_) FinishOnce(grpc::Status(grpc::StatusCode::CANCELLED, "the call was cancelled or its deadline passed"));
  }

  void OnDone() override {
    std::shared_ptr<GenerateCall> keep;
    {
      absl::MutexLock l(&mu_);
      finished_ = true;  // no more writes, whatever the loop still sends
      keep.swap(self_);
    }
    // `keep` may hold the last reference: nothing may touch `this` after.
  }

 private:
  void CancelInLoop() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (submitted_ && !loop_done_) service_->loop_->Cancel(id_);
  }

  void FinishOnce(const grpc::Status& st) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (finished_) return;
    finished_ = true;
    Finish(st);
  }

  // Starts the next write, or finishes once everything is written.
  void Pump() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (writing_ || finished_) return;
    if (cancelled_) {
      FinishOnce(grpc::Status(grpc::StatusCode::CANCELLED, "the call was cancelled or its deadline passed"));
      return;
    }
    if (pending_.empty()) {
      if (loop_done_) FinishOnce(final_);
      return;
    }
    response_.Clear();
    for (const StepEvent& ev : pending_) {
      if (ev.queue_seconds > 0) response_.set_queue_seconds(static_cast<float>(ev.queue_seconds));
      if (!ev.error.ok()) {
        final_ = ToGrpcStatus(ev.error);  // tokens before it still go out
        loop_done_ = true;
        break;
      }
      response_.add_token_ids(ev.token);
      if (with_logprobs_) LogprobsToProto(ev.logprob, ev.top_logprobs, response_.add_logprobs());
      if (ev.finished) {
        response_.set_finish_reason(ToProto(ev.finish_reason));
        loop_done_ = true;
      }
    }
    pending_.clear();
    if (response_.token_ids_size() > 0) {
      writing_ = true;
      StartWrite(&response_);
    } else if (loop_done_) {
      FinishOnce(final_);
    }
  }

  RouterServiceImpl* const service_;
  const bool with_logprobs_;
  absl::Mutex mu_;
  std::shared_ptr<GenerateCall> self_ ABSL_GUARDED_BY(mu_);
  int64_t id_ ABSL_GUARDED_BY(mu_) = 0;
  bool submitted_ ABSL_GUARDED_BY(mu_) = false;
  bool writing_ ABSL_GUARDED_BY(mu_) = false;
  bool cancelled_ ABSL_GUARDED_BY(mu_) = false;
  bool finished_ ABSL_GUARDED_BY(mu_) = false;   // Finish called (or gRPC done)
  bool loop_done_ ABSL_GUARDED_BY(mu_) = false;  // the last event arrived
  grpc::Status final_ ABSL_GUARDED_BY(mu_);
  std::vector<StepEvent> pending_ ABSL_GUARDED_BY(mu_);
  v1::RouterGenerateResponse response_ ABSL_GUARDED_BY(mu_);
};

grpc::ServerWriteReactor<v1::RouterGenerateResponse>* RouterServiceImpl::Generate(
    grpc::CallbackServerContext*, const v1::RouterGenerateRequest* request) {
  auto call = std::make_shared<GenerateCall>(this, request);
  call->Start(call, request);
  return call.get();
}

grpc::ServerUnaryReactor* RouterServiceImpl::GetStatus(grpc::CallbackServerContext* context,
                                                       const v1::GetStatusRequest*, v1::RouterStatus* response) {
  GenerationLoop::Stats s = loop_->stats();
  const ModelConfig& c = loop_->config();
  response->set_model_type(std::string(ArchitectureName(c.arch)));
  response->set_vocab_size(c.vocab_size);
  response->set_context_length(c.context_length());
  response->set_running_requests(s.running);
  response->set_waiting_requests(s.waiting);
  response->set_kv_cache_blocks_used(s.kv_blocks_used);
  response->set_kv_cache_blocks_total(s.kv_blocks_total);
  response->set_kv_cache_block_size(s.kv_block_size);
  response->set_requests_total(s.submitted);
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  reactor->Finish(grpc::Status::OK);
  return reactor;
}

}  // namespace moemesh
