#ifndef MOEMESH_CORE_ENGINE_CUDA_CUDA_FORWARD_PASS_H_
#define MOEMESH_CORE_ENGINE_CUDA_CUDA_FORWARD_PASS_H_

#include <map>
#include <memory>
#include <tuple>
#include <vector>

#include "core/engine/decoder.h"
#include "core/engine/forward_pass.h"
#include "core/experts/expert_executor.h"
#include "core/kernels/cpu/rope.h"
#include "core/kernels/cuda/cuda_runtime_util.h"
#include "core/kv/kv_dtype.h"

namespace moemesh {

class CudaExpertFfn;
class CudaGemm;
class CudaPagedAttention;
class CudaSampler;
struct PagedRows;

// The dense part of the forward pass on a GPU: the same steps as CpuForwardPass
// (core/engine/cpu_forward_pass.h), with the weights uploaded once and the KV cache's
// contents in device memory. The host KvCache still hands out the blocks;
// block b of layer l lives at a fixed place in one device pool.
//
// Numerics: weights of the projections, the shared experts and the LM head
// are bf16 on the device, and activations are rounded to bf16 on their way
// into each product (fp32 accumulation, fp32 out), as in vLLM. Norms,
// rotary embedding, gating, and the expert gates' products stay fp32, as on
// the CPU; so does decode attention, while steps with prompt chunks and
// latent attention multiply in TF32 on tensor cores (CudaPagedAttention).
// The routed experts go through the ExpertExecutor: in place when its
// experts are on this GPU (LocalExpertExecutor over a CudaExpertDevice),
// else with the rows copied to the host and back through pinned memory
// while the GPU computes the shared expert.
class CudaForwardPass : public ForwardPass, private DecoderOps {
 public:
  struct Options {
    // Steps of up to this many tokens whose experts are on this GPU and
    // can group rows there (ExpertExecutor::groups_on_device) keep the
    // routing on the device too: no layer waits on the host. Larger steps
    // group on the host, where the expert layer picks its GEMMs by group
    // size (bench/gpu_decode_bench compares the two); but experts in
    // another process (not capturable: cuda-ipc) group on the GPU at any
    // size up to kMaxDeviceGroupedRoutes routes.
    int device_grouping_max_tokens = 32;
    // Decode steps of up to graph_max_tokens tokens whose layers need
    // nothing from the host (experts grouped on this GPU, or none) run as
    // CUDA graphs: captured the second time a step of that shape comes
    // (its token count, page-table width and longest position, the last
    // two rounded up to powers of two), replayed after, as one launch.
    // The router's --enforce-eager turns them off.
    bool cuda_graphs = true;
    int graph_max_tokens = 32;
    // What the KV cache stores (the router's --kv-cache-dtype): bf16 by
    // default, half fp32's bytes and twice its tokens in the same memory;
    // fp32 as the CPU; or FP8 e4m3 (scale 1, as vLLM without calibrated
    // scales: keys and values past +-448 saturate).
    KvDType kv_dtype = KvDType::kBf16;
  };
  // What the graphs did, for tests and benchmarks.
  struct GraphStats {
    int captured = 0;  // graphs made
    int replayed = 0;  // steps run as a graph
    int failed = 0;    // captures that failed (the step then ran as usual)
    int stale = 0;     // graphs dropped at launch: their experts' connections had changed
  };
  // FAILED_PRECONDITION without GPU `device`; RESOURCE_EXHAUSTED when the
  // weights or the cache do not fit.
  static absl::StatusOr<std::unique_ptr<ForwardPass>> Create(const ModelConfig& config,
                                                             std::shared_ptr<const ModelWeights> weights,
                                                             int kv_block_size, int kv_blocks, int device,
                                                             const Options& options);
  static absl::StatusOr<std::unique_ptr<ForwardPass>> Create(const ModelConfig& config,
                                                             std::shared_ptr<const ModelWeights> weights,
                                                             int kv_block_size, int kv_blocks, int device) {
    return Create(config, std::move(weights), kv_block_size, kv_blocks, device, Options());
  }
  // For EngineOptions::forward_pass.
  static ForwardPassFactory Factory(int device, const Options& options);
  static ForwardPassFactory Factory(int device) { return Factory(device, Options()); }
  ~CudaForwardPass() override;

