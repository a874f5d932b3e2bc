// The emulator's cuDNN (tensor/cuda/emulator/libraries.cpp, cudnn_graph.cpp) and the backend's
// use of it: the legacy API's convolution semantics, its nondeterministic algorithms and the
// backend's fallbacks from an algorithm to the next; then the graph API's fallbacks, which a
// healthy GPU rarely shows and the emulator can stage -- an engine refused at execution, one
// whose workspace the device cannot hold, a kept plan failing later, heuristics that offer
// nothing (the shape then takes the legacy API).
#include <doctest/doctest.h>

#include <cudnn.h>

#include <cmath>
#include <functional>
#include <thread>
#include <tuple>
#include <vector>

#include "autograd/ops.h"
#include "tensor/cuda/backend.h"
#include "tensor/cuda/emulator/runtime.h"
#include "tensor/cuda_graph.h"
#include "tests/cuda/emulator_test.h"
#include "tests/cuda/gpu_test.h"
#include "tests/golden.h"

using namespace bcos;
namespace rt = bcos::emu::runtime;
using bcos::emu_test::DeviceArray;
using bcos::emu_test::ScheduleScope;

namespace {

// A cuDNN handle and the four descriptors of one convolution, destroyed at scope exit.
struct CudnnConvolution {
  cudnnHandle_t handle = nullptr;
  cudnnTensorDescriptor_t x = nullptr, y = nullptr;
  cudnnFilterDescriptor_t w = nullptr;
  cudnnConvolutionDescriptor_t conv = nullptr;
  CudnnConvolution() {
    REQUIRE(cudnnCreate(&handle) == CUDNN_STATUS_SUCCESS);
    cudnnCreateTensorDescriptor(&x);
    cudnnCreateTensorDescriptor(&y);
    cudnnCreateFilterDescriptor(&w);
    cudnnCreateConvolutionDescriptor(&conv);
  }
  ~CudnnConvolution() {
    cudnnDestroyConvolutionDescriptor(conv);
    cudnnDestroyFilterDescriptor(w);
    cudnnDestroyTensorDescriptor(y);
    cudnnDestroyTensorDescriptor(x);
    cudnnDestroy(handle);
  }
  CudnnConvolution(const CudnnConvolution&) = delete;
  CudnnConvolution& operator=(const CudnnConvolution&) = delete;
  auto parts() const { return std::tuple{handle, x, y, w, conv}; }
};


struct Restore {
  bool was = cudnn_graph_api();
  Restore() { set_cudnn_graph_api(true); }
  ~Restore() {
    set_cudnn_graph_api(was);
    rt::set_fast_algorithms(rt::FastAlgorithms::run);
    rt::set_cudnn_graph_engines(true);
  }
};

// conv2d and the gradients of sum(y * y) on `dev`, in float64: [y, dx, dw] on the CPU.
std::vector<Tensor> convolve(const Tensor& x, const Tensor& w, Device dev) {
  Tensor xd = x.to(dev).requires_grad_(), wd = w.to(dev).requires_grad_();
  Tensor y = conv2d(xd, wd, Tensor(), 1, 1, 1, 1);
  sum(y * y).backward();
  return {y.to(Device()), xd.grad().to(Device()), wd.grad().to(Device())};
}
void same(const std::vector<Tensor>& gpu, const std::vector<Tensor>& cpu) {
  for (size_t i = 0; i < cpu.size(); ++i) CHECK(golden::relative_error(gpu[i], cpu[i]) <= 1e-10);
}

// x convolved with w once in cuDNN's benchmark mode (a warm-up: the candidates timed), then the
// same convolution captured in a CUDA graph, which cannot time (its events are never waited for):
// it takes the timed choice, so `searched()` (plans built, heuristics asked) stays where the
// warm-up left it, and the replay gives the warm-up's bits.
void check_capture_after_benchmark_warm_up(const Tensor& x, const Tensor& w, const std::function<int64_t()>& searched) {
  const gpu_test::CudnnBenchmark benchmark(true);
  const Tensor warm = conv2d(x, w, Tensor(), 1, 1, 1, 1);
  const int64_t before = searched();
  Tensor y;
  CudaGraph graph;
  graph.capture(x.device(), [&] { y = conv2d(x, w, Tensor(), 1, 1, 1, 1); });
  CHECK(searched() == before);
  graph.replay();
  CHECK(golden::equal(y.to(Device()), warm.to(Device())));
}

}  // namespace

