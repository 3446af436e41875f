#include "core/engine/scheduler.h"

#include <algorithm>
#include <chrono>
#include <functional>
#include <future>
#include <system_error>

#include "absl/strings/str_cat.h"
#include "core/experts/expert_executor.h"
#include "core/engine/forward_pass.h"
#include "core/model/config.h"

namespace moemesh {

struct Scheduler::Request {
  int64_t id;
  // The prompt, then the tokens generated: what seq's positions hold.
  std::vector<int> tokens;
  size_t prompt_size;
  GenerateParams params;
  std::vector<int> stops;
  Sampler sampler;
  std::function<void(const StepEvent&)> on_event;
  KvSequence seq;
  int blocks = 0;      // reserved for prompt + max_new_tokens
  size_t prefilled = 0;
  std::chrono::steady_clock::time_point submitted;
  bool reported_queue = false;  // queue_seconds went out with the first event
  double queue_seconds = 0;
  // A lower tier's part: asked once, before admission.
  bool tier_asked = false;
  int fetch_first = 0;  // the block index the fetch starts at
  std::future<absl::StatusOr<std::vector<KvTierBlock>>> fetch;
  size_t stored_blocks = 0;  // leading committed blocks the tier has (or was given)

  Request(int64_t i, std::vector<int> p, const GenerateParams& g, std::function<void(const StepEvent&)> cb)
      : id(i),
        tokens(std::move(p)),
        prompt_size(tokens.size()),
        params(g),
        sampler(g.sampling, tokens),
        on_event(std::move(cb)) {}

  absl::Span<const int> prompt() const { return absl::MakeConstSpan(tokens).first(prompt_size); }
  int generated() const { return static_cast<int>(tokens.size() - prompt_size); }
  // Prompt tokens the KV cache may hold already: all but the last, whose
  // logits pick the first new token.
  int reusable() const { return static_cast<int>(prompt_size) - 1; }
};

// Times the expert calls and counts the tokens routed to each expert.
// The executor as the forward pass sees it through the scheduler: every
// call passed on (a call left to the base class's default would hide what
// the executor can do: pipelining, recording, settling), with the routed
// tokens counted and the host's time in the experts summed.
class Scheduler::StatsExecutor : public ExpertExecutor {
 public:
  StatsExecutor(ExpertExecutor* inner, StepStats* stats, int num_experts)
      : inner_(inner), stats_(stats), num_experts_(num_experts) {}
  absl::Status Execute(const ExpertBatch& b, float* out) override {
    Count(b);
    return Timed([&] { return inner_->Execute(b, out); });
  }
  int cuda_device() const override { return inner_->cuda_device(); }
  bool groups_on_device() const override { return inner_->groups_on_device(); }
  bool capturable() const override { return inner_->capturable(); }
  int lanes() const override { return inner_->lanes(); }
  absl::Status Start(const ExpertBatch& b, float* out, int lane) override {
    Count(b);
    return Timed([&] { return inner_->Start(b, out, lane); });
  }
  absl::Status Finish(int lane) override {
    return Timed([&] { return inner_->Finish(lane); });
  }
  absl::Status Settle() override {
    return Timed([&] { return inner_->Settle(); });
  }
  bool replays() const override { return inner_->replays(); }
  absl::Status BeginRecording() override { return inner_->BeginRecording(); }
  absl::Status EndRecording(bool keep, int64_t* id) override { return inner_->EndRecording(keep, id); }
  absl::Status Replay(int64_t id, const std::function<absl::Status()>& launch) override {
    return Timed([&] { return inner_->Replay(id, launch); });
  }
  void ForgetRecording(int64_t id) override { inner_->ForgetRecording(id); }

 private:
  // Routing on the device is counted by the forward pass (AddRoutedCounts).
  void Count(const ExpertBatch& b) {
    const size_t need = static_cast<size_t>(b.layer + 1) * num_experts_;
    if (stats_->routed.size() < need) stats_->routed.resize(need, 0);
    for (int i = 0; !b.routing_on_device && i < b.num_tokens * b.slots; ++i) {
      const int e = b.expert_ids[i];
      if (e >= 0 && e < num_experts_) ++stats_->routed[static_cast<size_t>(b.layer) * num_experts_ + e];
    }
  }
  template <typename F>
  absl::Status Timed(const F& f) {
    const auto t0 = std::chrono::steady_clock::now();
    absl::Status st = f();
    stats_->expert_seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    return st;
  }

