// A training step's mechanics on CUDA tensors: the backward's gradient buffers (their memory),
// the fused optimizer update kernels against the CPU's, and the list steps (a launch per 32
// parameters) against one step per parameter. Skipped (with a message) without a GPU.
#include <doctest/doctest.h>

#include <cmath>
#include <memory>
#include <tuple>
#include <vector>

#include "autograd/ops.h"
#include "tensor/cuda/backend.h"
#include "nn/optim.h"
#include "tests/cuda/gpu_test.h"
#include "tests/golden.h"

using namespace bcos;

using gpu_test::have_gpu;

TEST_CASE("cuda engine: two gradients of one tensor are summed into the first one's memory") {
  if (!have_gpu()) return;
  // h feeds two products, so its node receives two 16 MiB gradients; summing them into a third
  // tensor (while both are alive) would raise the backward's peak by 16 MiB. (The caching
  // allocator may hand out a cached block up to 1 MiB larger than asked: 1/16 of a unit.)
  const Device gpu = Device::cuda(0);
  constexpr int64_t n = int64_t(1) << 22;
  constexpr double unit = double(n * 4);
  manual_seed(4);
  Tensor x = randn({n}).to(gpu).requires_grad_();
  Tensor h = x * 2.0;
  Tensor loss = sum(h * 3.0) + sum(h * 5.0);
  synchronize(gpu);
  const size_t before = cuda::memory_stats(0).in_use;
  reset_peak_memory(gpu);
  loss.backward();
  synchronize(gpu);
  const double peak = double(peak_memory_bytes(gpu) - before) / unit;
  MESSAGE("backward's peak above the forward's memory: ", peak, " x 16 MiB");
  CHECK(golden::relative_error(x.grad().to(Device()), full({n}, 16.0)) == 0);
  // Two 16 MiB tensors at most: h's two gradients, then their sum (in the first) and x's gradient.
  // A sum into a fresh tensor makes it three (measured 2.99997: a scalar freed meanwhile).
  CHECK(peak < 2.5);
}

TEST_CASE("cuda ops: fused SGD (momentum, Nesterov, decay) and Adam / AdamW / AMSGrad steps match the CPU") {
  if (!have_gpu()) return;
  const Device gpu = Device::cuda(0);
  for (DType dt : {kFloat32, kFloat64}) {
    CAPTURE(dt);
    auto run = [&](Device dev, int which) {
      manual_seed(23);
      std::vector<Tensor> params{randn({257}, dt).to(dev).requires_grad_(), randn({7, 9}, dt).to(dev).requires_grad_()};
      std::unique_ptr<nn::Optimizer> opt;
      if (which == 0) opt = std::make_unique<nn::SGD>(params, nn::SGDOptions{.lr = 0.1, .momentum = 0.9, .weight_decay = 1e-3, .nesterov = true});
      if (which == 1) opt = std::make_unique<nn::SGD>(params, nn::SGDOptions{.lr = 0.1, .momentum = 0.8, .dampening = 0.1});
      if (which == 2) opt = std::make_unique<nn::Adam>(params, nn::AdamOptions{.lr = 1e-2, .weight_decay = 1e-2, .amsgrad = true});
      if (which == 3) opt = std::make_unique<nn::AdamW>(params, nn::AdamOptions{.lr = 1e-2, .weight_decay = 0.1});
      for (int step = 0; step < 3; ++step) {
        opt->zero_grad();
        Tensor loss = sum(params[0] * params[0] * params[0]) + sum(sin(params[1]));
        loss.backward();
        opt->step();
      }
      std::vector<Tensor> out;
      for (const Tensor& p : params) out.push_back(p.detach().to(Device()));
      for (const auto& [name, t] : opt->state_dict()) out.push_back(t.to(Device()).to(kFloat64));
      return out;
    };
    for (int which = 0; which < 4; ++which) {
      CAPTURE(which);
      const std::vector<Tensor> cpu = run(Device(), which), gpu_result = run(gpu, which);
      REQUIRE(cpu.size() == gpu_result.size());
      for (size_t i = 0; i < cpu.size(); ++i) CHECK(golden::relative_error(gpu_result[i], cpu[i]) <= (dt == kFloat64 ? 1e-12 : 1e-5));
    }
  }
}

