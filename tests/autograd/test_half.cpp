// 16-bit floating tensors (float16 / bfloat16) as values: elementwise maps, binary ops with
// PyTorch's type promotion, reductions, products and convolutions, the ops computed in float32
// (norms, softmax, losses, pooling, attention, B-cos layers), and gradients through them. Fixtures:
// tools/golden/half.py: PyTorch's "opmath" rule (its float32 ops on the 16-bit values, the
// result rounded once), which PyTorch's own bf16 kernels follow to the ulps the script prints.
// Tolerance, in units in the last place of the 16-bit result (ulps; golden::max_ulps):
//   forward: 0 for +, −, ·, / and min / max (IEEE float32 arithmetic is correctly rounded, and so
//            is each side's one rounding to 16 bits: the bits must agree -- a scalar rounded to
//            bf16 first, x · bf16(0.1), is up to an ulp off and fails);
//            1 elsewhere -- both sides round one float32 result, but their float32 formulas
//            (libm's exp against ours, say) may straddle a rounding boundary;
//   gradients: 2 -- a unary op's derivative is one kernel here, rounded once, and PyTorch's
//            takes some from the stored, rounded output (exp: g·y), as ours;
//   binary gradients: 3 -- both PyTorch and we compose them from 16-bit ops, each rounding (pow's
//            a-gradient g·b·a^(b−1) is four: PyTorch 1.13's own is 3 ulps from the once-rounded
//            answer, tools/golden/half.py prints it); b's, summed over a's rows from such
//            terms, counts near zero in ulps of its largest element (largest_ulp below);
//   products and convolutions: 1 -- float32 sums against exact ones, each rounded once.
// (A scalar rounded to bf16 before use fails the 0-ulp checks: tried.)
#include <doctest/doctest.h>

#include <cmath>
#include <functional>
#include <map>
#include <string>

#include "autograd/ops.h"
#include "tensor/dispatch.h"
#include "tests/errors.h"
#include "tests/golden.h"

using namespace bcos;

