#ifndef MOEMESH_CORE_ENGINE_ENGINE_H_
#define MOEMESH_CORE_ENGINE_ENGINE_H_

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "core/experts/expert_device.h"
#include "core/experts/expert_executor.h"
#include "core/engine/forward_pass.h"
#include "core/engine/request.h"
#include "core/engine/sampler.h"
#include "core/kv/block_hash.h"
#include "core/kv/fingerprint.h"
#include "core/model/config.h"
#include "core/quant/quantize.h"

namespace moemesh {

class ExpertExecutor;
class KvCache;
class KvTier;
class Scheduler;
class ForwardPass;
struct ModelWeights;
class ThreadPool;

struct EngineOptions {
  int num_threads = 1;
  int kv_cache_tokens = 65536;  // capacity of the paged KV cache
  int kv_block_size = 16;
  int prefill_chunk = 512;      // longest prefill piece per forward step
  bool prefix_caching = true;   // schedulers share cached prompt blocks (Scheduler)
  // Tiers below the cache (host memory, the kvcache service), with prefix
  // caching: blocks go there and come back from there (Scheduler).
  std::shared_ptr<KvTier> kv_tier;
  GatingExtensions gating;      // overrides config.json's (off by default)
  // 2: a step of several sequences runs as two micro-batches in ping-pong
  // where the experts are remote (CpuForwardPass); 1: one batch.
  int micro_batches = 1;
  // Where the dense part runs; null: the CPU (CpuForwardPass, on num_threads).
  ForwardPassFactory forward_pass;
  // Where the routed experts run when they run in this process; null: the
  // CPU, on the engine's threads. A GPU device on the forward pass's GPU
  // takes the rows in device memory (docs/ARCHITECTURE.md, "Expert compute").
  ExpertDeviceFactory expert_device;
  // Routed experts in this process quantized as they load (none: as
  // stored); the CPU's kernels take them (core/quant/quantize.h).
  QuantSpec quantize_experts;
  // The CPU multiplies BF16 weights by bf16-rounded inputs, as a GPU does
  // (WeightLoadOptions::bf16_inputs): AVX-512 BF16 where the CPU has it.
  bool bf16_inputs = false;

  absl::Status Validate() const;
};

struct GenerateResult {
  std::vector<int> tokens;  // new tokens only
  FinishReason finish_reason = FinishReason::kLength;
};

// The single-process engine: a model, its weights, a KV cache and a thread
// pool, with the experts run locally unless an ExpertExecutor is supplied.
// Calls are serialised by the caller (not thread-safe).
class Engine {
 public:
  // Loads config.json and the safetensors weights from `model_dir`. With
  // `experts` the routed experts run there (e.g. on remote expert workers)
  // and are not loaded here; otherwise they run in this process.
  static absl::StatusOr<std::unique_ptr<Engine>> Create(const std::string& model_dir,
                                                        const EngineOptions& options,
                                                        std::unique_ptr<ExpertExecutor> experts = nullptr);
  ~Engine();

  const ModelConfig& config() const;
  // The root of this engine's block hashes: the checkpoint's fingerprint and
  // the cache layout (core/kv/fingerprint.h).
  const BlockHash& cache_root() const { return cache_root_; }
  // The KV cache's size and type for a start-up line: "KV cache: 65536
  // tokens (4096 blocks of 16), bf16, 1.00 GiB", and where more than the
  // layout names its blocks (CacheLayout::extra), "; blocks named for ...".
  std::string DescribeCache() const;

  // Generates up to max_new_tokens after `prompt`. `on_token`, when set,
  // sees each new token as soon as it is sampled (for streaming).
  absl::StatusOr<GenerateResult> Generate(const std::vector<int>& prompt,
                                          const GenerateParams& params,
                                          const std::function<void(int)>& on_token = nullptr);
  // A continuous-batching scheduler over this engine's model, KV cache and
  // experts. While it is in use, only its owner may touch the engine.
  std::unique_ptr<Scheduler> NewScheduler(int max_running, int max_step_tokens);

  // Logits of every prompt position, [prompt.size(), vocab] row-major.
  absl::StatusOr<std::vector<float>> Score(const std::vector<int>& prompt);

 private:
  Engine();
  absl::Status CheckPrompt(const std::vector<int>& prompt) const;

  std::unique_ptr<ThreadPool> pool_;
  std::shared_ptr<const ModelWeights> weights_;
  std::unique_ptr<ForwardPass> model_;
  std::unique_ptr<KvCache> cache_;
  BlockHash cache_root_;
  CacheLayout cache_layout_;
  std::unique_ptr<ExpertExecutor> experts_;
  EngineOptions options_;
};

}  // namespace moemesh

#endif  // MOEMESH_CORE_ENGINE_ENGINE_H_
