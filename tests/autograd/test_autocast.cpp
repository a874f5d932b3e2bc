// Autocast (autograd/autograd.h), as torch.autocast: products (linear, matmul, conv2d) take
// 16-bit copies of float32 inputs and return a 16-bit result; the losses (and on CUDA softmax,
// norms, sum, exp ...) widen 16-bit inputs to float32; the rest runs in its inputs' types. The
// B-cos layers' own products keep float32 tensors and round only their operands. Fixtures:
// tools/golden/autocast.py.
//   cast:   a product under autocast is the same bits as the product of explicit casts (and so
//           are its gradients, which come back float32 through the casts).
//   exact:  the float64 answer on rounded operands: the 16-bit result within 1 ulp of it; the
//           B-cos layers' float32 form within 1e-5 (float32 sums); the unrounded answer is ~1e-3
//           away, so that rounding is tested.
//   torch:  torch.autocast("cpu", bfloat16): the same bf16 roundings of float32 sums taken in
//           another order, 1 ulp; two small networks' dtypes stage by stage (exact), loss and
//           gradients (bf16's rounding accumulated over the network: below).
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>

#include "autograd/dispatch.h"
#include "autograd/ops.h"
#include "tensor/cpu/conv_bf16.h"
#include "tensor/dispatch.h"
#include "tensor/parallel.h"
#include "tests/errors.h"
#include "tests/golden.h"

using namespace bcos;