namespace {

const golden::Fixtures& fixtures() {
  static const golden::Fixtures f(golden::golden_dir() + "/half.safetensors");
  return f;
}

#define CHECK_ULPS(got, want, ulps, ...)                                          \
  do {                                                                            \
    const Tensor& want_ = (want);                                                 \
    const Tensor& got_ = (got);                                                   \
    REQUIRE(got_.dtype() == want_.dtype());                                       \
    CHECK(golden::max_ulps(got_, want_ __VA_OPT__(, ) __VA_ARGS__) <= (ulps));    \
  } while (0)

// A gradient summed over a broadcast dim from 16-bit terms (both PyTorch's and ours): each
// term's roundings are relative to the term, which may be as large as the largest gradient and
// much larger than a sum that cancels, so near zero it counts in ulps of the largest element.
double largest_ulp(const Tensor& want) { return std::ldexp(1.0, want.dtype() == DType::bf16 ? -7 : -10); }

using Unary = std::function<Tensor(const Tensor&)>;
using Binary = std::function<Tensor(const Tensor&, const Tensor&)>;

const std::map<std::string, Unary>& unary_ops() {
  static const std::map<std::string, Unary> ops = {
      {"neg", [](const Tensor& x) { return neg(x); }},
      {"abs", [](const Tensor& x) { return abs(x); }},
      {"sign", [](const Tensor& x) { return sign(x); }},
      {"exp", [](const Tensor& x) { return exp(x); }},
      {"log", [](const Tensor& x) { return log(x); }},
      {"log1p", [](const Tensor& x) { return log1p(x); }},
      {"sqrt", [](const Tensor& x) { return sqrt(x); }},
      {"rsqrt", [](const Tensor& x) { return rsqrt(x); }},
      {"square", [](const Tensor& x) { return square(x); }},
      {"reciprocal", [](const Tensor& x) { return reciprocal(x); }},
      {"sin", [](const Tensor& x) { return sin(x); }},
      {"cos", [](const Tensor& x) { return cos(x); }},
      {"tanh", [](const Tensor& x) { return tanh(x); }},
      {"sigmoid", [](const Tensor& x) { return sigmoid(x); }},
      {"relu", [](const Tensor& x) { return relu(x); }},
      {"gelu", [](const Tensor& x) { return gelu(x); }},
      {"gelu_tanh", [](const Tensor& x) { return gelu(x, "tanh"); }},
      {"silu", [](const Tensor& x) { return silu(x); }},
      {"pow2_5", [](const Tensor& x) { return pow(x, 2.5); }},
      {"clamp", [](const Tensor& x) { return clamp(x, -0.5, 0.7); }},
  };
  return ops;
}

const std::map<std::string, Binary>& binary_ops() {
  static const std::map<std::string, Binary> ops = {
      {"add", [](const Tensor& a, const Tensor& b) { return add(a, b); }},
      {"sub", [](const Tensor& a, const Tensor& b) { return sub(a, b); }},
      {"mul", [](const Tensor& a, const Tensor& b) { return mul(a, b); }},
      {"div", [](const Tensor& a, const Tensor& b) { return div(a, b); }},
      {"pow", [](const Tensor& a, const Tensor& b) { return pow(a, b); }},
      {"maximum", [](const Tensor& a, const Tensor& b) { return maximum(a, b); }},
      {"minimum", [](const Tensor& a, const Tensor& b) { return minimum(a, b); }},
  };
  return ops;
}

const std::map<std::string, Unary>& scalar_ops() {
  static const std::map<std::string, Unary> ops = {
      {"mul0_1", [](const Tensor& x) { return x * 0.1; }},
      {"add0_3", [](const Tensor& x) { return x + 0.3; }},
      {"div3_7", [](const Tensor& x) { return x / 3.7; }},
      {"rsub2_5", [](const Tensor& x) { return 2.5 - x; }},
      {"rdiv1_3", [](const Tensor& x) { return 1.3 / x; }},
  };
  return ops;
}

const char* const kTypes[] = {"bf16", "f16"};

// fn raises a bcos::Error whose message holds every fragment.
void expect_error(const std::function<void()>& fn, std::initializer_list<const char*> fragments) {
  const std::string msg = testing::error_of(fn);
  REQUIRE_MESSAGE(!msg.empty(), "no error raised");
  for (const char* frag : fragments) CHECK_MESSAGE(msg.find(frag) != std::string::npos, "'" << frag << "' not in: " << msg);
}

}  // namespace

TEST_CASE("half: unary maps on bfloat16 and float16 and their gradients, as PyTorch's float32 opmath") {
  const auto& f = fixtures();
  for (const char* t : kTypes) {
    for (const auto& [name, fn] : unary_ops()) {
      const std::string key = "unary." + name + "." + t;
      CAPTURE(key);
      Tensor x = f[key + ".x"].clone().requires_grad_();
      Tensor y = fn(x);
      CHECK(y.dtype() == x.dtype());
      CHECK_ULPS(y, f[key + ".out"], 1);
      y.backward(f[key + ".gout"]);
      CHECK_ULPS(x.grad(), f[key + ".grad"], 2);
    }
  }
}

TEST_CASE("half: binary ops with a broadcast operand, their gradients summed back in 16 bits") {
  const auto& f = fixtures();
  for (const char* t : kTypes) {
    for (const auto& [name, fn] : binary_ops()) {
      const std::string key = "binary." + name + "." + t;
      CAPTURE(key);
      Tensor a = f[key + ".a"].clone().requires_grad_(), b = f[key + ".b"].clone().requires_grad_();
      Tensor y = fn(a, b);
      CHECK_ULPS(y, f[key + ".out"], name == "pow" ? 1 : 0);
      y.backward(f[key + ".gout"]);
      CHECK_ULPS(a.grad(), f[key + ".ga"], 3);
      CHECK_ULPS(b.grad(), f[key + ".gb"], 3, largest_ulp(f[key + ".gb"]));  // b [7]: summed over a's 5 rows
    }
  }
}

