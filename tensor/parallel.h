// CPU threading: OpenMP, used only above a work threshold so small ops stay single-threaded.
// BCOS_NUM_THREADS sets the thread count (default: all cores).
#pragma once

#include <algorithm>
#include <cstdint>

#ifdef _OPENMP
#include <omp.h>
#endif

namespace bcos {

// Below this many units of work (roughly: element-operations) a loop runs serially.
inline constexpr int64_t kParallelThreshold = 32768;

// The thread count, read once from BCOS_NUM_THREADS (also applied to OpenMP and Eigen).
int num_threads();
void set_num_threads(int n);

// Calls fn(begin, end) over [0, n) split into one contiguous range per thread, or once for the
// whole range when n * cost_per_item is below the threshold or inside another parallel region.
template <class F>
void parallel_for(int64_t n, int64_t cost_per_item, F&& fn) {
  if (n <= 0) return;
#ifdef _OPENMP
  int threads = num_threads();
  if (threads > 1 && n > 1 && n * std::max<int64_t>(cost_per_item, 1) >= kParallelThreshold &&
      !omp_in_parallel()) {
    int64_t t = std::min<int64_t>(threads, n);
#pragma omp parallel num_threads(int(t))
    {
      int64_t id = omp_get_thread_num();
      int64_t chunk = (n + t - 1) / t;
      int64_t b = id * chunk, e = std::min(n, b + chunk);
      if (b < e) fn(b, e);
    }
    return;
  }
#endif
  fn(int64_t(0), n);
}

}  // namespace bcos
