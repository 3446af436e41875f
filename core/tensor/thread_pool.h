#ifndef MOEMESH_CORE_TENSOR_THREAD_POOL_H_
#define MOEMESH_CORE_TENSOR_THREAD_POOL_H_

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace moemesh {

// A fixed pool for data-parallel loops. ParallelFor splits [0, n) into
// contiguous chunks; the calling thread works too, so a pool of N threads
// spawns N-1 workers. Calls must not overlap: ParallelFor is meant for one
// driver thread (the engine's step loop); a nested call runs inline.
//
// A decode step issues hundreds of small loops, so hand-off latency matters:
// idle workers spin briefly on an atomic generation counter before sleeping
// on a condition variable, and the caller spins for the loop's completion.
class ThreadPool {
 public:
  explicit ThreadPool(int num_threads);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int num_threads() const { return num_threads_; }

  // Runs fn(begin, end) over disjoint ranges covering [0, n), each at least
  // `grain` long (except the last), and returns when all have finished.
  void ParallelFor(int64_t n, int64_t grain,
                   const std::function<void(int64_t, int64_t)>& fn);

 private:
  void WorkerLoop();
  void RunChunks();

  const int num_threads_;
  std::vector<std::thread> workers_;

  std::mutex mu_;
  std::condition_variable start_cv_;
  std::atomic<uint64_t> generation_{0};  // bumped to start a loop
  std::atomic<int> sleepers_{0};         // workers blocked on start_cv_
  std::atomic<int> pending_{0};          // workers still in the current loop
  std::atomic<bool> stop_{false};

  // The current loop; written before generation_ is bumped.
  const std::function<void(int64_t, int64_t)>* fn_ = nullptr;
  int64_t n_ = 0;
  int64_t chunk_ = 0;
  std::atomic<int64_t> next_{0};
  std::atomic<bool> in_loop_{false};
};

}  // namespace moemesh

#endif  // MOEMESH_CORE_TENSOR_THREAD_POOL_H_