TEST_CASE("half: a Python-style scalar keeps its float32 value beside a 16-bit tensor; comparisons") {
  const auto& f = fixtures();
  for (const char* t : kTypes) {
    for (const auto& [name, fn] : scalar_ops()) {
      const std::string key = "scalar." + name + "." + t;
      CAPTURE(key);
      Tensor x = f[key + ".x"].clone().requires_grad_();
      Tensor y = fn(x);
      CHECK(y.dtype() == x.dtype());  // a scalar does not widen the result
      CHECK_ULPS(y, f[key + ".out"], 0);
      y.backward(f[key + ".gout"]);
      CHECK_ULPS(x.grad(), f[key + ".grad"], 2);
    }
  }
  // A comparison rounds the number to the tensor's type first, as PyTorch's (bf16(0.1) =
  // 0.10009765625): only arithmetic keeps its float32 value.
  const Tensor x = full({1}, 0.10009765625, {DType::bf16});
  CHECK(eq(x, 0.1).item() != 0);
  CHECK_FALSE(gt(x, 0.1).item() != 0);
  CHECK(lt(x.to(kFloat32), 0.1).item() == 0);  // (in float32, 0.10009765625 > 0.1f)
  // A number never widens a 16-bit result, even beside a 0-dim tensor (a loss / 4 stays bf16);
  // a 0-dim float32 *tensor* beside a 0-dim bf16 one does, as in PyTorch.
  const Tensor loss = full({}, 3.0, {DType::bf16});
  CHECK((loss / 4.0).dtype() == DType::bf16);
  CHECK((loss * 0.1).dtype() == DType::bf16);
  CHECK(golden::equal(loss * 0.1, full({}, 3.0f * 0.1f, {DType::bf16})));
  CHECK((loss + full({}, 1.0)).dtype() == DType::f32);
  CHECK(where(full({}, 1.0, {DType::boolean}), loss, 0.5).dtype() == DType::bf16);
  // alpha (add, sub, add_) and an in-place factor (mul_) join the float32 arithmetic: rounded once.
  manual_seed(5);
  const Tensor a = randn({64}).to(kBFloat16), b = randn({64}).to(kBFloat16);
  const Tensor once = (a.to(kFloat32) + b.to(kFloat32) * 0.1).to(kBFloat16);
  CHECK(golden::equal(add(a, b, 0.1), once));
  CHECK(golden::equal(sub(a, b, -0.1), once));
  CHECK(golden::equal(a.clone().add_(b, 0.1), once));
  CHECK(golden::equal(a.clone().mul_(0.1), a * 0.1));
  // mul_ by a float32 tensor: the product in float32, rounded once into the bfloat16 tensor.
  const Tensor tenth = full({64}, 0.1f);
  CHECK(golden::equal(a.clone().mul_(tenth), (a.to(kFloat32) * tenth).to(kBFloat16)));
  Tensor counts = from_vector(std::vector<int64_t>{1, 2}, {2});
  CHECK_THROWS_WITH_AS(counts.mul_(full({2}, 0.5)), doctest::Contains("mul_: this int64 [2] tensor cannot hold its product with a float32 [2] one"), Error);
}

TEST_CASE("half: a bfloat16 tensor with a float32 tensor promotes to float32; each gradient in its input's type") {
  const auto& f = fixtures();
  for (const auto& [name, fn] : binary_ops()) {
    const std::string key = "mixed." + name;
    CAPTURE(key);
    Tensor a = f[key + ".a"].clone().requires_grad_(), b = f[key + ".b"].clone().requires_grad_();
    Tensor y = fn(a, b);
    REQUIRE(y.dtype() == DType::f32);
    CHECK(golden::relative_error(y, f[key + ".out"]) <= 1e-6);  // float32 arithmetic on both sides
    y.backward(f[key + ".gout"]);
    CHECK_ULPS(a.grad(), f[key + ".ga"], 1);
    CHECK(golden::relative_error(b.grad(), f[key + ".gb"]) <= 1e-6);
  }
  // float32 with float64 stays an error (a gradcheck that mixes them has a bug), and so does
  // an integer tensor with a 16-bit one.
  expect_error([] { add(zeros({2}), zeros({2}, kFloat64)); }, {"add", "float32", "float64"});
  expect_error([] { add(zeros({2}, kInt64), zeros({2}, kBFloat16)); }, {"add", "int64", "bfloat16"});
  // where promotes as the arithmetic does.
  const Tensor w = where(full({2}, 1.0, {DType::boolean}), zeros({2}, kBFloat16), 0.1);
  CHECK(w.dtype() == DType::bf16);
  CHECK(where(full({2}, 1.0, {DType::boolean}), zeros({2}, kBFloat16), zeros({2})).dtype() == DType::f32);
}

