// Decode and prefill speed of the CPU engine on a random-weight MoE of
// realistic proportions, next to the bound set by this machine's measured
// memory bandwidth for the bytes a decoded token must read.
//
//   build/bench/engine_bench [--hidden 1024 --layers 8 --experts 8 --top-k 2]
//
// Prints one table row per thread count: decode tok/s, the bandwidth bound
// in tok/s, their ratio, and prefill tok/s.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <random>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "core/common/file_util.h"
#include "core/experts/local_expert_executor.h"
#include "core/engine/kv_cache.h"
#include "core/engine/cpu_forward_pass.h"
#include "core/model/safetensors.h"
#include "core/model/weights.h"
#include "core/tensor/thread_pool.h"
#include "nlohmann/json.hpp"

namespace moemesh {
namespace {

struct Shape {
  int hidden = 1024, layers = 8, heads = 16, kv_heads = 4, experts = 8, top_k = 2,
      expert_width = 1408, vocab = 32000;
};

double Now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// Writes config.json and a bf16 model.safetensors with N(0, 1/fan_in) weights.
std::string WriteRandomModel(const Shape& s) {
  std::string dir = "/tmp/moemesh_bench_model";
  std::system(("mkdir -p " + dir).c_str());
  nlohmann::json cfg = {{"model_type", "mixtral"},
                        {"vocab_size", s.vocab},
                        {"hidden_size", s.hidden},
                        {"intermediate_size", s.expert_width},
                        {"num_hidden_layers", s.layers},
                        {"num_attention_heads", s.heads},
                        {"num_key_value_heads", s.kv_heads},
                        {"num_local_experts", s.experts},
                        {"num_experts_per_tok", s.top_k},
                        {"max_position_embeddings", 4096},
                        {"rms_norm_eps", 1e-5},
                        {"tie_word_embeddings", false}};
  std::string cfg_text = cfg.dump(1);
  auto old = ReadFile(dir + "/config.json");
  if (old.ok() && *old == cfg_text && SafetensorsFile::Open(dir + "/model.safetensors").ok()) {
    return dir;  // reuse the previous run's file
  }
  std::mt19937 rng(1);
  std::normal_distribution<float> nd(0, 1);
  std::vector<TensorToWrite> ts;
  auto add = [&](const std::string& name, std::vector<int64_t> shape, float scale, bool ones = false) {
    size_t n = 1;
    for (int64_t d : shape) n *= d;
    std::string bytes(n * 2, '\0');
    uint16_t* p = reinterpret_cast<uint16_t*>(bytes.data());
    for (size_t i = 0; i < n; ++i) p[i] = F32ToBf16(ones ? 1.0f : nd(rng) * scale);
    ts.push_back({name, DType::kBF16, std::move(shape), std::move(bytes)});
  };
  int h = s.hidden, hd = h / s.heads;
  add("model.embed_tokens.weight", {s.vocab, h}, 1.0f);
  add("lm_head.weight", {s.vocab, h}, 1.0f / std::sqrt(h));
  add("model.norm.weight", {h}, 0, true);
  for (int l = 0; l < s.layers; ++l) {
    std::string p = absl::StrCat("model.layers.", l, ".");
    add(p + "input_layernorm.weight", {h}, 0, true);
    add(p + "post_attention_layernorm.weight", {h}, 0, true);
    add(p + "self_attn.q_proj.weight", {s.heads * hd, h}, 1.0f / std::sqrt(h));
    add(p + "self_attn.k_proj.weight", {s.kv_heads * hd, h}, 1.0f / std::sqrt(h));
    add(p + "self_attn.v_proj.weight", {s.kv_heads * hd, h}, 1.0f / std::sqrt(h));
    add(p + "self_attn.o_proj.weight", {h, s.heads * hd}, 1.0f / std::sqrt(h));
    add(p + "block_sparse_moe.gate.weight", {s.experts, h}, 1.0f / std::sqrt(h));
    for (int e = 0; e < s.experts; ++e) {
      std::string q = absl::StrCat(p, "block_sparse_moe.experts.", e, ".");
      add(q + "w1.weight", {s.expert_width, h}, 1.0f / std::sqrt(h));
      add(q + "w3.weight", {s.expert_width, h}, 1.0f / std::sqrt(h));
      add(q + "w2.weight", {h, s.expert_width}, 1.0f / std::sqrt(s.expert_width));
    }
  }
  if (!WriteSafetensors(dir + "/model.safetensors", ts).ok() ||
      !WriteFileAtomically(dir + "/config.json", cfg_text).ok()) {
    std::fprintf(stderr, "cannot write the bench model to %s\n", dir.c_str());
    std::exit(1);
  }
  return dir;
}

// Best-of-5 read bandwidth in bytes/s over a buffer far larger than the
// caches, with `threads` threads each summing its share.
double MeasureReadBandwidth(int threads) {
  const size_t n = size_t{1} << 28;  // 1 GiB of floats
  std::unique_ptr<float[]> buf(new float[n]);
  for (size_t i = 0; i < n; i += 1024) buf[i] = 1.0f;
  std::memset(buf.get(), 0, n * sizeof(float));
  ThreadPool pool(threads);
  double best = 0;
  std::vector<double> sink(threads * 16);
  for (int rep = 0; rep < 5; ++rep) {
    double t0 = Now();
    pool.ParallelFor(threads, 1, [&](int64_t b, int64_t e) {
      for (int64_t t = b; t < e; ++t) {
        size_t lo = n / threads * t, hi = n / threads * (t + 1);
        float a0 = 0, a1 = 0, a2 = 0, a3 = 0, a4 = 0, a5 = 0, a6 = 0, a7 = 0;
        for (size_t i = lo; i < hi; i += 8) {
          a0 += buf[i]; a1 += buf[i + 1]; a2 += buf[i + 2]; a3 += buf[i + 3];
          a4 += buf[i + 4]; a5 += buf[i + 5]; a6 += buf[i + 6]; a7 += buf[i + 7];
        }
        sink[t * 16] = a0 + a1 + a2 + a3 + a4 + a5 + a6 + a7;
      }
    });
    double dt = Now() - t0;
    best = std::max(best, n * sizeof(float) / dt);
  }
  return best;
}

// Counts the distinct experts each step reads, to know its weight bytes.
class CountingExecutor : public ExpertExecutor {
 public:
  CountingExecutor(ExpertExecutor* inner, const ExpertWeightsTable* table)
      : inner_(inner), table_(table) {}
  absl::Status Execute(const ExpertBatch& b, float* out) override {
    std::set<int> used;
    for (int i = 0; i < b.num_tokens * b.slots; ++i) {
      if (b.expert_ids[i] >= 0) used.insert(b.expert_ids[i]);
    }
    for (int e : used) {
      const FfnWeights* w = table_->Find(b.layer, e);
      bytes += w->gate.nbytes() + w->up.nbytes() + w->down.nbytes();
    }
    return inner_->Execute(b, out);
  }
  double bytes = 0;

