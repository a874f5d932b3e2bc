// float16 / bfloat16 tensors on the GPU against the CPU: the 16-bit elementwise kernels (packs of
// 8, a float32 scalar beside them), reductions, cuBLAS / cuDNN on 16-bit tensors, and whole
// models converted with Module::to(kBFloat16) -- the ops without 16-bit kernels computed through
// float32 on both devices (autograd/dispatch.h: through_float32).
#include <doctest/doctest.h>

#include <cmath>
#include <functional>
#include <memory>
#include <vector>

#include "autograd/ops.h"
#include "models/bcosify.h"
#include "models/explain.h"
#include "models/factory.h"
#include "nn/bcos.h"
#include "nn/module.h"
#include "tests/cuda/gpu_test.h"
#include "tests/golden.h"

using namespace bcos;
using bcos::gpu_test::have_gpu;

TEST_CASE("cuda ops: float16 / bfloat16 maps, binary ops (a float32 scalar beside them), reductions and their gradients match the CPU") {
  // 16-bit tensors widen to float, compute, and round once on both backends: the arithmetic
  // (+, −, ·, /, min / max, comparisons, the ReLU) and the sums (both accumulate in double) must
  // agree bit for bit; a map through the math library (exp, GELU, tanh) to 1 ulp. Lengths and
  // offsets take the 16-byte packs (8 elements) and the elements past them.
  if (cuda_device_count() == 0) {
    MESSAGE("no CUDA device: skipped");
    return;
  }
  manual_seed(44);
  for (DType dt : {DType::bf16, DType::f16})
    for (int64_t n : {1, 7, 8, 9, 1029})
      for (int64_t offset : {0, 1, 3}) {
        CAPTURE(dt);
        CAPTURE(n);
        CAPTURE(offset);
        const Tensor a0 = randn({n + 4}).to(dt), b0 = randn({n + 4}).to(dt), m0 = randn({3, n, 5}).to(dt);
        auto run = [&](Device dev) {
          Tensor a = a0.to(dev).requires_grad_(), b = b0.to(dev).requires_grad_(), m = m0.to(dev).requires_grad_();
          const Tensor av = a.narrow(0, offset, n), bv = b.narrow(0, 3 - offset, n);
          Tensor arith = (av * bv - av / (abs(bv) + 0.5)) * 0.1 + maximum(av, bv);
          Tensor wide = av * b0.to(DType::f32).to(dev).narrow(0, 1, n);  // promoted to float32
          Tensor flags = gt(av, 0.1);
          Tensor maps = exp(av) + gelu(bv) + tanh(av) * sigmoid(bv);
          Tensor sums = sum(m, {1}), means = mean(m, {0, 2}), tops = amax(m, {1}), spread = var(m, {1});
          (sum(arith) + sum(relu(av) * maps) + sum(wide) + sum(sums * tops)).backward();
          return std::vector<Tensor>{arith, wide, flags, maps, sums, means, tops, spread, a.grad(), b.grad(), m.grad()};
        };
        const std::vector<Tensor> cpu = run(Device()), gpu = run(Device::cuda(0));
        for (size_t k = 0; k < cpu.size(); ++k) {
          CAPTURE(k);
          REQUIRE(gpu[k].dtype() == cpu[k].dtype());
          if (k == 1)
            CHECK(golden::equal(gpu[k].to(Device()), cpu[k]));  // float32
          else if (k == 3 || k == 7 || k == 8 || k == 9)  // the math library (maps, and a's, b's gradients through them); var: two passes in double on the CPU, Welford's on the GPU
            CHECK(golden::max_ulps(gpu[k], cpu[k]) <= 1);
          else
            CHECK(golden::equal(gpu[k].to(Device()), cpu[k]));
        }
      }
}