namespace {

const golden::Fixtures& fixtures() {
  static const golden::Fixtures f(golden::golden_dir() + "/autocast.safetensors");
  return f;
}

using Fn = std::function<Tensor(const std::vector<Tensor>&)>;

struct AutocastCase {
  const char* name;
  int inputs;
  Fn fn;        // the public op
  Fn rounding;  // the B-cos layers' form of it (float32 tensors, rounded operands); none for matmul
};

const std::vector<AutocastCase>& cases() {
  static const std::vector<AutocastCase> list = {
      {"linear", 3, [](const std::vector<Tensor>& in) { return linear(in[0], in[1], in[2]); },
       [](const std::vector<Tensor>& in) { return detail::linear_keeping(in[0], in[1], in[2], true); }},
      {"matmul", 2, [](const std::vector<Tensor>& in) { return matmul(in[0], in[1]); }, nullptr},
      {"bmm", 2, [](const std::vector<Tensor>& in) { return matmul(in[0], in[1]); }, nullptr},
      {"conv", 3, [](const std::vector<Tensor>& in) { return conv2d(in[0], in[1], in[2], 1, 1); },
       [](const std::vector<Tensor>& in) { return detail::conv2d_rounding_operands(in[0], in[1], in[2], 1, 1, 1, 1); }},
      {"conv_grouped", 2, [](const std::vector<Tensor>& in) { return conv2d(in[0], in[1], Tensor(), 2, 1, 2, 2); },
       [](const std::vector<Tensor>& in) {
         return detail::conv2d_rounding_operands(in[0], in[1], Tensor(), 2, 1, 2, 2);
       }},
  };
  return list;
}

struct Result {
  Tensor out;
  std::vector<Tensor> grads;
};

// fn on the case's inputs (float32 leaves) under `autocast` (f32: none), then backward with the
// stored gradient in the output's type; backward_autocast: the setting while backward runs (the
// recorded ops must not care). cast_first: the inputs explicitly cast to that type first.
Result run(const AutocastCase& c, const Fn& fn, DType autocast, DType backward_autocast = DType::f32,
           DType cast_first = DType::f32) {
  const auto& f = fixtures();
  std::vector<Tensor> in, operands;
  for (int i = 0; i < c.inputs; ++i) {
    in.push_back(f[std::string(c.name) + ".in" + std::to_string(i)].clone().requires_grad_());
    operands.push_back(cast_first == DType::f32 ? in.back() : in.back().to(cast_first));
  }
  Result r;
  {
    AutocastGuard guard(DeviceType::cpu, autocast, autocast != DType::f32);
    r.out = fn(operands);
  }
  {
    AutocastGuard guard(DeviceType::cpu, backward_autocast, backward_autocast != DType::f32);
    r.out.backward(f[std::string(c.name) + ".gout"].to(r.out.dtype()));
  }
  for (const Tensor& t : in) r.grads.push_back(t.grad());
  return r;
}

bool same_bits(const Tensor& a, const Tensor& b) {
  return a.dtype() == b.dtype() && a.shape() == b.shape() &&
         std::memcmp(a.contiguous().raw_data(), b.contiguous().raw_data(), size_t(a.numel()) * a.element_size()) == 0;
}

struct ConvCase {
  Shape x, w;
  int64_t stride, padding, groups = 1;
};

// A convolution under bf16 autocast in the B-cos layers' form (float32 tensors), forward and
// both gradients, against float64 on its rounded operands: 1e-5 (float32 sums); the float32
// convolution is ~1e-3 away, so the check can fail. The public conv2d's bf16 result is that
// float32 result rounded, bit for bit (the same kernels on the same rounded values).
void check_rounded_conv(const ConvCase& c) {
  CAPTURE(c.x);
  CAPTURE(c.w);
  auto rounded64 = [](const Tensor& t) { return t.to(DType::bf16).to(DType::f64); };
  const Tensor x0 = randn(c.x), w0 = randn(c.w) * 0.05, b0 = randn({c.w[0]});
  Tensor x = x0.clone().requires_grad_(), w = w0.clone().requires_grad_(), b = b0.clone().requires_grad_();
  Tensor y, public_y;
  {
    AutocastGuard guard(DeviceType::cpu);
    y = detail::conv2d_rounding_operands(x, w, b, c.stride, c.padding, 1, c.groups);
    public_y = conv2d(x0, w0, Tensor(), c.stride, c.padding, 1, c.groups);
  }
  const Tensor gout = randn(y.shape());
  y.backward(gout);
  Tensor x64 = rounded64(x0).requires_grad_(), w64 = rounded64(w0).requires_grad_();
  Tensor y64 = conv2d(x64, w64, b0.to(DType::f64), c.stride, c.padding, 1, c.groups);
  y64.backward(rounded64(gout));
  CHECK(golden::relative_error(y, y64) <= 1e-5);
  CHECK(golden::relative_error(x.grad(), x64.grad()) <= 1e-5);
  CHECK(golden::relative_error(w.grad(), w64.grad()) <= 1e-5);
  CHECK(golden::relative_error(conv2d(x0, w0, b0, c.stride, c.padding, 1, c.groups), y64) > 5e-4);
  {
    AutocastGuard guard(DeviceType::cpu);
    CHECK(same_bits(public_y, detail::conv2d_rounding_operands(x0, w0, Tensor(), c.stride, c.padding, 1, c.groups).to(DType::bf16)));
  }
}

}  // namespace

TEST_CASE("autocast: matmul, linear and conv2d take 16-bit copies of float32 inputs and return a 16-bit result, as explicit casts") {
  const auto& f = fixtures();
  for (const AutocastCase& c : cases()) {
    for (DType type : {DType::bf16, DType::f16}) {
      CAPTURE(std::string(c.name));
      CAPTURE(std::string(dtype_name(type)));
      const Result got = run(c, c.fn, type);
      REQUIRE(got.out.dtype() == type);
      // The same bits as casting by hand, forward and backward (float32 gradients, through the casts).
      const Result cast = run(c, c.fn, DType::f32, DType::f32, type);
      CHECK(same_bits(got.out, cast.out));
      for (int i = 0; i < c.inputs; ++i) {
        CAPTURE(i);
        CHECK(got.grads[size_t(i)].dtype() == DType::f32);
        CHECK(same_bits(got.grads[size_t(i)], cast.grads[size_t(i)]));
      }
      // Whatever autocast is on while backward runs.
      const Result later = run(c, c.fn, type, type == DType::bf16 ? DType::f16 : DType::bf16);
      for (int i = 0; i < c.inputs; ++i) CHECK(same_bits(got.grads[size_t(i)], later.grads[size_t(i)]));
      // And the exact answer on rounded operands, rounded once: 1 ulp (float32 sums). (Not with
      // a bias: the fixture adds it unrounded, autocast rounds it as torch's; the torch case has it.)
      const std::string key = std::string(c.name) + "." + (type == DType::bf16 ? "bf16" : "f16");
      if (c.inputs == 2) CHECK(golden::max_ulps(got.out, f[key + ".out"].to(type)) <= 1);
    }
  }
}

