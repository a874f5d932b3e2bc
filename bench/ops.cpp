// bench_ops: times one matmul or one conv2d forward + backward with bcos.cpp and prints the
// median seconds per iteration. tools/bench_ops.py runs it beside PyTorch on the same shapes
// and prints GFLOP/s and the ratio (bench/ops is the wrapper).
//   bench_ops matmul M K N
//   bench_ops conv N C H O K STRIDE PAD        (square input H x H, square kernel K x K)
//   bench_ops attention N HEADS L D CAUSAL FUSED  (forward + backward; FUSED 0: the composed form)
//   bench_ops layer_norm ROWS INNER            (forward + backward, with weight and bias)
//   bench_ops peak                             (the CPU's float32 FMA GFLOP/s on the configured
//                                               threads, and the GEMM kernel in use)
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <vector>

#include "autograd/ops.h"
#include "tensor/cpu/gemm.h"
#include "tensor/parallel.h"

#if defined(__x86_64__)
#include <immintrin.h>
#endif

using namespace bcos;

namespace {
double median_seconds(const std::function<void()>& step) {
  step();  // warm-up: first-touch allocation, thread pool start
  std::vector<double> times;
  double total = 0;
  while (times.size() < 3 || (total < 1.0 && times.size() < 50)) {
    auto t0 = std::chrono::steady_clock::now();
    step();
    double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    times.push_back(s);
    total += s;
  }
  std::sort(times.begin(), times.end());
  return times[times.size() / 2];
}

#if defined(__x86_64__)
// Peak float32 throughput: twelve independent FMA chains per thread (enough to hide the FMA
// latency on two ports), in the widest vectors the CPU has; returns FLOPs done per thread.
// 0.9999999 keeps the values bounded; every lane is summed and printed so nothing is optimised away.
template <class V, V (*Fma)(V, V, V), V (*Set1)(float)>
double fma_chains(int64_t iters, float* sink) {
  V acc[12];
  for (int i = 0; i < 12; ++i) acc[i] = Set1(1.0f + 1e-3f * float(i));
  const V mul = Set1(0.9999999f), add = Set1(1e-7f);
  for (int64_t it = 0; it < iters; ++it) {
#pragma GCC unroll 12
    for (int i = 0; i < 12; ++i) acc[i] = Fma(acc[i], mul, add);
  }
  for (int i = 0; i < 12; ++i) {  // every chain feeds the result, or the compiler drops it
    float lanes[sizeof(V) / sizeof(float)];
    std::memcpy(lanes, &acc[i], sizeof(V));
    for (float v : lanes) *sink += v;
  }
  return double(iters) * 12.0 * 2.0 * double(sizeof(V) / sizeof(float));
}
__attribute__((target("avx512f"))) __m512 fma512(__m512 a, __m512 b, __m512 c) { return _mm512_fmadd_ps(a, b, c); }
__attribute__((target("avx512f"))) __m512 set512(float v) { return _mm512_set1_ps(v); }
__attribute__((target("avx2,fma"))) __m256 fma256(__m256 a, __m256 b, __m256 c) { return _mm256_fmadd_ps(a, b, c); }
__attribute__((target("avx2,fma"))) __m256 set256(float v) { return _mm256_set1_ps(v); }
__attribute__((target("avx512f"))) double chains512(int64_t iters, float* sink) {
  return fma_chains<__m512, fma512, set512>(iters, sink);
}
__attribute__((target("avx2,fma"))) double chains256(int64_t iters, float* sink) {
  return fma_chains<__m256, fma256, set256>(iters, sink);
}

// Prints "peak_gflops <float> threads <n> vector <name> gemm <kernel>".
int peak() {
  __builtin_cpu_init();
  const bool avx512 = __builtin_cpu_supports("avx512f");
  if (!avx512 && !(__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))) {
    std::fprintf(stderr, "bench_ops peak: this CPU has neither AVX-512 nor AVX2/FMA\n");
    return 1;
  }
  const int threads = num_threads();
  const int64_t iters = 50'000'000;
  std::vector<float> sinks(size_t(threads), 0.0f);
  double flops = 0;
  const auto t0 = std::chrono::steady_clock::now();
#pragma omp parallel for num_threads(threads) reduction(+ : flops)
  for (int t = 0; t < threads; ++t)
    flops += avx512 ? chains512(iters, &sinks[size_t(t)]) : chains256(iters, &sinks[size_t(t)]);
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  float total = 0;
  for (float v : sinks) total += v;
  std::printf("peak_gflops %.1f threads %d vector %s gemm %s (checksum %g)\n", flops / seconds / 1e9, threads,
              avx512 ? "avx512" : "avx2", cpu::gemm_kernel_name(), double(total));
  return 0;
}
#else
int peak() {
  std::fprintf(stderr, "bench_ops peak: x86-64 only\n");
  return 1;
}
#endif

