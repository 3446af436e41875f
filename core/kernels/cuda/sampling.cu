#include "core/kernels/cuda/sampling.h"

#include <algorithm>
#include <cmath>
#include <cub/block/block_reduce.cuh>
#include <cub/block/block_scan.cuh>
#include <cub/device/device_radix_sort.cuh>
#include <vector>

#include "absl/strings/str_cat.h"
#include "core/common/status_macros.h"
#include "core/kernels/cuda/cuda_check.cuh"

namespace moemesh {
namespace {

constexpr int kThreads = 1024;
constexpr size_t kSortRows = 16;  // sampled rows a sort takes

// Penalties as Sampler::Sample applies them, in the same float operations
// (no fused multiply-adds): repetition on every listed token, presence and
// frequency on the output's.
__global__ void PenaltyKernel(float* logits, int vocab, const SampleRowParams* rows, const PenaltyToken* penalties) {
  const SampleRowParams r = rows[blockIdx.x];
  float* row = logits + static_cast<size_t>(r.row) * vocab;
  for (int e = r.penalty_begin + threadIdx.x; e < r.penalty_end; e += blockDim.x) {
    const PenaltyToken p = penalties[e];
    if (p.token < 0 || p.token >= vocab) continue;
    float l = row[p.token];
    if (r.repetition_penalty != 1.0f) {
      l = l > 0 ? __fdiv_rn(l, r.repetition_penalty) : __fmul_rn(l, r.repetition_penalty);
    }
    if (p.count > 0 && (r.presence_penalty != 0 || r.frequency_penalty != 0)) {
      l = __fsub_rn(l, __fadd_rn(r.presence_penalty, __fmul_rn(r.frequency_penalty, static_cast<float>(p.count))));
    }
    row[p.token] = l;
  }
}

// Greedy rows: the first largest logit, as std::max_element.
__global__ void __launch_bounds__(kThreads) ArgmaxKernel(const float* logits, int vocab, const SampleRowParams* rows,
                                                         int* tokens) {
  const SampleRowParams r = rows[blockIdx.x];
  if (r.temperature != 0) return;
  const float* row = logits + static_cast<size_t>(r.row) * vocab;
  float best = -INFINITY;
  int at = vocab;
  for (int i = threadIdx.x; i < vocab; i += kThreads) {
    if (at == vocab || row[i] > best) {  // ascending: a thread's first wins ties
      best = row[i];
      at = i;
    }
  }
  struct Best {
    float v;
    int i;
  };
  using Reduce = cub::BlockReduce<Best, kThreads>;
  __shared__ typename Reduce::TempStorage tmp;
  const Best b = Reduce(tmp).Reduce(Best{best, at}, [vocab](const Best& x, const Best& y) {
    if (x.i == vocab) return y;
    if (y.i == vocab) return x;
    return (y.v > x.v || (y.v == x.v && y.i < x.i)) ? y : x;
  });
  if (threadIdx.x == 0) tokens[blockIdx.x] = b.i;
}

// Sort keys for sampled row s: s above descending logits (-0 as +0), so
// that one ascending, stable radix sort orders each row by logit, ties by id.
__global__ void KeysKernel(const float* logits, int vocab, const SampleRowParams* rows, const int* sampled,
                           unsigned long long* keys, int* values) {
  const int s = blockIdx.y;
  const float* row = logits + static_cast<size_t>(rows[sampled[s]].row) * vocab;
  for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < vocab; i += gridDim.x * blockDim.x) {
    const float v = row[i] == 0.f ? 0.f : row[i];
    const unsigned bits = __float_as_uint(v);
    const unsigned ordered = (bits & 0x80000000u) ? ~bits : (bits | 0x80000000u);  // ascending with v
    const size_t at = static_cast<size_t>(s) * vocab + i;
    keys[at] = (static_cast<unsigned long long>(s) << 32) | static_cast<unsigned>(~ordered);
    values[at] = i;
  }
}

// Sampled row blockIdx.x over its sorted ids: top-k, softmax with
// temperature (double, as the CPU), top-p, min-p, then the token whose
// cumulative interval holds uniform * (sum of the kept probabilities).
__global__ void __launch_bounds__(kThreads) PickKernel(const float* logits, int vocab, const SampleRowParams* rows,
                                                       const int* sampled, const int* sorted, int* tokens) {
  const int s = blockIdx.x;
  const SampleRowParams r = rows[sampled[s]];
  const float* row = logits + static_cast<size_t>(r.row) * vocab;
  const int* ids = sorted + static_cast<size_t>(s) * vocab;
  const int k = r.top_k > 0 ? min(r.top_k, vocab) : vocab;
  const double mx = __fdiv_rn(row[ids[0]], r.temperature);
  auto weight = [&](int i) { return exp(static_cast<double>(__fdiv_rn(row[ids[i]], r.temperature)) - mx); };

  using Reduce = cub::BlockReduce<double, kThreads>;
  using Scan = cub::BlockScan<double, kThreads>;
  __shared__ union {
    typename Reduce::TempStorage reduce;
    typename Scan::TempStorage scan;
  } tmp;
  __shared__ double shared_value;
  __shared__ int found;
  auto block_sum = [&](double v) {
    const double total = Reduce(tmp.reduce).Sum(v);
    if (threadIdx.x == 0) shared_value = total;
    __syncthreads();
    const double out = shared_value;
    __syncthreads();
    return out;
  };
  // First i < n whose inclusive prefix sum of prob(i) passes `bound`
  // (>= when `inclusive`, else >); n when none does.
  auto first_past = [&](int n, double bound, bool inclusive, auto prob) {
    if (threadIdx.x == 0) found = n;
    __syncthreads();
    double carry = 0;
    for (int base = 0; base < n; base += kThreads) {
      const int i = base + threadIdx.x;
      const double p = i < n ? prob(i) : 0.0;
      double cum, chunk;
      Scan(tmp.scan).InclusiveSum(p, cum, chunk);
      cum += carry;
      if (i < n && (inclusive ? cum >= bound : cum > bound)) atomicMin(&found, i);
      __syncthreads();
      if (found < n) break;
      carry += chunk;
    }
    const int out = found;
    __syncthreads();
    return out;
  };

  double part = 0;
  for (int i = threadIdx.x; i < k; i += kThreads) part += weight(i);
  const double sum = block_sum(part);
  auto prob = [&](int i) { return weight(i) / sum; };
  int keep = k;
  if (r.top_p < 1.0f) keep = min(k, first_past(k, static_cast<double>(r.top_p), true, prob) + 1);
  if (r.min_p > 0) {
    // Probabilities fall with i: the kept ones at or above the floor lead.
    const double floor = static_cast<double>(r.min_p) * prob(0);
    double count = 0;
    for (int i = threadIdx.x; i < keep; i += kThreads) count += prob(i) >= floor ? 1 : 0;
    keep = max(1, static_cast<int>(block_sum(count)));
  }
  part = 0;
  for (int i = threadIdx.x; i < keep; i += kThreads) part += prob(i);
  const double total = block_sum(part);
  const int chosen = first_past(keep, r.uniform * total, false, prob);
  if (threadIdx.x == 0) tokens[sampled[s]] = ids[chosen < keep ? chosen : keep - 1];
}

absl::Status Check(const SampleRowParams& r, int logits_rows, size_t penalties) {
  if (r.row < 0 || r.row >= logits_rows) {
    return absl::InvalidArgumentError(absl::StrCat("CudaSampler: row ", r.row, " outside [0, ", logits_rows, ")"));
  }
  if (!(r.temperature >= 0 && std::isfinite(r.temperature)) || r.top_k < 0 || !(r.top_p > 0 && r.top_p <= 1) ||
      !(r.min_p >= 0 && r.min_p <= 1) || !(r.repetition_penalty > 0) || !(r.uniform >= 0 && r.uniform < 1)) {
    return absl::InvalidArgumentError("CudaSampler: sampling parameters out of range");
  }
  if (r.penalty_begin < 0 || r.penalty_end < r.penalty_begin || static_cast<size_t>(r.penalty_end) > penalties) {
    return absl::InvalidArgumentError("CudaSampler: penalty entries out of bounds");
  }
  return absl::OkStatus();
}

}  // namespace