  ExpertExecutor* inner_;
  StepStats* stats_;
  int num_experts_;
};

namespace {
double Since(std::chrono::steady_clock::time_point t) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t).count();
}
}  // namespace

Scheduler::Scheduler(ForwardPass* model, KvCache* cache, ExpertExecutor* experts, const Options& options)
    : model_(model),
      cache_(cache),
      experts_(experts),
      timed_experts_(std::make_unique<StatsExecutor>(experts, &last_step_, model->config().num_experts)),
      options_(options),
      prefix_caching_(options.prefix_caching && model->config().rope.type != RopeType::kDynamic) {}

Scheduler::~Scheduler() {
  for (auto& [id, r] : running_) cache_->Release(&r->seq);
}

int Scheduler::BlocksFor(int tokens) const { return (tokens + cache_->block_size() - 1) / cache_->block_size(); }

const ModelConfig& Scheduler::config() const { return model_->config(); }

absl::Status Scheduler::Check(const std::vector<int>& prompt, const GenerateParams& params) const {
  RequestLimits limits;
  limits.vocab_size = model_->config().vocab_size;
  if (absl::Status st = ValidateRequest(prompt, params, limits); !st.ok()) return st;
  if (BlocksFor(static_cast<int>(prompt.size()) + params.max_new_tokens) > cache_->num_blocks()) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "prompt (", prompt.size(), " tokens) + max_new_tokens (", params.max_new_tokens,
        ") needs more KV cache than this server has (", cache_->num_blocks() * cache_->block_size(), " tokens)"));
  }
  return absl::OkStatus();
}

absl::StatusOr<int64_t> Scheduler::Add(std::vector<int> prompt, const GenerateParams& params,
                                       std::function<void(const StepEvent&)> on_event,
                                       std::chrono::steady_clock::time_point submitted) {
  if (absl::Status st = Check(prompt, params); !st.ok()) return st;
  const ModelConfig& c = model_->config();
  int blocks = BlocksFor(static_cast<int>(prompt.size()) + params.max_new_tokens);
  auto r = std::make_unique<Request>(next_id_++, std::move(prompt), params, std::move(on_event));
  r->blocks = blocks;
  r->submitted = submitted;
  r->stops = params.stop_token_ids;
  if (!params.ignore_eos) r->stops.insert(r->stops.end(), c.eos_token_ids.begin(), c.eos_token_ids.end());
  int64_t id = r->id;
  waiting_.push_back(std::move(r));
  return id;
}

bool Scheduler::Cancel(int64_t request_id) {
  auto w = std::find_if(waiting_.begin(), waiting_.end(), [&](const auto& r) { return r->id == request_id; });
  if (w != waiting_.end()) {
    if ((*w)->fetch.valid()) draining_.push_back(std::move((*w)->fetch));  // not waited for here
    waiting_.erase(w);
    return true;
  }
  auto it = running_.find(request_id);
  if (it == running_.end()) return false;
  Finish(it->second.get());
  running_.erase(it);
  return true;
}

void Scheduler::Finish(Request* r) { cache_->Release(&r->seq); }

int Scheduler::Outstanding() const {
  int blocks = 0;
  for (const auto& [id, r] : running_) blocks += std::max(0, r->blocks - static_cast<int>(r->seq.blocks.size()));
  return blocks;
}

bool Scheduler::StartFetch(Request* r) {
  r->tier_asked = true;
  const int bs = cache_->block_size();
  const int local = cache_->Probe(r->prompt(), r->reusable()).tokens / bs;
  const int wanted = r->reusable() / bs;
  if (wanted <= local) return false;
  std::vector<BlockHash> chain;
  BlockHash parent = cache_->root();
  for (int i = 0; i < wanted; ++i) {
    parent = ChainBlockHash(parent, r->prompt().subspan(static_cast<size_t>(i) * bs, bs));
    chain.push_back(parent);
  }
  r->fetch_first = local;
  KvTier* tier = options_.kv_tier;
  try {
    r->fetch = std::async(std::launch::async, [tier, root = cache_->root(), chain = std::move(chain), local] {
      return tier->Fetch(root, chain, static_cast<size_t>(local));
    });
  } catch (const std::system_error&) {  // no thread to be had: compute instead
    ++last_step_.tier_fallbacks;
    return false;
  }
  return true;
}

