// Autocast (autograd/autograd.h): under an AutocastGuard, float32 products (linear, matmul, bmm,
// conv2d) multiply bf16 / f16 roundings of their operands and sum in float32, forward and
// backward. Fixtures: tools/golden/autocast.py.
//   exact:  the float64 answer on rounded operands; ours sums in float32, so 1e-5 (the golden
//           tolerance for products); the unrounded answer is ~1e-3 away, so rounding is tested.
//   torch:  torch.autocast("cpu", bfloat16), which also rounds each output to bf16: 2^-8 (one
//           bf16 rounding of the output, 2^-9, with room for the bias PyTorch rounds as well).
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>

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
  Fn fn;
};

const std::vector<AutocastCase>& cases() {
  static const std::vector<AutocastCase> list = {
      {"linear", 3, [](const std::vector<Tensor>& in) { return linear(in[0], in[1], in[2]); }},
      {"matmul", 2, [](const std::vector<Tensor>& in) { return matmul(in[0], in[1]); }},
      {"bmm", 2, [](const std::vector<Tensor>& in) { return matmul(in[0], in[1]); }},
      {"conv", 3, [](const std::vector<Tensor>& in) { return conv2d(in[0], in[1], in[2], 1, 1); }},
      {"conv_grouped", 2,
       [](const std::vector<Tensor>& in) { return conv2d(in[0], in[1], Tensor(), 2, 1, 2, 2); }},
  };
  return list;
}

struct Result {
  Tensor out;
  std::vector<Tensor> grads;
};

// The case's forward under `autocast` (f32: none) and its backward with the stored gradient;
// backward_autocast: the setting while backward runs (the recorded products must not care).
Result run(const AutocastCase& c, DType autocast, DType backward_autocast = DType::f32) {
  const auto& f = fixtures();
  std::vector<Tensor> in;
  for (int i = 0; i < c.inputs; ++i) in.push_back(f[std::string(c.name) + ".in" + std::to_string(i)].clone().requires_grad_());
  Result r;
  {
    AutocastGuard guard(DeviceType::cpu, autocast, autocast != DType::f32);
    r.out = c.fn(in);
  }
  {
    AutocastGuard guard(DeviceType::cpu, backward_autocast, backward_autocast != DType::f32);
    r.out.backward(f[std::string(c.name) + ".gout"]);
  }
  for (const Tensor& t : in) r.grads.push_back(t.grad());
  return r;
}

void compare(const AutocastCase& c, const Result& r, const std::string& tag, double tol) {
  const auto& f = fixtures();
  const std::string key = std::string(c.name) + "." + tag;
  CAPTURE(key);
  CHECK(golden::relative_error(r.out, f[key + ".out"]) <= tol);
  for (int i = 0; i < c.inputs; ++i) {
    CAPTURE(i);
    CHECK(golden::relative_error(r.grads[size_t(i)], f[key + ".grad" + std::to_string(i)]) <= tol);
  }
}

struct ConvCase {
  Shape x, w;
  int64_t stride, padding, groups = 1;
};

// A convolution under bf16 autocast, forward and both gradients, against float64 on its rounded
// operands: 1e-5 (float32 sums); the float32 convolution is ~1e-3 away, so the check can fail.
void check_rounded_conv(const ConvCase& c) {
  CAPTURE(c.x);
  CAPTURE(c.w);
  auto rounded64 = [](const Tensor& t) { return t.to(DType::bf16).to(DType::f64); };
  const Tensor x0 = randn(c.x), w0 = randn(c.w) * 0.05, b0 = randn({c.w[0]});
  Tensor x = x0.clone().requires_grad_(), w = w0.clone().requires_grad_(), b = b0.clone().requires_grad_();
  Tensor y;
  {
    AutocastGuard guard(DeviceType::cpu);
    y = conv2d(x, w, b, c.stride, c.padding, 1, c.groups);
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
}

}  // namespace

TEST_CASE("autocast: products of bf16 and f16 operands summed in float32, forward and backward") {
  for (const AutocastCase& c : cases()) {
    CAPTURE(c.name);
    compare(c, run(c, DType::bf16), "bf16", 1e-5);
    compare(c, run(c, DType::f16), "f16", 1e-5);
    // The recorded products keep the forward's setting, whatever is on when backward runs.
    compare(c, run(c, DType::bf16, DType::f16), "bf16", 1e-5);
    // Without autocast the same products are ~1e-3 from the rounded answer: the check above can fail.
    const Result plain = run(c, DType::f32, DType::bf16);
    CHECK(golden::relative_error(plain.out, fixtures()[std::string(c.name) + ".bf16.out"]) > 5e-4);
    CHECK(golden::relative_error(plain.grads[0], fixtures()[std::string(c.name) + ".bf16.grad0"]) > 5e-4);
  }
}

TEST_CASE("autocast: agrees with torch.autocast on the CPU to bf16's rounding") {
  for (const AutocastCase& c : cases()) {
    CAPTURE(c.name);
    compare(c, run(c, DType::bf16), "torch", 1.0 / 256);
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
    CHECK(linear(x, w).dtype() == DType::f32);  // float32 in, float32 out
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
  CHECK(golden::relative_error(got, want) <= 1e-5);
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

TEST_CASE("autocast: linear keeps its input rounded to the operand type for the weight's gradient, as torch.autocast does") {
  // The copy it keeps is its own: the float32 input may change after the forward (here: NaN)
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
          y = linear(x, w, b);
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