int usage() {
  std::fprintf(stderr, "usage: bench_ops matmul M K N | bench_ops conv N C H O K STRIDE PAD | "
                       "bench_ops attention N HEADS L D CAUSAL FUSED | bench_ops layer_norm ROWS INNER | "
                       "bench_ops peak\n");
  return 2;
}
}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) return usage();
  if (!std::strcmp(argv[1], "peak")) return peak();
  std::vector<int64_t> a;
  for (int i = 2; i < argc; ++i) a.push_back(std::atoll(argv[i]));
  manual_seed(0);
  try {
    if (!std::strcmp(argv[1], "matmul") && a.size() == 3) {
      Tensor x = randn({a[0], a[1]}), w = randn({a[1], a[2]});
      NoGradGuard no_grad;
      std::printf("%.9f\n", median_seconds([&] { matmul(x, w); }));
    } else if (!std::strcmp(argv[1], "conv") && a.size() == 7) {
      Tensor x = randn({a[0], a[1], a[2], a[2]}).requires_grad_();
      Tensor w = randn({a[3], a[1], a[4], a[4]}).mul_(0.05).requires_grad_();
      Tensor g;
      std::printf("%.9f\n", median_seconds([&] {
                    Tensor y = conv2d(x, w, Tensor(), a[5], a[6]);
                    if (!g.defined()) g = randn(y.shape());
                    y.backward(g);
                    x.zero_grad();
                    w.zero_grad();
                  }));
    } else if (!std::strcmp(argv[1], "attention") && a.size() == 6) {
      // scaled_dot_product_attention forward + backward, q k v [N, heads, L, D]
      Tensor q = randn({a[0], a[1], a[2], a[3]}).requires_grad_(), k = randn(q.shape()).requires_grad_();
      Tensor v = randn(q.shape()).requires_grad_(), g = randn(q.shape());
      std::printf("%.9f\n", median_seconds([&] {
                    scaled_dot_product_attention(q, k, v, Tensor(), a[4] != 0, 0, a[5] != 0).backward(g);
                    q.zero_grad(), k.zero_grad(), v.zero_grad();
                  }));
    } else if (!std::strcmp(argv[1], "layer_norm") && a.size() == 2) {
      // x [ROWS, INNER] normalised over INNER, affine weight and bias [INNER]
      Tensor x = randn({a[0], a[1]}).requires_grad_(), w = randn({a[1]}).requires_grad_();
      Tensor b = randn({a[1]}).requires_grad_(), g = randn(x.shape());
      std::printf("%.9f\n", median_seconds([&] {
                    layer_norm(x, {a[1]}, w, b).backward(g);
                    x.zero_grad(), w.zero_grad(), b.zero_grad();
                  }));
    } else {
      return usage();
    }
  } catch (const Error& e) {
    std::fprintf(stderr, "bench_ops: %s\n", e.what());
    return 1;
  }
  return 0;
}