TEST_CASE("emulator: cuDNN convolution is cross-correlation with padding, stride and groups; mismatched descriptors are refused") {
  CudnnConvolution conv;
  auto [h, xd, yd, wd, cd] = conv.parts();
  // x: [1, 2, 3, 3], two groups of one channel, w: [2, 1, 2, 2], pad 1, stride 2 -> y: [1, 2, 2, 2].
  std::vector<double> x(18), w = {1, 2, 3, 4, 0, 0, 0, -1};
  for (size_t i = 0; i < x.size(); ++i) x[i] = double(i + 1);
  REQUIRE(cudnnSetTensor4dDescriptor(xd, CUDNN_TENSOR_NCHW, CUDNN_DATA_DOUBLE, 1, 2, 3, 3) == CUDNN_STATUS_SUCCESS);
  REQUIRE(cudnnSetFilter4dDescriptor(wd, CUDNN_DATA_DOUBLE, CUDNN_TENSOR_NCHW, 2, 1, 2, 2) == CUDNN_STATUS_SUCCESS);
  REQUIRE(cudnnSetConvolution2dDescriptor(cd, 1, 1, 2, 2, 1, 1, CUDNN_CROSS_CORRELATION, CUDNN_DATA_DOUBLE) ==
          CUDNN_STATUS_SUCCESS);
  REQUIRE(cudnnSetConvolutionGroupCount(cd, 2) == CUDNN_STATUS_SUCCESS);
  REQUIRE(cudnnSetTensor4dDescriptor(yd, CUDNN_TENSOR_NCHW, CUDNN_DATA_DOUBLE, 1, 2, 2, 2) == CUDNN_STATUS_SUCCESS);
  DeviceArray<double> dx(x), dw(w), dy(size_t(8));
  const double one = 1, zero = 0;
  REQUIRE(cudnnConvolutionForward(h, &one, xd, dx.p, wd, dw.p, cd, CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_GEMM, nullptr, 0,
                                  &zero, yd, dy.p) == CUDNN_STATUS_SUCCESS);
  // Output (i, j) reads input rows 2i - 1 + {0, 1} and columns 2j - 1 + {0, 1} (outside: 0).
  const std::vector<double> want = {4 * 1, 3 * 2 + 4 * 3, 2 * 4 + 4 * 7, 1 * 5 + 2 * 6 + 3 * 8 + 4 * 9};
  // Channel 1 (x values 10..18) with w = [[0, 0], [0, -1]]: only the bottom-right tap, the input
  // at (2i, 2j): -10, -12, -16, -18.
  std::vector<double> want1 = {-10, -12, -16, -18};
  const auto y = dy.host();
  for (int i = 0; i < 4; ++i) CHECK(y[size_t(i)] == want[size_t(i)]);
  for (int i = 0; i < 4; ++i) CHECK(y[size_t(4 + i)] == want1[size_t(i)]);
  // The fast algorithm needs its workspace.
  CHECK(cudnnConvolutionForward(h, &one, xd, dx.p, wd, dw.p, cd, CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_PRECOMP_GEMM,
                                nullptr, 0, &zero, yd, dy.p) == CUDNN_STATUS_BAD_PARAM);
  // An output descriptor of the wrong size, and float data with a double compute type.
  REQUIRE(cudnnSetTensor4dDescriptor(yd, CUDNN_TENSOR_NCHW, CUDNN_DATA_DOUBLE, 1, 2, 3, 3) == CUDNN_STATUS_SUCCESS);
  CHECK(cudnnConvolutionForward(h, &one, xd, dx.p, wd, dw.p, cd, CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_GEMM, nullptr, 0,
                                &zero, yd, dy.p) == CUDNN_STATUS_BAD_PARAM);
  REQUIRE(cudnnSetTensor4dDescriptor(xd, CUDNN_TENSOR_NCHW, CUDNN_DATA_FLOAT, 1, 2, 3, 3) == CUDNN_STATUS_SUCCESS);
  REQUIRE(cudnnSetFilter4dDescriptor(wd, CUDNN_DATA_FLOAT, CUDNN_TENSOR_NCHW, 2, 1, 2, 2) == CUDNN_STATUS_SUCCESS);
  REQUIRE(cudnnSetTensor4dDescriptor(yd, CUDNN_TENSOR_NCHW, CUDNN_DATA_FLOAT, 1, 2, 2, 2) == CUDNN_STATUS_SUCCESS);
  int count = 0;
  cudnnConvolutionFwdAlgoPerf_t perf[8];
  CHECK(cudnnGetConvolutionForwardAlgorithm_v7(h, xd, wd, cd, yd, 8, &count, perf) == CUDNN_STATUS_NOT_SUPPORTED);
}