void Scheduler::ImportFetched(Request* r) {
  if (!r->fetch.valid()) return;
  absl::StatusOr<std::vector<KvTierBlock>> got = r->fetch.get();
  if (!got.ok()) {
    ++last_step_.tier_fallbacks;
    return;
  }
  const int bs = cache_->block_size();
  // The cache may hold more or fewer of the prompt's blocks than when the
  // fetch began: use the fetched ones that continue the sequence.
  const int held = static_cast<int>(r->seq.blocks.size());
  if (r->seq.length != held * bs || static_cast<int>(r->seq.block_hashes.size()) != held) return;
  // The fetched blocks that continue the sequence, each checked against its
  // parent, tokens and hash.
  std::vector<absl::string_view> bytes;
  BlockHash parent = held == 0 ? cache_->root() : r->seq.block_hashes.back();
  for (int i = held - r->fetch_first; i >= 0 && i < static_cast<int>(got->size()); ++i) {
    const KvTierBlock& b = (*got)[i];
    const int index = r->fetch_first + i;
    const absl::Span<const int> tokens = r->prompt().subspan(static_cast<size_t>(index) * bs, bs);
    if (b.parent != parent || !std::equal(tokens.begin(), tokens.end(), b.tokens.begin(), b.tokens.end()) ||
        ChainBlockHash(parent, tokens) != b.hash) {
      break;  // not the block this sequence needs: compute from here
    }
    bytes.push_back(b.data());
    parent = b.hash;
  }
  // As many as the cache has room for, copied in at once; if the copy
  // fails (bytes of another layout), none of them is used: computed instead.
  while (!bytes.empty() && !cache_->Reserve(&r->seq, r->seq.length + static_cast<int>(bytes.size()) * bs).ok()) {
    bytes.pop_back();
  }
  if (!bytes.empty()) {
    const auto blocks = absl::MakeConstSpan(r->seq.blocks).subspan(held, bytes.size());
    if (model_->WriteKvBlocks(cache_, blocks, bytes).ok()) {
      const int tokens = static_cast<int>(bytes.size()) * bs;
      r->seq.length += tokens;
      cache_->Commit(&r->seq, r->tokens);
      last_step_.tier_hit_tokens += tokens;
    } else {
      cache_->Shrink(&r->seq);
      ++last_step_.tier_fallbacks;
    }
  }
  r->stored_blocks = r->seq.block_hashes.size();  // the tier has these already
}

void Scheduler::StoreCommitted(Request* r) {
  if (r->seq.block_hashes.size() <= r->stored_blocks) return;
  const int bs = cache_->block_size();
  const size_t first = r->stored_blocks, count = r->seq.block_hashes.size() - first;
  std::vector<std::string> bytes;
  if (!model_->ReadKvBlocks(*cache_, absl::MakeConstSpan(r->seq.blocks).subspan(first, count), &bytes).ok()) return;
  std::vector<KvTierBlock> blocks(count);
  for (size_t j = 0; j < count; ++j) {
    const size_t i = first + j;
    KvTierBlock& b = blocks[j];
    b.hash = r->seq.block_hashes[i];
    b.parent = i == 0 ? cache_->root() : r->seq.block_hashes[i - 1];
    const auto tokens = absl::MakeConstSpan(r->tokens).subspan(i * bs, bs);
    b.tokens.assign(tokens.begin(), tokens.end());
    b.bytes = std::move(bytes[j]);
  }
  r->stored_blocks += blocks.size();
  last_step_.tier_stored_blocks += static_cast<int64_t>(blocks.size());
  if (!blocks.empty()) options_.kv_tier->Store(cache_->root(), r->seq.block_hashes[0], std::move(blocks));
}