TEST_CASE("autocast: the B-cos layers' products keep float32 tensors and multiply bf16 / f16 roundings of their operands, forward and backward") {
  const auto& f = fixtures();
  for (const AutocastCase& c : cases()) {
    if (!c.rounding) continue;
    CAPTURE(std::string(c.name));
    for (DType type : {DType::bf16, DType::f16}) {
      CAPTURE(std::string(dtype_name(type)));
      const std::string key = std::string(c.name) + "." + (type == DType::bf16 ? "bf16" : "f16");
      const Result r = run(c, c.rounding, type);
      CHECK(r.out.dtype() == DType::f32);
      CHECK(golden::relative_error(r.out, f[key + ".out"]) <= 1e-5);
      for (int i = 0; i < c.inputs; ++i) {
        CAPTURE(i);
        CHECK(golden::relative_error(r.grads[size_t(i)], f[key + ".grad" + std::to_string(i)]) <= 1e-5);
      }
    }
    // The recorded products keep the forward's setting, whatever is on when backward runs.
    const Result later = run(c, c.rounding, DType::bf16, DType::f16);
    CHECK(golden::relative_error(later.grads[0], f[std::string(c.name) + ".bf16.grad0"]) <= 1e-5);
    // Without autocast the same products are ~1e-3 from the rounded answer: the checks can fail.
    const Result plain = run(c, c.rounding, DType::f32, DType::bf16);
    CHECK(golden::relative_error(plain.out, f[std::string(c.name) + ".bf16.out"]) > 5e-4);
    CHECK(golden::relative_error(plain.grads[0], f[std::string(c.name) + ".bf16.grad0"]) > 5e-4);
  }
}

TEST_CASE("autocast: agrees with torch.autocast on the CPU, output and gradients, to 1 bf16 ulp") {
  const auto& f = fixtures();
  for (const AutocastCase& c : cases()) {
    CAPTURE(std::string(c.name));
    const Result r = run(c, c.fn, DType::bf16);
    const std::string key = std::string(c.name) + ".torch";
    CHECK(golden::max_ulps(r.out, f[key + ".out"].to(DType::bf16)) <= 1);
    for (int i = 0; i < c.inputs; ++i) {
      CAPTURE(i);  // (the gradients are float32 values of bf16 ones, torch's too)
      CHECK(golden::max_ulps(r.grads[size_t(i)].to(DType::bf16), f[key + ".grad" + std::to_string(i)].to(DType::bf16)) <= 1);
    }
  }
}

TEST_CASE("autocast: leaves float64, other devices and other ops alone; guards nest") {
  const auto& f = fixtures();
  const Tensor x = f["linear.in0"], w = f["linear.in1"];
  const Tensor plain = linear(x, w);
  const Tensor plain64 = linear(x.to(DType::f64), w.to(DType::f64));
  CHECK(autocast_dtype(DeviceType::cpu) == DType::f32);
  {
    AutocastGuard cuda_only(DeviceType::cuda);  // a CUDA autocast does not touch CPU tensors
    CHECK(golden::equal(linear(x, w), plain));
    CHECK(autocast_dtype(DeviceType::cuda) == DType::bf16);
  }
  CHECK(autocast_dtype(DeviceType::cuda) == DType::f32);
  {
    AutocastGuard outer(DeviceType::cpu);
    CHECK(golden::equal(linear(x.to(DType::f64), w.to(DType::f64)), plain64));  // float64: exact
    CHECK(!golden::equal(linear(x, w), plain));
    // Reductions, norms, softmax and elementwise ops stay float32, unchanged.
    CHECK(golden::equal(softmax(x, -1), [&] {
      AutocastGuard off(DeviceType::cpu, DType::bf16, false);
      return softmax(x, -1);
    }()));
    CHECK(autocast_operands(x) == DType::bf16);
    CHECK(autocast_operands(x.to(DType::f64)) == DType::f32);
    {
      AutocastGuard inner(DeviceType::cpu, DType::f16);
      CHECK(autocast_dtype(DeviceType::cpu) == DType::f16);
      AutocastGuard off(DeviceType::cpu, DType::bf16, false);
      CHECK(golden::equal(linear(x, w), plain));
    }
    CHECK(autocast_dtype(DeviceType::cpu) == DType::bf16);
    CHECK(linear(x, w).dtype() == DType::bf16);  // float32 in, a bf16 product out
  }
  CHECK(autocast_dtype(DeviceType::cpu) == DType::f32);
  CHECK(testing::error_of([] { AutocastGuard g(DeviceType::cpu, DType::i64); }) ==
        "autocast: the product type must be bfloat16 or float16 (float32: off), got int64");
}

