#include "core/engine/cuda/cuda_forward_pass.h"

#include <algorithm>
#include <cstring>

#include "absl/cleanup/cleanup.h"
#include "absl/strings/str_cat.h"
#include "core/common/status_macros.h"
#include "core/experts/cuda/device_weights.h"
#include "core/experts/expert_executor.h"
#include "core/engine/kv_cache.h"
#include "core/engine/kernel_params.h"
#include "core/kernels/cpu/gating.h"
#include "core/kernels/cpu/gating_rule.h"
#include "core/kernels/cuda/attention.h"
#include "core/kernels/cuda/dense.h"
#include "core/kernels/cuda/expert_ffn.h"
#include "core/kernels/cuda/expert_groups.h"
#include "core/kernels/cuda/gating.h"
#include "core/kernels/cuda/gemm.h"
#include "core/kernels/cuda/norm.h"
#include "core/kernels/cuda/qk_cache.h"
#include "core/kernels/cuda/rope.h"
#include "core/kernels/cuda/sampling.h"
#include "core/model/weights.h"
#include "core/tensor/dtype.h"

namespace moemesh {
namespace {


// Pinned host buffers for the rows that go to the expert workers and back.
enum PinnedSlot { kHostIds, kHostWeights, kHostRows, kHostRouted, kHostKvBlock };

// Scratch slots (CudaForwardPass::Scratch) of this pass's own, after the
// decoder's.
enum Slot { kHidden = kNumDecoderSlots, kTmp, kHeadIn, kLogits };
// Staging slots for per-step tables on the device.
enum StagingSlot {
  kIds,
  kPositions,
  kRowPages,
  kKDst,
  kVDst,
  kPages,
  kInvFreq,
  kHeadRows,
  kExpertIds,
  kExpertW,
  kOnes,
  kFfnGroups,
  kRouteCounts
};

// The least power of two >= v and >= floor (a power of two).
int PowerOfTwoAtLeast(int v, int floor) {
  int p = floor;
  while (p < v) p *= 2;
  return p;
}

}  // namespace

struct CudaForwardPass::Layer {
  std::unique_ptr<DeviceBuffer> input_norm, post_norm;
  // Attention.
  std::unique_ptr<DeviceBuffer> q, k, v, o, q_bias, k_bias, v_bias, o_bias, q_norm, k_norm;
  std::unique_ptr<DeviceBuffer> q_a, q_b, kv_a, q_a_bias, kv_a_bias, q_a_norm, kv_a_norm, kv_b_f32;
  // MLP.
  int ffn_width = 0, shared_width = 0;
  std::unique_ptr<DeviceBuffer> gate_up, down;  // dense layer
  std::unique_ptr<DeviceBuffer> router_f32, score_bias;
  std::unique_ptr<DeviceBuffer> shared_gate_up, shared_down, shared_gate_f32;
};

// One step's rows and the tables its kernels read.
struct CudaForwardPass::Step {
  struct Item {
    int first_row, count, first_pos;
    int page_offset;  // into each layer's page table
    int rope_table;   // index into the inverse-frequency tables
  };
  int n = 0;
  std::vector<Item> items;
  int pages_per_layer = 0;
  int max_position = 0;
  bool one_rope_table = true;
  std::vector<RowSpan> sequences;  // each item's rows, for attention
  std::vector<int> head_rows;  // rows whose logits are wanted
  // Device tables (staging).
  const int* ids = nullptr;
  const int* positions = nullptr;
  const int* row_pages = nullptr;  // each row's sequence's page_offset
  void* const* k_dst = nullptr;  // [layer][row]
  void* const* v_dst = nullptr;
  const void* const* pages = nullptr;  // [layer][pages_per_layer]
  const float* inv_freq = nullptr;       // [table][dim / 2]
  const int* head_rows_dev = nullptr;
  const float* ones = nullptr;  // n row weights of 1, for dense and shared FFNs
  // With the graph layout: each layer's dense and shared FFN as a group of
  // all n rows ([layer][2]), so that no FFN copies a table from the host
  // (a captured copy would read the host memory it was captured with).
  const ExpertFfnGroup* ffn_groups = nullptr;
};

CudaForwardPass::CudaForwardPass(const ModelConfig& config, std::shared_ptr<const ModelWeights> weights)
    : config_(config), weights_(std::move(weights)), rope_(ToRopeParams(config.rope)) {}

CudaForwardPass::~CudaForwardPass() = default;

ForwardPassFactory CudaForwardPass::Factory(int device, const Options& options) {
  return [device, options](const ModelConfig& c, std::shared_ptr<const ModelWeights> w, int block_size,
                           int blocks) { return Create(c, std::move(w), block_size, blocks, device, options); };
}

absl::StatusOr<std::unique_ptr<ForwardPass>> CudaForwardPass::Create(const ModelConfig& config,
                                                                     std::shared_ptr<const ModelWeights> weights,
                                                                     int kv_block_size, int kv_blocks, int device,
                                                                     const Options& options) {
  MM_RETURN_IF_ERROR(config.Validate());
  MM_RETURN_IF_ERROR(CheckModelGating(config));
  if (device < 0 || device >= CudaDeviceCount()) {
    return absl::FailedPreconditionError(
        absl::StrCat("--device cuda:", device, ": this machine has ", CudaDeviceCount(), " CUDA device(s)"));
  }
  if (weights->layers.size() != static_cast<size_t>(config.num_layers)) {
    return absl::InvalidArgumentError("model weights lack the dense part (attention, norms, gates)");
  }
  MM_RETURN_IF_ERROR(CudaSetDevice(device));
  std::unique_ptr<CudaForwardPass> p(new CudaForwardPass(config, std::move(weights)));
  p->device_ = device;
  p->options_ = options;
  MM_RETURN_IF_ERROR(p->Upload(kv_block_size, kv_blocks));
  return std::unique_ptr<ForwardPass>(std::move(p));
}

absl::Status CudaForwardPass::Upload(int kv_block_size, int kv_blocks) {
  const ModelWeights& w = *weights_;
  MM_ASSIGN_OR_RETURN(gemm_, CudaGemm::Create());
  attention_ = std::make_unique<CudaPagedAttention>();
  sampler_ = std::make_unique<CudaSampler>();
  MM_ASSIGN_OR_RETURN(copied_, CudaEvent::Create());
  // Non-blocking: a capture on a blocking stream breaks if any thread uses
  // the default stream meanwhile. Graph work is ordered after the default
  // stream's by `ready_` and waited for before the step returns.
  MM_ASSIGN_OR_RETURN(graph_stream_, OwnedStream::Create());
  MM_ASSIGN_OR_RETURN(ready_, CudaEvent::Create());
  const bool moe = std::find(config_.is_moe_layer.begin(), config_.is_moe_layer.end(), true) != config_.is_moe_layer.end();
  max_slots_ = moe ? ToGatingParams(config_, nullptr).SlotsPerToken() : 0;
  // The embedding keeps bf16 tables as they are and others in fp32.
  if (w.embed.dtype == DType::kBF16) {
    MM_ASSIGN_OR_RETURN(embed_, UploadBf16({&w.embed}));
  } else {
    MM_ASSIGN_OR_RETURN(embed_, UploadF32(w.embed));
  }
  MM_ASSIGN_OR_RETURN(lm_head_, UploadBf16({&w.lm_head}));
  MM_ASSIGN_OR_RETURN(final_norm_, UploadVector(w.final_norm));
  auto bf16 = [](const Matrix& m) -> absl::StatusOr<std::unique_ptr<DeviceBuffer>> {
    if (m.empty()) return std::unique_ptr<DeviceBuffer>();
    return UploadBf16({&m});
  };
  for (const LayerWeights& lw : w.layers) {
    Layer l;
    const AttentionWeights& a = lw.attn;
    MM_ASSIGN_OR_RETURN(l.input_norm, UploadVector(lw.input_norm));
    MM_ASSIGN_OR_RETURN(l.post_norm, UploadVector(lw.post_attention_norm));
    MM_ASSIGN_OR_RETURN(l.q, bf16(a.q));
    MM_ASSIGN_OR_RETURN(l.k, bf16(a.k));
    MM_ASSIGN_OR_RETURN(l.v, bf16(a.v));
    MM_ASSIGN_OR_RETURN(l.o, bf16(a.o));
    MM_ASSIGN_OR_RETURN(l.q_a, bf16(a.q_a));
    MM_ASSIGN_OR_RETURN(l.q_b, bf16(a.q_b));
    MM_ASSIGN_OR_RETURN(l.kv_a, bf16(a.kv_a));
    MM_ASSIGN_OR_RETURN(l.q_bias, UploadVector(a.q_bias));
    MM_ASSIGN_OR_RETURN(l.k_bias, UploadVector(a.k_bias));
    MM_ASSIGN_OR_RETURN(l.v_bias, UploadVector(a.v_bias));
    MM_ASSIGN_OR_RETURN(l.o_bias, UploadVector(a.o_bias));
    MM_ASSIGN_OR_RETURN(l.q_norm, UploadVector(a.q_norm));
    MM_ASSIGN_OR_RETURN(l.k_norm, UploadVector(a.k_norm));
    MM_ASSIGN_OR_RETURN(l.q_a_bias, UploadVector(a.q_a_bias));
    MM_ASSIGN_OR_RETURN(l.kv_a_bias, UploadVector(a.kv_a_bias));
    MM_ASSIGN_OR_RETURN(l.q_a_norm, UploadVector(a.q_a_norm));
    MM_ASSIGN_OR_RETURN(l.kv_a_norm, UploadVector(a.kv_a_norm));
    // Latent attention's up-projections are applied per head in fp32, as
    // the CPU does.
    if (config_.mla) {
      MM_ASSIGN_OR_RETURN(l.kv_b_f32, UploadF32(a.kv_b));
    }
    if (!lw.moe) {
      l.ffn_width = lw.dense.gate.rows;
      MM_ASSIGN_OR_RETURN(l.gate_up, UploadBf16({&lw.dense.gate, &lw.dense.up}));
      MM_ASSIGN_OR_RETURN(l.down, UploadBf16({&lw.dense.down}));
    } else {
      MM_ASSIGN_OR_RETURN(l.router_f32, UploadF32(lw.router));
      MM_ASSIGN_OR_RETURN(l.score_bias, UploadVector(lw.score_correction_bias));
      if (!lw.shared_expert.empty()) {
        l.shared_width = lw.shared_expert.gate.rows;
        MM_ASSIGN_OR_RETURN(l.shared_gate_up, UploadBf16({&lw.shared_expert.gate, &lw.shared_expert.up}));
        MM_ASSIGN_OR_RETURN(l.shared_down, UploadBf16({&lw.shared_expert.down}));
        if (!lw.shared_expert_gate.empty()) {
          MM_ASSIGN_OR_RETURN(l.shared_gate_f32, UploadF32(lw.shared_expert_gate));
        }
      }
    }
    for (int width : {l.ffn_width, l.shared_width}) {
      if (width > 0 && ffns_.find(width) == ffns_.end()) {
        MM_ASSIGN_OR_RETURN(ffns_[width], CudaExpertFfn::Create(config_.hidden_size, width));
      }
    }
    layers_.push_back(std::move(l));
  }
  block_size_ = kv_block_size;
  num_blocks_ = kv_blocks;
  // Blocks start on 16-byte lines (attention copies 16 bytes at a time).
  kv_block_bytes_ = (KvLayerBytes() + 15) / 16 * 16;
  MM_ASSIGN_OR_RETURN(kv_pool_,
                      DeviceBuffer::Allocate(static_cast<size_t>(config_.num_layers) * kv_blocks * kv_block_bytes_));
  return absl::OkStatus();
}

char* CudaForwardPass::KvBlock(int layer, int block) const {
  return kv_pool_->as<char>() + (static_cast<size_t>(layer) * num_blocks_ + block) * kv_block_bytes_;
}

absl::StatusOr<float*> CudaForwardPass::Scratch(int slot, size_t count) {
  MM_ASSIGN_OR_RETURN(void* p, Staging(1000 + slot, count * sizeof(float)));
  return static_cast<float*>(p);
}

absl::StatusOr<void*> CudaForwardPass::Pinned(int slot, size_t bytes) {
  // Every copy from or to it is done when it grows: a step ends with a
  // synchronous copy, and within a step the sizes do not change.
  std::unique_ptr<PinnedBuffer>& b = pinned_[slot];
  MM_RETURN_IF_ERROR(GrowBuffer(&b, bytes));
  return b->data();
}

absl::StatusOr<void*> CudaForwardPass::Staging(int slot, size_t bytes) {
  std::unique_ptr<DeviceBuffer>& b = buffers_[slot];
  MM_RETURN_IF_ERROR(GrowBuffer(&b, bytes));  // cudaFree waits for kernels that may still use it
  return b->data();
}

absl::StatusOr<CudaForwardPass::Step> CudaForwardPass::Prepare(absl::Span<const ForwardItem> items,
                                                              KvCache* cache, bool graph_layout) {
  const ModelConfig& c = config_;
  Step step;
  MM_RETURN_IF_ERROR(CheckForwardItems(items, c.vocab_size));
  // Device addresses follow the geometry this pass was made for.
  if (cache->block_size() != block_size_ || cache->num_blocks() > num_blocks_) {
    return absl::InvalidArgumentError(absl::StrCat("the KV cache (", cache->num_blocks(), " blocks of ",
                                                   cache->block_size(), ") is not the one this GPU pass holds (",
                                                   num_blocks_, " blocks of ", block_size_, ")"));
  }
  std::vector<int> ids, positions, row_pages;
  std::vector<std::vector<float>> inv_freqs;
  for (size_t i = 0; i < items.size(); ++i) {
    const ForwardItem& it = items[i];
    const int first = it.seq->length, count = static_cast<int>(it.tokens.size());
    MM_RETURN_IF_ERROR(cache->Reserve(it.seq, first + count));
    // Dynamic rope depends on the longest position of this sequence's step.
    std::vector<float> inv_freq = rope_.InvFreq(first + count);
    int table = static_cast<int>(inv_freqs.size());
    if (!inv_freqs.empty() && inv_freqs.back() == inv_freq) {
      --table;
    } else {
      inv_freqs.push_back(std::move(inv_freq));
    }
    step.items.push_back({step.n, count, first, step.pages_per_layer, table});
    step.sequences.push_back({step.n, count});
    step.pages_per_layer += static_cast<int>(it.seq->blocks.size());
    for (int j = 0; j < count; ++j) {
      ids.push_back(it.tokens[j]);
      positions.push_back(first + j);
      row_pages.push_back(step.items.back().page_offset);
    }
    step.max_position = std::max(step.max_position, first + count - 1);
    const int head_first = it.all_logits ? step.n : step.n + count - 1;
    for (int r = head_first; r < step.n + count; ++r) step.head_rows.push_back(r);
    step.n += count;
  }
  step.one_rope_table = inv_freqs.size() == 1;
  if (graph_layout) {
    // What a captured step bakes in, rounded up so that one graph serves
    // many steps: the page table's width, and the longest position (it
    // sizes attention's split; shorter rows leave the extra chunks empty).
    step.pages_per_layer = PowerOfTwoAtLeast(step.pages_per_layer, 8);
    step.max_position = PowerOfTwoAtLeast(step.max_position + 1, 256) - 1;
  }
  // Where each row's keys go, and each sequence's pages, for every layer.
  const size_t row_bytes = (static_cast<size_t>(kv_k_width()) + kv_v_width()) * KvDTypeBytes(options_.kv_dtype);
  const size_t k_bytes = static_cast<size_t>(kv_k_width()) * KvDTypeBytes(options_.kv_dtype);
  const int L = c.num_layers;
  std::vector<void*> k_dst(static_cast<size_t>(L) * step.n), v_dst(k_dst.size());
  std::vector<const void*> pages(static_cast<size_t>(L) * std::max(step.pages_per_layer, 1));
  for (int l = 0; l < L; ++l) {
    int r = 0;
    for (size_t i = 0; i < items.size(); ++i) {
      const KvSequence& seq = *items[i].seq;
      for (size_t b = 0; b < seq.blocks.size(); ++b) {
        pages[static_cast<size_t>(l) * step.pages_per_layer + step.items[i].page_offset + b] = KvBlock(l, seq.blocks[b]);
      }
      for (int j = 0; j < step.items[i].count; ++j, ++r) {
        const int pos = step.items[i].first_pos + j;
        char* dst = KvBlock(l, seq.blocks[pos / block_size_]) + static_cast<size_t>(pos % block_size_) * row_bytes;
        k_dst[static_cast<size_t>(l) * step.n + r] = dst;
        v_dst[static_cast<size_t>(l) * step.n + r] = dst + k_bytes;
      }
    }
  }
  std::vector<float> freq_flat;
  for (const auto& f : inv_freqs) freq_flat.insert(freq_flat.end(), f.begin(), f.end());
  auto stage = [&](int slot, const void* data, size_t bytes) -> absl::StatusOr<void*> {
    MM_ASSIGN_OR_RETURN(void* p, Staging(slot, bytes));
    MM_RETURN_IF_ERROR(CopyToDevice(p, data, bytes));
    return p;
  };
  MM_ASSIGN_OR_RETURN(void* d_ids, stage(kIds, ids.data(), ids.size() * sizeof(int)));
  MM_ASSIGN_OR_RETURN(void* d_pos, stage(kPositions, positions.data(), positions.size() * sizeof(int)));
  MM_ASSIGN_OR_RETURN(void* d_rp, stage(kRowPages, row_pages.data(), row_pages.size() * sizeof(int)));
  MM_ASSIGN_OR_RETURN(void* d_k, stage(kKDst, k_dst.data(), k_dst.size() * sizeof(void*)));
  MM_ASSIGN_OR_RETURN(void* d_v, stage(kVDst, v_dst.data(), v_dst.size() * sizeof(void*)));
  MM_ASSIGN_OR_RETURN(void* d_pages, stage(kPages, pages.data(), pages.size() * sizeof(void*)));
  MM_ASSIGN_OR_RETURN(void* d_freq, stage(kInvFreq, freq_flat.data(), freq_flat.size() * sizeof(float)));
  MM_ASSIGN_OR_RETURN(void* d_head, stage(kHeadRows, step.head_rows.data(), step.head_rows.size() * sizeof(int)));
  step.ids = static_cast<const int*>(d_ids);
  step.positions = static_cast<const int*>(d_pos);
  step.row_pages = static_cast<const int*>(d_rp);
  step.k_dst = static_cast<void* const*>(d_k);
  step.v_dst = static_cast<void* const*>(d_v);
  step.pages = static_cast<const void* const*>(d_pages);
  step.inv_freq = static_cast<const float*>(d_freq);
  step.head_rows_dev = static_cast<const int*>(d_head);
  const std::vector<float> ones(step.n, 1.0f);
  MM_ASSIGN_OR_RETURN(void* d_ones, stage(kOnes, ones.data(), ones.size() * sizeof(float)));
  step.ones = static_cast<const float*>(d_ones);
  if (graph_layout) {
    std::vector<ExpertFfnGroup> ffn(static_cast<size_t>(2) * L);
    for (int l = 0; l < L; ++l) {
      const Layer& layer = layers_[l];
      for (int shared = 0; shared < 2; ++shared) {
        const int width = shared ? layer.shared_width : layer.ffn_width;
        if (width == 0) continue;
        const uint16_t* gate_up = (shared ? layer.shared_gate_up : layer.gate_up)->as<uint16_t>();
        ffn[2 * l + shared] = {gate_up, gate_up + static_cast<size_t>(width) * c.hidden_size,
                               (shared ? layer.shared_down : layer.down)->as<uint16_t>(), 0, step.n};
      }
    }
    MM_ASSIGN_OR_RETURN(void* d_ffn, stage(kFfnGroups, ffn.data(), ffn.size() * sizeof(ExpertFfnGroup)));
    step.ffn_groups = static_cast<const ExpertFfnGroup*>(d_ffn);
  }
  return step;
}

PagedRows CudaForwardPass::StepRows(int layer) const {
  const Step& step = *step_;
  PagedRows rows;
  rows.kv.k_blocks = rows.kv.v_blocks = step.pages + static_cast<size_t>(layer) * step.pages_per_layer;
  rows.kv.block_size = block_size_;
  rows.kv.dtype = options_.kv_dtype;
  rows.positions = step.positions;
  rows.page_offsets = step.row_pages;
  rows.rows = step.n;
  rows.max_position = step.max_position;
  return rows;
}

absl::Status CudaForwardPass::Linear(int layer, LayerLinear which, const float* x, int n, float* out) {
  const Layer& l = layers_[layer];
  const LayerWeights& lw = weights_->layers[layer];
  const AttentionWeights& a = lw.attn;
  // The gates stay fp32 (routing is sensitive to rounding), as on the CPU.
  if (which == LayerLinear::kRouter) {
    return gemm_->LinearF32(x, n, l.router_f32->as<float>(), lw.router.rows, lw.router.cols, out, stream_);
  }
  if (which == LayerLinear::kSharedGate) {
    const Matrix& g = lw.shared_expert_gate;
    return gemm_->LinearF32(x, n, l.shared_gate_f32->as<float>(), g.rows, g.cols, out, stream_);
  }
  const DeviceBuffer* w = nullptr;
  const DeviceBuffer* bias = nullptr;
  const Matrix* m = nullptr;
  switch (which) {
    case LayerLinear::kQ: w = l.q.get(), bias = l.q_bias.get(), m = &a.q; break;
    case LayerLinear::kK: w = l.k.get(), bias = l.k_bias.get(), m = &a.k; break;
    case LayerLinear::kV: w = l.v.get(), bias = l.v_bias.get(), m = &a.v; break;
    case LayerLinear::kO: w = l.o.get(), bias = l.o_bias.get(), m = &a.o; break;
    case LayerLinear::kQA: w = l.q_a.get(), bias = l.q_a_bias.get(), m = &a.q_a; break;
    case LayerLinear::kQB: w = l.q_b.get(), m = &a.q_b; break;
    case LayerLinear::kKvA: w = l.kv_a.get(), bias = l.kv_a_bias.get(), m = &a.kv_a; break;
    default: return absl::InternalError("unknown layer product");
  }
  MM_RETURN_IF_ERROR(gemm_->LinearBf16(x, n, w->as<uint16_t>(), m->rows, m->cols, out, stream_));
  if (bias != nullptr) MM_RETURN_IF_ERROR(AddBiasCuda(out, bias->as<float>(), n, m->rows, stream_));
  return absl::OkStatus();
}

// One launch for the three where a decode step's rows take the skinny
// kernel (CudaGemm::LinearsBf16), the biases added in it.
absl::Status CudaForwardPass::LinearQkv(int layer, const float* x, int n, float* q, float* k, float* v) {
  const Layer& l = layers_[layer];
  const AttentionWeights& a = weights_->layers[layer].attn;
  auto bias = [](const std::unique_ptr<DeviceBuffer>& b) { return b ? b->as<float>() : nullptr; };
  const CudaGemm::Bf16Product products[] = {
      {l.q->as<uint16_t>(), a.q.rows, bias(l.q_bias), q},
      {l.k->as<uint16_t>(), a.k.rows, bias(l.k_bias), k},
      {l.v->as<uint16_t>(), a.v.rows, bias(l.v_bias), v},
  };
  return gemm_->LinearsBf16(x, n, a.q.cols, products, stream_);
}

const DeviceBuffer* CudaForwardPass::NormWeight(int layer, LayerNorm which) const {
  const Layer& l = layers_[layer];
  switch (which) {
    case LayerNorm::kInput: return l.input_norm.get();
    case LayerNorm::kPostAttention: return l.post_norm.get();
    case LayerNorm::kQ: return l.q_norm.get();
    case LayerNorm::kK: return l.k_norm.get();
    case LayerNorm::kQA: return l.q_a_norm.get();
    case LayerNorm::kKvA: return l.kv_a_norm.get();
  }
  return nullptr;
}

absl::Status CudaForwardPass::RmsNorm(int layer, LayerNorm which, const float* x, int rows, int width, int stride,
                                      float eps, float* out) {
  const DeviceBuffer* w = NormWeight(layer, which);
  if (stride == width) return RmsNormCuda(x, w->as<float>(), rows, width, eps, out, stream_);
  // Strided rows are packed, normalised and put back.
  MM_ASSIGN_OR_RETURN(float* tmp, Scratch(kTmp, static_cast<size_t>(rows) * width));
  MM_RETURN_IF_ERROR(CopyRowsOnDevice(x, stride, tmp, width, rows, width, stream_));
  MM_RETURN_IF_ERROR(RmsNormCuda(tmp, w->as<float>(), rows, width, eps, tmp, stream_));
  return CopyRowsOnDevice(tmp, width, out, stride, rows, width, stream_);
}

absl::Status CudaForwardPass::AddRmsNorm(int layer, LayerNorm which, float* hidden, const float* delta, int rows,
                                         int width, float eps, float* out) {
  return AddRmsNormCuda(hidden, delta, NormWeight(layer, which)->as<float>(), rows, width, eps, out, stream_);
}

absl::Status CudaForwardPass::Clamp(float* x, size_t count, float limit) { return ClampCuda(x, count, limit, stream_); }

absl::Status CudaForwardPass::Sigmoid(float* x, size_t count) { return SigmoidCuda(x, count, x, stream_); }

absl::Status CudaForwardPass::Add(float* y, const float* x, size_t count) { return AddCuda(y, x, count, stream_); }

absl::Status CudaForwardPass::Rotate(float* x, int heads, int token_stride, int head_stride) {
  const Step& step = *step_;
  const int half = config_.rope.dim / 2;
  if (step.one_rope_table) {
    return RopeCuda(step.inv_freq, rope_.attention_scaling(), config_.rope.dim, config_.rope.interleaved,
                    step.positions, step.n, heads, token_stride, head_stride, x, stream_);
  }
  for (const Step::Item& it : step.items) {
    MM_RETURN_IF_ERROR(RopeCuda(step.inv_freq + static_cast<size_t>(it.rope_table) * half, rope_.attention_scaling(),
                                config_.rope.dim, config_.rope.interleaved, step.positions + it.first_row, it.count,
                                heads, token_stride, head_stride, x + static_cast<size_t>(it.first_row) * token_stride,
                                stream_));
  }
  return absl::OkStatus();
}

// One launch where the step has one rope table and nothing comes between
// the norm and the rotation.
absl::Status CudaForwardPass::NormRotateCache(int layer, const QkHeads& h, int n, float* q, float* k, float* v) {
  const Step& step = *step_;
  if (!step.one_rope_table || h.clip > 0) return DecoderOps::NormRotateCache(layer, h, n, q, k, v);
  QkRows rows;
  rows.q = q, rows.k = k, rows.v = v, rows.tokens = n;
  rows.q_heads = h.q_heads, rows.kv_heads = h.kv_heads, rows.head_dim = h.head_dim;
  QkNorm norm;
  if (h.norm) {
    norm.q_weight = NormWeight(layer, LayerNorm::kQ)->as<float>();
    norm.k_weight = NormWeight(layer, LayerNorm::kK)->as<float>();
    norm.eps = h.eps;
  }
  QkRope rope;
  rope.inv_freq = step.inv_freq, rope.attention_scaling = rope_.attention_scaling();
  rope.dim = config_.rope.dim, rope.interleaved = config_.rope.interleaved, rope.positions = step.positions;
  const size_t at = static_cast<size_t>(layer) * n;
  KvStore store;
  store.dtype = options_.kv_dtype;
  return NormRotateCacheCuda(rows, norm, rope, step.k_dst + at, step.v_dst + at, store, stream_);
}

absl::Status CudaForwardPass::WriteCache(int layer, const float* k, const float* v) {
  const int n = step_->n, k_w = kv_k_width(), v_w = kv_v_width();
  const size_t at = static_cast<size_t>(layer) * n;
  KvStore store;
  store.dtype = options_.kv_dtype;
  return ScatterKvRowsCuda(k, k_w, step_->k_dst + at, v, v_w, step_->v_dst + at, n, store, stream_);
}

absl::Status CudaForwardPass::Attend(int layer, const AttentionShape& shape, const float* q, float* out) {
  PagedRows rows = StepRows(layer);
  rows.kv.k_stride = rows.kv.v_stride = kv_k_width() + kv_v_width();
  rows.kv.k_offset = 0;
  rows.kv.v_offset = config_.mla ? 0 : kv_k_width();  // the latent is key and value
  if (config_.mla) return attention_->Run(shape, q, rows, out, stream_);
  return attention_->Run(shape, q, rows, out, stream_, step_->sequences);
}

// W_uk[h] is kv_b[h * (nope + vd) .. + nope, :] ([nope, lora]).
absl::Status CudaForwardPass::AbsorbQuery(int layer, const float* q, float* qabs) {
  const ModelConfig& c = config_;
  const int n = step_->n, heads = c.num_heads, nope = c.qk_nope_head_dim, rope = c.qk_rope_head_dim,
            lora = c.kv_lora_rank, vd = c.v_head_dim, qk = nope + rope, row_w = lora + rope;
  const float* kvb = layers_[layer].kv_b_f32->as<float>();
  MM_RETURN_IF_ERROR(gemm_->BatchedF32({n, lora, nope, heads, q, heads * qk, qk, kvb, lora,
                                        static_cast<long long>(nope + vd) * lora, false, qabs, heads * row_w, row_w},
                                       stream_));
  return CopyRowsOnDevice(q + nope, qk, qabs + lora, row_w, static_cast<size_t>(n) * heads, rope, stream_);
}

// W_uv[h] is kv_b[h * (nope + vd) + nope .. + vd, :] ([vd, lora]).
absl::Status CudaForwardPass::ExpandLatent(int layer, const float* lat, float* ctx) {
  const ModelConfig& c = config_;
  const int n = step_->n, heads = c.num_heads, nope = c.qk_nope_head_dim, lora = c.kv_lora_rank, vd = c.v_head_dim;
  const float* kvb = layers_[layer].kv_b_f32->as<float>();
  return gemm_->BatchedF32({n, vd, lora, heads, lat, heads * lora, lora, kvb + static_cast<size_t>(nope) * lora, lora,
                            static_cast<long long>(nope + vd) * lora, true, ctx, heads * vd, vd},
                           stream_);
}

absl::Status CudaForwardPass::Ffn(int layer, LayerFfn which, const float* x, const float* row_weight, float* out) {
  const Layer& l = layers_[layer];
  const bool dense = which == LayerFfn::kDense;
  const int width = dense ? l.ffn_width : l.shared_width;
  const uint16_t* gate_up = (dense ? l.gate_up : l.shared_gate_up)->as<uint16_t>();
  const uint16_t* down = (dense ? l.down : l.shared_down)->as<uint16_t>();
  const float* weight = row_weight != nullptr ? row_weight : step_->ones;
  if (step_->ffn_groups != nullptr) {
    const ExpertFfnGroup* group = step_->ffn_groups + 2 * layer + (dense ? 0 : 1);
    return ffns_.at(width)->RunGathered(x, nullptr, weight, group, 1, step_->n, step_->n, out, stream_);
  }
  ExpertFfnGroup group{gate_up, gate_up + static_cast<size_t>(width) * config_.hidden_size, down, 0, step_->n};
  return ffns_.at(width)->Run(x, weight, {group}, out, stream_);
}

// Gating on the device. Small steps whose experts are on this GPU stay
// there, routing and all (the executor groups the rows on the GPU). Else
// the routing goes to the host (the executor groups the rows there), and so
// do the rows unless the executor's experts are on this GPU; what the
// decoder enqueues next (the shared expert) runs behind those copies, while
// the routed experts are away on the workers. Rows and routing on the GPU
// are handed over here (ExpertExecutor::Start), so that remote workers
// (cuda-ipc) compute while the shared expert runs.
absl::Status CudaForwardPass::StartExperts(int layer, const float* x, const float* logits, ExpertExecutor* experts,
                                           float* out) {
  const ModelConfig& c = config_;
  const Layer& l = layers_[layer];
  const int n = step_->n;
  const GatingParams g = ToGatingParams(c, l.score_bias ? l.score_bias->as<float>() : nullptr);
  const int slots = g.SlotsPerToken();
  const size_t picks = static_cast<size_t>(n) * slots, floats = static_cast<size_t>(n) * c.hidden_size;
  MM_ASSIGN_OR_RETURN(void* d_ids, Staging(kExpertIds, picks * sizeof(int)));
  MM_ASSIGN_OR_RETURN(void* d_w, Staging(kExpertW, picks * sizeof(float)));
  const bool in_place = experts->cuda_device() == device_;
  experts_ = experts;
  // Experts in another process (cuda-ipc: not capturable) group on the GPU
  // whatever the step's size: grouping on the host would make this thread
  // wait for the GPU every layer, and the GPU then wait for the hosts' round
  // trip to the worker.
  const bool device_grouping = n <= options_.device_grouping_max_tokens || !experts->capturable();
  if (in_place && experts->groups_on_device() && device_grouping &&
      picks <= static_cast<size_t>(kMaxDeviceGroupedRoutes)) {
    // No one reads this routing on the host: the routing kernel counts it
    // for the scheduler's expert-load figures (AddRoutedCounts), from zero
    // at the step's first such layer.
    if (!counted_routes_) {
      const size_t counts = static_cast<size_t>(c.num_layers) * c.num_experts;
      MM_ASSIGN_OR_RETURN(void* p, Staging(kRouteCounts, counts * sizeof(int)));
      route_counts_ = static_cast<int*>(p);
      MM_RETURN_IF_ERROR(ZeroDeviceAsync(route_counts_, counts * sizeof(int), stream_));
    }
    MM_RETURN_IF_ERROR(RouteTokensCuda(g, logits, n, static_cast<int*>(d_ids), static_cast<float*>(d_w), stream_,
                                       route_counts_ + static_cast<size_t>(layer) * c.num_experts));
    counted_routes_ = true;
    batch_ = ExpertBatch{layer, n, c.hidden_size, x, slots, static_cast<const int*>(d_ids),
                         static_cast<const float*>(d_w)};
    batch_.on_device = batch_.routing_on_device = true;
    batch_.cuda_stream = stream_;
    return experts->Start(batch_, out, 0);
  }
  MM_RETURN_IF_ERROR(RouteTokensCuda(g, logits, n, static_cast<int*>(d_ids), static_cast<float*>(d_w), stream_));
  MM_ASSIGN_OR_RETURN(void* ids, Pinned(kHostIds, picks * sizeof(int)));
  MM_ASSIGN_OR_RETURN(void* weights, Pinned(kHostWeights, picks * sizeof(float)));
  MM_RETURN_IF_ERROR(CopyToHostAsync(ids, d_ids, picks * sizeof(int), stream_));
  MM_RETURN_IF_ERROR(CopyToHostAsync(weights, d_w, picks * sizeof(float), stream_));
  const float* rows = x;
  if (!in_place) {
    MM_ASSIGN_OR_RETURN(void* host_rows, Pinned(kHostRows, floats * sizeof(float)));
    MM_RETURN_IF_ERROR(CopyToHostAsync(host_rows, x, floats * sizeof(float), stream_));
    rows = static_cast<const float*>(host_rows);
  }
  MM_RETURN_IF_ERROR(copied_->Record(stream_));
  batch_ = ExpertBatch{layer, n, c.hidden_size, rows, slots, static_cast<const int*>(ids),
                       static_cast<const float*>(weights)};
  batch_.on_device = in_place;
  batch_.cuda_stream = in_place ? stream_ : nullptr;
  return absl::OkStatus();
}

absl::Status CudaForwardPass::FinishExperts(int layer, float* out) {
  const ExpertBatch batch = batch_;
  batch_.layer = -1;
  if (batch.layer != layer) return absl::InternalError("FinishExperts without StartExperts");
  if (batch.routing_on_device) return experts_->Finish(0);  // started with StartExperts
  MM_RETURN_IF_ERROR(copied_->Synchronize());
  if (batch.on_device) return experts_->Execute(batch, out);
  const size_t floats = static_cast<size_t>(batch.num_tokens) * batch.hidden_size;
  MM_ASSIGN_OR_RETURN(void* routed, Pinned(kHostRouted, floats * sizeof(float)));
  MM_RETURN_IF_ERROR(experts_->Execute(batch, static_cast<float*>(routed)));
  return CopyToDeviceAsync(out, routed, floats * sizeof(float), stream_);
}

absl::StatusOr<float*> CudaForwardPass::RunStep(ExpertExecutor* experts) {
  const ModelConfig& c = config_;
  const Step& step = *step_;
  const int n = step.n, H = c.hidden_size;
  counted_routes_ = false;  // StartExperts counts device-grouped routes
  MM_ASSIGN_OR_RETURN(float* hidden, Scratch(kHidden, static_cast<size_t>(n) * H));
  MM_RETURN_IF_ERROR(EmbedRowsCuda(embed_->data(), weights_->embed.dtype == DType::kBF16, H, step.ids, n, hidden,
                                   stream_));
  MM_RETURN_IF_ERROR(RunDecoderLayers(c, *weights_, n, this, experts, hidden));
  // Final norm and LM head on the rows whose logits are wanted.
  const int m = static_cast<int>(step.head_rows.size());
  MM_ASSIGN_OR_RETURN(float* head_in, Scratch(kHeadIn, static_cast<size_t>(m) * H));
  MM_RETURN_IF_ERROR(GatherRowsCuda(hidden, H, step.head_rows_dev, m, head_in, stream_));
  MM_RETURN_IF_ERROR(
      RmsNormCuda(head_in, final_norm_->as<float>(), m, H, static_cast<float>(c.rms_norm_eps), head_in, stream_));
  MM_ASSIGN_OR_RETURN(float* out, Scratch(kLogits, static_cast<size_t>(m) * c.vocab_size));
  MM_RETURN_IF_ERROR(gemm_->LinearBf16(head_in, m, lm_head_->as<uint16_t>(), c.vocab_size, H, out, stream_));
  return out;
}

bool CudaForwardPass::GraphEligible(absl::Span<const ForwardItem> items, ExpertExecutor* experts) const {
  const int n = static_cast<int>(items.size());
  if (!options_.cuda_graphs || n > options_.graph_max_tokens) return false;
  for (const ForwardItem& it : items) {
    if (it.tokens.size() != 1) return false;  // decode steps only
  }
  // A layer that waits on the host for its experts cannot be captured;
  // experts in another process can where they replay their messages.
  return max_slots_ == 0 ||
         (experts->cuda_device() == device_ && experts->groups_on_device() &&
          (experts->capturable() || experts->replays()) && n <= options_.device_grouping_max_tokens &&
          static_cast<long long>(n) * max_slots_ <= kMaxDeviceGroupedRoutes);
}

void CudaForwardPass::DropGraph(Graphed& g, ExpertExecutor* experts) {
  g.graph.reset();
  if (g.recording >= 0) experts->ForgetRecording(g.recording);
  g.recording = -1;
}

absl::StatusOr<float*> CudaForwardPass::RunGraphed(ExpertExecutor* experts, bool* on_graph_stream) {
  const Step& step = *step_;
  Graphed& g = graphs_[GraphKey{step.n, step.pages_per_layer, step.max_position, experts}];
  // A graph names the buffers it was captured with: any freed since, it is
  // stale. A step is captured after it ran once as it is (every buffer it
  // needs grown), with nothing freed since.
  if (g.graph != nullptr && g.frees != DeviceFreeCount()) DropGraph(g, experts);
  const bool capture =
      g.graph == nullptr && g.warm && g.frees == DeviceFreeCount() && g.failures < kMaxCaptureFailures;
  // Experts away record their messages while the step is captured.
  const bool record = max_slots_ > 0 && !experts->capturable();
  if (capture || g.graph != nullptr) {
    // After everything on the default stream (this step's tables among it).
    MM_RETURN_IF_ERROR(ready_->Record(nullptr));
    MM_RETURN_IF_ERROR(ready_->WaitOn(graph_stream_->get()));
  }
  if (capture) {
    stream_ = graph_stream_->get();
    absl::Status st = record ? experts->BeginRecording() : absl::OkStatus();
    const bool recording = st.ok() && record;
    if (st.ok()) st = CudaGraph::BeginCapture(stream_);
    absl::StatusOr<float*> out = st.ok() ? RunStep(experts) : st;
    auto graph = st.ok() ? CudaGraph::EndCapture(stream_) : absl::StatusOr<std::unique_ptr<CudaGraph>>(st);
    stream_ = nullptr;
    bool ok = out.ok() && graph.ok() && g.frees == DeviceFreeCount();
    if (recording) ok = experts->EndRecording(ok, &g.recording).ok() && ok;
    if (ok) {
      g.graph = std::move(*graph);
      g.logits = *out;
      ++graph_stats_.captured;
    } else {
      CudaClearLastError();  // what the capture refused; the step runs as usual below
      ++g.failures;
      ++graph_stats_.failed;
    }
  }
  if (g.graph != nullptr) {
    CudaGraph* graph = g.graph.get();
    auto launch = [&] { return graph->Launch(graph_stream_->get()); };
    // The workers get the step's requests before its first layer runs.
    const absl::Status st = g.recording >= 0 ? experts->Replay(g.recording, launch) : launch();
    if (st.ok()) {
      ++graph_stats_.replayed;
      *on_graph_stream = true;
      return g.logits;
    }
    // Its experts' connections changed (or a worker is gone): captured
    // again later; this step runs as usual, through the replicas left.
    if (g.recording < 0) return st;
    DropGraph(g, experts);
    ++graph_stats_.stale;
  }
  MM_ASSIGN_OR_RETURN(float* out, RunStep(experts));
  g.warm = true;
  g.frees = DeviceFreeCount();
  return out;
}

absl::Status CudaForwardPass::Forward(absl::Span<const ForwardItem> items, KvCache* cache, ExpertExecutor* experts,
                                      std::vector<float>* logits) {
  const ModelConfig& c = config_;
  MM_RETURN_IF_ERROR(CudaSetDevice(device_));
  last_logits_ = nullptr;  // the scratch may move
  bool graphed = GraphEligible(items, experts);
  MM_ASSIGN_OR_RETURN(Step step, Prepare(items, cache, graphed));
  graphed = graphed && step.one_rope_table;
  step_ = &step;
  absl::Cleanup forget = [this] { step_ = nullptr; };
  bool on_graph_stream = false;
  absl::StatusOr<float*> ran = graphed ? RunGraphed(experts, &on_graph_stream) : RunStep(experts);
  if (!graphed || !experts->capturable()) {
    // Workers' answers read after their rows were used (cuda-ipc's
    // counter, a replayed graph's too): one that failed spoils the step,
    // which runs once more, as usual, on the replicas left.
    absl::Status settled = experts->Settle();
    if (absl::IsAborted(settled) || absl::IsAborted(ran.status())) {
      if (on_graph_stream) MM_RETURN_IF_ERROR(CudaSynchronize(graph_stream_->get()));
      on_graph_stream = false;
      MM_RETURN_IF_ERROR(CudaSynchronize(stream_));
      ran = RunStep(experts);
      settled = experts->Settle();
    }
    if (ran.ok() && !settled.ok()) {
      return absl::IsAborted(settled) ? absl::UnavailableError(settled.message()) : settled;
    }
    if (absl::IsAborted(ran.status())) return absl::UnavailableError(ran.status().message());
  }
  MM_ASSIGN_OR_RETURN(float* out, ran);
  // The default stream does not wait for the graph's.
  if (on_graph_stream) MM_RETURN_IF_ERROR(CudaSynchronize(graph_stream_->get()));
  const int m = static_cast<int>(step.head_rows.size());
  if (logits != nullptr) {
    const size_t old = logits->size();
    logits->resize(old + static_cast<size_t>(m) * c.vocab_size);
    if (absl::Status st =
            CopyToHost(logits->data() + old, out, static_cast<size_t>(m) * c.vocab_size * sizeof(float));
        !st.ok()) {
      logits->resize(old);
      return st;
    }
  } else {
    MM_RETURN_IF_ERROR(CudaSynchronize(stream_));  // the step's errors surface here, not in SampleLast
  }
  last_logits_ = out;
  last_rows_ = m;
  // Graphed steps count on the device whatever they route; others only
  // where the routing stayed there.
  routed_counts_.clear();
  if (max_slots_ > 0 && (counted_routes_ || on_graph_stream)) {
    routed_counts_.resize(static_cast<size_t>(c.num_layers) * c.num_experts);
    MM_RETURN_IF_ERROR(CopyToHost(routed_counts_.data(), route_counts_, routed_counts_.size() * sizeof(int)));
  }
  for (const ForwardItem& it : items) it.seq->length += static_cast<int>(it.tokens.size());
  return absl::OkStatus();
}

void CudaForwardPass::AddRoutedCounts(std::vector<int64_t>* routed) const {
  if (routed_counts_.empty()) return;
  if (routed->size() < routed_counts_.size()) routed->resize(routed_counts_.size(), 0);
  for (size_t i = 0; i < routed_counts_.size(); ++i) (*routed)[i] += routed_counts_[i];
}

absl::Status CudaForwardPass::SampleLast(absl::Span<const DeviceSampleRow> rows, std::vector<int>* tokens,
                                         std::vector<float>* raw_logits) {
  if (last_logits_ == nullptr) return absl::FailedPreconditionError("SampleLast: no step has run");
  MM_RETURN_IF_ERROR(CudaSetDevice(device_));
  const int vocab = config_.vocab_size;
  std::vector<SampleRowParams> params;
  std::vector<PenaltyToken> penalties;
  for (const DeviceSampleRow& r : rows) {
    if (r.row < 0 || r.row >= last_rows_) {
      return absl::InvalidArgumentError(absl::StrCat("SampleLast: row ", r.row, " outside the step's ", last_rows_));
    }
    SampleRowParams p;
    p.row = r.row;
    p.temperature = r.params.temperature;
    p.top_k = r.params.top_k;
    p.top_p = r.params.top_p;
    p.min_p = r.params.min_p;
    p.repetition_penalty = r.params.repetition_penalty;
    p.presence_penalty = r.params.presence_penalty;
    p.frequency_penalty = r.params.frequency_penalty;
    p.uniform = r.uniform;
    p.penalty_begin = static_cast<int>(penalties.size());
    for (const auto& [token, count] : r.penalty_tokens) penalties.push_back({token, count});
    p.penalty_end = static_cast<int>(penalties.size());
    params.push_back(p);
  }
  // The raw rows first: sampling penalises in place.
  for (const DeviceSampleRow& r : rows) {
    if (!r.want_logits) continue;
    const size_t old = raw_logits->size();
    raw_logits->resize(old + vocab);
    MM_RETURN_IF_ERROR(CopyToHost(raw_logits->data() + old, last_logits_ + static_cast<size_t>(r.row) * vocab,
                                  vocab * sizeof(float)));
  }
  tokens->resize(rows.size());
  return sampler_->Run(last_logits_, last_rows_, vocab, params, penalties, tokens->data(), stream_);
}

// A block's bytes: each layer's rows, in the cache's dtype (the tiers and
// the kvcache service name blocks by a layout that includes it).
size_t CudaForwardPass::KvLayerBytes() const {
  return static_cast<size_t>(block_size_) * (kv_k_width() + kv_v_width()) * KvDTypeBytes(options_.kv_dtype);
}

// Blocks' layers move through pinned memory on the pass's stream, with a
// wait for many blocks at once: each layer by itself through pageable
// memory was a synchronous copy, a wait a layer.
namespace {

// Blocks staged in page-locked memory between two waits: a long prompt's
// thousands of blocks go through in pieces rather than pin gigabytes.
size_t StagedBlocks(size_t block_bytes) {
  constexpr size_t kStagingBytes = size_t{64} << 20;
  return std::max<size_t>(1, kStagingBytes / block_bytes);
}

}  // namespace

absl::Status CudaForwardPass::ReadKvBlocks(const KvCache& cache, absl::Span<const int> blocks,
                                           std::vector<std::string>* out) {
  const size_t layer_bytes = KvLayerBytes(), block_bytes = layer_bytes * config_.num_layers;
  out->resize(blocks.size());
  if (blocks.empty()) return absl::OkStatus();
  MM_RETURN_IF_ERROR(CudaSetDevice(device_));
  const size_t per = std::min(blocks.size(), StagedBlocks(block_bytes));
  MM_ASSIGN_OR_RETURN(void* staging, Pinned(kHostKvBlock, block_bytes * per));
  char* host = static_cast<char*>(staging);
  // A failed call still waits for the copies it queued: they use the
  // staging buffer, which the next call may write.
  absl::Cleanup drain = [&] { CudaSynchronize(stream_).IgnoreError(); };
  for (size_t first = 0; first < blocks.size(); first += per) {
    const size_t count = std::min(per, blocks.size() - first);
    for (size_t i = 0; i < count; ++i) {
      for (int l = 0; l < config_.num_layers; ++l) {
        MM_RETURN_IF_ERROR(CopyToHostAsync(host + i * block_bytes + l * layer_bytes, KvBlock(l, blocks[first + i]),
                                           layer_bytes, stream_));
      }
    }
    MM_RETURN_IF_ERROR(CudaSynchronize(stream_));  // once for the staged blocks
    for (size_t i = 0; i < count; ++i) (*out)[first + i].assign(host + i * block_bytes, block_bytes);
  }
  std::move(drain).Cancel();
  return absl::OkStatus();
}

absl::Status CudaForwardPass::WriteKvBlocks(KvCache* cache, absl::Span<const int> blocks,
                                            absl::Span<const absl::string_view> bytes) {
  const size_t layer_bytes = KvLayerBytes(), block_bytes = layer_bytes * config_.num_layers;
  MM_RETURN_IF_ERROR(CheckKvBlockSizes(blocks, bytes, block_bytes));
  if (blocks.empty()) return absl::OkStatus();
  MM_RETURN_IF_ERROR(CudaSetDevice(device_));
  // Rows in page-locked memory (a GPU router's host tier) copy straight
  // from there; others through the staging buffer.
  size_t pageable = 0;
  for (absl::string_view b : bytes) pageable += IsPageLocked(b.data()) ? 0 : 1;
  const size_t per = std::min(pageable, StagedBlocks(block_bytes));
  char* staging = nullptr;
  if (per > 0) {
    MM_ASSIGN_OR_RETURN(void* p, Pinned(kHostKvBlock, per * block_bytes));
    staging = static_cast<char*>(p);
  }
  size_t staged = 0;  // since the last wait
  // A failed call still waits for the copies it queued: they read the
  // staging buffer and the callers' bytes, which go once it returns.
  absl::Cleanup drain = [&] { CudaSynchronize(stream_).IgnoreError(); };
  for (size_t i = 0; i < blocks.size(); ++i) {
    const char* host = bytes[i].data();
    if (!IsPageLocked(host)) {
      if (staged == per) {  // the staging buffer is read before it is written again
        MM_RETURN_IF_ERROR(CudaSynchronize(stream_));
        staged = 0;
      }
      char* to = staging + staged++ * block_bytes;
      std::memcpy(to, host, block_bytes);
      host = to;
    }
    for (int l = 0; l < config_.num_layers; ++l) {
      MM_RETURN_IF_ERROR(CopyToDeviceAsync(KvBlock(l, blocks[i]), host + l * layer_bytes, layer_bytes, stream_));
    }
  }
  // Once for the rest, before the sources are written again or let go.
  std::move(drain).Cancel();
  return CudaSynchronize(stream_);
}

}  // namespace moemesh