TEST_CASE("emulator: cuDNN's nondeterministic backward algorithms vary from call to call, the deterministic ones do not") {
  ScheduleScope scope(bcos::emu::Order::shuffle, 5);
  CudnnConvolution conv;
  auto [h, xd, yd, wd, cd] = conv.parts();
  // x, dy: [8, 2, 5, 5] in float32, 3 x 3 filters [2, 2, 3, 3], pad 1; FMA math (no TF32).
  constexpr int kN = 8;
  std::vector<float> x(size_t(kN * 50)), dy(size_t(kN * 50)), w(36);
  for (size_t i = 0; i < x.size(); ++i) {
    const double magnitude = std::pow(10.0, double(i / 50 % 4) - 1.0);  // each sample its own scale
    x[i] = float(magnitude * std::sin(0.7 * double(i)));
    dy[i] = float(std::cos(1.3 * double(i)));
  }
  for (size_t i = 0; i < w.size(); ++i) w[i] = float(std::sin(0.37 * double(i)) * std::pow(10.0, double(i % 5) - 2.0));
  REQUIRE(cudnnSetTensor4dDescriptor(xd, CUDNN_TENSOR_NCHW, CUDNN_DATA_FLOAT, kN, 2, 5, 5) == CUDNN_STATUS_SUCCESS);
  REQUIRE(cudnnSetTensor4dDescriptor(yd, CUDNN_TENSOR_NCHW, CUDNN_DATA_FLOAT, kN, 2, 5, 5) == CUDNN_STATUS_SUCCESS);
  REQUIRE(cudnnSetFilter4dDescriptor(wd, CUDNN_DATA_FLOAT, CUDNN_TENSOR_NCHW, 2, 2, 3, 3) == CUDNN_STATUS_SUCCESS);
  REQUIRE(cudnnSetConvolution2dDescriptor(cd, 1, 1, 1, 1, 1, 1, CUDNN_CROSS_CORRELATION, CUDNN_DATA_FLOAT) ==
          CUDNN_STATUS_SUCCESS);
  REQUIRE(cudnnSetConvolutionMathType(cd, CUDNN_FMA_MATH) == CUDNN_STATUS_SUCCESS);
  DeviceArray<float> dx_(x), dy_(dy), w_(w), dw_(size_t(36)), dxo_(x.size());
  DeviceArray<char> workspace(size_t(4096));
  const float one = 1, zero = 0;
  auto filter_gradient = [&](cudnnConvolutionBwdFilterAlgo_t algo) {
    REQUIRE(cudnnConvolutionBackwardFilter(h, &one, xd, dx_.p, yd, dy_.p, cd, algo, workspace.p, 4096, &zero, wd,
                                           dw_.p) == CUDNN_STATUS_SUCCESS);
    return dw_.host();
  };
  auto input_gradient = [&](cudnnConvolutionBwdDataAlgo_t algo) {
    REQUIRE(cudnnConvolutionBackwardData(h, &one, wd, w_.p, yd, dy_.p, cd, algo, workspace.p, 4096, &zero, xd,
                                         dxo_.p) == CUDNN_STATUS_SUCCESS);
    return dxo_.host();
  };
  auto close = [](const std::vector<float>& a, const std::vector<float>& b) {
    double worst = 0, scale = 0;
    for (size_t i = 0; i < a.size(); ++i) {
      worst = std::max(worst, std::fabs(double(a[i]) - b[i]));
      scale = std::max(scale, std::fabs(double(b[i])));
    }
    return worst <= 1e-5 * scale;
  };
  const auto dw_fixed = filter_gradient(CUDNN_CONVOLUTION_BWD_FILTER_ALGO_1);
  CHECK(filter_gradient(CUDNN_CONVOLUTION_BWD_FILTER_ALGO_1) == dw_fixed);
  const auto dw_a = filter_gradient(CUDNN_CONVOLUTION_BWD_FILTER_ALGO_0);
  const auto dw_b = filter_gradient(CUDNN_CONVOLUTION_BWD_FILTER_ALGO_0);
  CHECK(dw_a != dw_b);
  CHECK(close(dw_a, dw_fixed));
  CHECK(close(dw_b, dw_fixed));
  const auto dx_fixed = input_gradient(CUDNN_CONVOLUTION_BWD_DATA_ALGO_1);
  CHECK(input_gradient(CUDNN_CONVOLUTION_BWD_DATA_ALGO_1) == dx_fixed);
  const auto dx_a = input_gradient(CUDNN_CONVOLUTION_BWD_DATA_ALGO_0);
  const auto dx_b = input_gradient(CUDNN_CONVOLUTION_BWD_DATA_ALGO_0);
  CHECK(dx_a != dx_b);
  CHECK(close(dx_a, dx_fixed));
  CHECK(close(dx_b, dx_fixed));
}

