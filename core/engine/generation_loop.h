#ifndef MOEMESH_CORE_ENGINE_GENERATION_LOOP_H_
#define MOEMESH_CORE_ENGINE_GENERATION_LOOP_H_

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <thread>
#include <unordered_map>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "core/engine/scheduler.h"

namespace moemesh {

// Runs a Scheduler on a thread of its own so that many callers can submit
// and cancel requests concurrently: submissions and cancellations are
// queued under a lock and applied between steps, so a step never waits for
// a caller and a caller never waits for a step. Thread-safe.
class GenerationLoop {
 public:
  struct Stats {
    int running = 0;         // in the batch
    int waiting = 0;         // submitted, not yet admitted
    int kv_blocks_used = 0;  // by running requests
    int kv_blocks_total = 0;
    int kv_block_size = 0;
    int kv_blocks_cached = 0;  // held by no request, kept for prefix caching
    int64_t kv_evictions = 0;  // cached blocks dropped for room, since the start
    int64_t submitted = 0;   // accepted by Submit since the start
  };

  // Starts the loop. At most `max_waiting` requests may wait for admission;
  // more are refused with RESOURCE_EXHAUSTED.
  // `on_step`, when set, is called on the loop's thread after every step
  // that ran a forward pass, and after cancellations (then with a step of
  // no requests, so that gauges follow what a cancel freed); it is for
  // metrics and must return quickly.
  GenerationLoop(std::unique_ptr<Scheduler> scheduler, int max_waiting,
                 std::function<void(const StepStats&, const Stats&)> on_step = nullptr);
  // Drops every request (no more events) and joins the thread.
  ~GenerationLoop();

  // Checks the request at once (INVALID_ARGUMENT, or RESOURCE_EXHAUSTED
  // when it could never fit or too many wait) and queues it. `on_event` is
  // called on the loop's thread and must return quickly; it may call Cancel.
  absl::StatusOr<int64_t> Submit(std::vector<int> prompt, const GenerateParams& params,
                                 std::function<void(const StepEvent&)> on_event);
  // Drops a request before the next step and frees its KV cache then. No
  // events follow the step in progress. Unknown or finished ids are ignored.
  void Cancel(int64_t id);

  // As of the end of the last step.
  Stats stats() const;
  const ModelConfig& config() const { return scheduler_->config(); }

 private:
  struct Pending {
    int64_t id;
    std::vector<int> prompt;
    GenerateParams params;
    std::function<void(const StepEvent&)> on_event;
    std::chrono::steady_clock::time_point submitted;
  };
  void Run();
  Stats Publish() ABSL_LOCKS_EXCLUDED(mu_);

  const std::unique_ptr<Scheduler> scheduler_;  // used by the loop thread only
  const int max_waiting_;
  const std::function<void(const StepStats&, const Stats&)> on_step_;
  std::unordered_map<int64_t, int64_t> scheduler_ids_;  // loop thread only

  mutable absl::Mutex mu_;
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  int64_t next_id_ ABSL_GUARDED_BY(mu_) = 1;  // next_id_ - 1 were submitted
  std::vector<Pending> adds_ ABSL_GUARDED_BY(mu_);
  int moving_ ABSL_GUARDED_BY(mu_) = 0;  // taken from adds_, not yet in stats_
  std::vector<int64_t> cancels_ ABSL_GUARDED_BY(mu_);
  Stats stats_ ABSL_GUARDED_BY(mu_);
  std::thread thread_;
};

}  // namespace moemesh

#endif  // MOEMESH_CORE_ENGINE_GENERATION_LOOP_H_
