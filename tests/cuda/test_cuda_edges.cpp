// Edge cases of the CUDA backend, each against the CPU. In-place methods on views: strided and
// transposed destinations, broadcast sources, a source overlapping its destination in another
// layout (read before written).
//
// gradcheck on the GPU: the CUDA backward kernels against central differences of the CUDA
// forward kernels, in float64 -- a check that does not go through the CPU's kernels at all.
//
// Empty tensors: a batch of 0, rows of no elements, no indices, no queries -- through every
// op family, forward and backward, in float64 and float32 (and the products under bf16 / f16
// autocast). Each case runs on the CPU and on the GPU and must give the same
// shapes, values and gradients (a parameter's zeros, a mean's NaN), or raise on both. A GPU refuses
// an empty grid (cudaErrorInvalidConfiguration), cuDNN a descriptor with a dimension of 0, so every
// op has to notice that there is nothing to do -- and still write the zeros a gradient of nothing
// is; the emulator refuses the same, and its fresh memory is NaN. Where PyTorch defines a value
// other than an empty result (a mean over nothing, batch norm's running statistics left alone,
// cross-entropy of no samples) the case also checks PyTorch's answer (torch 1.13).
#include <doctest/doctest.h>

#include <cmath>
#include <functional>
#include <string>
#include <vector>

#include "autograd/autograd.h"
#include "autograd/gradcheck.h"
#include "autograd/ops.h"
#include "models/explain.h"
#include "nn/linear.h"
#include "nn/module.h"
#include "tensor/cuda/backend.h"
#include "tensor/dispatch.h"
#include "tests/golden.h"

using namespace bcos;

namespace {

constexpr DType kF64 = DType::f64;
// The float type the empty-tensor cases make their leaves in (float64, then float32).
DType g_dtype = kF64;

// Leaves of one case: made on the CPU once, copied to the device of each run.
struct Leaves {
  std::vector<Tensor> host;
  std::vector<Tensor> on(Device dev) const {
    std::vector<Tensor> out;
    for (const Tensor& t : host) {
      Tensor d = t.to(dev);
      if (is_floating(t.dtype())) d.requires_grad_();
      out.push_back(d);
    }
    return out;
  }
};

// What a case gives on one device: its outputs, then each float leaf's gradient after
// sum(outputs[0]).backward() when `backward`; every tensor back on the CPU. Or the error's text.
struct Result {
  std::vector<Tensor> tensors;
  std::string error;
};

using Case = std::function<std::vector<Tensor>(const std::vector<Tensor>& leaves)>;

Result run_on(Device dev, const Leaves& leaves, const Case& f, bool backward) {
  Result r;
  try {
    std::vector<Tensor> in = leaves.on(dev);
    std::vector<Tensor> out = f(in);
    if (backward) sum(out.at(0)).backward();
    for (const Tensor& t : out) r.tensors.push_back(t.to(Device()));
    if (backward)
      for (const Tensor& t : in)
        if (t.requires_grad()) {
          // An undefined gradient (the leaf took no part) is compared as one of no elements.
          if (t.grad().defined()) CHECK(t.grad().device() == dev);
          r.tensors.push_back(t.grad().defined() ? t.grad().to(Device()) : Tensor());
        }
  } catch (const Error& e) {
    r.error = e.what();
  }
  return r;
}

// What a case must give: values (PyTorch defines them), or an error on both devices.
enum class Outcome { values, error };

// Runs `f` on both devices and compares; returns the CPU's result for checks of its own.
Result same_on_both(const char* what, const Leaves& leaves, const Case& f, Outcome expect = Outcome::values,
                    bool backward = true) {
  INFO(std::string(what));
  Result cpu = run_on(Device(), leaves, f, backward);
  Result gpu = run_on(Device::cuda(0), leaves, f, backward);
  const bool want_error = expect == Outcome::error;
  CHECK_MESSAGE(cpu.error.empty() != want_error, "CPU: '", cpu.error, "'");
  CHECK_MESSAGE(gpu.error.empty() != want_error, "GPU: '", gpu.error, "'");
  if (!cpu.error.empty() || !gpu.error.empty()) return cpu;
  REQUIRE(cpu.tensors.size() == gpu.tensors.size());
  for (size_t i = 0; i < cpu.tensors.size(); ++i) {
    CAPTURE(i);
    const Tensor &c = cpu.tensors[i], &g = gpu.tensors[i];
    CHECK(c.defined() == g.defined());
    if (!c.defined() || !g.defined()) continue;
    CHECK(c.shape() == g.shape());
    if (c.shape() != g.shape()) continue;
    CHECK(c.dtype() == g.dtype());
    if (is_floating(c.dtype()))
      CHECK(golden::relative_error(g, c) <= (c.dtype() == kF64 ? 1e-12 : 1e-5));
    else
      CHECK(golden::equal(g, c));
  }
  return cpu;
}

bool all_are(const Tensor& t, double v) {
  for (double x : t.to_vector<double>())
    if (!(std::isnan(v) ? std::isnan(x) : x == v)) return false;
  return true;
}

Tensor rn(const Shape& s) { return randn(s, g_dtype); }
Tensor ids(const std::vector<int64_t>& v, const Shape& s) { return from_vector(v, s); }

}  // namespace