TEST_CASE("emulator: a cuDNN algorithm that is refused when called, or whose workspace the device cannot hold, "
          "gives way to the heuristics' next; the one that ran is kept for the shape") {
  using bcos::emu::runtime::FastAlgorithms;
  struct Restore {
    ~Restore() { bcos::emu::runtime::set_fast_algorithms(FastAlgorithms::run); }
  } restore;
  bcos::manual_seed(31);
  // Shapes no other test convolves, so that the backend asks the heuristics afresh.
  auto convolve = [](const bcos::Tensor& x, const bcos::Tensor& w, bcos::Device dev) {
    bcos::Tensor xd = x.to(dev).requires_grad_(), wd = w.to(dev).requires_grad_();
    bcos::Tensor y = bcos::conv2d(xd, wd, bcos::Tensor(), 1, 1, 1, 1);
    bcos::sum(y * y).backward();
    return std::vector<bcos::Tensor>{y.to(bcos::Device()), xd.grad().to(bcos::Device()), wd.grad().to(bcos::Device())};
  };
  auto same = [](const std::vector<bcos::Tensor>& gpu, const std::vector<bcos::Tensor>& cpu) {
    for (size_t i = 0; i < cpu.size(); ++i) CHECK(golden::relative_error(gpu[i], cpu[i]) <= 1e-10);
  };
  const bcos::DType f64 = bcos::DType::f64;
  {
    INFO("the fast algorithms refused (NOT_SUPPORTED_SHAPE) when called");
    const bcos::Tensor x = bcos::randn({2, 3, 11, 13}, f64), w = bcos::randn({5, 3, 3, 3}, f64);
    const auto cpu = convolve(x, w, bcos::Device());
    bcos::emu::runtime::set_fast_algorithms(FastAlgorithms::refused);
    const int64_t before = bcos::emu::runtime::fast_refusals();
    same(convolve(x, w, bcos::Device::cuda(0)), cpu);
    CHECK(bcos::emu::runtime::fast_refusals() - before == 3);  // forward, backward-data, backward-filter once each
    same(convolve(x, w, bcos::Device::cuda(0)), cpu);
    CHECK(bcos::emu::runtime::fast_refusals() - before == 3);  // the second time straight to the kept ones
  }
  {
    INFO("the fast algorithms asking for 32 TiB of workspace");
    const bcos::Tensor x = bcos::randn({2, 3, 13, 11}, f64), w = bcos::randn({5, 3, 3, 3}, f64);
    const auto cpu = convolve(x, w, bcos::Device());
    bcos::emu::runtime::set_fast_algorithms(FastAlgorithms::oversized);
    same(convolve(x, w, bcos::Device::cuda(0)), cpu);
    same(convolve(x, w, bcos::Device::cuda(0)), cpu);
    // The device still serves ordinary allocations: the failed ones left nothing behind.
    CHECK(bcos::full({4}, 2.0, {f64, bcos::Device::cuda(0)}).to_vector<double>()[3] == 2.0);
  }
  {
    INFO("the kept algorithms failing later (MISALIGNED_POINTER): the shape goes back through the list");
    const bcos::Tensor x = bcos::randn({2, 3, 9, 14}, f64), w = bcos::randn({5, 3, 3, 3}, f64);
    const auto cpu = convolve(x, w, bcos::Device());
    bcos::emu::runtime::set_fast_algorithms(FastAlgorithms::run);
    same(convolve(x, w, bcos::Device::cuda(0)), cpu);  // the fast ones run and are kept
    bcos::emu::runtime::set_fast_algorithms(FastAlgorithms::misaligned);
    const int64_t before = bcos::emu::runtime::fast_refusals();
    same(convolve(x, w, bcos::Device::cuda(0)), cpu);
    CHECK(bcos::emu::runtime::fast_refusals() - before == 6);  // each direction: the kept one, then the list's first
    same(convolve(x, w, bcos::Device::cuda(0)), cpu);
    CHECK(bcos::emu::runtime::fast_refusals() - before == 6);  // the plain ones are kept now
  }
}

