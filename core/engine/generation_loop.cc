#include "core/engine/generation_loop.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "core/engine/kv_cache.h"

namespace moemesh {

GenerationLoop::GenerationLoop(std::unique_ptr<Scheduler> scheduler, int max_waiting,
                               std::function<void(const StepStats&, const Stats&)> on_step)
    : scheduler_(std::move(scheduler)), max_waiting_(max_waiting), on_step_(std::move(on_step)) {
  Publish();
  thread_ = std::thread([this] { Run(); });
}

GenerationLoop::~GenerationLoop() {
  {
    absl::MutexLock l(&mu_);
    stop_ = true;
  }
  thread_.join();
  for (const auto& [id, sid] : scheduler_ids_) scheduler_->Cancel(sid);
}

absl::StatusOr<int64_t> GenerationLoop::Submit(std::vector<int> prompt, const GenerateParams& params,
                                               std::function<void(const StepEvent&)> on_event) {
  if (absl::Status st = scheduler_->Check(prompt, params); !st.ok()) return st;
  absl::MutexLock l(&mu_);
  if (stop_) return absl::UnavailableError("the generation loop is shutting down");
  if (stats_.waiting + moving_ + static_cast<int>(adds_.size()) >= max_waiting_) {
    return absl::ResourceExhaustedError(
        absl::StrCat("too many requests waiting (", max_waiting_, "); retry later or add routers"));
  }
  int64_t id = next_id_++;
  adds_.push_back({id, std::move(prompt), params, std::move(on_event), std::chrono::steady_clock::now()});
  return id;
}

void GenerationLoop::Cancel(int64_t id) {
  absl::MutexLock l(&mu_);
  cancels_.push_back(id);
}

GenerationLoop::Stats GenerationLoop::stats() const {
  absl::MutexLock l(&mu_);
  Stats s = stats_;
  s.waiting += moving_ + static_cast<int>(adds_.size());
  s.submitted = next_id_ - 1;
  return s;
}

GenerationLoop::Stats GenerationLoop::Publish() {
  Stats s;
  s.running = scheduler_->num_running();
  s.waiting = scheduler_->num_waiting();
  const KvCache& cache = scheduler_->cache();
  s.kv_blocks_total = cache.num_blocks();
  s.kv_blocks_used = cache.num_blocks() - cache.free_blocks();
  s.kv_block_size = cache.block_size();
  s.kv_blocks_cached = cache.cached_blocks();
  s.kv_evictions = cache.evictions();
  absl::MutexLock l(&mu_);
  stats_ = s;
  moving_ = 0;  // now counted by the scheduler
  return s;
}

void GenerationLoop::Run() {
  for (;;) {
    std::vector<Pending> adds;
    std::vector<int64_t> cancels;
    const bool idle = scheduler_->idle();
    {
      absl::MutexLock l(&mu_);
      auto has_work = [this, idle]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
        return stop_ || !adds_.empty() || !cancels_.empty() || !idle;
      };
      mu_.Await(absl::Condition(&has_work));
      if (stop_) return;
      adds.swap(adds_);
      moving_ = static_cast<int>(adds.size());
      cancels.swap(cancels_);
    }
    // Adds first, so that a request cancelled before it ever ran is added
    // and dropped here without a step in between.
    for (Pending& p : adds) {
      int64_t id = p.id;
      auto cb = std::move(p.on_event);
      auto sid = scheduler_->Add(
          std::move(p.prompt), p.params,
          [this, id, cb](const StepEvent& ev) {
            if (ev.finished) scheduler_ids_.erase(id);
            cb(ev);
          },
          p.submitted);
      if (!sid.ok()) {
        StepEvent ev;
        ev.request_id = id;
        ev.finished = true;
        ev.error = sid.status();
        cb(ev);
        continue;
      }
      scheduler_ids_[id] = *sid;
    }
    for (int64_t id : cancels) {
      auto it = scheduler_ids_.find(id);
      if (it == scheduler_ids_.end()) continue;
      scheduler_->Cancel(it->second);
      scheduler_ids_.erase(it);
    }
    if (!cancels.empty()) Publish();  // the freed cache shows at once
    // A failed pass has already failed its requests through their events;
    // the loop carries on with the rest.
    (void)scheduler_->Step();
    Stats s = Publish();
    const StepStats& last = scheduler_->last_step();
    if (on_step_ && (last.requests > 0 || last.tier_fallbacks > 0 || !cancels.empty())) on_step_(last, s);
  }
}

}  // namespace moemesh