namespace {
// Every op family over empty tensors whose float leaves are of type g_dtype.
void empty_tensor_cases() {

  // ---- elementwise, with broadcasting against parameters that then get zero gradients ----------
  same_on_both("elementwise", {{rn({0, 5}), rn({5}), rn({5})}}, [](const std::vector<Tensor>& t) {
    Tensor y = gelu(t[0]) * t[1] + sigmoid(t[0]) - exp(t[2]) / 2.0;
    y = where(gt(t[0], 0.0), y, clamp(t[0], -1.0, 1.0)) + pow(abs(t[0]) + 1.0, t[1]) + add_relu(t[0], t[2]);
    return std::vector<Tensor>{y, eq(t[0], t[2])};
  });
  const Result out = same_on_both("parameter gradients are zeros", {{rn({0, 5}), rn({5})}},
                                  [](const std::vector<Tensor>& t) { return std::vector<Tensor>{t[0] * t[1]}; });
  if (out.error.empty()) CHECK(all_are(out.tensors.back(), 0.0));

  // ---- reductions over nothing: PyTorch's values -------------------------------------------------
  const Result red = same_on_both("reductions", {{rn({0, 5})}}, [](const std::vector<Tensor>& t) {
    return std::vector<Tensor>{sum(t[0], {0}), mean(t[0], {0}), var(t[0], {0}), norm(t[0], 2, {0}),
                               prod(t[0], {0}), sum(t[0]),     mean(t[0]),   amax(t[0], {1}),
                               logsumexp(t[0], {1}), sum(t[0], {1}), bcos::std(t[0], {1})};
  });
  if (red.error.empty()) {
    CHECK(all_are(red.tensors[0], 0.0));
    CHECK(all_are(red.tensors[1], NAN));  // torch: tensor([nan, ...])
    CHECK(all_are(red.tensors[2], NAN));
    CHECK(all_are(red.tensors[3], 0.0));
    CHECK(all_are(red.tensors[4], 1.0));
    CHECK(red.tensors[5].item() == 0.0);
    CHECK(std::isnan(red.tensors[6].item()));
    CHECK(red.tensors[7].shape() == Shape{0});
  }
  const Result lse = same_on_both("logsumexp of empty rows", {{rn({3, 0})}}, [](const std::vector<Tensor>& t) {
    return std::vector<Tensor>{logsumexp(t[0], {1}), sum(t[0], {1})};
  });
  if (lse.error.empty()) CHECK(all_are(lse.tensors[0], -INFINITY));  // torch: -inf
  // A reduction that must pick an element of nothing raises (torch: "Expected reduction dim 0 to
  // have non-zero size"), on both devices.
  same_on_both("amax over an empty dim", {{rn({0, 5})}}, [](const std::vector<Tensor>& t) {
    return std::vector<Tensor>{amax(t[0], {0})};
  }, Outcome::error);
  same_on_both("argmax over an empty dim", {{rn({0, 5})}}, [](const std::vector<Tensor>& t) {
    return std::vector<Tensor>{argmax(t[0], 0)};
  }, Outcome::error, /*backward=*/false);
  same_on_both("argmax / max / topk of no rows", {{rn({0, 5})}}, [](const std::vector<Tensor>& t) {
    ValuesIndices m = max(t[0], 1), k = topk(t[0], 2, 1);
    return std::vector<Tensor>{m.values + sum(k.values, {1}), m.indices, k.indices, argmax(t[0], 1)};
  });

  // ---- products --------------------------------------------------------------------------------
  same_on_both("linear with a batch of 0", {{rn({0, 4}), rn({3, 4}), rn({3})}}, [](const std::vector<Tensor>& t) {
    return std::vector<Tensor>{linear(t[0], t[1], t[2])};
  });
  const Result k0 = same_on_both("matmul over K = 0", {{rn({3, 0}), rn({0, 2})}}, [](const std::vector<Tensor>& t) {
    return std::vector<Tensor>{matmul(t[0], t[1])};
  });
  if (k0.error.empty()) CHECK(all_are(k0.tensors[0], 0.0));
  same_on_both("batched matmul of no batches", {{rn({0, 3, 4}), rn({0, 4, 2})}}, [](const std::vector<Tensor>& t) {
    return std::vector<Tensor>{matmul(t[0], t[1])};
  });

  // ---- convolution, pooling, padding -----------------------------------------------------------
  same_on_both("conv2d with a batch of 0", {{rn({0, 4, 6, 6}), rn({6, 2, 3, 3}), rn({6})}},
               [](const std::vector<Tensor>& t) {
                 return std::vector<Tensor>{conv2d(t[0], t[1], t[2], 1, 1, 1, /*groups=*/2)};
               });
  same_on_both("pooling and padding with a batch of 0", {{rn({0, 3, 6, 6})}}, [](const std::vector<Tensor>& t) {
    Tensor a = max_pool2d(t[0], 3, IntPair(2), 1), b = avg_pool2d(t[0], 2), c = adaptive_avg_pool2d(t[0], 4);
    Tensor p = pad(t[0], {1, 1, 2, 0});
    return std::vector<Tensor>{sum(a, {1, 2, 3}) + sum(b, {1, 2, 3}) + sum(c, {1, 2, 3}) + sum(p, {1, 2, 3}),
                               max_pool2d_with_indices(t[0], 2).indices};
  });

  // ---- norms: running statistics stay as they were (torch: F.batch_norm of an empty batch) ----
  for (bool relu : {false, true}) {
    Tensor running_mean = ones({3}, g_dtype), running_var = full({3}, 2.0, g_dtype);
    const Result bn = same_on_both("batch_norm in training with a batch of 0", {{rn({0, 3, 4, 4}), rn({3}), rn({3})}},
                                   [&](const std::vector<Tensor>& t) {
                                     Tensor rm = running_mean.to(t[0].device()), rv = running_var.to(t[0].device());
                                     Tensor y = batch_norm(t[0], rm, rv, t[1], t[2], true, 0.1, 1e-5, relu);
                                     return std::vector<Tensor>{y, rm, rv};
                                   });
    if (bn.error.empty()) {
      CHECK(all_are(bn.tensors[1], 1.0));
      CHECK(all_are(bn.tensors[2], 2.0));
    }
  }
  same_on_both("batch_norm in evaluation, uncentred batch norm, layer and group norm with no rows",
               {{rn({0, 4, 3, 3}), rn({4}), rn({4}), rn({0, 8}), rn({8})}}, [](const std::vector<Tensor>& t) {
                 Tensor rm = zeros({4}, {g_dtype, t[0].device()}), rv = ones({4}, {g_dtype, t[0].device()});
                 Tensor a = batch_norm(t[0], rm, rv, t[1], t[2], false);
                 Tensor b = batch_norm_uncentered(t[0], rv, t[1], t[2], false);
                 Tensor c = group_norm(t[0], 2, t[1], t[2]);
                 Tensor d = layer_norm(t[3], {8}, t[4], t[4]);
                 return std::vector<Tensor>{sum(a + b + c, {1, 2, 3}) + sum(d, {1})};
               });

  // ---- softmax and losses ------------------------------------------------------------------------
  same_on_both("softmax / log_softmax of no rows, and along an empty batch", {{rn({0, 7})}},
               [](const std::vector<Tensor>& t) {
                 return std::vector<Tensor>{softmax(t[0], 1) + log_softmax(t[0], 1) + softmax(t[0], 0)};
               });
  const Result ce = same_on_both("cross-entropy and BCE of no samples", {{rn({0, 5})}},
                                 [](const std::vector<Tensor>& t) {
                                   Tensor target = ids({}, {0}).to(t[0].device());
                                   return std::vector<Tensor>{
                                       cross_entropy(t[0], target, -100, 0.0, Reduction::sum),
                                       cross_entropy(t[0], target),
                                       cross_entropy(t[0], target, -100, 0.1),
                                       binary_cross_entropy_with_logits(t[0], sigmoid(t[0]).detach())};
                                 });
  if (ce.error.empty()) {
    CHECK(ce.tensors[0].item() == 0.0);        // torch: sum over nothing
    CHECK(std::isnan(ce.tensors[1].item()));  // torch: mean over nothing is nan
    CHECK(std::isnan(ce.tensors[2].item()));
    CHECK(std::isnan(ce.tensors[3].item()));
  }

  // ---- attention: a batch of 0, and no queries -----------------------------------------------------
  for (bool fused : {true, false}) {
    same_on_both(fused ? "fused attention, empty" : "composed attention, empty",
                 {{rn({0, 2, 4, 8}), rn({0, 2, 4, 8}), rn({0, 2, 4, 8}), rn({1, 2, 0, 8}), rn({1, 2, 5, 8}),
                   rn({1, 2, 5, 8})}},
                 [fused](const std::vector<Tensor>& t) {
                   Tensor a = scaled_dot_product_attention(t[0], t[1], t[2], Tensor(), false, 0, fused);
                   Tensor b = scaled_dot_product_attention(t[3], t[4], t[5], Tensor(), true, 0, fused);
                   return std::vector<Tensor>{sum(a) + sum(b)};
                 });
  }

  // ---- indexing and joining ------------------------------------------------------------------------
  same_on_both("embedding / index_select / gather / scatter_add with no indices", {{rn({6, 4}), rn({0, 4})}},
               [](const std::vector<Tensor>& t) {
                 const Device dev = t[0].device();
                 Tensor none = ids({}, {0}).to(dev), none2 = ids({}, {0, 4}).to(dev);
                 Tensor e = embedding(none, t[0]), s = index_select(t[0], 0, none);
                 Tensor g = gather(t[0], 0, none2), sa = scatter_add(t[0], 0, none2, t[1]);
                 return std::vector<Tensor>{sum(e) + sum(s) + sum(g) + sum(sa)};
               });
  same_on_both("cat / stack / split with empty pieces", {{rn({2, 3}), rn({0, 3})}}, [](const std::vector<Tensor>& t) {
    Tensor c = cat({t[0], t[1], t[0]}, 0);
    Tensor s = stack({t[1], t[1]}, 1);
    std::vector<Tensor> parts = split(c, std::vector<int64_t>{4, 0}, 0);
    return std::vector<Tensor>{sum(c) + sum(s) + sum(parts[1]), s};
  });
  same_on_both("masked_fill, one_hot, dropout and copies of empty tensors", {{rn({0, 5})}},
               [](const std::vector<Tensor>& t) {
                 const Device dev = t[0].device();
                 Tensor m = masked_fill(t[0], gt(t[0], 0.0), 2.0);
                 Tensor d = dropout(t[0], 0.5, true);
                 Tensor c = t[0].t().contiguous().t() + t[0].to(DType::f64).to(g_dtype);
                 Tensor r = randn({0, 5}, {g_dtype, dev}) + rand({0, 5}, {g_dtype, dev});
                 return std::vector<Tensor>{m + d + c + r, one_hot(ids({}, {0}).to(dev), 4)};
               });

  // ---- B-cos transforms --------------------------------------------------------------------------
  for (double b : {1.0, 2.0}) {
    same_on_both("B-cos conv2d / linear with a batch of 0",
                 {{rn({0, 4, 5, 5}), rn({8, 2, 3, 3}), rn({0, 4}), rn({6, 4})}}, [b](const std::vector<Tensor>& t) {
                   Tensor y = bcos_conv2d(t[0], unit_rows(t[1]), Tensor(), 1, 1, 1, /*groups=*/2, b, /*max_out=*/2);
                   Tensor z = bcos_linear(t[2], unit_rows(t[3]), Tensor(), b, /*max_out=*/2);
                   return std::vector<Tensor>{sum(y, {1, 2, 3}) + sum(z, {1})};
                 });
  }
}
}  // namespace