TEST_CASE("emulator: float32 convolutions with TF32 off stay off it when cuDNN's heuristics rate every entry "
          "with the default math") {
  struct Restore {
    ~Restore() {
      bcos::emu::runtime::set_rated_with_descriptor_math(true);
      bcos::set_allow_tf32(true);
    }
  } restore;
  bcos::set_allow_tf32(false);
  bcos::emu::runtime::set_rated_with_descriptor_math(false);
  bcos::manual_seed(34);
  const bcos::Tensor x = bcos::randn({2, 4, 10, 7}), w = bcos::randn({6, 4, 3, 3});
  auto convolve = [&](bcos::Device dev) {
    bcos::Tensor xd = x.to(dev).requires_grad_(), wd = w.to(dev).requires_grad_();
    bcos::Tensor y = bcos::conv2d(xd, wd, bcos::Tensor(), 1, 1, 1, 1);
    bcos::sum(y * y).backward();
    return std::vector<bcos::Tensor>{y.to(bcos::Device()), xd.grad().to(bcos::Device()), wd.grad().to(bcos::Device())};
  };
  const auto cpu = convolve(bcos::Device()), gpu = convolve(bcos::Device::cuda(0));
  // float32 sums (~1e-7); TF32's 10-bit operands would be ~1e-3 off.
  for (size_t i = 0; i < cpu.size(); ++i) CHECK(golden::relative_error(gpu[i], cpu[i]) <= 1e-5);
}

