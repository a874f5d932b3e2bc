// Convolutions through cuDNN's graph API (set_cudnn_graph_api, tensor/cuda/conv_graph.cu): every
// direction, type and window option against the CPU and against the legacy API; the numerics
// switches (TF32 off, deterministic algorithms) obeyed through the engines' notes; a plan kept
// per shape and pointer alignment, up to the cache's bound (a CUDA graph holding what it captured);
// benchmark mode. On a GPU, and on the emulator (whose engines include one that down-converts its
// inputs and writes NaN: taking it fails these cases).
#include <doctest/doctest.h>

#include <initializer_list>
#include <vector>

#include "autograd/ops.h"
#include "tensor/cuda/backend.h"
#include "tensor/cuda_graph.h"
#include "tests/cuda/gpu_test.h"
#include "tests/golden.h"

using namespace bcos;

using gpu_test::GraphApi;
using gpu_test::have_gpu;

namespace {

struct Window {
  int64_t stride, padding, dilation, groups;
};

// y = conv2d(x, w, b) and the gradients of sum(y * c) on `dev`: [y, dx, dw, db] on the CPU.
std::vector<Tensor> convolve(const Tensor& x, const Tensor& w, const Tensor& b, const Window& o, Device dev) {
  Tensor xd = x.to(dev).requires_grad_(), wd = w.to(dev).requires_grad_(), bd = b.to(dev).requires_grad_();
  Tensor y = conv2d(xd, wd, bd, o.stride, o.padding, o.dilation, o.groups);
  // Weights fixed by the output's shape (small integers: the same incoming gradient on every device).
  std::vector<double> weights(size_t(y.numel()));
  for (size_t i = 0; i < weights.size(); ++i) weights[i] = double(int(i % 5) - 2);
  const Tensor c = from_vector(weights, y.shape()).to(y.dtype()).to(dev);
  sum(y * c).backward();
  return {y.to(Device()), xd.grad().to(Device()), wd.grad().to(Device()), bd.grad().to(Device())};
}

}  // namespace

TEST_CASE("cuda conv graph: convolutions through cuDNN's graph API match the CPU and the legacy API in every "
          "direction, type and window") {
  if (!have_gpu()) return;
  manual_seed(71);
  const Device cuda = Device::cuda(0);
  const Window windows[] = {{1, 1, 1, 1}, {2, 1, 1, 1}, {1, 2, 2, 1}, {2, 0, 1, 2}, {1, 1, 1, 6}};
  for (DType dt : {kFloat32, kFloat64}) {
    for (const Window& o : windows) {
      CAPTURE(dt);
      CAPTURE(o.stride);
      CAPTURE(o.padding);
      CAPTURE(o.dilation);
      CAPTURE(o.groups);
      const Tensor x = randn({3, 6, 9, 8}, dt), w = randn({12, 6 / o.groups, 3, 3}, dt), b = randn({12}, dt);
      const std::vector<Tensor> cpu = convolve(x, w, b, o, Device());
      std::vector<Tensor> legacy;
      {
        GraphApi off(false);
        legacy = convolve(x, w, b, o, cuda);
      }
      GraphApi on(true);
      const int64_t built = cuda::conv_graph_plans_built(), declined = cuda::conv_graph_declined();
      const std::vector<Tensor> graph = convolve(x, w, b, o, cuda);
      INFO("last declined: ", cuda::conv_graph_last_declined());
      CHECK(cuda::conv_graph_declined() == declined);     // none of these shapes fell back
      CHECK(cuda::conv_graph_plans_built() - built == 3);  // forward, backward data, backward filter
      const std::vector<Tensor> again = convolve(x, w, b, o, cuda);
      CHECK(cuda::conv_graph_plans_built() - built == 3);  // kept per shape
      // float64: exact sums in another order; float32: TF32 operands (~2^-11 relative), as the legacy API.
      const double tol = dt == kFloat64 ? 1e-10 : 5e-3;
      for (size_t i = 0; i < cpu.size(); ++i) {
        CAPTURE(i);
        CHECK(golden::relative_error(graph[i], cpu[i]) <= tol);
        CHECK(golden::relative_error(graph[i], legacy[i]) <= tol);
        CHECK(golden::relative_error(again[i], cpu[i]) <= tol);
      }
    }
  }
}