TEST_CASE("cuda ops: empty tensors (a batch of 0, empty rows, no indices) flow through every op family as on the CPU") {
  if (cuda_device_count() == 0) {
    MESSAGE("no CUDA device: skipped");
    return;
  }
  for (DType dt : {kF64, DType::f32}) {
    CAPTURE(dt);
    g_dtype = dt;
    manual_seed(41);
    empty_tensor_cases();
  }
  g_dtype = kF64;
  // Under autocast the products multiply 16-bit copies of nothing.
  for (DType autocast : {DType::bf16, DType::f16}) {
    CAPTURE(autocast);
    g_dtype = DType::f32;
    const Result r = same_on_both("linear, matmul and conv2d under autocast with a batch of 0",
                 {{rn({0, 4}), rn({3, 4}), rn({3}), rn({0, 4, 6, 6}), rn({6, 2, 3, 3}), rn({2, 0, 5})}},
                 [autocast](const std::vector<Tensor>& t) {
                   AutocastGuard guard(t[0].device().type, autocast);
                   // (widened before the sums: CUDA's autocast widens sum's input, the CPU's does not)
                   Tensor a = linear(t[0], t[1], t[2]).to(DType::f32), b = conv2d(t[3], t[4], Tensor(), 1, 1, 1, 2).to(DType::f32);
                   Tensor c = matmul(t[5].transpose(1, 2), t[5]).to(DType::f32);  // K = 0: zeros
                   return std::vector<Tensor>{sum(a, {1}) + sum(b, {1, 2, 3}) + sum(c), c};
                 });
    if (r.error.empty()) CHECK(all_are(r.tensors.at(1), 0.0));
    g_dtype = kF64;
  }
}