TEST_CASE("half: a float32 op with one 16-bit operand widens it as it reads it: the bits of widening it first") {
  // Under autocast a bf16 linear's output meets the float32 residual stream; the kernel takes the
  // 16-bit operand as it is (no widened copy, a pass over it fewer), which is exact, so every op,
  // either operand order and every layout must give the bits of an explicit widening first.
  manual_seed(41);
  std::map<std::string, Binary> ops = binary_ops();
  ops["add_relu"] = [](const Tensor& a, const Tensor& b) { return add_relu(a, b); };
  for (DType h : {kBFloat16, kFloat16}) {
    for (const auto& [name, fn] : ops) {
      for (int layout = 0; layout < 5; ++layout) {
        // 0: both [6, 5]; 1: the 16-bit operand a broadcast row; 2: a transposed 16-bit view;
        // 3: a 0-dim 16-bit tensor (a tensor with dims decides the type: float32); 4: a float32
        // column broadcast against the 16-bit tensor.
        Tensor wide = layout == 4 ? randn({6, 1}) : randn({6, 5});
        Tensor half = layout == 1   ? randn({5}).to(h)
                      : layout == 2 ? randn({5, 6}).to(h).t()
                      : layout == 3 ? randn({}).to(h)
                                    : randn({6, 5}).to(h);
        if (name == "pow") wide = abs(wide) + 0.25, half = (abs(half) + 0.25).to(h);  // real powers
        for (bool half_first : {true, false}) {
          CAPTURE(dtype_name(h));
          CAPTURE(name);
          CAPTURE(layout);
          CAPTURE(half_first);
          const Tensor got = half_first ? fn(half, wide) : fn(wide, half);
          const Tensor want = half_first ? fn(half.to(kFloat32), wide) : fn(wide, half.to(kFloat32));
          REQUIRE(got.dtype() == DType::f32);
          CHECK(golden::equal(got, want));
        }
      }
    }
  }
  // Two 16-bit types (bfloat16 with float16: float32) and a 16-bit with a float64 operand still
  // widen first, as before.
  const Tensor mixed = add(full({3}, 1.5, {DType::bf16}), full({3}, 0.25, {DType::f16}));
  CHECK(mixed.dtype() == DType::f32);
  CHECK(golden::equal(mixed, full({3}, 1.75)));
  const Tensor wider = mul(full({3}, 1.5, {DType::bf16}), full({3}, 0.1, {DType::f64}));
  CHECK(wider.dtype() == DType::f64);
  CHECK(golden::equal(wider, full({3}, 1.5 * 0.1, {DType::f64})));
}

TEST_CASE("half: quick_gelu rounds as OpenAI's composed QuickGELU: its 16-bit bits, forward and backward") {
  // CLIP's x * sigmoid(1.702 * x) is three ops that each round to x's type (and five more in the
  // backward); quick_gelu computes them in one pass each way with the same roundings, so on 16-bit
  // tensors its values and gradients are the composed ops' bits. In float32 / float64 the
  // backward's last multiply-add is one fma (the same on every compiler), which the composed ops
  // round twice: within an ulp or so of theirs. The PyTorch golden checks the float32 values.
  manual_seed(1702);
  for (DType dt : {kFloat32, kFloat64, kBFloat16, kFloat16}) {
    CAPTURE(std::string(dtype_name(dt)));
    const Tensor x0 = (randn({7, 33}) * 4.0).to(dt), g = randn({7, 33}).to(dt);
    Tensor xa = x0.clone().requires_grad_(), xb = x0.clone().requires_grad_();
    const Tensor fused = quick_gelu(xa), composed = xb * sigmoid(xb * 1.702);
    REQUIRE(fused.dtype() == dt);
    fused.backward(g);
    composed.backward(g);
    const Tensor strided = quick_gelu(x0.t()), strided_want = x0.t() * sigmoid(x0.t() * 1.702);
    if (is_half_float(dt)) {
      CHECK(golden::equal(fused, composed));
      CHECK(golden::equal(xa.grad(), xb.grad()));
      CHECK(golden::equal(strided, strided_want));
      // The op composes on the CPU for 16-bit tensors (faster there); the kernel itself, which a
      // GPU runs, must give the same bits.
      Tensor y = empty(x0.shape(), {dt}), gx = empty(x0.shape(), {dt});
      kernel::unary(UnaryOp::quick_gelu, x0, y);
      kernel::unary_backward(UnaryOp::quick_gelu, g, x0, Tensor(), gx);
      CHECK(golden::equal(y, composed));
      CHECK(golden::equal(gx, xb.grad()));
    } else {
      const double tol = dt == kFloat32 ? 4e-7 : 1e-15;
      CHECK(golden::relative_error(fused, composed) <= tol);
      CHECK(golden::relative_error(xa.grad(), xb.grad()) <= tol);
      CHECK(golden::relative_error(strided, strided_want) <= tol);
    }
  }
}