TEST_CASE("autocast: a product large enough for the bf16 GEMM (AMX, AVX-512 BF16: where the CPU has one) gives the same rounding") {
  // 96 x 128 x 64: above the sizes where gemm() hands bf16 operands to the bf16 GEMM (tensor/cpu/gemm.h).
  manual_seed(7);
  const Tensor a = randn({96, 64}), b = randn({64, 128});
  Tensor got;
  {
    AutocastGuard guard(DeviceType::cpu);
    got = matmul(a, b);
  }
  const Tensor want = matmul(a.to(DType::bf16).to(DType::f64), b.to(DType::bf16).to(DType::f64));
  CHECK(golden::max_ulps(got, want.to(DType::bf16)) <= 1);
  // The float32 sums themselves, before the result's rounding: the kernel with rounded operands.
  Tensor sums = empty({96, 128});
  kernel::bmm(a.unsqueeze(0), b.unsqueeze(0), sums.unsqueeze(0), false, DType::bf16);
  CHECK(golden::relative_error(sums, want) <= 1e-5);
  CHECK(golden::relative_error(matmul(a, b), want) > 5e-4);
}

TEST_CASE("autocast: convolutions whose products the bf16 GEMM takes (operands rounded as they are packed) give the same rounding, forward and backward") {
  // Shapes where a pass's main product is 64 or more on each side, so on a CPU with a bf16 GEMM
  // the operands stay float32 and are rounded while packed (tensor/cpu/conv.cpp): samples side
  // by side (2 x 10 x 10), one sample at a time with the input gradient as a forward pass
  // (2 x 24 x 24), stride 2, and a pointwise convolution. Unpadded, so that the implicit column
  // matrix's bf16 kernels (next case) do not take them. Elsewhere the rounded-copy path runs.
  const std::vector<ConvCase> convs = {{{2, 64, 10, 10}, {64, 64, 3, 3}, 1, 0},
                                       {{2, 64, 24, 24}, {64, 64, 3, 3}, 1, 0},
                                       {{3, 64, 20, 20}, {96, 64, 3, 3}, 2, 0},
                                       {{2, 64, 9, 9}, {128, 64, 1, 1}, 1, 0}};
  manual_seed(11);
  for (const ConvCase& c : convs) check_rounded_conv(c);
}