TEST_CASE("cuda ops: in-place methods (copy_, fill_, add_, mul_ by a number or a tensor, masked_fill_) on views and overlapping sources match the CPU") {
  if (cuda_device_count() == 0) {
    MESSAGE("no CUDA device: skipped");
    return;
  }
  manual_seed(42);
  const Tensor base = randn({5, 6}, kF64), row = randn({4}, kF64), square = randn({4, 4}, kF64);
  const Tensor mask = gt(randn({1, 6}, kF64), 0.0), ints = randint(-9, 9, {3, 4});
  auto run = [&](Device dev) {
    // clone(): to(the CPU) of a CPU tensor is that tensor, which the CPU run would change
    Tensor x = base.to(dev).clone(), sq = square.to(dev).clone(), sq2 = square.to(dev).clone();
    Tensor i = ints.to(dev).clone();
    x.narrow(1, 1, 4).add_(row.to(dev), 2.0);        // strided destination, broadcast source
    x.t().narrow(0, 4, 2).mul_(-3.0);                 // a transposed view
    x.narrow(0, 1, 3).masked_fill_(mask.to(dev), -7.0);  // broadcast mask
    x.narrow(0, 4, 1).narrow(1, 0, 3).fill_(0.5);
    x.narrow(1, 5, 1).zero_();
    sq.add_(sq.t());                                  // overlapping: reads sq before writing it
    sq2.copy_(sq2.t());
    i.t().narrow(0, 1, 2).add_(i.t().narrow(0, 0, 2));  // int64, overlapping rows of one storage
    Tensor sq3 = square.to(dev).clone();
    sq3.mul_(sq3.t());                                // a tensor factor, overlapping
    sq3.narrow(0, 1, 2).mul_(full({}, -0.5, {kF64, dev}));  // a 0-dim one, broadcast
    return std::vector<Tensor>{x.to(Device()), sq.to(Device()), sq2.to(Device()), i.to(Device()), sq3.to(Device())};
  };
  const std::vector<Tensor> cpu = run(Device()), gpu = run(Device::cuda(0));
  for (size_t k = 0; k < cpu.size(); ++k) {
    CAPTURE(k);
    CHECK(golden::equal(gpu[k], cpu[k]));
  }
  // The symmetric part came out symmetric, and the copy is the transpose of the original.
  CHECK(golden::equal(cpu[1], cpu[1].t().contiguous()));
  CHECK(golden::equal(cpu[2], square.t().contiguous()));
  CHECK(golden::equal(cpu[4].narrow(0, 0, 1), (square * square.t()).narrow(0, 0, 1)));
  CHECK(golden::equal(cpu[4].narrow(0, 1, 2), (square * square.t() * -0.5).narrow(0, 1, 2)));

  const Device gpu0 = Device::cuda(0);
  CHECK_THROWS_AS(base.to(gpu0).masked_fill_(mask, 1.0), Error);  // the mask on another device
  CHECK_THROWS_AS(base.to(gpu0).masked_fill_(mask.to(gpu0).to(kF64), 1.0), Error);  // not a bool mask
  CHECK_THROWS_AS(zeros({1, 6}, {kF64, gpu0}).expand({5, 6}).fill_(1.0), Error);
  CHECK_THROWS_AS(base.to(gpu0).mul_(full({}, 2.0, kF64)), Error);  // the factor on another device
}