TEST_CASE("cuda ops: fused SGD and Adam steps on lists of parameters give each its own step's bits") {
  if (!have_gpu()) return;
  // 70 parameters (three launches of up to 32), of sizes around a block's chunk of 2,048
  // elements, an empty one, float64 ones (a launch of their own), a bfloat16 one (float32 copies)
  // and a transposed view (a contiguous copy): each ends where its own step puts it, bit for bit,
  // and within rounding of the CPU's step.
  const Device gpu = Device::cuda(0);
  const int64_t sizes[] = {1, 7, 2047, 2048, 2049, 5000, 0, 64};
  auto make = [&](uint64_t seed, Device dev, bool square = false) {
    manual_seed(seed);
    std::vector<Tensor> t;
    for (int i = 0; i < 70; ++i) {
      Tensor x = i == 13 ? randn({40, 30}) : randn({sizes[i % 8]}, i % 11 == 5 ? kFloat64 : kFloat32);
      if (i == 21) x = x.to(kBFloat16);
      if (square) x = x * x;
      x = x.to(dev);
      t.push_back(i == 13 ? x.t() : x);
    }
    return t;
  };
  auto to_cpu = [](const std::vector<Tensor>& list) {
    std::vector<Tensor> out;
    for (const Tensor& t : list) out.push_back(t.to(Device()));
    return out;
  };
  auto check = [](const std::vector<Tensor>& a, const std::vector<Tensor>& b, double tolerance) {
    REQUIRE(a.size() == b.size());
    for (size_t i = 0; i < a.size(); ++i) {
      CAPTURE(i);
      if (tolerance == 0) CHECK(golden::equal(a[i].to(Device()), b[i].to(Device())));
      else CHECK(golden::relative_error(a[i].to(Device()).to(kFloat64), b[i].to(Device()).to(kFloat64)) <= tolerance);
    }
  };
  const std::vector<Tensor> grads = make(2, gpu);
  const SgdStepParams sp{.lr = 0.1, .momentum = 0.9, .weight_decay = 1e-2, .nesterov = true};
  std::vector<Tensor> wa = make(1, gpu), wb = make(1, gpu), wc = make(1, Device());
  std::vector<Tensor> ma = make(3, gpu), mb = make(3, gpu), mc = make(3, Device());
  CHECK(!wa[13].is_contiguous());
  sgd_step_(wa, grads, ma, sp);
  for (size_t i = 0; i < wb.size(); ++i) sgd_step_(wb[i], grads[i], mb[i], sp);
  sgd_step_(wc, to_cpu(grads), mc, sp);
  check(wa, wb, 0);
  check(ma, mb, 0);
  check(wa, wc, 1e-6);  // (GPU and CPU may contract a multiply-add differently)
  check(ma, mc, 1e-6);
  const AdamStepParams ap{.lr = 1e-2, .weight_decay = 0.1, .step_size = 1e-2 / (1 - 0.9 * 0.9),
                          .bias2_sqrt = std::sqrt(1 - 0.999 * 0.999), .decoupled = true, .amsgrad = true};
  std::vector<Tensor> va = make(4, gpu, true), vb = make(4, gpu, true), vc = make(4, Device(), true);
  std::vector<Tensor> xa = make(5, gpu, true), xb = make(5, gpu, true), xc = make(5, Device(), true);
  adam_step_(wa, grads, ma, va, xa, ap);
  for (size_t i = 0; i < wb.size(); ++i) adam_step_(wb[i], grads[i], mb[i], vb[i], xb[i], ap);
  adam_step_(wc, to_cpu(grads), mc, vc, xc, ap);
  for (const auto& [a, b, c] : {std::tuple{&wa, &wb, &wc}, {&ma, &mb, &mc}, {&va, &vb, &vc}, {&xa, &xb, &xc}}) {
    check(*a, *b, 0);
    check(*a, *c, 1e-5);
  }
}

TEST_CASE("cuda ops: adaptive gradient clipping (a block per unit) matches the CPU's") {
  if (!have_gpu()) return;
  // 40 parameters (two launches): conv weights with rows of 27 and 2,304 elements (a block's
  // threads each summing several), matrices, vectors, a scalar, an empty one, float64; gradients
  // scaled per row from 1e-3 to 1e4, so some units are clipped and some are not.
  const Device gpu = Device::cuda(0);
  manual_seed(31);
  std::vector<Tensor> params, grads;
  for (int i = 0; i < 40; ++i) {
    const DType dt = i % 7 == 3 ? kFloat64 : kFloat32;
    const Shape shape = i % 5 == 0 ? Shape{8, 256, 3, 3} : i % 5 == 1 ? Shape{8, 3, 3, 3} : i % 5 == 2 ? Shape{8, 12}
                        : i % 5 == 3 ? Shape{30} : i == 4 ? Shape{0, 3} : Shape{};
    params.push_back(randn(shape, dt));
    Tensor g = randn(shape, dt) * 0.05;
    if (g.dim() > 1 && g.numel() > 0) {
      std::vector<int64_t> column(size_t(g.dim()), 1);
      column[0] = g.size(0);
      g = g * exp((arange(g.size(0), dt) - 3.0) * std::log(10.0)).reshape(Shape(column));
    }
    grads.push_back(g);
  }
  std::vector<Tensor> on_cpu, on_gpu, params_gpu;
  for (size_t i = 0; i < params.size(); ++i) {
    on_cpu.push_back(grads[i].clone());
    on_gpu.push_back(grads[i].to(gpu));
    params_gpu.push_back(params[i].to(gpu));
  }
  adaptive_clip_(params, on_cpu, 0.01, 1e-3);
  adaptive_clip_(params_gpu, on_gpu, 0.01, 1e-3);
  int clipped = 0;
  for (size_t i = 0; i < params.size(); ++i) {
    CAPTURE(i);
    // (The GPU adds each unit's squares in another order: float32 norms may differ in the last bit.)
    CHECK(golden::relative_error(on_gpu[i].to(Device()), on_cpu[i]) <= (params[i].dtype() == kFloat64 ? 1e-14 : 1e-6));
    clipped += on_cpu[i].numel() > 0 && !golden::equal(on_cpu[i], grads[i]);
  }
  CHECK(clipped >= 20);
}
