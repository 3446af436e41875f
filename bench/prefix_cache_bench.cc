// Prefix caching on the CPU engine, each figure beside the same work with
// caching off, in the same run:
//  - a conversation's second turn: time to its first token when it starts
//    from the blocks its first turn cached, against computing it in full
//    (median of --repeats conversations, each with its own random tokens),
//    and when a new engine (a restarted router) serves it, its first turn's
//    blocks fetched from a kvcache service (in this process, behind a real
//    loopback gRPC server, on disk in a temporary folder), or from a host
//    memory tier (HostKvTier: blocks a GPU's cache gave up come back by a
//    host-to-device copy);
//  - many streams sharing a long system prompt: tokens per second of the
//    whole batch, and the share of prompt tokens the cache served.
// By default on the demo model (models/fortune-moe) with conversations that
// fill its 1,024-token context. With --device cuda the dense part and the
// experts run on the GPU (CudaForwardPass, CudaExpertDevice); at most two
// engines hold the model at once, so a large checkpoint (moemesh
// random-model) fits a GPU twice over.
//
//   build/bench/prefix_cache_bench [--model DIR] [--threads N] [--device cpu|cuda[:N]] [--conversation 1000]
//                                  [--repeats 5] [--streams 64] [--shared-prompt 900]
#include <algorithm>
#include <chrono>
#include <functional>
#include <cstdio>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include <filesystem>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "core/engine/engine.h"
#include "core/engine/scheduler.h"
#include "core/kv/host_kv_tier.h"
#include "services/common/device_flag.h"
#include "services/kvcache/local_kvcache.h"
#include "services/kvcache_client/kvcache_tier.h"

#ifdef MOEMESH_WITH_CUDA
#include "core/engine/cuda/cuda_forward_pass.h"
#include "core/experts/cuda/cuda_expert_device.h"
#include "core/kernels/cuda/cuda_runtime_util.h"
#endif

