#include "services/router/router_service.h"

#include <memory>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "core/engine/generation_loop.h"
#include "services/common/generate_params_proto.h"
#include "services/common/grpc_status.h"

namespace moemesh {
namespace {

// How often a waiting handler looks whether its call was cancelled: the
// synchronous API has no cancellation callback.
constexpr absl::Duration kCancelPoll = absl::Milliseconds(10);

// Events of one request, from the loop's thread to the handler's.
class EventQueue {
 public:
  void Push(const StepEvent& ev) {
    absl::MutexLock l(&mu_);
    events_.push_back(ev);
  }
  // Takes every event queued, waiting up to `timeout` for the first.
  std::vector<StepEvent> Take(absl::Duration timeout) {
    absl::MutexLock l(&mu_);
    mu_.AwaitWithTimeout(absl::Condition(this, &EventQueue::HasEvents), timeout);
    return std::move(events_);
  }

 private:
  bool HasEvents() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return !events_.empty(); }
  absl::Mutex mu_;
  std::vector<StepEvent> events_ ABSL_GUARDED_BY(mu_);
};

v1::FinishReason ToProto(FinishReason r) {
  return r == FinishReason::kStop ? v1::FINISH_REASON_STOP : v1::FINISH_REASON_LENGTH;
}

}  // namespace

grpc::Status RouterServiceImpl::Generate(grpc::ServerContext* context, const v1::RouterGenerateRequest* request,
                                         grpc::ServerWriter<v1::RouterGenerateResponse>* writer) {
  active_.fetch_add(1);
  struct Done {
    std::atomic<int>* n;
    ~Done() { n->fetch_sub(1); }
  } done{&active_};
  auto queue = std::make_shared<EventQueue>();
  std::vector<int> prompt(request->prompt_ids().begin(), request->prompt_ids().end());
  absl::StatusOr<int64_t> id = loop_->Submit(std::move(prompt), GenerateParamsFromProto(*request),
                                             [queue](const StepEvent& ev) { queue->Push(ev); });
  if (!id.ok()) return ToGrpcStatus(id.status());
  const bool with_logprobs = request->logprobs() > 0;
  for (;;) {
    std::vector<StepEvent> events = queue->Take(kCancelPoll);
    if (context->IsCancelled()) {
      loop_->Cancel(*id);
      return grpc::Status(grpc::StatusCode::CANCELLED, "the call was cancelled or its deadline passed");
    }
    if (events.empty()) continue;
    v1::RouterGenerateResponse response;
    absl::Status error;
    for (const StepEvent& ev : events) {
      if (ev.queue_seconds > 0) response.set_queue_seconds(static_cast<float>(ev.queue_seconds));
      if (!ev.error.ok()) {
        error = ev.error;
        break;
      }
      response.add_token_ids(ev.token);
      if (with_logprobs) LogprobsToProto(ev.logprob, ev.top_logprobs, response.add_logprobs());
      if (ev.finished) response.set_finish_reason(ToProto(ev.finish_reason));
    }
    // Tokens sampled before a failure still reach the client.
    if (response.token_ids_size() > 0 && !writer->Write(response)) {
      loop_->Cancel(*id);
      return grpc::Status(grpc::StatusCode::CANCELLED, "the client went away");
    }
    if (!error.ok()) return ToGrpcStatus(error);
    if (response.finish_reason() != v1::FINISH_REASON_UNSPECIFIED) return grpc::Status::OK;
  }
}

grpc::Status RouterServiceImpl::GetStatus(grpc::ServerContext*, const v1::GetStatusRequest*,
                                          v1::RouterStatus* response) {
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
  return grpc::Status::OK;
}

}  // namespace moemesh