 private:
  ExpertExecutor* inner_;
  const ExpertWeightsTable* table_;
};

double DenseBytesPerToken(const ModelWeights& w) {
  double b = w.lm_head.nbytes();
  for (const LayerWeights& l : w.layers) {
    const AttentionWeights& a = l.attn;
    b += a.q.nbytes() + a.k.nbytes() + a.v.nbytes() + a.o.nbytes() + l.router.nbytes();
    b += l.dense.gate.nbytes() + l.dense.up.nbytes() + l.dense.down.nbytes();
    b += l.shared_expert.gate.nbytes() + l.shared_expert.up.nbytes() + l.shared_expert.down.nbytes();
  }
  return b;
}

int Main(int argc, char** argv) {
  Shape s;
  int decode_tokens = 64, prefill_tokens = 256;
  for (int i = 1; i + 1 < argc; i += 2) {
    std::string f = argv[i];
    int v = std::atoi(argv[i + 1]);
    if (f == "--hidden") s.hidden = v;
    else if (f == "--layers") s.layers = v;
    else if (f == "--experts") s.experts = v;
    else if (f == "--top-k") s.top_k = v;
    else if (f == "--expert-width") s.expert_width = v;
    else if (f == "--decode-tokens") decode_tokens = v;
    else if (f == "--prefill-tokens") prefill_tokens = v;
    else {
      std::fprintf(stderr, "unknown flag %s\n", f.c_str());
      return 2;
    }
  }
  std::string dir = WriteRandomModel(s);
  auto config = LoadModelConfig(dir);
  auto ckpt = Checkpoint::Open(dir);
  if (!config.ok() || !ckpt.ok()) {
    std::fprintf(stderr, "cannot load bench model\n");
    return 1;
  }
  auto mw = LoadWeights(std::move(*ckpt), *config);
  if (!mw.ok()) {
    std::fprintf(stderr, "%s\n", std::string(mw.status().message()).c_str());
    return 1;
  }
  auto weights = std::make_shared<const ModelWeights>(std::move(*mw));
  double dense_bytes = DenseBytesPerToken(*weights);
  double total_bytes = weights->embed.nbytes() + dense_bytes;
  for (int l = 0; l < s.layers; ++l) {
    for (int e = 0; e < s.experts; ++e) {
      const FfnWeights* w = weights->experts.Find(l, e);
      total_bytes += w->gate.nbytes() + w->up.nbytes() + w->down.nbytes();
    }
  }
  std::printf("model: mixtral-style, hidden %d, %d layers, %d experts (width %d), top-%d, vocab %d, "
              "bf16 weights %.0f MB\n",
              s.hidden, s.layers, s.experts, s.expert_width, s.top_k, s.vocab, total_bytes / 1e6);
  std::printf("%-8s %12s %14s %14s %12s %8s %14s\n", "threads", "bw GB/s", "bytes/token MB",
              "decode tok/s", "bound tok/s", "ratio", "prefill tok/s");
  int max_threads = std::max(1u, std::thread::hardware_concurrency());
  for (int threads = 1; threads <= std::min(2, max_threads); ++threads) {
    double bw = MeasureReadBandwidth(threads);
    ThreadPool pool(threads);
    auto model = CpuForwardPass::Create(*config, weights, &pool);
    if (!model.ok()) return 1;
    KvCache cache(s.layers, (*model)->kv_k_width(), (*model)->kv_v_width(), 16,
                  (prefill_tokens + decode_tokens + 64) / 16 + 2);
    LocalExpertExecutor local(&weights->experts, &pool);
    CountingExecutor counting(&local, &weights->experts);
    std::mt19937 rng(threads);
    std::vector<int> prompt(prefill_tokens);
    for (int& t : prompt) t = static_cast<int>(rng() % s.vocab);

    // Prefill: the whole prompt in one step, best of 2.
    double prefill_best = 1e30;
    for (int rep = 0; rep < 2; ++rep) {
      KvSequence seq;
      std::vector<float> logits;
      ForwardItem item{&seq, prompt, false};
      double t0 = Now();
      if (!(*model)->Forward({&item, 1}, &cache, &local, &logits).ok()) return 1;
      prefill_best = std::min(prefill_best, Now() - t0);
      cache.Release(&seq);
    }
    // Decode: 16-token prompt, then greedy steps one token at a time.
    KvSequence seq;
    std::vector<float> logits;
    ForwardItem pre{&seq, absl::MakeConstSpan(prompt).subspan(0, 16), false};
    if (!(*model)->Forward({&pre, 1}, &cache, &local, &logits).ok()) return 1;
    counting.bytes = 0;
    double t0 = Now();
    for (int i = 0; i < decode_tokens; ++i) {
      int next = static_cast<int>(std::max_element(logits.begin(), logits.end()) - logits.begin());
      logits.clear();
      ForwardItem step{&seq, absl::MakeConstSpan(&next, 1), false};
      if (!(*model)->Forward({&step, 1}, &cache, &counting, &logits).ok()) return 1;
    }
    double dt = Now() - t0;
    cache.Release(&seq);
    double bytes_per_token = dense_bytes + counting.bytes / decode_tokens;
    double decode_tps = decode_tokens / dt;
    double bound_tps = bw / bytes_per_token;
    std::printf("%-8d %12.2f %14.1f %14.2f %12.2f %8.2f %14.1f\n", threads, bw / 1e9,
                bytes_per_token / 1e6, decode_tps, bound_tps, decode_tps / bound_tps,
                prefill_tokens / prefill_best);
  }
  return 0;
}

}  // namespace
}  // namespace moemesh

int main(int argc, char** argv) { return moemesh::Main(argc, argv); }