TEST_CASE("autocast: same-padded convolutions on the implicit column matrix's bf16 kernels (AVX-512 BF16) give the same rounding, forward and backward") {
  // "Same"-padded convolutions on maps of 49 positions or more with a sample per thread: on a CPU
  // with AVX-512 BF16 (no AMX) the implicit column matrix's bf16 kernels take them
  // (tensor/cpu/conv_bf16.cpp): the paired image (even channels), stride 2's phases, an odd
  // channel count (forward on rounded copies, weight gradient in bf16), a 5 x 5 kernel with 24
  // out channels (partial row tiles and column panels), two groups, and products the bf16 GEMM
  // would otherwise take (64 channels on 10 x 10, a 7 x 7 map).
  if (!cpu::conv_bf16_kernels_available())
    MESSAGE("no AVX-512 BF16 here: these convolutions run on rounded copies (the checks still hold)");
  const int64_t n = std::max<int64_t>(2, num_threads());
  const std::vector<ConvCase> convs = {{{n, 16, 32, 32}, {16, 16, 3, 3}, 1, 1, 1},
                                       {{n, 16, 32, 32}, {32, 16, 3, 3}, 2, 1, 1},
                                       {{n, 3, 32, 32}, {16, 3, 3, 3}, 1, 1, 1},
                                       {{n, 6, 20, 20}, {24, 6, 5, 5}, 1, 2, 1},
                                       {{n, 6, 21, 19}, {24, 6, 5, 5}, 2, 2, 1},
                                       {{n, 8, 16, 16}, {8, 4, 3, 3}, 1, 1, 2},
                                       {{n, 64, 10, 10}, {64, 64, 3, 3}, 1, 1, 1},
                                       {{n, 64, 7, 7}, {96, 64, 3, 3}, 1, 1, 1}};
  manual_seed(12);
  for (const ConvCase& c : convs) check_rounded_conv(c);
}

TEST_CASE("autocast: the B-cos form of linear keeps its input rounded to the operand type for the weight's gradient, as torch.autocast does") {
  // (The public linear keeps its recorded bf16 copy of x, as torch's.) The copy detail::linear_keeping
  // keeps is its own: the float32 input may change after the forward (here: NaN)
  // without touching the gradients, which are the same bits as with the input left alone. Rows:
  // 5 (products below the bf16 GEMM's sizes: rounded float32 copies) and 96 (the bf16 GEMM
  // reading the kept bf16 copy, where the CPU has one); bf16 and f16.
  manual_seed(12);
  for (DType operands : {DType::bf16, DType::f16}) {
    for (int64_t rows : {5, 96}) {
      CAPTURE(std::string(dtype_name(operands)));
      CAPTURE(rows);
      const Tensor x0 = randn({rows, 80}), w0 = randn({72, 80}) * 0.1, b0 = randn({72}), gout = randn({rows, 72});
      auto weight_grads = [&](bool spoil_input) {
        Tensor x = x0.clone(), w = w0.clone().requires_grad_(), b = b0.clone().requires_grad_();
        Tensor y;
        {
          AutocastGuard guard(DeviceType::cpu, operands);
          y = detail::linear_keeping(x, w, b, true);
        }
        if (spoil_input) x.fill_(NAN);
        y.backward(gout);
        return std::vector<Tensor>{y, w.grad(), b.grad()};
      };
      const std::vector<Tensor> kept = weight_grads(false), spoiled = weight_grads(true);
      for (size_t i = 0; i < kept.size(); ++i) {
        CAPTURE(i);
        REQUIRE(spoiled[i].defined());
        CHECK(std::memcmp(kept[i].raw_data(), spoiled[i].raw_data(), size_t(kept[i].numel()) * 4) == 0);
      }
      // And they are the float64 answer on rounded operands (so the kept copy is the rounded input).
      auto rounded64 = [&](const Tensor& t) { return t.to(operands).to(DType::f64); };
      const Tensor w_grad64 = matmul(rounded64(gout).t(), rounded64(x0));
      CHECK(golden::relative_error(kept[1], w_grad64) <= 1e-5);
      // (float16's rounding is finer than bfloat16's: the unrounded answer is ~3e-4 away there.)
      CHECK(golden::relative_error(matmul(gout.t(), x0), w_grad64) > 1e-4);
    }
  }
}