  const ModelConfig& config() const override { return config_; }
  absl::Status Forward(absl::Span<const ForwardItem> items, KvCache* cache, ExpertExecutor* experts,
                       std::vector<float>* logits) override;
  // On the GPU (CudaSampler): only token ids, and the raw rows logprobs
  // need, come back to the host.
  bool samples_on_device() const override { return true; }
  std::string ResultsTag() const override { return "gpu"; }
  const GraphStats& graph_stats() const { return graph_stats_; }
  KvDType kv_dtype() const override { return options_.kv_dtype; }
  void AddRoutedCounts(std::vector<int64_t>* routed) const override;
  // The cache's rows live in device memory (kv_pool_, layer-major).
  absl::Status ReadKvBlocks(const KvCache& cache, absl::Span<const int> blocks,
                            std::vector<std::string>* out) override;
  absl::Status WriteKvBlocks(KvCache* cache, absl::Span<const int> blocks,
                             absl::Span<const absl::string_view> bytes) override;
  absl::Status SampleLast(absl::Span<const DeviceSampleRow> rows, std::vector<int>* tokens,
                          std::vector<float>* raw_logits) override;

 private:
  struct Layer;
  struct Step;
  CudaForwardPass(const ModelConfig& config, std::shared_ptr<const ModelWeights> weights);
  absl::Status Upload(int kv_block_size, int kv_blocks);
  // Block `block` of `layer` in kv_pool_, and the bytes of one layer's rows of a block.
  char* KvBlock(int layer, int block) const;
  size_t KvLayerBytes() const;
  // The step's tables on the device; with `graph_layout`, sized as a
  // captured step expects (Options::cuda_graphs).
  absl::StatusOr<Step> Prepare(absl::Span<const ForwardItem> items, KvCache* cache, bool graph_layout);
  // Embedding to logits of the step in step_, on stream_; returns the
  // logits (device scratch).
  absl::StatusOr<float*> RunStep(ExpertExecutor* experts);
  bool GraphEligible(absl::Span<const ForwardItem> items, ExpertExecutor* experts) const;
  // RunStep as a CUDA graph where one is (or can now be) captured, else as
  // usual; says whether the work went to graph_stream_.
  absl::StatusOr<float*> RunGraphed(ExpertExecutor* experts, bool* on_graph_stream);
  // The step's query rows over `layer`'s pages; the caller sets the row geometry.
  PagedRows StepRows(int layer) const;

  // DecoderOps, on the step in flight (step_).
  absl::StatusOr<float*> Scratch(int slot, size_t count) override;
  absl::Status Linear(int layer, LayerLinear which, const float* x, int n, float* out) override;
  absl::Status LinearQkv(int layer, const float* x, int n, float* q, float* k, float* v) override;
  absl::Status RmsNorm(int layer, LayerNorm which, const float* x, int rows, int width, int stride, float eps,
                       float* out) override;
  absl::Status AddRmsNorm(int layer, LayerNorm which, float* hidden, const float* delta, int rows, int width,
                          float eps, float* out) override;
  absl::Status Clamp(float* x, size_t count, float limit) override;
  absl::Status Sigmoid(float* x, size_t count) override;
  absl::Status Add(float* y, const float* x, size_t count) override;
  absl::Status Rotate(float* x, int heads, int token_stride, int head_stride) override;
  absl::Status NormRotateCache(int layer, const QkHeads& heads, int n, float* q, float* k, float* v) override;
  absl::Status WriteCache(int layer, const float* k, const float* v) override;
  absl::Status Attend(int layer, const AttentionShape& shape, const float* q, float* out) override;
  absl::Status AbsorbQuery(int layer, const float* q, float* qabs) override;
  absl::Status ExpandLatent(int layer, const float* lat, float* ctx) override;
  absl::Status Ffn(int layer, LayerFfn which, const float* x, const float* row_weight, float* out) override;
  absl::Status StartExperts(int layer, const float* x, const float* logits, ExpertExecutor* experts,
                            float* out) override;
  absl::Status FinishExperts(int layer, float* out) override;

