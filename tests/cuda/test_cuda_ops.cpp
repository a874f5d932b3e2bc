// The public, autograd-aware API on CUDA tensors: the same calls as on the CPU dispatch to the
// CUDA kernels, gradients come back on the device, and results match the CPU. Skipped (with a
// message) without a GPU.
#include <doctest/doctest.h>

#include "autograd/ops.h"
#include "tests/golden.h"

using namespace bcos;

namespace {
bool have_gpu() {
  if (cuda_device_count() > 0) return true;
  MESSAGE("no CUDA device: skipped");
  return false;
}
}  // namespace

TEST_CASE("cuda ops: add / mul / relu / sum / matmul forward and backward match the CPU") {
  if (!have_gpu()) return;
  manual_seed(11);
  for (DType dt : {kFloat32, kFloat64}) {
    CAPTURE(dt);
    Tensor x = randn({8, 16}, dt), w = randn({16}, dt), b = randn({8, 1}, dt), m = randn({16, 4}, dt);
    auto run = [&](Device dev) {
      Tensor xd = x.to(dev).requires_grad_(), wd = w.to(dev).requires_grad_();
      Tensor bd = b.to(dev).requires_grad_(), md = m.to(dev).requires_grad_();
      Tensor h = relu(xd.t().contiguous().t() * wd + bd);  // broadcast, strided operand
      Tensor loss = sum(sum(matmul(h, md), {1}));
      loss.backward();
      CHECK(xd.grad().device() == dev);
      return std::vector<Tensor>{loss.to(Device()), xd.grad().to(Device()), wd.grad().to(Device()),
                                 bd.grad().to(Device()), md.grad().to(Device())};
    };
    std::vector<Tensor> cpu = run(Device()), gpu = run(Device::cuda(0));
    double tol = dt == kFloat64 ? 1e-12 : 5e-3;  // f32 products run in TF32 on the GPU
    for (size_t i = 0; i < cpu.size(); ++i) {
      CAPTURE(i);
      CHECK(golden::relative_error(gpu[i], cpu[i]) <= tol);
    }
  }
}

TEST_CASE("cuda ops: reductions, comparisons and conversions through the public API") {
  if (!have_gpu()) return;
  manual_seed(12);
  Tensor x = randn({5, 7, 3}, kFloat64);
  Tensor g = x.to(Device::cuda(0));
  CHECK(golden::relative_error(mean(g, {0, 2}).to(Device()), mean(x, {0, 2})) <= 1e-12);
  CHECK(golden::relative_error(var(g, {1}).to(Device()), var(x, {1})) <= 1e-12);
  CHECK(golden::equal(max(g, 1).indices.to(Device()), max(x, 1).indices));
  CHECK(golden::equal(gt(g, 0.0).to(Device()), gt(x, 0.0)));
  CHECK(golden::equal(g.to(kFloat16).to(Device()).to(kFloat32), x.to(kFloat16).to(kFloat32)));
  CHECK(g.to_string().find("device='cuda:0'") != std::string::npos);
}

TEST_CASE("cuda ops: mixing devices and missing kernels raise clear errors") {
  if (!have_gpu()) return;
  Tensor c = ones({2}), g = ones({2}, Device::cuda(0));
  CHECK_THROWS_WITH_AS(add(c, g), doctest::Contains("different devices"), Error);
  CHECK_THROWS_WITH_AS(softmax(g, 0), doctest::Contains("no CUDA kernel yet"), Error);
  CHECK_THROWS_WITH_AS(zeros({1}, Device::cuda(99)), doctest::Contains("cuda:99"), Error);
}