TEST_CASE("half: reductions accumulate in double and round once; gradients of sum, mean and amax") {
  const auto& f = fixtures();
  const std::map<std::string, Unary> ops = {
      {"sum", [](const Tensor& x) { return sum(x, {1}); }},
      {"mean", [](const Tensor& x) { return mean(x, {0, 2}); }},
      {"amax", [](const Tensor& x) { return amax(x, {2}); }},
      {"var", [](const Tensor& x) { return var(x, {1}); }},
      {"norm", [](const Tensor& x) { return norm(x, 2, {2}); }},
      {"logsumexp", [](const Tensor& x) { return logsumexp(x, {1}); }},
      {"prod", [](const Tensor& x) { return prod(x, {2}); }},
  };
  for (const char* t : kTypes) {
    for (const auto& [name, fn] : ops) {
      const std::string key = "reduce." + name + "." + t;
      CAPTURE(key);
      Tensor x = f[key + ".x"].clone().requires_grad_();
      Tensor y = fn(x);
      CHECK(y.dtype() == x.dtype());
      CHECK_ULPS(y, f[key + ".out"], 1);
      if (f.has(key + ".grad")) {
        y.backward(f[key + ".gout"]);
        CHECK_ULPS(x.grad(), f[key + ".grad"], 2);
      }
    }
  }
}

TEST_CASE("half: products and convolutions of 16-bit tensors sum in float32 and round once, forward and backward") {
  // Against exact (float64) sums of the 16-bit values, rounded once: 1 ulp (a float32 sum may
  // straddle a rounding boundary). PyTorch's CPU does the same (tools/golden/half.py prints it).
  const auto& f = fixtures();
  using Fn = std::function<Tensor(const std::vector<Tensor>&)>;
  const std::map<std::string, std::pair<int, Fn>> ops = {
      {"linear", {3, [](const std::vector<Tensor>& in) { return linear(in[0], in[1], in[2]); }}},
      {"matmul", {2, [](const std::vector<Tensor>& in) { return matmul(in[0], in[1]); }}},
      {"bmm", {2, [](const std::vector<Tensor>& in) { return matmul(in[0], in[1]); }}},
      {"conv", {3, [](const std::vector<Tensor>& in) { return conv2d(in[0], in[1], in[2], 1, 1); }}},
      {"conv_grouped", {2, [](const std::vector<Tensor>& in) { return conv2d(in[0], in[1], Tensor(), 2, 1, 2, 2); }}},
  };
  for (const char* t : kTypes) {
    for (const auto& [name, op] : ops) {
      const std::string key = "product." + name + "." + t;
      CAPTURE(key);
      std::vector<Tensor> in;
      for (int i = 0; i < op.first; ++i) in.push_back(f[key + ".in" + std::to_string(i)].clone().requires_grad_());
      Tensor y = op.second(in);
      CHECK(y.dtype() == in[0].dtype());
      CHECK_ULPS(y, f[key + ".out"], 1);
      y.backward(f[key + ".gout"]);
      for (int i = 0; i < op.first; ++i) {
        CAPTURE(i);
        CHECK_ULPS(in[size_t(i)].grad(), f[key + ".grad" + std::to_string(i)], 1);
      }
    }
  }
}