TEST_CASE("cuda ops: dense elementwise maps at every length and alignment (16-byte packs, the tail, views starting inside a pack) match the CPU") {
  // Dense operands go 16 bytes at a time (4 float32, 2 float64 / int64, 16 bool) when every
  // pointer is 16-byte aligned, the rest one by one: lengths around the pack and views 1-3
  // elements into their storage take each way; a comparison of floats (bool out) never packs.
  if (cuda_device_count() == 0) {
    MESSAGE("no CUDA device: skipped");
    return;
  }
  manual_seed(43);
  for (DType dt : {DType::f32, kF64})
    for (int64_t n : {1, 2, 3, 4, 5, 7, 8, 9, 31, 1029})
      for (int64_t offset : {0, 1, 2, 3}) {
        CAPTURE(dt);
        CAPTURE(n);
        CAPTURE(offset);
        const Tensor a0 = randn({n + 4}, dt), b0 = randn({n + 4}, dt), i0 = randint(-50, 50, {n + 4});
        auto run = [&](Device dev) {
          Tensor a = a0.to(dev).requires_grad_(), b = b0.to(dev).requires_grad_();
          const Tensor av = a.narrow(0, offset, n), bv = b.narrow(0, 3 - offset, n), iv = i0.to(dev).narrow(0, offset, n);
          Tensor product = av * bv, e = exp(av), above = gt(av, bv);
          Tensor flags = ne(above, gt(bv, av));  // bool operands: 16 to a pack
          sum(relu(av) * bv + e).backward();  // relu's and exp's backward maps, on dense gradients
          Tensor ints = iv + iv * iv;
          Tensor into = b0.to(dev).clone();
          into.narrow(0, offset, n).add_(av.detach(), -2.0);  // a destination inside a pack
          return std::vector<Tensor>{product, e, above, a.grad(), b.grad(), ints, into, flags};
        };
        const std::vector<Tensor> cpu = run(Device()), gpu = run(Device::cuda(0));
        for (size_t k = 0; k < cpu.size(); ++k) {
          CAPTURE(k);
          if (k == 1 || k == 3)  // exp: the math libraries may differ in the last bit
            CHECK(golden::relative_error(gpu[k].to(Device()), cpu[k]) <= (dt == kF64 ? 1e-15 : 1e-6));
          else
            CHECK(golden::equal(gpu[k].to(Device()), cpu[k]));
        }
      }
}

