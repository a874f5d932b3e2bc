// Thread count: BCOS_NUM_THREADS if set, else every core OpenMP sees. Applied to OpenMP and
// to Eigen's GEMM so both agree.
#include "tensor/parallel.h"

#include <Eigen/Core>
#include <atomic>
#include <cstdlib>

namespace bcos {

namespace {
int initial_threads() {
  int n = 1;
#ifdef _OPENMP
  n = omp_get_num_procs();
#endif
  if (const char* env = std::getenv("BCOS_NUM_THREADS")) {
    int v = std::atoi(env);
    if (v > 0) n = v;
  }
  return n;
}
std::atomic<int> g_threads{0};
}  // namespace

int num_threads() {
  int n = g_threads.load(std::memory_order_relaxed);
  if (n == 0) {
    n = initial_threads();
    set_num_threads(n);
  }
  return n;
}

void set_num_threads(int n) {
  n = std::max(n, 1);
  g_threads.store(n);
#ifdef _OPENMP
  omp_set_num_threads(n);
#endif
  Eigen::setNbThreads(n);
}

}  // namespace bcos