void Scheduler::Admit() {
  draining_.erase(std::remove_if(draining_.begin(), draining_.end(),
                                 [](auto& f) { return f.wait_for(std::chrono::seconds(0)) == std::future_status::ready; }),
                  draining_.end());
  int outstanding = Outstanding();
  const bool tiered = prefix_caching_ && options_.kv_tier != nullptr;
  for (size_t i = 0; i < waiting_.size() && static_cast<int>(running_.size()) < options_.max_running;) {
    Request& w = *waiting_[i];
    if (tiered) {
      // A request waits for its fetch; those behind it go ahead meanwhile.
      if (!w.tier_asked && StartFetch(&w)) {
        ++i;
        continue;
      }
      if (w.fetch.valid() && w.fetch.wait_for(std::chrono::seconds(0)) != std::future_status::ready) {
        ++i;
        continue;
      }
    }
    const KvCache::PrefixMatch m =
        prefix_caching_ ? cache_->Probe(w.prompt(), w.reusable()) : KvCache::PrefixMatch();
    const int fresh = w.blocks - m.tokens / cache_->block_size();
    if (outstanding + fresh > cache_->free_blocks() - m.idle_blocks) break;
    std::unique_ptr<Request> r = std::move(waiting_[i]);
    waiting_.erase(waiting_.begin() + static_cast<std::ptrdiff_t>(i));
    if (prefix_caching_) {
      cache_->Match(r->prompt(), r->reusable(), &r->seq);
      r->stored_blocks = r->seq.block_hashes.size();  // computed here: given to the tier then
      if (tiered) ImportFetched(r.get());
      r->prefilled = static_cast<size_t>(r->seq.length);
      last_step_.prefix_query_tokens += static_cast<int64_t>(r->prompt_size);
      last_step_.prefix_hit_tokens += static_cast<int64_t>(r->prefilled);
    }
    outstanding += fresh;
    r->queue_seconds = Since(r->submitted);
    int64_t id = r->id;
    running_.emplace(id, std::move(r));
  }
  // Nothing to run but fetches in flight: wait a little for the first
  // rather than spin.
  if (tiered && running_.empty() && !waiting_.empty() && waiting_.front()->fetch.valid()) {
    waiting_.front()->fetch.wait_for(std::chrono::milliseconds(2));
  }
}