TEST_CASE("emulator conv graph: an engine refused at execution, failing there, or whose workspace does not fit, "
          "gives way to the next; a kept plan failing later sends the shape back through the list") {
  Restore restore;
  manual_seed(81);
  const Device cuda = Device::cuda(0);
  {
    INFO("the fast engine refused (NOT_SUPPORTED_SHAPE) when executed");
    const Tensor x = randn({2, 3, 12, 13}, kFloat64), w = randn({5, 3, 3, 3}, kFloat64);
    const auto cpu = convolve(x, w, Device());
    rt::set_fast_algorithms(rt::FastAlgorithms::refused);
    const int64_t refusals = rt::fast_refusals(), built = cuda::conv_graph_plans_built();
    same(convolve(x, w, cuda), cpu);
    CHECK(rt::fast_refusals() - refusals == 3);  // once per direction
    CHECK(cuda::conv_graph_plans_built() - built == 3);
    same(convolve(x, w, cuda), cpu);
    CHECK(rt::fast_refusals() - refusals == 3);  // straight to the kept plans
  }
  {
    INFO("the fast engine failing when executed (INTERNAL_ERROR_DEVICE_ALLOCATION_FAILED)");
    const Tensor x = randn({2, 3, 11, 13}, kFloat64), w = randn({5, 3, 3, 3}, kFloat64);
    const auto cpu = convolve(x, w, Device());
    rt::set_fast_algorithms(rt::FastAlgorithms::failing);
    const int64_t refusals = rt::fast_refusals();
    same(convolve(x, w, cuda), cpu);
    CHECK(rt::fast_refusals() - refusals == 3);  // once per direction, then the next engine's plan kept
    same(convolve(x, w, cuda), cpu);
    CHECK(rt::fast_refusals() - refusals == 3);
  }
  {
    INFO("the fast engine asking for 32 TiB of workspace");
    const Tensor x = randn({2, 3, 13, 12}, kFloat64), w = randn({5, 3, 3, 3}, kFloat64);
    const auto cpu = convolve(x, w, Device());
    rt::set_fast_algorithms(rt::FastAlgorithms::oversized);
    same(convolve(x, w, cuda), cpu);
    CHECK(full({4}, 2.0, {kFloat64, cuda}).to_vector<double>()[3] == 2.0);  // the device still serves
  }
  {
    INFO("the kept plans failing later (MISALIGNED_POINTER)");
    const Tensor x = randn({2, 3, 9, 15}, kFloat64), w = randn({5, 3, 3, 3}, kFloat64);
    const auto cpu = convolve(x, w, Device());
    rt::set_fast_algorithms(rt::FastAlgorithms::run);
    same(convolve(x, w, cuda), cpu);  // the fast engine's plans are kept
    rt::set_fast_algorithms(rt::FastAlgorithms::misaligned);
    const int64_t refusals = rt::fast_refusals();
    same(convolve(x, w, cuda), cpu);
    CHECK(rt::fast_refusals() - refusals == 6);  // each direction: the kept plan, then the list's fast one
    same(convolve(x, w, cuda), cpu);
    CHECK(rt::fast_refusals() - refusals == 6);  // the plain engine's plans are kept now
  }
}

