#include "core/tensor/thread_pool.h"

#include <algorithm>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define MM_CPU_RELAX() _mm_pause()
#else
#define MM_CPU_RELAX() std::this_thread::yield()
#endif

namespace moemesh {
namespace {

// About 20-50 microseconds of spinning before a worker sleeps.
constexpr int kSpinIterations = 20000;

}  // namespace

ThreadPool::ThreadPool(int num_threads) : num_threads_(std::max(1, num_threads)) {
  for (int i = 1; i < num_threads_; ++i) workers_.emplace_back([this] { WorkerLoop(); });
}

ThreadPool::~ThreadPool() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_.store(true);
    generation_.fetch_add(1);
  }
  start_cv_.notify_all();
  for (auto& t : workers_) t.join();
}

void ThreadPool::RunChunks() {
  for (;;) {
    int64_t begin = next_.fetch_add(chunk_, std::memory_order_relaxed);
    if (begin >= n_) return;
    (*fn_)(begin, std::min(n_, begin + chunk_));
  }
}

void ThreadPool::WorkerLoop() {
  uint64_t seen = 0;
  for (;;) {
    uint64_t g = generation_.load();
    for (int spin = 0; g == seen && spin < kSpinIterations; ++spin) {
      MM_CPU_RELAX();
      g = generation_.load();
    }
    if (g == seen) {
      std::unique_lock<std::mutex> lock(mu_);
      sleepers_.fetch_add(1);
      start_cv_.wait(lock, [&] { return generation_.load() != seen; });
      sleepers_.fetch_sub(1);
      g = generation_.load();
    }
    if (stop_.load()) return;
    seen = g;
    RunChunks();
    pending_.fetch_sub(1, std::memory_order_release);
  }
}

void ThreadPool::ParallelFor(int64_t n, int64_t grain,
                             const std::function<void(int64_t, int64_t)>& fn) {
  if (n <= 0) return;
  grain = std::max<int64_t>(1, grain);
  // Inline when there is one thread, too little work, or we are nested.
  if (num_threads_ == 1 || n <= grain || in_loop_.exchange(true)) {
    fn(0, n);
    return;
  }
  // A few chunks per thread balances uneven work without much overhead.
  int64_t chunks = std::min<int64_t>((n + grain - 1) / grain, int64_t{num_threads_} * 4);
  fn_ = &fn;
  n_ = n;
  chunk_ = (n + chunks - 1) / chunks;
  next_.store(0, std::memory_order_relaxed);
  pending_.store(static_cast<int>(workers_.size()), std::memory_order_relaxed);
  // Sequentially consistent bump and sleeper check: either a worker about to
  // sleep sees the new generation, or we see it counted and wake it.
  generation_.fetch_add(1);
  if (sleepers_.load() > 0) {
    std::lock_guard<std::mutex> lock(mu_);
    start_cv_.notify_all();
  }
  RunChunks();
  for (int spin = 0; pending_.load(std::memory_order_acquire) != 0; ++spin) {
    if (spin < kSpinIterations) {
      MM_CPU_RELAX();
    } else {
      std::this_thread::yield();
    }
  }
  in_loop_.store(false);
}

}  // namespace moemesh