TEST_CASE("autocast: the matmul kernel takes an operand already bf16 / f16 only under autocast to that type") {
  manual_seed(13);
  for (DType operands : {DType::bf16, DType::f16}) {
    for (int64_t m : {6, 96}) {
      CAPTURE(std::string(dtype_name(operands)));
      CAPTURE(m);
      const Tensor a = randn({2, m, 70}), b = randn({2, 70, 88});
      const Tensor a16 = a.to(operands), b16 = b.transpose(1, 2).contiguous().to(operands).transpose(1, 2);
      Tensor want = empty({2, m, 88}), got = empty({2, m, 88});
      kernel::bmm(a, b, want, false, operands);
      for (int which = 1; which < 4; ++which) {
        CAPTURE(which);
        kernel::bmm(which & 1 ? a16 : a, which & 2 ? b16 : b, got, false, operands);
        CHECK(std::memcmp(got.raw_data(), want.raw_data(), size_t(want.numel()) * 4) == 0);
      }
      CHECK_THROWS_WITH_AS(kernel::bmm(a16, b, got, false, DType::f32),
                           doctest::Contains("need autocast to float32"), Error);
      const DType other = operands == DType::bf16 ? DType::f16 : DType::bf16;
      CHECK_THROWS_WITH_AS(kernel::bmm(a16, b, got, false, other), doctest::Contains("matmul: operands"), Error);
    }
  }
}

TEST_CASE("autocast: the CPU's lists, as torch's: products 16-bit, losses float32, the rest in its inputs' types") {
  manual_seed(14);
  const Tensor x = randn({4, 6}), w = randn({5, 6}), target = full({4}, 2.0, {DType::i64});
  AutocastGuard guard(DeviceType::cpu);
  const Tensor y = linear(x, w);
  CHECK(y.dtype() == DType::bf16);
  CHECK(matmul(x, w.t()).dtype() == DType::bf16);
  CHECK(matmul(y, w).dtype() == DType::bf16);  // bf16 with a float32 operand: both cast
  CHECK(cross_entropy(y, target).dtype() == DType::f32);
  CHECK(nll_loss(log_softmax(y, 1), target).dtype() == DType::f32);
  CHECK(binary_cross_entropy_with_logits(y, zeros({4, 5})).dtype() == DType::f32);
  // torch's CPU list keeps these in the input's type (its CUDA list widens them: tests/cuda).
  for (const Tensor& t : {softmax(y, 1), log_softmax(y, 1), layer_norm(y, {5}), sum(y), exp(y), relu(y), gelu(y)})
    CHECK(t.dtype() == DType::bf16);
  CHECK((y + x.narrow(1, 0, 5)).dtype() == DType::f32);        // promotion
  CHECK(cat({y, x.narrow(1, 0, 5)}, 0).dtype() == DType::f32);  // cat promotes, as torch.cat
  CHECK(stack({x.narrow(1, 0, 5), y}, 0).dtype() == DType::f32);
  CHECK(cat({y, y}, 1).dtype() == DType::bf16);
  CHECK_THROWS_WITH_AS(cat({x, x.to(DType::i64)}, 0), doctest::Contains("cat: dtype mismatch"), Error);
  // The B-cos layers give float32 (a bf16 input widened), attention a 16-bit result.
  CHECK(bcos_linear(y, randn({3, 5}), Tensor(), 2.0, 1).dtype() == DType::f32);
  CHECK(bcos_linear(x, randn({3, 6}), Tensor(), 2.0, 1).dtype() == DType::f32);
  const Tensor q = randn({2, 3, 4, 8});
  CHECK(scaled_dot_product_attention(q, q, q).dtype() == DType::bf16);
  CHECK(scaled_dot_product_attention(q.to(DType::bf16), q, q.to(DType::bf16)).dtype() == DType::bf16);
  CHECK(packed_self_attention(randn({2, 4, 24}), 1).dtype() == DType::bf16);
  // float64 is never touched.
  CHECK(linear(x.to(DType::f64), w.to(DType::f64)).dtype() == DType::f64);
}