absl::Status Scheduler::Step() {
  const auto step_start = std::chrono::steady_clock::now();
  std::fill(last_step_.routed.begin(), last_step_.routed.end(), 0);
  last_step_.requests = last_step_.rows = 0;
  last_step_.total_seconds = last_step_.expert_seconds = last_step_.sampling_seconds = 0;
  last_step_.prefix_query_tokens = last_step_.prefix_hit_tokens = 0;
  last_step_.tier_hit_tokens = last_step_.tier_fallbacks = last_step_.tier_stored_blocks = 0;
  Admit();
  if (running_.empty()) return absl::OkStatus();
  std::vector<ForwardItem> items;
  std::vector<Request*> owners;
  std::vector<int> chunk;  // prefill tokens per item; 0 for a decode item
  int budget = options_.max_step_tokens;
  // Decode tokens first (one each, always), then prefill chunks in
  // admission order within what is left of the step's budget.
  for (auto& [id, r] : running_) {
    if (r->prefilled < r->prompt_size) continue;
    items.push_back({&r->seq, absl::MakeConstSpan(r->tokens).last(1), false});
    owners.push_back(r.get());
    chunk.push_back(0);
    --budget;
  }
  for (auto& [id, r] : running_) {
    if (r->prefilled >= r->prompt_size || budget <= 0) continue;
    if (prefix_caching_ && r->prefilled == static_cast<size_t>(r->seq.length)) {
      // Blocks that other requests cached since: a batch sharing a prompt
      // computes it once, not once per request admitted together.
      const size_t before = r->prefilled;
      const size_t known = r->seq.block_hashes.size();
      r->prefilled = cache_->Match(r->prompt(), r->reusable(), &r->seq);
      // Blocks another request computed (and gave the tier) are not given again.
      if (r->stored_blocks == known) r->stored_blocks = r->seq.block_hashes.size();
      last_step_.prefix_hit_tokens += static_cast<int64_t>(r->prefilled - before);
    }
    int n = static_cast<int>(std::min<size_t>({r->prompt_size - r->prefilled,
                                               static_cast<size_t>(options_.prefill_chunk),
                                               static_cast<size_t>(budget)}));
    items.push_back({&r->seq, r->prompt().subspan(r->prefilled, n), false});
    owners.push_back(r.get());
    chunk.push_back(n);
    budget -= n;
  }
  std::vector<float> logits;
  last_step_.requests = static_cast<int>(items.size());
  for (const ForwardItem& it : items) last_step_.rows += static_cast<int>(it.tokens.size());
  // Every request of a failed pass fails; the others may try again.
  auto fail_all = [&](const absl::Status& st) {
    for (Request* r : owners) {
      StepEvent ev;
      ev.request_id = r->id;
      ev.finished = true;
      ev.error = st;
      r->on_event(ev);
      Finish(r);
      running_.erase(r->id);
    }
    return st;
  };
  const bool on_device = model_->samples_on_device();
  absl::Status st = model_->Forward(items, cache_, timed_experts_.get(), on_device ? nullptr : &logits);
  if (!st.ok()) return fail_all(st);
  model_->AddRoutedCounts(&last_step_.routed);
  const int vocab = model_->config().vocab_size;
  std::vector<int64_t> done;
  std::vector<float> raw;
  const auto sampling_start = std::chrono::steady_clock::now();
  for (size_t i = 0; i < owners.size(); ++i) {
    if (chunk[i] > 0) owners[i]->prefilled += chunk[i];
    if (prefix_caching_) cache_->Commit(&owners[i]->seq, owners[i]->tokens);
    if (prefix_caching_ && options_.kv_tier != nullptr) StoreCommitted(owners[i]);
  }
  auto sampling = [&](size_t i) { return owners[i]->prefilled >= owners[i]->prompt_size; };
  // Device sampling: the pass picks the tokens and returns only the raw
  // rows that logprobs need (row_of[i] indexes them).
  std::vector<int> device_tokens, row_of(owners.size(), -1);
  if (on_device) {
    std::vector<DeviceSampleRow> rows;
    int wanted = 0;
    for (size_t i = 0; i < owners.size(); ++i) {
      if (!sampling(i)) continue;
      Request* r = owners[i];
      DeviceSampleRow row;
      row.row = static_cast<int>(i);
      row.params = r->sampler.params();
      row.penalty_tokens = r->sampler.PenaltyTokens();
      row.uniform = r->sampler.Draw();
      row.want_logits = r->params.logprobs > 0;
      if (row.want_logits) row_of[i] = wanted++;
      rows.push_back(std::move(row));
    }
    st = model_->SampleLast(rows, &device_tokens, &raw);
    if (st.ok() && (device_tokens.size() != rows.size() || raw.size() != static_cast<size_t>(wanted) * vocab)) {
      st = absl::InternalError("the forward pass sampled a different number of rows than asked");
    }
    if (!st.ok()) return fail_all(st);
  }
  size_t next_token = 0;
  for (size_t i = 0; i < owners.size(); ++i) {
    if (!sampling(i)) continue;  // more prompt to go
    Request* r = owners[i];
    StepEvent ev;
    ev.request_id = r->id;
    if (on_device) {
      ev.token = device_tokens[next_token++];
      r->sampler.Record(ev.token);
      if (row_of[i] >= 0) {
        ev.logprob = ComputeLogprobs(raw.data() + static_cast<size_t>(row_of[i]) * vocab, vocab, ev.token,
                                     r->params.logprobs, &ev.top_logprobs);
      }
    } else {
      float* row = logits.data() + i * static_cast<size_t>(vocab);
      if (r->params.logprobs > 0) {
        raw.assign(row, row + vocab);  // Sample changes the row in place
        ev.token = r->sampler.Sample(row, vocab);
        ev.logprob = ComputeLogprobs(raw.data(), vocab, ev.token, r->params.logprobs, &ev.top_logprobs);
      } else {
        ev.token = r->sampler.Sample(row, vocab);
      }
    }
    r->tokens.push_back(ev.token);
    if (std::find(r->stops.begin(), r->stops.end(), ev.token) != r->stops.end()) {
      ev.finished = true;
      ev.finish_reason = FinishReason::kStop;
    } else if (r->generated() >= r->params.max_new_tokens) {
      ev.finished = true;
      ev.finish_reason = FinishReason::kLength;
    }
    if (!r->reported_queue) {
      ev.queue_seconds = r->queue_seconds;
      r->reported_queue = true;
    }
    r->on_event(ev);
    if (ev.finished) done.push_back(r->id);
  }
  last_step_.sampling_seconds = Since(sampling_start);
  for (int64_t id : done) {
    auto it = running_.find(id);
    Finish(it->second.get());
    running_.erase(it);
  }
  last_step_.total_seconds = Since(step_start);
  return absl::OkStatus();
}

}  // namespace moemesh