TEST_CASE("half: norms, softmax, losses, pooling, attention and embedding take 16-bit tensors through float32, rounded once") {
  // These ops compute in float32 and round once, as PyTorch's opmath kernels: most through
  // float32 copies (autograd/dispatch.h: through_float32), batch norm in its own kernels (16-bit x
  // read and written as it is, float32 per-channel tensors). Against PyTorch's float32 ops on the widened values: 1 ulp (float32
  // formulas may straddle a rounding boundary). Gradients come
  // back in each input's own type: 16-bit for 16-bit inputs, float32 for batch norm's float32
  // parameters (2e-6 relative: float32 sums in another order).
  const auto& f = fixtures();
  using Fn = std::function<Tensor(const std::vector<Tensor>&)>;
  const Tensor none;
  const std::map<std::string, Fn> ops = {
      {"softmax", [](const std::vector<Tensor>& in) { return softmax(in[0], -1); }},
      {"log_softmax", [](const std::vector<Tensor>& in) { return log_softmax(in[0], 1); }},
      {"layer_norm", [](const std::vector<Tensor>& in) { return layer_norm(in[0], {8}, in[1], in[2]); }},
      {"group_norm", [](const std::vector<Tensor>& in) { return group_norm(in[0], 3, in[1], in[2]); }},
      {"batch_norm_eval",
       [](const std::vector<Tensor>& in) {
         return batch_norm(in[0], linspace(-0.5, 0.5, 3), linspace(0.5, 2, 3), in[1], in[2], false);
       }},
      {"max_pool2d", [](const std::vector<Tensor>& in) { return max_pool2d(in[0], 3, IntPair(2), 1); }},
      {"avg_pool2d", [](const std::vector<Tensor>& in) { return avg_pool2d(in[0], 3, IntPair(2), 1, false, false); }},
      {"adaptive_avg_pool2d", [](const std::vector<Tensor>& in) { return adaptive_avg_pool2d(in[0], {3, 2}); }},
      {"cross_entropy", [](const std::vector<Tensor>& in) { return cross_entropy(in[0], in[1], -100, 0.1); }},
      {"bce_with_logits", [](const std::vector<Tensor>& in) { return binary_cross_entropy_with_logits(in[0], in[1]); }},
      {"attention", [](const std::vector<Tensor>& in) { return scaled_dot_product_attention(in[0], in[1], in[2], Tensor(), true); }},
      {"embedding", [](const std::vector<Tensor>& in) { return embedding(in[1], in[0]); }},
  };
  for (const char* t : kTypes) {
    for (const auto& [name, fn] : ops) {
      const std::string key = "widened." + name + "." + t;
      CAPTURE(key);
      std::vector<Tensor> in;
      for (int i = 0; f.has(key + ".in" + std::to_string(i)); ++i) {
        Tensor v = f[key + ".in" + std::to_string(i)].clone();
        if (v.is_floating_point()) v.requires_grad_();
        in.push_back(v);
      }
      Tensor y = fn(in);
      REQUIRE(y.dtype() == f[key + ".out"].dtype());
      CHECK_ULPS(y, f[key + ".out"], 1);
      y.backward(f[key + ".gout"]);
      for (size_t i = 0; i < in.size(); ++i) {
        if (!in[i].is_floating_point()) continue;
        CAPTURE(i);
        const Tensor& want = f[key + ".grad" + std::to_string(i)];
        REQUIRE(in[i].grad().dtype() == want.dtype());
        if (is_half_float(want.dtype())) CHECK_ULPS(in[i].grad(), want, 1);
        else CHECK(golden::relative_error(in[i].grad(), want) <= 2e-6);
      }
    }
    // Batch norm in training beside float32 parameters and running statistics (stepped in
    // float32), and the same with 16-bit running statistics (stepped in a float32 copy, written
    // back rounded).
    const std::string key = std::string("widened.batch_norm_train.") + t;
    CAPTURE(key);
    for (DType stats : {DType::f32, f[key + ".in0"].dtype()}) {
      CAPTURE(stats);
      Tensor x = f[key + ".in0"].clone().requires_grad_(), w = f[key + ".in1"].clone().requires_grad_(),
             b = f[key + ".in2"].clone().requires_grad_();
      Tensor rm = linspace(-0.5, 0.5, 3).to(stats), rv = linspace(0.5, 2, 3).to(stats);
      Tensor y = batch_norm(x, rm, rv, w, b, true, 0.1, 1e-5);
      REQUIRE(y.dtype() == x.dtype());
      CHECK_ULPS(y, f[key + ".out"], 1);
      y.backward(f[key + ".gout"]);
      CHECK_ULPS(x.grad(), f[key + ".grad0"], 1);
      CHECK(golden::relative_error(w.grad(), f[key + ".grad1"]) <= 2e-6);
      CHECK(golden::relative_error(b.grad(), f[key + ".grad2"]) <= 2e-6);
      REQUIRE(rm.dtype() == stats);
      if (stats == DType::f32) {
        CHECK(golden::relative_error(rm, f[key + ".running_mean"]) <= 1e-6);
        CHECK(golden::relative_error(rv, f[key + ".running_var"]) <= 1e-6);
      } else {
        CHECK_ULPS(rm, f[key + ".running_mean"].to(stats), 1);
        CHECK_ULPS(rv, f[key + ".running_var"].to(stats), 1);
      }
    }
  }
}

