// bench_ops: times one matmul or one conv2d forward + backward with bcos.cpp and prints the
// median seconds per iteration. tools/bench_ops.py runs it beside PyTorch on the same shapes
// and prints GFLOP/s and the ratio (bench/ops is the wrapper).
//   bench_ops matmul M K N
//   bench_ops conv N C H O K STRIDE PAD        (square input H x H, square kernel K x K)
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <vector>

#include "autograd/ops.h"

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

int usage() {
  std::fprintf(stderr, "usage: bench_ops matmul M K N | bench_ops conv N C H O K STRIDE PAD\n");
  return 2;
}
}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) return usage();
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
    } else {
      return usage();
    }
  } catch (const Error& e) {
    std::fprintf(stderr, "bench_ops: %s\n", e.what());
    return 1;
  }
  return 0;
}