TEST_CASE("emulator conv graph: each engine configuration is tried once though INSTANT's and FALLBACK's lists both "
          "name it; the same engine with a knob set otherwise is another configuration") {
  Restore restore;
  const gpu_test::CudnnBenchmark benchmark(true);  // every configuration that runs is timed: none left out
  manual_seed(84);
  const Device cuda = Device::cuda(0);
  {
    INFO("every engine runs: the fast engine at two tile sizes and the plain one (listed twice), per direction");
    const Tensor x = randn({2, 3, 11, 12}, kFloat64), w = randn({4, 3, 3, 3}, kFloat64);
    const auto cpu = convolve(x, w, Device());
    const int64_t built = cuda::conv_graph_plans_built();
    same(convolve(x, w, cuda), cpu);
    CHECK(cuda::conv_graph_plans_built() - built == 9);
  }
  {
    INFO("the fast engine refused: both of its configurations asked, the plain engine planned once per direction");
    const Tensor x = randn({2, 3, 12, 11}, kFloat64), w = randn({4, 3, 3, 3}, kFloat64);
    const auto cpu = convolve(x, w, Device());
    rt::set_fast_algorithms(rt::FastAlgorithms::refused);
    const int64_t built = cuda::conv_graph_plans_built(), refusals = rt::fast_refusals();
    same(convolve(x, w, cuda), cpu);
    CHECK(cuda::conv_graph_plans_built() - built == 3);
    CHECK(rt::fast_refusals() - refusals == 6);
  }
}

TEST_CASE("emulator conv graph: heuristics that offer no engine decline the shape to the legacy API, once") {
  Restore restore;
  manual_seed(82);
  const Tensor x = randn({2, 3, 10, 11}, kFloat64), w = randn({4, 3, 3, 3}, kFloat64);
  const auto cpu = convolve(x, w, Device());
  rt::set_cudnn_graph_engines(false);
  const int64_t declined = cuda::conv_graph_declined(), built = cuda::conv_graph_plans_built();
  same(convolve(x, w, Device::cuda(0)), cpu);
  CHECK(cuda::conv_graph_declined() - declined == 3);
  CHECK(cuda::conv_graph_plans_built() == built);
  CHECK(cuda::conv_graph_last_declined().find("the heuristics offer no engine") != std::string::npos);
  rt::set_cudnn_graph_engines(true);
  same(convolve(x, w, Device::cuda(0)), cpu);
  CHECK(cuda::conv_graph_declined() - declined == 3);  // remembered: the legacy API, not asked again
  CHECK(cuda::conv_graph_plans_built() == built);
}

TEST_CASE("emulator conv graph: plans are kept per thread; a CUDA graph captured after a warm-up in benchmark "
          "mode runs the warm-up's choice and builds no plan") {
  Restore restore;
  manual_seed(83);
  const Device cuda = Device::cuda(0);
  const Tensor x = randn({2, 3, 9, 11}, kFloat64), w = randn({4, 3, 3, 3}, kFloat64);
  const auto cpu = convolve(x, w, Device());
  int64_t built = cuda::conv_graph_plans_built();
  same(convolve(x, w, cuda), cpu);
  CHECK(cuda::conv_graph_plans_built() - built == 3);
  // Another thread finalizes its own (a plan is tied to the handle that made it).
  std::vector<Tensor> other;
  std::thread([&] { other = convolve(x, w, cuda); }).join();
  same(other, cpu);
  CHECK(cuda::conv_graph_plans_built() - built == 6);
  same(convolve(x, w, cuda), cpu);
  CHECK(cuda::conv_graph_plans_built() - built == 6);

  const Tensor x2 = randn({2, 3, 10, 9}, kFloat64).to(cuda), w2 = randn({4, 3, 3, 3}, kFloat64).to(cuda);
  check_capture_after_benchmark_warm_up(x2, w2, cuda::conv_graph_plans_built);
}

TEST_CASE("emulator: a CUDA graph captured after a warm-up in cuDNN's benchmark mode runs the warm-up's algorithms "
          "and asks the heuristics nothing more (legacy API)") {
  const bool was = cudnn_graph_api();
  set_cudnn_graph_api(false);
  manual_seed(84);
  const Device cuda = Device::cuda(0);
  const Tensor x = randn({2, 3, 8, 13}, kFloat64).to(cuda), w = randn({4, 3, 3, 3}, kFloat64).to(cuda);
  check_capture_after_benchmark_warm_up(x, w, cuda::conv_algorithm_searches);
  set_cudnn_graph_api(was);
}