TEST_CASE("half: B-cos layers on 16-bit tensors round once, at the layer's output") {
  // bcos_conv2d / bcos_linear on 16-bit inputs: the float32 layer on the widened values, rounded
  // once -- the same bits as calling it so (and not those of its ops rounded one by one).
  manual_seed(7);
  for (DType dt : {DType::bf16, DType::f16}) {
    CAPTURE(dt);
    const Tensor x0 = randn({2, 6, 7, 7}).to(dt), w0 = randn({8, 6, 3, 3}).to(dt), v0 = randn({3, 5, 12}).to(dt),
                 u0 = randn({10, 12}).to(dt);
    Tensor x = x0.clone().requires_grad_(), w = w0.clone().requires_grad_();
    Tensor y = bcos_conv2d(x, w, Tensor(), 1, 1, 1, 1, 2.0, 2);
    Tensor v = v0.clone().requires_grad_(), u = u0.clone().requires_grad_();
    Tensor z = bcos_linear(v, u, Tensor(), 2.0, 2);
    REQUIRE(y.dtype() == dt);
    REQUIRE(z.dtype() == dt);
    (sum(y * y) + sum(z)).backward();
    Tensor xf = x0.to(kFloat32).requires_grad_(), wf = w0.to(kFloat32).requires_grad_();
    Tensor vf = v0.to(kFloat32).requires_grad_(), uf = u0.to(kFloat32).requires_grad_();
    Tensor yf = bcos_conv2d(xf, wf, Tensor(), 1, 1, 1, 1, 2.0, 2), zf = bcos_linear(vf, uf, Tensor(), 2.0, 2);
    CHECK(golden::equal(y, yf.to(dt)));
    CHECK(golden::equal(z, zf.to(dt)));
    (sum(yf.to(dt).to(kFloat32) * yf.to(dt).to(kFloat32)) + sum(zf)).backward();
    CHECK(golden::max_ulps(x.grad(), xf.grad().to(dt)) <= 1);
    CHECK(golden::max_ulps(w.grad(), wf.grad().to(dt)) <= 1);
    CHECK(golden::max_ulps(u.grad(), uf.grad().to(dt)) <= 1);
  }
}

TEST_CASE("half: the engine accumulates a tensor's 16-bit gradients and sums broadcast ones") {
  const auto& f = fixtures();
  for (const char* t : kTypes) {
    const std::string key = std::string("engine.") + t;
    CAPTURE(key);
    Tensor x = f[key + ".x"].clone().requires_grad_(), w = f[key + ".w"].clone().requires_grad_();
    Tensor y = x * w + tanh(x);
    y.backward(f[key + ".gout"]);
    REQUIRE(x.grad().dtype() == x.dtype());
    CHECK_ULPS(x.grad(), f[key + ".grad_x"], 1);
    CHECK_ULPS(w.grad(), f[key + ".grad_w"], 1);
  }
}