TEST_CASE("cuda ops: gradcheck runs on the GPU (norms, softmax and losses, pooling, cuDNN conv, B-cos, attention, indexing)") {
  if (cuda_device_count() == 0) {
    MESSAGE("no CUDA device: skipped");
    return;
  }
  manual_seed(43);
  const Device gpu = Device::cuda(0);
  using In = const std::vector<Tensor>&;
  auto leaf = [&](const Shape& s) { return randn(s, kF64).to(gpu).requires_grad_(); };
  // Distinct values a quarter apart, in a scrambled order: no near ties for max pooling.
  auto spread = [&](const Shape& s) {
    const int64_t n = s.numel();
    std::vector<double> v(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) v[size_t(i)] = double((i * 7) % n) * 0.25 - 1.0;  // 7 coprime to n
    return from_vector(v, s, kF64).to(gpu).requires_grad_();
  };
  auto check = [](const char* what, const std::function<Tensor(In)>& f, const std::vector<Tensor>& inputs) {
    const GradcheckResult r = gradcheck(f, inputs, 1e-6, 1e-5, 1e-3);
    CHECK_MESSAGE(r.ok, std::string(what), ": ", r.message);
  };
  const Tensor target = ids({2, 0, 3}, {3}).to(gpu), index = ids({1, 0, 2, 1}, {2, 2}).to(gpu);

  check("softmax", [](In x) { return softmax(x[0], 1); }, {leaf({3, 5})});
  check("log_softmax", [](In x) { return log_softmax(x[0], 0); }, {leaf({3, 5})});
  check("cross-entropy with label smoothing", [&](In x) { return cross_entropy(x[0], target, -100, 0.1); },
        {leaf({3, 5})});
  check("layer_norm", [](In x) { return layer_norm(x[0], {6}, x[1], x[2]); }, {leaf({3, 6}), leaf({6}), leaf({6})});
  check("group_norm", [](In x) { return group_norm(x[0], 2, x[1], x[2]); },
        {leaf({2, 4, 2, 2}), leaf({4}), leaf({4})});
  check("batch_norm in training, with ReLU",
        [](In x) { return batch_norm(x[0], Tensor(), Tensor(), x[1], x[2], true, 0.1, 1e-5, /*relu=*/true); },
        {leaf({3, 2, 2, 2}), leaf({2}), leaf({2})});
  check("max_pool2d", [](In x) { return max_pool2d(x[0], 2, IntPair(1)); }, {spread({1, 2, 3, 3})});
  check("avg_pool2d with padding", [](In x) { return avg_pool2d(x[0], 2, IntPair(1), 1); }, {leaf({1, 2, 3, 3})});
  check("adaptive_avg_pool2d", [](In x) { return adaptive_avg_pool2d(x[0], 2); }, {leaf({1, 2, 3, 3})});
  check("cuDNN conv2d (groups, stride, padding, bias)", [](In x) { return conv2d(x[0], x[1], x[2], 2, 1, 1, 2); },
        {leaf({1, 4, 4, 4}), leaf({2, 2, 3, 3}), leaf({2})});
  check("B-cos conv2d (b = 2, max-out 2) of unit rows",
        [](In x) { return bcos_conv2d(x[0], unit_rows(x[1]), Tensor(), 1, 0, 1, 1, 2.0, 2); },
        {leaf({1, 2, 3, 3}), leaf({4, 2, 2, 2})});
  check("B-cos linear (b = 2.5)", [](In x) { return bcos_linear(x[0], x[1], Tensor(), 2.5); },
        {leaf({3, 4}), leaf({2, 4})});
  check("fused attention, causal", [](In x) { return scaled_dot_product_attention(x[0], x[1], x[2], Tensor(), true); },
        {leaf({1, 1, 3, 4}), leaf({1, 1, 3, 4}), leaf({1, 1, 3, 4})});
  check("gather", [&](In x) { return gather(x[0], 1, index); }, {leaf({2, 3})});
  check("scatter_add", [&](In x) { return scatter_add(x[0], 1, index, x[1]); }, {leaf({2, 3}), leaf({2, 2})});
  check("index_select and embedding",
        [&](In x) { return index_select(x[0], 1, index.select(0, 0)) + embedding(index.select(0, 1), x[1]).t(); },
        {leaf({2, 3}), leaf({3, 2})});

  // The inputs' rules hold on the GPU too.
  CHECK_THROWS_AS(gradcheck([](In x) { return x[0] * 2.0; }, {randn({2}, {DType::f32, gpu}).requires_grad_()}), Error);
  const Tensor not_leaf = leaf({2}) * 2.0;
  CHECK_THROWS_AS(gradcheck([](In x) { return x[0] * 2.0; }, {not_leaf}), Error);
}

