#ifndef MOEMESH_CORE_KERNELS_CPU_FOR_EACH_TILE_H_
#define MOEMESH_CORE_KERNELS_CPU_FOR_EACH_TILE_H_

#include <algorithm>
#include <cstdint>

#include "core/tensor/thread_pool.h"

namespace moemesh {

// Runs run(first, end) over the [first, end) tiles of `tile_rows` weight
// rows of n, on the pool where there is one, each thread's chunk at least
// ~64K multiply-adds (with k columns and m input rows) so threads pay off.
template <typename Run>
void ForEachTile(int n, int tile_rows, int k, int m, ThreadPool* pool, const Run& run) {
  const int64_t tiles = (n + tile_rows - 1) / tile_rows;
  const int64_t grain = std::max<int64_t>(1, 65536 / (static_cast<int64_t>(k) * tile_rows * m + 1));
  if (pool != nullptr) {
    pool->ParallelFor(tiles, grain, run);
  } else {
    run(0, tiles);
  }
}

}  // namespace moemesh

#endif  // MOEMESH_CORE_KERNELS_CPU_FOR_EACH_TILE_H_
