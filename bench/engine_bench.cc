// Decode and prefill speed of the CPU engine, each beside its own ceiling on
// this machine: decode (memory-bound at batch 1) against the measured read
// bandwidth over the bytes a decoded token reads, prefill (compute-bound)
// against the measured FMA peak over the FLOPs a prompt takes. By default
// on a random-weight MoE of realistic proportions, written once under /tmp;
// --model runs any checkpoint instead.
//
//   build/bench/engine_bench [--threads 1,2] [--model DIR | --hidden 1024 --layers 8 --experts 8
//                             --top-k 2 --expert-width 1408] [--decode-tokens 64] [--prefill-tokens 256]
//
// Prints one table row per thread count.
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
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "bench/cpu_ceilings.h"
#include "core/common/file_util.h"
#include "core/experts/local_expert_executor.h"
#include "core/engine/kv_cache.h"
#include "core/engine/cpu_forward_pass.h"
#include "core/kernels/cpu/bf16_inputs.h"
#include "core/model/safetensors.h"
#include "core/model/weights.h"
#include "core/quant/quantize.h"
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

// Parameters a token multiplies by in the dense part (no LM head) and in
// one routed expert; FLOPs are twice these.
double Params(const Matrix& m) { return static_cast<double>(m.rows) * m.cols; }
double DenseParamsPerToken(const ModelWeights& w) {
  double p = 0;
  for (const LayerWeights& l : w.layers) {
    const AttentionWeights& a = l.attn;
    for (const Matrix* m : {&a.q, &a.k, &a.v, &a.o, &a.q_a, &a.q_b, &a.kv_a, &a.kv_b, &l.router,
                            &l.shared_expert_gate, &l.dense.gate, &l.dense.up, &l.dense.down,
                            &l.shared_expert.gate, &l.shared_expert.up, &l.shared_expert.down}) {
      if (!m->empty()) p += Params(*m);
    }
  }
  return p;
}

// The FLOPs of prefilling `n` tokens in one step: every token's products
// (its top-k experts in each MoE layer), causal attention's two products
// over on average (n + 1) / 2 keys, and the LM head for the last token.
double PrefillFlops(const ModelConfig& c, const ModelWeights& w, int n) {
  double expert = 0;
  int moe_layers = 0;
  for (int l = 0; l < c.num_layers; ++l) {
    if (!c.is_moe_layer[l]) continue;
    ++moe_layers;
    const FfnWeights* f = w.experts.Find(l, 0);
    if (f != nullptr) expert = Params(f->gate) + Params(f->up) + Params(f->down);
  }
  const double per_token = 2 * (DenseParamsPerToken(w) + moe_layers * c.num_experts_per_tok * expert);
  const int qk = c.mla ? c.kv_lora_rank + c.qk_rope_head_dim : c.head_dim;
  const int v = c.mla ? c.kv_lora_rank : c.head_dim;
  const double attention = 2.0 * c.num_heads * (qk + v) * c.num_layers * (n + 1) / 2.0;
  return n * (per_token + attention) + 2 * Params(w.lm_head);
}

constexpr char kUsage[] =
    "usage: engine_bench [--threads 1,2] [--model DIR | --hidden N --layers N --experts N --top-k N\n"
    "                    --expert-width N] [--decode-tokens 64] [--prefill-tokens 256] [--quantize SPEC]\n"
    "                    [--bf16-inputs]\n"
    "Decode tok/s beside the read-bandwidth bound, and prefill GFLOP/s beside the FMA peak, for each\n"
    "thread count. Without --model, a random-weight Mixtral-style model (hidden 1024, 8 layers, 8 experts\n"
    "of width 1408, top 2) is written once to /tmp/moemesh_bench_model. --quantize int8, int4[:G[:asym]]\n"
    "quantizes the routed experts as they load; the bound then counts their quantized bytes. --bf16-inputs\n"
    "multiplies BF16 weights by bf16-rounded inputs (AVX-512 BF16 where the CPU has it); the FMA peak\n"
    "stays fp32's, so prefill can pass 100% of it.\n";