TEST_CASE("cuda ops: an index out of range is raised at the next synchronisation, in the CPU's words, and the device works on") {
  if (cuda_device_count() == 0) {
    MESSAGE("no CUDA device: skipped");
    return;
  }
  // The kernel that reads a bad index skips it and reports it (tensor/cuda/fault.cu); a copy to
  // the host or synchronize() raises it. No result of the bad op reaches the host without the
  // error, the report is cleared once raised, and later work runs as usual.
  const Device gpu = Device::cuda(0);
  auto ids = [](std::vector<int64_t> v, Shape s) { return from_vector(v, s); };
  struct BadCase {
    const char* words;
    std::function<Tensor(Device)> run;
  };
  const std::vector<BadCase> cases = {
      {"index_select: index 5 is out of range for size 5",
       [&](Device d) { return index_select(ones({5, 2}, d), 0, ids({1, 5}, {2}).to(d)); }},
      {"index_select: index -1 is out of range for size 5",
       [&](Device d) { return index_select(ones({5, 2}, d), 0, ids({-1}, {1}).to(d)); }},
      {"gather: index 3 is out of range for size 3",
       [&](Device d) { return gather(ones({2, 3}, d), 1, ids({0, 3}, {2, 1}).to(d)); }},
      {"scatter_add: index 4 is out of range for size 4",
       [&](Device d) { return scatter_add(zeros({4, 3}, d), 0, ids({0, 4, 1}, {1, 3}).to(d), ones({1, 3}, d)); }},
      {"index_add: index 6 is out of range for size 6",  // (an embedding's backward kernel)
       [&](Device d) {
         const Tensor out = zeros({6, 2}, d);
         kernel::index_add(out, 0, ids({1, 6}, {2}).to(d), ones({2, 2}, d));
         return out;
       }},
      {"cross_entropy: target 7 is out of range for 3 classes",
       [&](Device d) { return cross_entropy(ones({2, 3}, d), ids({0, 7}, {2}).to(d)); }},
      {"nll_loss: target -3 is out of range for 3 classes",
       [&](Device d) { return nll_loss(ones({2, 3}, d), ids({-3, 1}, {2}).to(d)); }},
      {"one_hot: class index 10 is out of range for 10 classes",
       [&](Device d) { return one_hot(ids({3, 10}, {2}).to(d), 10); }},
      {"explain: target 4 is out of range for 4 classes",  // (an explanation's weights: its gather's backward)
       [&](Device d) {
         manual_seed(5);
         nn::Sequential model({std::make_shared<nn::Flatten>(), std::make_shared<nn::Linear>(12, 4)});
         model.to(d);
         return models::explain(model, rand({2, 3, 2, 2}).to(d), ids({1, 4}, {2}).to(d)).weights;
       }},
  };
  for (const BadCase& c : cases) {
    CAPTURE(c.words);
    CHECK_THROWS_WITH_AS(c.run(Device()), doctest::Contains(c.words), Error);
    Tensor out;
    CHECK_NOTHROW(out = c.run(gpu));  // (found later, on the device)
    CHECK_THROWS_WITH_AS(out.to(Device()), doctest::Contains(c.words), Error);
    CHECK_NOTHROW(synchronize(gpu));  // raised once
    const Tensor good = gather(arange(6.0).reshape({2, 3}).to(gpu), 1, ids({2, 0}, {2, 1}).to(gpu));
    CHECK(golden::equal(good.to(Device()), from_vector(std::vector<double>{2.0, 3.0}, {2, 1})));
  }
  // synchronize() raises it too; the first bad index found is the one named.
  (void)gather(ones({2, 3}, gpu), 1, ids({9, 0}, {2, 1}).to(gpu));
  (void)index_select(ones({5, 2}, gpu), 0, ids({8}, {1}).to(gpu));
  CHECK_THROWS_WITH_AS(synchronize(gpu), doctest::Contains("gather: index 9 is out of range for size 3"), Error);
  CHECK_NOTHROW(synchronize(gpu));
  // The next report after a raised one, on another stream: the kernel frees the claim itself.
  const cuda::StreamHandle side = cuda::create_stream(0);
  cuda::set_current_stream(0, side);
  (void)scatter_add(zeros({4, 3}, gpu), 0, ids({0, -2, 1}, {1, 3}).to(gpu), ones({1, 3}, gpu));
  CHECK_THROWS_WITH_AS(cuda::stream_synchronize(0, side), doctest::Contains("scatter_add: index -2"), Error);
  cuda::set_current_stream(0, nullptr);
  cuda::destroy_stream(0, side);
  // An output of no elements reads no index, yet its indices are checked (as on the CPU).
  CHECK_THROWS_WITH_AS(index_select(ones({5, 0}), 0, ids({7}, {1})), doctest::Contains("index 7"), Error);
  (void)index_select(ones({5, 0}, gpu), 0, ids({7}, {1}).to(gpu));
  CHECK_THROWS_WITH_AS(synchronize(gpu), doctest::Contains("index_select: index 7 is out of range for size 5"), Error);
}
