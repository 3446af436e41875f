#ifndef MOEMESH_CORE_ENGINE_FORWARD_PASS_H_
#define MOEMESH_CORE_ENGINE_FORWARD_PASS_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <vector>

#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"
#include "core/engine/sampler.h"
#include "core/kv/kv_dtype.h"
#include "core/model/config.h"

namespace moemesh {

class ExpertExecutor;
class KvCache;
struct KvSequence;
struct ModelWeights;

// New tokens of one sequence in a forward step: a prefill chunk or one
// decode token. Their keys are appended to `seq` in `cache`.
struct ForwardItem {
  KvSequence* seq = nullptr;
  absl::Span<const int> tokens;
  bool all_logits = false;  // logits of every token, else of the last only
};

// One row of the last step's logits, to sample where the pass keeps them.
// The scheduler fills it from the row's Sampler and records the token.
struct DeviceSampleRow {
  int row = 0;  // as Forward would have appended the rows
  SamplingParams params;
  std::vector<std::pair<int, int>> penalty_tokens;  // Sampler::PenaltyTokens
  double uniform = 0;                               // Sampler::Draw
  bool want_logits = false;  // also return the raw row (for logprobs)
};

// The dense part of a MoE decoder's forward pass (embeddings, attention over
// the paged KV cache, gating, LM head), with the routed experts through an
// ExpertExecutor: on the CPU (CpuForwardPass) or on a GPU (CudaForwardPass). The
// scheduler sees only this. Not thread-safe.
class ForwardPass {
 public:
  virtual ~ForwardPass() = default;

  virtual const ModelConfig& config() const = 0;
  // Floats per position per layer in the KV cache (keys, then values), as
  // the decoder writes them (core/engine/decoder.h).
  int kv_k_width() const;
  int kv_v_width() const;
  // What the cache stores: fp32 here; a GPU pass may store bf16 or FP8.
  virtual KvDType kv_dtype() const { return KvDType::kF32; }
  // What moves the values this pass computes from the CPU's exact f32
  // products ("gpu": bf16 products), or empty; the engine names its KV
  // blocks by it (CacheLayout::extra), whatever the cache stores.
  virtual std::string ResultsTag() const { return ""; }

  // Runs one step. Appends rows to `logits` ([rows, vocab]): one per item,
  // or one per token for items with all_logits. On error nothing is
  // appended and the sequences' lengths are unchanged (their reserved
  // blocks stay reserved).
  virtual absl::Status Forward(absl::Span<const ForwardItem> items, KvCache* cache, ExpertExecutor* experts,
                               std::vector<float>* logits) = 0;

  // A pass whose logits live on a device may sample there, so that only
  // token ids come back: Forward with `logits` null keeps the step's
  // logits, and SampleLast picks a token for each row (as Sampler::Sample
  // does given the same draw; penalised logits change in place), and
  // appends the raw logits of the rows that want them to `raw_logits`, in
  // order. Others return false and FAILED_PRECONDITION.
  virtual bool samples_on_device() const { return false; }
  virtual absl::Status SampleLast(absl::Span<const DeviceSampleRow> rows, std::vector<int>* tokens,
                                  std::vector<float>* raw_logits);

  // Adds the tokens the last step routed to each expert, [layer *
  // num_experts + expert], for the layers whose routing the executor got
  // on the device (ExpertBatch::routing_on_device: nothing on the host saw
  // it). Others add nothing.
  virtual void AddRoutedCounts(std::vector<int64_t>* routed) const {}

  // Cache blocks' rows, every layer, as the KV tiers keep them, a block
  // [layers][block_size][k_width + v_width] elements of kv_dtype(): out[i]
  // (resized) of blocks[i], and bytes[i] into blocks[i]. This pass reads
  // them from (and writes them to) `cache`'s memory; a pass that keeps the
  // cache's contents elsewhere (the GPU's) overrides both, waiting for the
  // copies once for many blocks (the GPU's: per 64 MiB staged). Write checks
  // the sizes first: INVALID_ARGUMENT for bytes of another layout, nothing
  // written.
  virtual absl::Status ReadKvBlocks(const KvCache& cache, absl::Span<const int> blocks, std::vector<std::string>* out);
  virtual absl::Status WriteKvBlocks(KvCache* cache, absl::Span<const int> blocks,
                                     absl::Span<const absl::string_view> bytes);
};

// INVALID_ARGUMENT for an item without tokens or a token outside the
// vocabulary: the checks every ForwardPass makes before a step.
absl::Status CheckForwardItems(absl::Span<const ForwardItem> items, int vocab_size);
// INVALID_ARGUMENT unless there are as many `bytes` as `blocks`, each of
// `block_bytes`: what WriteKvBlocks checks first.
absl::Status CheckKvBlockSizes(absl::Span<const int> blocks, absl::Span<const absl::string_view> bytes,
                               size_t block_bytes);

// Makes the forward pass for a model; `weights` hold its dense part. The
// cache's block size and block count come with it, for passes that keep
// the cache's contents in memory of their own (the GPU's).
using ForwardPassFactory = std::function<absl::StatusOr<std::unique_ptr<ForwardPass>>(
    const ModelConfig& config, std::shared_ptr<const ModelWeights> weights, int kv_block_size, int kv_blocks)>;

}  // namespace moemesh

#endif  // MOEMESH_CORE_ENGINE_FORWARD_PASS_H_