int Main(int argc, char** argv) {
  Shape s;
  int decode_tokens = 64, prefill_tokens = 256;
  std::vector<int> thread_counts;
  std::string model_dir;
  QuantSpec quantize;
  bool bf16_inputs = false;
  bool shape_flags = false;
  for (int i = 1; i < argc; ++i) {
    const std::string f = argv[i];
    if (f == "--help" || f == "-h") {
      std::fputs(kUsage, stdout);
      return 0;
    }
    if (f == "--bf16-inputs") {  // takes no value
      bf16_inputs = true;
      continue;
    }
    if (i + 1 >= argc) {
      std::fprintf(stderr, "engine_bench: %s needs a value\n%s", f.c_str(), kUsage);
      return 2;
    }
    const std::string value = argv[++i];
    if (f == "--model") {
      model_dir = value;
      continue;
    }
    if (f == "--quantize") {
      absl::StatusOr<QuantSpec> q = ParseQuantSpec(value);
      if (!q.ok()) {
        std::fprintf(stderr, "engine_bench: --quantize: %s\n", std::string(q.status().message()).c_str());
        return 2;
      }
      quantize = *q;
      continue;
    }
    if (f == "--threads") {
      if (!ParseThreadCounts(value, &thread_counts)) {
        std::fprintf(stderr, "engine_bench: --threads takes counts of 1 or more, such as 1,2\n");
        return 2;
      }
      continue;
    }
    int v = 0;
    if (!absl::SimpleAtoi(value, &v) || v < 1) {
      std::fprintf(stderr, "engine_bench: %s takes a positive number, not \"%s\"\n", f.c_str(), value.c_str());
      return 2;
    }
    if (f == "--decode-tokens") {
      decode_tokens = v;
    } else if (f == "--prefill-tokens") {
      prefill_tokens = v;
    } else {
      shape_flags = true;
      if (f == "--hidden") s.hidden = v;
      else if (f == "--layers") s.layers = v;
      else if (f == "--experts") s.experts = v;
      else if (f == "--top-k") s.top_k = v;
      else if (f == "--expert-width") s.expert_width = v;
      else {
        std::fprintf(stderr, "engine_bench: unknown flag %s\n%s", f.c_str(), kUsage);
        return 2;
      }
    }
  }
  if (!model_dir.empty() && shape_flags) {
    std::fprintf(stderr, "engine_bench: --model runs that checkpoint: the shape flags do not apply\n");
    return 2;
  }
  if (thread_counts.empty()) thread_counts = DefaultThreadCounts();
  const std::string dir = model_dir.empty() ? WriteRandomModel(s) : model_dir;
  auto config = LoadModelConfig(dir);
  auto ckpt = config.ok() ? Checkpoint::Open(dir) : config.status();
  if (!ckpt.ok()) {
    std::fprintf(stderr, "engine_bench: %s\n", std::string(ckpt.status().message()).c_str());
    return 1;
  }
  WeightLoadOptions load;
  load.quantize_experts = quantize;
  load.bf16_inputs = bf16_inputs;
  auto mw = LoadWeights(std::move(*ckpt), *config, load);
  if (!mw.ok()) {
    std::fprintf(stderr, "%s\n", std::string(mw.status().message()).c_str());
    return 1;
  }
  auto weights = std::make_shared<const ModelWeights>(std::move(*mw));
  double dense_bytes = DenseBytesPerToken(*weights);
  double total_bytes = weights->embed.nbytes() + dense_bytes;
  for (int l = 0; l < config->num_layers; ++l) {
    for (int e = 0; e < config->num_experts; ++e) {
      const FfnWeights* w = weights->experts.Find(l, e);
      if (w != nullptr) total_bytes += w->gate.nbytes() + w->up.nbytes() + w->down.nbytes();
    }
  }
  std::printf("model: %s (%s), hidden %d, %d layers, %d experts (width %d), top-%d, vocab %d, weights %.0f MB "
              "(experts: %s)\n",
              dir.c_str(), std::string(ArchitectureName(config->arch)).c_str(), config->hidden_size,
              config->num_layers, config->num_experts, config->ExpertWidth(), config->num_experts_per_tok,
              config->vocab_size, total_bytes / 1e6,
              quantize.kind == QuantKind::kNone ? "as stored" : QuantSpecName(quantize).c_str());
  if (bf16_inputs) {
    std::printf("bf16 inputs: %s\n", HasAvx512Bf16() ? "AVX-512 BF16 (vdpbf16ps)" : "rounded, then the fp32 kernels");
  }
  const double prefill_flops = PrefillFlops(*config, *weights, prefill_tokens);
  std::printf("%-8s %9s %11s %12s %11s %7s %13s %12s %10s %9s\n", "threads", "bw GB/s", "MB/token",
              "decode tok/s", "bound tok/s", "ratio", "prefill tok/s", "prefill GF/s", "peak GF/s", "of peak");
  const char* isa = "";
  for (int threads : thread_counts) {
    double bw = MeasureReadBandwidth(threads);
    const FmaPeak peak = MeasureFmaPeak(threads);
    isa = peak.isa;
    ThreadPool pool(threads);
    auto model = CpuForwardPass::Create(*config, weights, &pool);
    if (!model.ok()) return 1;
    KvCache cache(config->num_layers, (*model)->kv_k_width(), (*model)->kv_v_width(), 16,
                  (prefill_tokens + decode_tokens + 64) / 16 + 2);
    LocalExpertExecutor local(&weights->experts, &pool);
    CountingExecutor counting(&local, &weights->experts);
    std::mt19937 rng(threads);
    std::vector<int> prompt(prefill_tokens);
    for (int& t : prompt) t = static_cast<int>(rng() % config->vocab_size);

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
    const double prefill_gflops = prefill_flops / prefill_best / 1e9;
    std::printf("%-8d %9.2f %11.1f %12.2f %11.2f %7.2f %13.1f %12.1f %10.1f %8.0f%%\n", threads, bw / 1e9,
                bytes_per_token / 1e6, decode_tps, bound_tps, decode_tps / bound_tps, prefill_tokens / prefill_best,
                prefill_gflops, peak.flops / 1e9, 100 * prefill_gflops * 1e9 / peak.flops);
    std::fflush(stdout);
  }
  std::printf("FMA peak measured with %s; prefill of %d tokens is %.1f GFLOP\n",
              isa, prefill_tokens, prefill_flops / 1e9);
  return 0;
}

}  // namespace
}  // namespace moemesh

int main(int argc, char** argv) { return moemesh::Main(argc, argv); }