  const DeviceBuffer* NormWeight(int layer, LayerNorm which) const;
  // Device memory by slot that grows as needed (contents are lost when it
  // grows): per-step tables (Staging); Scratch above is the same.
  absl::StatusOr<void*> Staging(int slot, size_t bytes);
  // Pinned host memory by slot, likewise.
  absl::StatusOr<void*> Pinned(int slot, size_t bytes);

  ModelConfig config_;
  std::shared_ptr<const ModelWeights> weights_;
  Rope rope_;
  int device_ = 0;
  Options options_;
  int block_size_ = 0, num_blocks_ = 0;
  size_t kv_block_bytes_ = 0;  // one layer's block in kv_pool_, rounded up to 16 bytes
  std::unique_ptr<DeviceBuffer> kv_pool_;
  std::vector<Layer> layers_;
  std::unique_ptr<DeviceBuffer> embed_, lm_head_, final_norm_;
  std::unique_ptr<CudaGemm> gemm_;
  std::unique_ptr<CudaPagedAttention> attention_;
  std::unique_ptr<CudaSampler> sampler_;
  float* last_logits_ = nullptr;  // the last step's, on the device (scratch)
  int last_rows_ = 0;
  std::map<int, std::unique_ptr<CudaExpertFfn>> ffns_;  // by FFN width
  std::map<int, std::unique_ptr<DeviceBuffer>> buffers_;  // Staging's; Scratch's from slot 1000
  std::map<int, std::unique_ptr<PinnedBuffer>> pinned_;
  std::unique_ptr<CudaEvent> copied_;  // the rows for the expert workers are on the host
  const Step* step_ = nullptr;         // the step in flight, during Forward
  // Where the step's work goes: the default stream, or graph_stream_ while
  // capturing; graphs run on graph_stream_ after `ready_`, recorded on the
  // default stream.
  CudaStream stream_ = nullptr;
  std::unique_ptr<OwnedStream> graph_stream_;
  std::unique_ptr<CudaEvent> ready_;
  int max_slots_ = 0;  // routes per token; 0 without MoE layers
  // Tokens routed per (layer, expert) by the layers that kept their routing
  // on the device: counted there each step (staging), read back after.
  int* route_counts_ = nullptr;
  bool counted_routes_ = false;
  std::vector<int> routed_counts_;
  struct GraphKey {
    int n, pages_per_layer, max_position;
    const ExpertExecutor* experts;
    bool operator<(const GraphKey& o) const {
      return std::tie(n, pages_per_layer, max_position, experts) <
             std::tie(o.n, o.pages_per_layer, o.max_position, o.experts);
    }
  };
  struct Graphed {
    std::unique_ptr<CudaGraph> graph;
    float* logits = nullptr;  // where the graph writes them
    bool warm = false;        // ran once as it is, with `frees` as it was
    uint64_t frees = 0;       // DeviceFreeCount() then
    int failures = 0;
    // Experts away that replay (ExpertExecutor::replays): the recording
    // whose messages go with each launch; -1 for none.
    int64_t recording = -1;
  };
  // Drops g's graph (and its recording with `experts`).
  void DropGraph(Graphed& g, ExpertExecutor* experts);
  static constexpr int kMaxCaptureFailures = 2;
  std::map<GraphKey, Graphed> graphs_;
  GraphStats graph_stats_;
  // The routed experts between StartExperts and FinishExperts.
  ExpertExecutor* experts_ = nullptr;
  ExpertBatch batch_{-1};
};

}  // namespace moemesh

#endif  // MOEMESH_CORE_ENGINE_CUDA_CUDA_FORWARD_PASS_H_
