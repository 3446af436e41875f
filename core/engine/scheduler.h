#ifndef MOEMESH_CORE_ENGINE_SCHEDULER_H_
#define MOEMESH_CORE_ENGINE_SCHEDULER_H_

#include <chrono>
#include <cstdint>
#include <functional>
#include <future>
#include <map>
#include <memory>
#include <vector>

#include "absl/status/status.h"
#include "core/engine/engine.h"
#include "core/engine/kv_cache.h"
#include "core/kv/kv_tier.h"
#include "core/engine/sampler.h"

namespace moemesh {

class ExpertExecutor;
class ForwardPass;

// What a request produced in one step.
struct StepEvent {
  int64_t request_id = 0;
  int token = -1;        // the token sampled this step
  bool finished = false;
  FinishReason finish_reason = FinishReason::kLength;
  absl::Status error;    // set (and finished) when the request failed
  // With GenerateParams::logprobs > 0: log probabilities of the model's own
  // distribution (raw logits) for `token` and the most likely tokens.
  float logprob = 0;
  std::vector<TokenLogprob> top_logprobs;
  // On a request's first event: seconds from Add to admission into the batch.
  double queue_seconds = 0;
};

// What one Step did, for metrics.
struct StepStats {
  int requests = 0;          // in the forward pass
  int rows = 0;              // tokens in the pass (decode + prefill)
  double total_seconds = 0;  // the whole step
  double expert_seconds = 0; // inside the ExpertExecutor (dispatch and combine)
  double sampling_seconds = 0;
  // Tokens routed to each expert in the step, [layer * num_experts + expert].
  std::vector<int64_t> routed;
  // Prefix caching, over the requests admitted this step: their prompt
  // tokens, and those found in the cache (not computed again).
  int64_t prefix_query_tokens = 0;
  int64_t prefix_hit_tokens = 0;
  // Of the hits, the tokens of blocks fetched from a lower tier (KvTier);
  // fetches that failed (the request then computed its prompt); blocks
  // given to the tier.
  int64_t tier_hit_tokens = 0;
  int64_t tier_fallbacks = 0;
  int64_t tier_stored_blocks = 0;
};

// Continuous batching: requests join the running batch between steps, and
// every step runs one forward pass over all of them together: a decode
// token for each generating request and a prefill chunk for each new one
// (chunked so that a long prompt does not stall the others). A request is
// admitted only when the KV cache can hold its prompt and max_new_tokens,
// so a running request never runs out of cache. Cancel frees a request's
// cache at once. A request's tokens do not depend on what else is in the
// batch; with dynamic (NTK) rope they do depend on where its prompt is cut
// into chunks, as in transformers, since the frequencies follow the longest
// position of each pass.
//
// With prefix caching (KvCache), a new request starts from the longest run
// of cached full blocks that begins its prompt (keeping at least its last
// prompt token to compute), and before each of its prefill chunks takes
// the blocks that other requests have cached since; every request commits its full blocks,
// prompt and generated tokens alike, as it fills them. Admission counts the
// blocks each running request may still take against the blocks free or
// cached, so a running request still never runs out. Dynamic (NTK) rope
// turns it off: there a prefix's keys depend on the passes that computed
// them.
//
// With a lower tier (Options::kv_tier), every block a request commits is
// also given to the tier, and a new request whose prompt continues past
// what the cache holds first asks the tier for the following blocks, off
// this thread: it waits (and others go ahead) until the answer comes, then
// is admitted with those blocks copied in. A failed fetch means computing.
// Not thread-safe: one loop owns it and calls Step.
class Scheduler {
 public:
  struct Options {
    int max_running = 64;         // requests in the batch at once
    int max_step_tokens = 2048;   // rows per forward pass (prefill budget)
    int prefill_chunk = 512;      // longest prompt piece of one request per step
    bool prefix_caching = true;   // share cached prompt blocks (above)
    KvTier* kv_tier = nullptr;    // a lower tier (above); must outlive the scheduler
  };

  // `model`, `cache` and `experts` must outlive the scheduler.
  Scheduler(ForwardPass* model, KvCache* cache, ExpertExecutor* experts, const Options& options);
  ~Scheduler();

  // OK if Add would accept the request; thread-safe (reads only the
  // model's configuration and the cache's size).
  absl::Status Check(const std::vector<int>& prompt, const GenerateParams& params) const;
  // Queues a request; its events go to `on_event` from inside Step.
  // INVALID_ARGUMENT for a bad prompt or parameters; RESOURCE_EXHAUSTED
  // when the request could never fit in the KV cache.
  // `submitted` is when the request arrived (for its queue time).
  absl::StatusOr<int64_t> Add(std::vector<int> prompt, const GenerateParams& params,
                              std::function<void(const StepEvent&)> on_event,
                              std::chrono::steady_clock::time_point submitted = std::chrono::steady_clock::now());
  // Drops a request, queued or running, and frees its KV cache now. No
  // more events are delivered for it. False if it is unknown or finished.
  bool Cancel(int64_t request_id);

  // Admits what fits, runs one forward pass, samples, delivers events.
  // An error of the pass (an expert worker lost) fails every request in it.
  absl::Status Step();

  bool idle() const { return running_.empty() && waiting_.empty(); }
  int num_running() const { return static_cast<int>(running_.size()); }
  int num_waiting() const { return static_cast<int>(waiting_.size()); }
  const KvCache& cache() const { return *cache_; }
  // The last Step's statistics.
  const StepStats& last_step() const { return last_step_; }
  const ModelConfig& config() const;

 private:
  struct Request;
  class StatsExecutor;
  void Admit();
  // Starts a tier fetch for the blocks of `r`'s prompt that the cache
  // lacks, if any; returns whether one is in flight.
  bool StartFetch(Request* r);
  // Copies the fetched blocks that continue r's sequence into the cache.
  void ImportFetched(Request* r);
  // Gives the tier the blocks of `r` committed since the last call.
  void StoreCommitted(Request* r);
  void Finish(Request* r);
  int BlocksFor(int tokens) const;
  // Blocks the running requests may still allocate.
  int Outstanding() const;

  ForwardPass* model_;
  KvCache* cache_;
  ExpertExecutor* experts_;
  std::unique_ptr<StatsExecutor> timed_experts_;  // wraps experts_ for StepStats
  Options options_;
  StepStats last_step_;
  int64_t next_id_ = 1;
  bool prefix_caching_ = false;  // Options::prefix_caching, where the model allows it
  std::map<int64_t, std::unique_ptr<Request>> running_;  // by id: admission order
  std::vector<std::unique_ptr<Request>> waiting_;         // FIFO
  // Tier fetches of cancelled requests, still running: dropped once done
  // (a future of std::async waits for its task when destroyed).
  std::vector<std::future<absl::StatusOr<std::vector<KvTierBlock>>>> draining_;
};

}  // namespace moemesh

#endif  // MOEMESH_CORE_ENGINE_SCHEDULER_H_