TEST_CASE("cuda ops: products and convolutions of float16 / bfloat16 tensors match the CPU (forward, every gradient)") {
  // cuBLAS and cuDNN take the 16-bit tensors as they are and sum in float32, as the CPU does, in
  // another order: 1 ulp. cuDNN's result is rounded before the bias is added (and the sum
  // rounded), where the CPU adds it in float32 and rounds once -- PyTorch's two backends differ
  // the same way -- so a convolution's output with a bias is held against the CPU's
  // convolution without it plus the bias: near a sum that cancels, the first rounding is many
  // ulps of the result.
  if (cuda_device_count() == 0) {
    MESSAGE("no CUDA device: skipped");
    return;
  }
  manual_seed(45);
  using Fn = std::function<Tensor(const std::vector<Tensor>&)>;
  const std::vector<std::pair<std::vector<Shape>, Fn>> cases = {
      {{{6, 40}, {24, 40}, {24}}, [](const std::vector<Tensor>& in) { return linear(in[0], in[1], in[2]); }},
      {{{3, 9, 33}, {3, 33, 6}}, [](const std::vector<Tensor>& in) { return matmul(in[0], in[1]); }},
      {{{2, 3, 36}, {36, 7}}, [](const std::vector<Tensor>& in) { return matmul(in[0], in[1]); }},
      {{{2, 5, 9, 9}, {8, 5, 3, 3}, {8}}, [](const std::vector<Tensor>& in) { return conv2d(in[0], in[1], in[2], 1, 1); }},
      {{{2, 8, 10, 10}, {6, 4, 3, 3}},
       [](const std::vector<Tensor>& in) { return conv2d(in[0], in[1], Tensor(), 2, 1, 2, 2); }},
  };
  for (DType dt : {DType::bf16, DType::f16})
    for (size_t c = 0; c < cases.size(); ++c) {
      CAPTURE(dt);
      CAPTURE(c);
      std::vector<Tensor> host;
      for (const Shape& s : cases[c].first) host.push_back(randn(s).to(dt));
      const Tensor probe = cases[c].second(host);
      const Tensor gout = randn(probe.shape()).to(dt);
      auto run = [&](Device dev) {
        std::vector<Tensor> in;
        for (const Tensor& t : host) in.push_back(t.to(dev).requires_grad_());
        Tensor y = cases[c].second(in);
        y.backward(gout.to(dev));
        std::vector<Tensor> out{y};
        for (const Tensor& t : in) out.push_back(t.grad());
        return out;
      };
      std::vector<Tensor> cpu = run(Device());
      const std::vector<Tensor> gpu = run(Device::cuda(0));
      if (cases[c].first[0].size() == 4 && host.size() == 3)  // a convolution with a bias: rounded twice
        cpu[0] = conv2d(host[0], host[1], Tensor(), 1, 1) + host[2].reshape({1, -1, 1, 1});
      for (size_t k = 0; k < cpu.size(); ++k) {
        CAPTURE(k);
        REQUIRE(gpu[k].dtype() == dt);
        CHECK(golden::max_ulps(gpu[k], cpu[k]) <= 1);
      }
    }
}

TEST_CASE("cuda ops: pooling reads and writes float16 / bfloat16 tensors as they are, bit for bit the CPU's "
          "float32 kernels on widened copies (forward, backward)") {
  // The GPU's pooling kernels take 16-bit tensors and sum in float32 (adaptive: double, as the
  // CPU's float32 kernel) in the CPU's order, the backwards as gathers in output order -- the
  // order in which the CPU's loops add: the same float32 results, rounded once.
  if (!have_gpu()) return;
  manual_seed(47);
  using Fn = std::function<Tensor(const Tensor&)>;
  const std::vector<Fn> pools = {
      [](const Tensor& t) { return max_pool2d(t, 3, 2, 1); },                       // ResNet's stem pool
      [](const Tensor& t) { return max_pool2d(t, 2, std::nullopt, 0, {2, 1}); },    // dilation
      [](const Tensor& t) { return max_pool2d(t, 3, 2, 1, 1, true); },              // ceil mode
      [](const Tensor& t) { return avg_pool2d(t, 3, 2, 1, false, true); },          // padding counted
      [](const Tensor& t) { return avg_pool2d(t, 3, 2, 1, true, false); },          // ceil, not counted
      [](const Tensor& t) { return avg_pool2d(t, {3, 2}, IntPair(2, 1), {1, 1}, false, true, 5); },
      [](const Tensor& t) { return adaptive_avg_pool2d(t, {4, 3}); },               // uneven bins
      [](const Tensor& t) { return adaptive_avg_pool2d(t, {1, 1}); },               // global
  };
  for (DType dt : {DType::bf16, DType::f16}) {
    // Ties (repeated values) in the max pools' windows: the first in window order wins on both;
    // and normal values, whose window sums round.
    const Tensor ties = (randint(-8, 9, {2, 3, 11, 9}).to(kFloat32) * 0.25).to(dt), normal = randn({2, 3, 11, 9}).to(dt);
    for (size_t c = 0; c < 2 * pools.size(); ++c) {
      CAPTURE(dt);
      CAPTURE(c);
      const Tensor& x = c % 2 == 0 ? ties : normal;
      const auto& pool = pools[c / 2];
      const Tensor probe = pool(x);
      const Tensor gout = randint(-3, 4, probe.shape()).to(dt);  // exact in 16 bits on both devices
      auto run = [&](Device dev) {
        Tensor xd = x.to(dev).requires_grad_();
        Tensor y = pool(xd);
        y.backward(gout.to(dev));
        return std::vector<Tensor>{y.to(Device()), xd.grad().to(Device())};
      };
      const std::vector<Tensor> cpu = run(Device()), gpu = run(Device::cuda(0));
      for (size_t k = 0; k < cpu.size(); ++k) {
        CAPTURE(k);
        REQUIRE(gpu[k].dtype() == dt);
        CHECK(golden::equal(gpu[k], cpu[k]));
      }
    }
  }
}

