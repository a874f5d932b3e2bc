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

// How many chunks parallel_chunks splits n items into: 1 (run serially) when n * cost is below
// the threshold, when one thread is configured, or inside another parallel region.
inline int64_t chunk_count(int64_t n, int64_t cost_per_item) {
#ifdef _OPENMP
  int threads = num_threads();
  if (threads > 1 && n > 1 && n * std::max<int64_t>(cost_per_item, 1) >= kParallelThreshold &&
      !omp_in_parallel())
    return std::min<int64_t>(threads, n);
#endif
  (void)cost_per_item;
  return 1;
}

// bfloat16 matrix products for inference and explanations: while on, every float32 GEMM on the
// CPU with both sides 64 or more (matmul, linear, convolution -- which then skips Winograd and
// the implicit column matrix) rounds its operands to bfloat16 and sums in float32
// (tensor/cpu/gemm_bf16.cpp). Only where the CPU has AMX-BF16 or AVX-512 BF16: set_cpu_bf16(true)
// is ignored elsewhere (check cpu_bf16()). Off by default; not meant for training (gradients
// would be bf16-rounded products too).
bool cpu_bf16_supported();
void set_cpu_bf16(bool on);
bool cpu_bf16();
struct CpuBf16Guard {
  explicit CpuBf16Guard(bool on = true) : previous_(cpu_bf16()) { set_cpu_bf16(on); }
  ~CpuBf16Guard() { set_cpu_bf16(previous_); }
  CpuBf16Guard(const CpuBf16Guard&) = delete;
  CpuBf16Guard& operator=(const CpuBf16Guard&) = delete;

 private:
  bool previous_;
};

// Autocast's bf16 products on this thread (tensor/cpu/gemm.h: Bf16OperandsScope): off; on, with
// the operands already rounded to bf16; or on, with float32 operands that each product rounds
// itself (the bf16 GEMM while packing, gemm() by a rounded copy for smaller products). Per thread,
// and handed on to the workers of every parallel_chunks / parallel_for, so a convolution's
// per-sample GEMMs see what its caller set.
enum class Bf16Operands : uint8_t { off, rounded, unrounded };
inline Bf16Operands& bf16_operands_mode() {
  static thread_local Bf16Operands mode = Bf16Operands::off;
  return mode;
}

// Splits [0, n) into chunk_count() contiguous chunks and calls fn(chunk, begin, end) for each,
// in parallel. The split depends only on n and the configured thread count -- never on how many
// threads OpenMP actually grants -- so every chunk runs, results are reproducible, and `chunk`
// (< num_threads()) can index per-thread scratch buffers.
template <class F>
void parallel_chunks(int64_t n, int64_t cost_per_item, F&& fn) {
  if (n <= 0) return;
  const int64_t chunks = chunk_count(n, cost_per_item);
  if (chunks == 1) {
    fn(int64_t(0), int64_t(0), n);
    return;
  }
  const Bf16Operands bf16_operands = bf16_operands_mode();
#pragma omp parallel for schedule(static) num_threads(int(chunks))
  for (int64_t c = 0; c < chunks; ++c) {
    bf16_operands_mode() = bf16_operands;
    int64_t b = n * c / chunks, e = n * (c + 1) / chunks;
    if (b < e) fn(c, b, e);
  }
}

// Calls fn(begin, end) over contiguous pieces of [0, n), in parallel when worthwhile.
template <class F>
void parallel_for(int64_t n, int64_t cost_per_item, F&& fn) {
  parallel_chunks(n, cost_per_item, [&](int64_t, int64_t b, int64_t e) { fn(b, e); });
}

}  // namespace bcos