TEST_CASE("cuda conv graph: with TF32 off no tensor-core engine runs float32, deterministic algorithms give "
          "the same bits twice, and bf16 autocast runs on the graph API too") {
  if (!have_gpu()) return;
  GraphApi on(true);
  manual_seed(72);
  const Device cuda = Device::cuda(0);
  const Window o{1, 1, 1, 1};
  {
    INFO("TF32 off: float32 sums of float32 operands (~1e-7; TF32's 10-bit operands would be ~1e-3 off)");
    gpu_test::Tf32 no_tf32(false);
    const Tensor x = randn({2, 5, 10, 7}), w = randn({6, 5, 3, 3}), b = randn({6});
    const std::vector<Tensor> cpu = convolve(x, w, b, o, Device()), gpu = convolve(x, w, b, o, cuda);
    for (size_t i = 0; i < cpu.size(); ++i) CHECK(golden::relative_error(gpu[i], cpu[i]) <= 1e-5);
  }
  {
    INFO("deterministic algorithms: bit-identical reruns of every direction");
    struct Deterministic {
      Deterministic() { set_deterministic_algorithms(true); }
      ~Deterministic() { set_deterministic_algorithms(false); }
    } deterministic;
    const Tensor x = randn({4, 5, 12, 9}), w = randn({7, 5, 3, 3}), b = randn({7});
    const std::vector<Tensor> first = convolve(x, w, b, o, cuda), second = convolve(x, w, b, o, cuda);
    for (size_t i = 0; i < first.size(); ++i) CHECK(golden::equal(first[i], second[i]));
  }
  {
    INFO("bf16 autocast: bf16 operands through the graph API give the legacy API's result (both sum in float32)");
    const Tensor x = randn({2, 8, 10, 10}), w = randn({6, 8, 3, 3});
    auto run = [&](bool graph) {
      GraphApi api(graph);
      AutocastGuard autocast(cuda.type, kBFloat16);
      const Tensor y = conv2d(x.to(cuda), w.to(cuda), Tensor(), 1, 1, 1, 1);
      CHECK(y.dtype() == kBFloat16);
      return y.to(Device()).to(kFloat32);
    };
    const int64_t declined = cuda::conv_graph_declined();
    const Tensor graph = run(true), legacy = run(false);
    CHECK(cuda::conv_graph_declined() == declined);
    CHECK(golden::relative_error(graph, legacy) <= 0x1p-8);  // an ulp of bf16 where float32 sums straddle a rounding
  }
}

TEST_CASE("cuda conv graph: a view that starts inside its allocation gets a plan of its own alignment") {
  if (!have_gpu()) return;
  GraphApi on(true);
  manual_seed(73);
  const Device cuda = Device::cuda(0);
  // One shape, two alignments: x dense at the start of its allocation, then x one float into one.
  const Tensor x = randn({2, 3, 11, 10}), w = randn({4, 3, 3, 3});
  const Tensor cpu = conv2d(x, w, Tensor(), 1, 1, 1, 1);
  const Tensor aligned = x.to(cuda);
  const Tensor storage = empty({x.numel() + 1}, {kFloat32, cuda});
  Tensor shifted = storage.narrow(0, 1, x.numel()).view(x.shape());
  shifted.copy_(aligned);
  const int64_t built = cuda::conv_graph_plans_built();
  const Tensor y1 = conv2d(aligned, w.to(cuda), Tensor(), 1, 1, 1, 1);
  const Tensor y2 = conv2d(shifted, w.to(cuda), Tensor(), 1, 1, 1, 1);
  CHECK(cuda::conv_graph_plans_built() - built == 2);  // one per alignment of x
  CHECK(golden::relative_error(y1.to(Device()), cpu) <= 5e-3);
  CHECK(golden::relative_error(y2.to(Device()), cpu) <= 5e-3);
}

TEST_CASE("cuda conv graph: cudnn_benchmark times the graph API's engines and keeps the fastest") {
  if (!have_gpu()) return;
  GraphApi on(true);
  const gpu_test::CudnnBenchmark benchmarking(true);
  manual_seed(74);
  const Tensor x = randn({3, 4, 9, 13}, kFloat64), w = randn({5, 4, 3, 3}, kFloat64), b = randn({5}, kFloat64);
  const Window o{2, 1, 1, 1};
  const int64_t built = cuda::conv_graph_plans_built(), declined = cuda::conv_graph_declined();
  const std::vector<Tensor> cpu = convolve(x, w, b, o, Device()), gpu = convolve(x, w, b, o, Device::cuda(0));
  CHECK(cuda::conv_graph_declined() == declined);
  CHECK(cuda::conv_graph_plans_built() - built >= 3);  // every engine that ran, per direction
  const int64_t after = cuda::conv_graph_plans_built();
  const std::vector<Tensor> again = convolve(x, w, b, o, Device::cuda(0));
  CHECK(cuda::conv_graph_plans_built() == after);  // the fastest kept: not timed again
  for (size_t i = 0; i < cpu.size(); ++i) {
    CHECK(golden::relative_error(gpu[i], cpu[i]) <= 1e-10);
    CHECK(golden::relative_error(again[i], cpu[i]) <= 1e-10);
  }
}