TEST_CASE("half: a 16-bit tensor beside a float32 one in a product is an error, as in PyTorch") {
  expect_error([] { matmul(zeros({2, 3}, kBFloat16), zeros({3, 2})); }, {"matmul", "bfloat16", "float32"});
  expect_error([] { conv2d(zeros({1, 2, 4, 4}, kBFloat16), zeros({2, 2, 1, 1})); }, {"conv2d", "bfloat16", "float32"});
  expect_error([] { bcos_linear(zeros({2, 3}, kBFloat16), ones({4, 3})); }, {"bcos_linear", "bfloat16", "float32"});
  expect_error([] { bcos_conv2d(zeros({1, 2, 4, 4}, kBFloat16), ones({2, 2, 1, 1})); }, {"bcos_conv2d", "bfloat16", "float32"});
  expect_error([] { scaled_dot_product_attention(zeros({1, 2, 4}, kBFloat16), zeros({1, 2, 4}), zeros({1, 2, 4}, kBFloat16)); },
               {"scaled_dot_product_attention", "bfloat16", "float32"});
}

TEST_CASE("half: batch norm without running statistics (track_running_stats = false) on 16-bit inputs") {
  // Batch statistics only; with float32 parameters (the kernels' own 16-bit path) and with
  // 16-bit ones (widened): the same bits, and those of the float32 computation rounded once.
  manual_seed(6);
  const Tensor x = randn({4, 3, 5, 5}).to(kBFloat16), w = randn({3}), b = randn({3});
  const Tensor want = batch_norm(x.to(kFloat32), Tensor(), Tensor(), w, b, true).to(kBFloat16);
  CHECK(golden::max_ulps(batch_norm(x, Tensor(), Tensor(), w, b, true), want) <= 1);
  CHECK(golden::max_ulps(batch_norm(x, Tensor(), Tensor(), w.to(kBFloat16), b.to(kBFloat16), true),
                         batch_norm(x.to(kFloat32), Tensor(), Tensor(), w.to(kBFloat16).to(kFloat32),
                                    b.to(kBFloat16).to(kFloat32), true).to(kBFloat16)) <= 1);
  CHECK(golden::max_ulps(batch_norm_uncentered(x, Tensor(), w.to(kBFloat16), b.to(kBFloat16), true, 0.1, 1e-5, false),
                         batch_norm_uncentered(x.to(kFloat32), Tensor(), w.to(kBFloat16).to(kFloat32),
                                               b.to(kBFloat16).to(kFloat32), true, 0.1, 1e-5, false).to(kBFloat16)) <= 1);
}

TEST_CASE("half: selections and joins (topk, max, pad, cat, stack, masked_fill) move 16-bit values as they are") {
  // Nothing is computed: the 16-bit result must hold exactly the float32 one's values, and the
  // gradients likewise (each a sum of at most one term, or a copy).
  manual_seed(9);
  const Tensor x0 = randn({2, 3, 4, 4}).to(kBFloat16);
  using Fn = std::function<Tensor(const Tensor&)>;
  const std::map<std::string, Fn> ops = {
      {"topk", [](const Tensor& x) { return topk(x.reshape({2, -1}), 5, 1, true, true).values; }},
      {"max", [](const Tensor& x) { return max(x, 1).values; }},
      {"pad", [](const Tensor& x) { return pad(x, {1, 1, 2, 0}, 0.5); }},
      {"cat", [](const Tensor& x) { return cat({x, x * 2.0}, 1); }},
      {"stack", [](const Tensor& x) { return stack({x, x}, 0); }},
      {"masked_fill", [](const Tensor& x) { return masked_fill(x, gt(x, 0.0), 1.5); }},
  };
  for (const auto& [name, fn] : ops) {
    CAPTURE(name);
    Tensor x = x0.clone().requires_grad_(), xf = x0.to(kFloat32).requires_grad_();
    const Tensor y = fn(x), yf = fn(xf);
    REQUIRE(y.dtype() == kBFloat16);
    CHECK(golden::equal(y, yf.to(kBFloat16)));
    const Tensor g = randn(y.shape()).to(kBFloat16);
    y.backward(g);
    yf.backward(g.to(kFloat32));
    CHECK(golden::equal(x.grad(), xf.grad().to(kBFloat16)));
  }
}