namespace {
// The fixture's two networks (tools/golden/autocast.py: conv_net, block_net), each stage's output kept.
Tensor conv_net(const Tensor& x, const Tensor& target, const std::vector<Tensor>& p, std::vector<Tensor>& stages) {
  Tensor h = conv2d(x, p[0], p[1], 1, 1);
  stages.push_back(h);
  h = batch_norm(h, Tensor(), Tensor(), p[2], p[3], true);
  stages.push_back(h);
  h = max_pool2d(relu(h), 2);
  stages.push_back(h);
  h = h + conv2d(h, p[4], Tensor(), 1, 1);
  stages.push_back(h);
  h = adaptive_avg_pool2d(h, 1).flatten(1);
  stages.push_back(h);
  const Tensor y = linear(h, p[5], p[6]);
  stages.push_back(y);
  stages.push_back(cross_entropy(y, target));
  return stages.back();
}

Tensor block_net(const Tensor& x, const Tensor& target, const std::vector<Tensor>& p, std::vector<Tensor>& stages) {
  const Tensor h = linear(x, p[0], p[1]);  // [2, 5, 48]
  stages.push_back(h);
  std::vector<Tensor> qkv = split(h, 16, -1);
  for (Tensor& t : qkv) t = t.reshape({2, 5, 2, 8}).transpose(1, 2);
  const Tensor s = matmul(qkv[0], qkv[1].transpose(-2, -1)) * std::pow(8.0, -0.5);
  stages.push_back(s);
  const Tensor a = softmax(s, -1);
  stages.push_back(a);
  const Tensor o = matmul(a, qkv[2]).transpose(1, 2).reshape({2, 5, 16});
  stages.push_back(o);
  const Tensor r = x + linear(o, p[2]);
  stages.push_back(r);
  Tensor m = gelu(linear(layer_norm(r, {16}, p[3], p[4]), p[5]));
  stages.push_back(m);
  m = layer_norm(m, {32});
  stages.push_back(m);
  const Tensor y = mean(linear(m, p[6]), {1});
  stages.push_back(y);
  stages.push_back(cross_entropy(y, target));
  return stages.back();
}
}  // namespace

TEST_CASE("autocast: two small networks under bf16 autocast give torch.autocast's dtypes at every stage, its loss and gradients") {
  // The dtypes are exact. The numbers: every stage rounds to bf16 (2^-9 relative), each of
  // them in another order of float32 sums than torch's, so single elements flip by an ulp and
  // carry on; over these 7-9 stages the loss stays within 2^-7 of torch's (measured 0 and
  // 6.7e-4) and the parameters' gradients within 2^-5 norm-wise (measured 0.0035-0.012). An
  // unrounded (float32) network is about as far, so these bounds check the numbers the dtypes
  // give, not the rounding itself (the cases above do).
  const auto& f = fixtures();
  for (const char* name : {"conv_net", "block_net"}) {
    CAPTURE(std::string(name));
    const std::string key = name;
    std::vector<Tensor> params;
    for (int i = 0; f.has(key + ".p" + std::to_string(i)); ++i)
      params.push_back(f[key + ".p" + std::to_string(i)].clone().requires_grad_());
    std::vector<Tensor> stages;
    Tensor loss;
    {
      AutocastGuard guard(DeviceType::cpu);
      loss = (key == "conv_net" ? conv_net : block_net)(f[key + ".x"], f[key + ".target"], params, stages);
    }
    loss.backward();
    const std::vector<float> want_types = f[key + ".dtypes"].to_vector<float>();
    REQUIRE(stages.size() == want_types.size());
    for (size_t i = 0; i < stages.size(); ++i) {
      CAPTURE(i);
      CHECK(stages[i].dtype() == (want_types[i] != 0 ? DType::bf16 : DType::f32));
    }
    CHECK(golden::relative_error(loss, f[key + ".loss"]) <= 0x1p-7);
    for (size_t i = 0; i < params.size(); ++i) {
      CAPTURE(i);
      CHECK(params[i].grad().dtype() == DType::f32);
      if (key == "conv_net" && i == 1) {
        // The first convolution's bias comes before a batch norm in training, which takes any
        // per-channel constant out: its gradient is 0 but for rounding, on both sides. Small
        // against the weight's gradient beside it is what holds.
        CHECK(max(abs(params[1].grad())).item<double>() <= 0x1p-5 * max(abs(params[0].grad())).item<double>());
        continue;
      }
      CHECK(golden::relative_error(params[i].grad(), f[key + ".grad" + std::to_string(i)]) <= 0x1p-5);
    }
  }
}