TEST_CASE("cuda conv graph: the plan cache keeps the most recently used plans up to its bound; a CUDA graph holds "
          "the plans it captured after the cache drops them") {
  if (!have_gpu()) return;
  GraphApi on(true);
  struct RestoreLimit {
    int64_t was = cuda::conv_graph_cache_limit();
    ~RestoreLimit() { cuda::set_conv_graph_cache_limit(was); }
  } restore;
  manual_seed(75);
  const Device cuda = Device::cuda(0);
  const Tensor w = randn({4, 3, 3, 3}).to(cuda);
  // Forward only (no gradient): one plan per shape; five heights, five shapes.
  std::vector<Tensor> xs;
  for (int64_t h : {9, 10, 11, 12, 13}) xs.push_back(randn({2, 3, h, 8}).to(cuda));
  auto built_by = [&](std::initializer_list<int> shapes) {
    const int64_t before = cuda::conv_graph_plans_built();
    for (int i : shapes) (void)conv2d(xs[size_t(i)], w, Tensor(), 1, 1, 1, 1);
    return cuda::conv_graph_plans_built() - before;
  };
  cuda::set_conv_graph_cache_limit(2);
  CHECK(cuda::conv_graph_plans_kept() <= 2);  // trimmed at once
  CHECK(built_by({0, 1}) == 2);
  CHECK(cuda::conv_graph_plans_kept() == 2);
  CHECK(built_by({0}) == 0);     // kept, and now the most recent: 0, 1
  CHECK(built_by({2}) == 1);     // 1 dropped: 2, 0
  CHECK(built_by({0, 2}) == 0);
  CHECK(built_by({1}) == 1);     // 0 dropped: 1, 2
  CHECK(cuda::conv_graph_plans_kept() == 2);
  cuda::set_conv_graph_cache_limit(-1);  // nothing kept: every call searches
  CHECK(cuda::conv_graph_plans_kept() == 0);
  CHECK(built_by({3, 3}) == 2);
  CHECK(cuda::conv_graph_plans_kept() == 0);
  cuda::set_conv_graph_cache_limit(0);  // no bound
  CHECK(built_by({0, 1, 2, 3}) == 4);
  CHECK(built_by({0, 1, 2, 3}) == 0);
  CHECK(cuda::conv_graph_plans_kept() == 4);

  // A graph captured with shape 4's plan replays it after the cache has dropped it.
  cuda::set_conv_graph_cache_limit(1);
  const Tensor eager = conv2d(xs[4], w, Tensor(), 1, 1, 1, 1);
  Tensor y;
  CudaGraph graph;
  graph.capture(cuda, [&] { y = conv2d(xs[4], w, Tensor(), 1, 1, 1, 1); });
  CHECK(built_by({0}) == 1);  // shape 4's plan dropped from the cache
  CHECK(built_by({4}) == 1);
  for (int replay = 0; replay < 2; ++replay) {
    y.zero_();
    graph.replay();
    CHECK(golden::equal(y.to(Device()), eager.to(Device())));
  }
  // Destroyed straight after its replay was queued, a graph lets go of its plans (here the only
  // holder: nothing is cached) once that replay has run. (Only the emulator, whose captured cuDNN
  // executions check their plan at each replay, fails here when the graph does not wait.)
  // Its output outlives it, so that the graph's memory pool stays in use and its release does not
  // synchronise the device for it.
  cuda::set_conv_graph_cache_limit(-1);
  Tensor z;
  {
    CudaGraph once;
    once.capture(cuda, [&] { z = conv2d(xs[3], w, Tensor(), 1, 1, 1, 1); });
    z.zero_();
    once.replay();
  }
  CHECK(golden::equal(z.to(Device()), conv2d(xs[3], w, Tensor(), 1, 1, 1, 1).to(Device())));
}
