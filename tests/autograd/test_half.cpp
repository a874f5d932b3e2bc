// 16-bit floating tensors (float16 / bfloat16) as values: elementwise maps, binary ops with
// PyTorch's type promotion, reductions, and gradients through them. Fixtures:
// tools/golden/half.py (bfloat16: PyTorch's own kernels; float16: the float32 "opmath" rule).
// Tolerance, in units in the last place of the 16-bit result (ulps; max_ulps below):
//   forward: 0 for +, −, ·, / and min / max (IEEE float32 arithmetic is correctly rounded, and so
//            is each side's one rounding to 16 bits: the bits must agree -- a scalar rounded to
//            bf16 first, x · bf16(0.1), is up to an ulp off and fails);
//            1 elsewhere -- both sides round one float32 result, but their float32 formulas
//            (libm's exp against ours, say) may straddle a rounding boundary;
//   gradients: 2 -- a unary op's derivative is one kernel here, rounded once, and PyTorch's
//            takes some from the stored, rounded output (exp: g·y), as ours;
//   binary gradients: 3 -- both PyTorch and we compose them from 16-bit ops, each rounding (pow's
//            a-gradient g·b·a^(b−1) is four: PyTorch 1.13's own is 3 ulps from the once-rounded
//            answer, tools/golden/half.py prints it).
// A result computed in float32 and then kept in float32, or rounded twice through a 16-bit
// scalar (x * bf16(0.1)), is several ulps away on some elements, so these checks can fail.
#include <doctest/doctest.h>

#include <functional>
#include <map>
#include <string>

#include "autograd/ops.h"
#include "tests/errors.h"
#include "tests/golden.h"

using namespace bcos;

namespace {

const golden::Fixtures& fixtures() {
  static const golden::Fixtures f(golden::golden_dir() + "/half.safetensors");
  return f;
}

#define CHECK_ULPS(got, want, ulps)                          \
  do {                                                       \
    const Tensor& want_ = (want);                            \
    const Tensor& got_ = (got);                              \
    REQUIRE(got_.dtype() == want_.dtype());                  \
    CHECK(golden::max_ulps(got_, want_) <= (ulps));                  \
  } while (0)

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
      CHECK_ULPS(b.grad(), f[key + ".gb"], 3);
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
  // 0.1 is not a bfloat16 value: x < 0.1 compares against 0.1f, not against bf16(0.1) = 0.10009765625.
  const Tensor x = full({1}, 0.10009765625, {DType::bf16});
  CHECK_FALSE(lt(x, 0.1).item() != 0);
  CHECK(gt(x, 0.1).item() != 0);
  CHECK(ge(x, full({}, 0.1, {DType::bf16})).item() != 0);  // a bf16 0-dim tensor is rounded: equal
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

TEST_CASE("half: ops without 16-bit kernels say so") {
  expect_error([] { softmax(zeros({2, 3}, kBFloat16), 1); }, {"softmax", "bfloat16", "to(kFloat32)"});
  expect_error([] { matmul(zeros({2, 3}, kBFloat16), zeros({3, 2}, kBFloat16)); }, {"matmul", "bfloat16"});
}