TEST_CASE("cuda ops: a bfloat16 / float16 ResNet-20 and its B-cos form -- forward, explanation, gradients -- match the CPU") {
  // Module::to(16-bit) on both devices: cuDNN / cuBLAS on the 16-bit tensors, the 16-bit
  // elementwise kernels, the ops computed through float32. Each op may differ from the CPU's by
  // an ulp (another summation order), and a randomly initialised ResNet-20 at batch 4 amplifies
  // that in its gradients (tests/nn/test_models.cpp), so: logits to a few ulps, the gradient taken
  // whole (‖g_gpu − g_cpu‖ / ‖g_cpu‖), bounds 3x what the emulator measured.
  if (!have_gpu()) return;
  for (bool bcos : {false, true})
    for (DType dt : {DType::bf16, DType::f16}) {
      CAPTURE(bcos);
      CAPTURE(dt);
      const models::ModelSpec spec = models::model_spec("resnet20");
      manual_seed(22);
      const Tensor images = rand({4, 3, 32, 32});
      const Tensor labels = from_vector(std::vector<int64_t>{3, 0, 9, 3}, {4});
      auto run = [&](Device dev) {
        manual_seed(21);
        std::shared_ptr<nn::Module> m = models::create_model("resnet20");
        if (bcos) {
          models::BcosifyOptions o;
          o.mean = spec.mean, o.std = spec.std;
          m = models::bcosify(m, o);
        }
        m->to(dt);
        m->to(dev);
        const Tensor x = (bcos ? nn::add_inverse(images) : images).to(dt).to(dev);
        std::vector<Tensor> out;
        if (bcos) out.push_back(models::explain(*m, x, labels.to(dev)).contributions.to(Device()).to(kFloat32));
        m->train();
        const Tensor logits = (*m)(x);
        const Tensor loss = bcos ? nn::uniform_off_labels_bce(logits, labels.to(dev)) : cross_entropy(logits, labels.to(dev));
        loss.backward();
        out.push_back(logits.detach().to(Device()).to(kFloat32));
        for (const Tensor& p : m->parameters()) {
          REQUIRE(p.grad().dtype() == dt);
          out.push_back(p.grad().to(Device()).to(kFloat32));
        }
        return out;
      };
      const std::vector<Tensor> cpu = run(Device()), gpu = run(Device::cuda(0));
      REQUIRE(cpu.size() == gpu.size());
      const size_t first_grad = bcos ? 2 : 1;
      for (size_t i = 0; i < first_grad; ++i) {
        CAPTURE(i);
        CHECK(golden::relative_error(gpu[i], cpu[i]) <= (dt == DType::bf16 ? 1e-2 : 1e-3));
      }
      double diff = 0, total = 0;
      for (size_t i = first_grad; i < cpu.size(); ++i) {
        diff += std::pow(norm(gpu[i] - cpu[i]).item(), 2);
        total += std::pow(norm(cpu[i]).item(), 2);
      }
      // Measured on the emulator: 0.11 / 0.036 (bf16 / f16), B-cos 0.038 / 0.013.
      const double bound = bcos ? (dt == DType::bf16 ? 0.12 : 0.04) : (dt == DType::bf16 ? 0.3 : 0.1);
      CHECK(std::sqrt(diff / total) <= bound);
    }
}