CudaSampler::CudaSampler() = default;
CudaSampler::~CudaSampler() = default;

absl::Status CudaSampler::Run(float* logits, int logits_rows, int vocab, absl::Span<const SampleRowParams> rows,
                              absl::Span<const PenaltyToken> penalties, int* tokens, CudaStream stream) {
  if (vocab <= 0) return absl::InvalidArgumentError("CudaSampler: vocab must be positive");
  if (rows.empty()) return absl::OkStatus();
  if (rows.size() > 65535) return absl::InvalidArgumentError("CudaSampler: at most 65535 rows a call");
  std::vector<int> sampled;
  for (size_t i = 0; i < rows.size(); ++i) {
    MM_RETURN_IF_ERROR(Check(rows[i], logits_rows, penalties.size()));
    if (rows[i].temperature > 0) sampled.push_back(static_cast<int>(i));
  }
  const cudaStream_t st = static_cast<cudaStream_t>(stream);
  const size_t n = rows.size(), table_bytes = n * sizeof(SampleRowParams) + n * sizeof(int);
  MM_RETURN_IF_ERROR(GrowBuffer(&table_, table_bytes));
  MM_RETURN_IF_ERROR(GrowBuffer(&tokens_, n * sizeof(int)));
  auto* d_rows = table_->as<SampleRowParams>();
  int* d_sampled = reinterpret_cast<int*>(d_rows + n);
  MM_RETURN_IF_ERROR(CopyToDeviceAsync(d_rows, rows.data(), n * sizeof(SampleRowParams), stream));
  MM_RETURN_IF_ERROR(CopyToDeviceAsync(d_sampled, sampled.data(), sampled.size() * sizeof(int), stream));
  if (!penalties.empty()) {
    MM_RETURN_IF_ERROR(GrowBuffer(&penalties_, penalties.size() * sizeof(PenaltyToken)));
    MM_RETURN_IF_ERROR(
        CopyToDeviceAsync(penalties_->data(), penalties.data(), penalties.size() * sizeof(PenaltyToken), stream));
    PenaltyKernel<<<static_cast<unsigned>(n), 256, 0, st>>>(logits, vocab, d_rows, penalties_->as<PenaltyToken>());
    MM_RETURN_IF_ERROR(LaunchStatus("PenaltyKernel"));
  }
  int* d_tokens = tokens_->as<int>();
  ArgmaxKernel<<<static_cast<unsigned>(n), kThreads, 0, st>>>(logits, vocab, d_rows, d_tokens);
  MM_RETURN_IF_ERROR(LaunchStatus("ArgmaxKernel"));
  // Sampled rows, a bounded number at a time: the sort's scratch is 24
  // bytes a vocabulary entry.
  for (size_t c0 = 0; c0 < sampled.size(); c0 += kSortRows) {
    const int count = static_cast<int>(std::min<size_t>(kSortRows, sampled.size() - c0));
    const size_t items = static_cast<size_t>(count) * vocab;
    if (items > static_cast<size_t>(INT32_MAX)) return absl::InvalidArgumentError("CudaSampler: vocabulary too large");
    MM_RETURN_IF_ERROR(GrowBuffer(&keys_, 2 * items * sizeof(unsigned long long)));
    MM_RETURN_IF_ERROR(GrowBuffer(&values_, 2 * items * sizeof(int)));
    auto* keys = keys_->as<unsigned long long>();
    int* values = values_->as<int>();
    KeysKernel<<<dim3((vocab + 255) / 256, static_cast<unsigned>(count)), 256, 0, st>>>(logits, vocab, d_rows,
                                                                                        d_sampled + c0, keys, values);
    MM_RETURN_IF_ERROR(LaunchStatus("KeysKernel"));
    int end_bit = 33;
    while ((1 << (end_bit - 32)) < count) ++end_bit;
    size_t temp_bytes = 0;
    MM_RETURN_IF_ERROR(CudaStatus(cub::DeviceRadixSort::SortPairs(nullptr, temp_bytes, keys, keys + items, values,
                                                                  values + items, static_cast<int>(items), 0,
                                                                  end_bit, st),
                                  "cub::DeviceRadixSort (size)"));
    MM_RETURN_IF_ERROR(GrowBuffer(&temp_, temp_bytes));
    MM_RETURN_IF_ERROR(CudaStatus(cub::DeviceRadixSort::SortPairs(temp_->data(), temp_bytes, keys, keys + items,
                                                                  values, values + items, static_cast<int>(items), 0,
                                                                  end_bit, st),
                                  "cub::DeviceRadixSort"));
    PickKernel<<<static_cast<unsigned>(count), kThreads, 0, st>>>(logits, vocab, d_rows, d_sampled + c0,
                                                                  values + items, d_tokens);
    MM_RETURN_IF_ERROR(LaunchStatus("PickKernel"));
  }
  MM_RETURN_IF_ERROR(CopyToHostAsync(tokens, d_tokens, n * sizeof(int), stream));
  return CudaSynchronize(stream);
}

}  // namespace moemesh