namespace moemesh {
namespace {

constexpr char kUsage[] =
    "usage: prefix_cache_bench [--model DIR] [--threads N] [--device cpu|cuda[:N]] [--conversation TOKENS]\n"
    "                          [--repeats N] [--streams N] [--shared-prompt TOKENS]\n";

using Clock = std::chrono::steady_clock;

struct Flags {
  std::string model = "models/fortune-moe";
  int gpu = -1;  // --device: -1 the CPU
  int threads = 1, conversation = 1000, repeats = 5, streams = 64, shared_prompt = 900;
};

constexpr int kFirstAnswer = 32;  // tokens the first turn generates
constexpr int kNewTurn = 48;      // tokens the second turn adds
constexpr int kStreamTail = 16;   // each stream's own prompt tokens after the shared ones
constexpr int kStreamAnswer = 16;

std::vector<int> RandomTokens(std::mt19937* rng, int n, int vocab) {
  std::vector<int> v(n);
  for (int& t : v) t = static_cast<int>((*rng)() % vocab);
  return v;
}

// An engine on the flags' device, the rest of its options from `o`.
absl::StatusOr<std::unique_ptr<Engine>> NewEngine(const Flags& f, EngineOptions o) {
  o.num_threads = f.threads;
  if (f.gpu >= 0) {
#ifdef MOEMESH_WITH_CUDA
    o.forward_pass = CudaForwardPass::Factory(f.gpu);
    o.expert_device = CudaExpertDevice::Factory(f.gpu);
#else
    return absl::InvalidArgumentError("--device cuda: this build has no CUDA (nvcc was not found)");
#endif
  }
  return Engine::Create(f.model, o);
}

GenerateParams Greedy(int max_new_tokens) {
  GenerateParams p;
  p.sampling.temperature = 0;
  p.max_new_tokens = max_new_tokens;
  p.ignore_eos = true;
  return p;
}

// Runs `sched` until idle; false on an error.
bool Drain(Scheduler* sched) {
  while (!sched->idle()) {
    if (!sched->Step().ok()) return false;
  }
  return true;
}

// Seconds to the second turn's first token, for conversation `seed`; -1 on
// an error. The first turn runs on `engine`, the second on `second` (a
// restarted router) when given; `before_second` runs between them.
double SecondTurnSeconds(Engine* engine, const Flags& f, unsigned seed, int64_t* hits, Engine* second = nullptr,
                         const std::function<void()>& before_second = nullptr) {
  std::unique_ptr<Scheduler> sched = engine->NewScheduler(8, 4096);
  std::mt19937 rng(seed);
  const int vocab = engine->config().vocab_size;
  std::vector<int> prompt = RandomTokens(&rng, f.conversation - kFirstAnswer - kNewTurn, vocab);
  std::vector<int> answer;
  if (!sched->Add(prompt, Greedy(kFirstAnswer), [&](const StepEvent& ev) { answer.push_back(ev.token); }).ok() ||
      !Drain(sched.get())) {
    return -1;
  }
  prompt.insert(prompt.end(), answer.begin(), answer.end());
  const std::vector<int> turn = RandomTokens(&rng, kNewTurn, vocab);
  prompt.insert(prompt.end(), turn.begin(), turn.end());
  if (before_second) before_second();
  if (second != nullptr) sched = second->NewScheduler(8, 4096);
  bool first = false;
  const auto start = Clock::now();
  if (!sched->Add(prompt, Greedy(1), [&](const StepEvent&) { first = true; }).ok()) return -1;
  while (!first) {
    if (!sched->Step().ok()) return -1;
    *hits += sched->last_step().prefix_hit_tokens;
  }
  return std::chrono::duration<double>(Clock::now() - start).count();
}

struct Batch {
  double tokens_per_second = 0;
  int64_t queried = 0, hits = 0;
};

// The streams with one shared prompt head, all submitted at once.
bool SharedPrompt(Engine* engine, const Flags& f, Batch* out) {
  std::unique_ptr<Scheduler> sched = engine->NewScheduler(f.streams, 4096);
  std::mt19937 rng(77);
  const int vocab = engine->config().vocab_size;
  const std::vector<int> shared = RandomTokens(&rng, f.shared_prompt, vocab);
  int64_t tokens = 0;
  const auto start = Clock::now();
  for (int s = 0; s < f.streams; ++s) {
    std::vector<int> prompt = shared;
    const std::vector<int> tail = RandomTokens(&rng, kStreamTail, vocab);
    prompt.insert(prompt.end(), tail.begin(), tail.end());
    if (!sched->Add(prompt, Greedy(kStreamAnswer), [&](const StepEvent&) { ++tokens; }).ok()) return false;
  }
  while (!sched->idle()) {
    if (!sched->Step().ok()) return false;
    out->queried += sched->last_step().prefix_query_tokens;
    out->hits += sched->last_step().prefix_hit_tokens;
  }
  out->tokens_per_second = static_cast<double>(tokens) / std::chrono::duration<double>(Clock::now() - start).count();
  return true;
}

int Main(int argc, char** argv) {
  Flags f;
  for (int i = 1; i < argc; ++i) {
    const std::string flag = argv[i];
    if (flag == "--help" || flag == "-h") {
      std::fputs(kUsage, stdout);
      return 0;
    }
    if (i + 1 >= argc) {
      std::fprintf(stderr, "prefix_cache_bench: %s needs a value\n%s", flag.c_str(), kUsage);
      return 2;
    }
    const std::string value = argv[++i];
    int* number = flag == "--threads"         ? &f.threads
                  : flag == "--conversation"  ? &f.conversation
                  : flag == "--repeats"       ? &f.repeats
                  : flag == "--streams"       ? &f.streams
                  : flag == "--shared-prompt" ? &f.shared_prompt
                                              : nullptr;
    if (flag == "--model") {
      f.model = value;
    } else if (flag == "--device") {
      absl::StatusOr<int> gpu = ParseDeviceFlag(value);
      if (!gpu.ok()) {
        std::fprintf(stderr, "prefix_cache_bench: --device: %s\n", std::string(gpu.status().message()).c_str());
        return 2;
      }
      f.gpu = *gpu;
    } else if (number == nullptr || !absl::SimpleAtoi(value, number) || *number < 1) {
      std::fprintf(stderr, "prefix_cache_bench: bad flag %s %s\n%s", flag.c_str(), value.c_str(), kUsage);
      return 2;
    }
  }
  if (f.conversation <= kFirstAnswer + kNewTurn + 1) {
    std::fprintf(stderr, "prefix_cache_bench: --conversation must exceed %d tokens\n", kFirstAnswer + kNewTurn + 1);
    return 2;
  }
  auto fail = [](const absl::Status& st) {
    std::fprintf(stderr, "prefix_cache_bench: %s\n", std::string(st.message()).c_str());
    return 1;
  };
  // Each way in turn, so that at most two engines (a first turn's and a
  // restarted router's) hold the model at once: a GPU holds a large
  // checkpoint twice, not six times.
  std::printf("model %s, %s\n\n", f.model.c_str(),
              f.gpu >= 0 ? absl::StrCat("GPU ", f.gpu).c_str() : absl::StrCat(f.threads, " thread(s)").c_str());
  std::vector<double> seconds[4];  // computed, cached, restarted, from host memory
  int64_t hits[4] = {0, 0, 0, 0};
  Batch batch[2];
  for (int on = 0; on < 2; ++on) {  // caching off, on: the second turns, then the shared prompt
    EngineOptions o;
    o.prefix_caching = on == 1;
    o.kv_cache_tokens = std::max(65536, f.streams * (f.shared_prompt + kStreamTail + kStreamAnswer) * 2);
    auto e = NewEngine(f, o);
    if (!e.ok()) return fail(e.status());
    for (int r = 0; r < f.repeats; ++r) {
      const double s = SecondTurnSeconds(e->get(), f, 1000 + r, &hits[on]);
      if (s < 0) return fail(absl::InternalError("a step failed"));
      seconds[on].push_back(s);
    }
    if (!SharedPrompt(e->get(), f, &batch[on])) return fail(absl::InternalError("a step failed"));
  }
  // A kvcache service, and two engines over it: the first turns run on one,
  // the second turns on the other; then two over one host-memory tier.
  const std::string kv_dir = (std::filesystem::temp_directory_path() / "prefix_cache_bench_kv").string();
  LocalKvCache kv(kv_dir);
  KvCacheTier::Options to;
  to.addresses = {kv.address()};
  std::shared_ptr<KvCacheTier> tier = std::move(*KvCacheTier::Create(to));
  std::shared_ptr<HostKvTier> host = std::make_shared<HostKvTier>(int64_t{4} << 30);
#ifdef MOEMESH_WITH_CUDA
  if (f.gpu >= 0) {  // page-locked, as a GPU router's (services/router/main.cc)
    auto pinned = HostKvTier::WithArena(int64_t{4} << 30, PinnedHostArena);
    if (!pinned.ok()) return fail(pinned.status());
    host = std::move(*pinned);
  }
#endif
  for (int way = 2; way < 4; ++way) {
    std::unique_ptr<Engine> pair[2];
    for (auto& engine : pair) {
      EngineOptions o;
      o.kv_tier = way == 2 ? std::shared_ptr<KvTier>(tier) : std::shared_ptr<KvTier>(host);
      auto e = NewEngine(f, o);
      if (!e.ok()) return fail(e.status());
      engine = std::move(*e);
    }
    for (int r = 0; r < f.repeats; ++r) {
      const double s = way == 2 ? SecondTurnSeconds(pair[0].get(), f, 1000 + r, &hits[way], pair[1].get(),
                                                    [&tier] { tier->Flush(); })
                                : SecondTurnSeconds(pair[0].get(), f, 1000 + r, &hits[way], pair[1].get());
      if (s < 0) return fail(absl::InternalError("a step failed"));
      seconds[way].push_back(s);
    }
  }
  auto median = [](std::vector<double> v) {
    std::sort(v.begin(), v.end());
    return v[v.size() / 2];
  };
  const double cached = median(seconds[1]), computed = median(seconds[0]), restarted = median(seconds[2]),
               from_host = median(seconds[3]);
  std::printf("second turn of a %d-token conversation (+%d new tokens), time to first token, median of %d\n",
              f.conversation, kNewTurn, f.repeats);
  std::printf("%12s %12s %10s %16s\n", "cached ms", "computed ms", "ratio", "cached tokens");
  std::printf("%12.2f %12.2f %9.3fx %16lld   (this router's cache)\n", cached * 1e3, computed * 1e3,
              cached / computed, static_cast<long long>(hits[1] / f.repeats));
  std::printf("%12.2f %12.2f %9.3fx %16lld   (a restarted router, blocks from the kvcache service)\n",
              restarted * 1e3, computed * 1e3, restarted / computed, static_cast<long long>(hits[2] / f.repeats));
  std::printf("%12.2f %12.2f %9.3fx %16lld   (another router's cache, blocks from host memory)\n\n",
              from_host * 1e3, computed * 1e3, from_host / computed, static_cast<long long>(hits[3] / f.repeats));
  std::printf("%d streams sharing a %d-token prompt (+%d own tokens, %d generated each)\n", f.streams, f.shared_prompt,
              kStreamTail, kStreamAnswer);
  std::printf("%14s %14s %10s %10s\n", "cached tok/s", "computed tok/s", "speed-up", "hit rate");
  std::printf("%14.1f %14.1f %9.2fx %9.1f%%\n", batch[1].tokens_per_second, batch[0].tokens_per_second,
              batch[1].tokens_per_second / batch[0].tokens_per_second,
              batch[1].queried > 0 ? 100.0 * batch[1].hits / batch[1].queried : 0.0);
  kv.Shutdown();
  std::filesystem::remove_all(kv_dir);
  return 0;
}

}  // namespace
}  // namespace moemesh

int main(int argc, char** argv) { return moemesh::Main(argc, argv); }
