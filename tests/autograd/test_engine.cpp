// The backward engine's behaviour: accumulation, grad mode, detach, retain_grad, version
// counters, freed graphs, gradient checks against known closed forms.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <functional>

#include "autograd/ops.h"
#include "tests/errors.h"
#include "tests/golden.h"

using namespace bcos;
using testing::error_of;

namespace {
std::vector<double> v(const Tensor& t) { return t.to_vector<double>(); }
}

TEST_CASE("engine: scalar backward and known gradients") {
  Tensor x = from_vector<float>({1, 2, 3}, {3}).requires_grad_();
  Tensor y = sum(x * x);  // dy/dx = 2x
  y.backward();
  CHECK(v(x.grad()) == std::vector<double>{2, 4, 6});
  CHECK(x.is_leaf());
  CHECK_FALSE(y.is_leaf());
  CHECK(y.grad_fn_name() == "SumBackward");
}

TEST_CASE("engine: a tensor used twice accumulates both paths") {
  Tensor x = from_vector<double>({0.5, -1.0}, {2}, kFloat64).requires_grad_();
  Tensor y = sum(x * 3.0 + exp(x));  // 3 + e^x
  y.backward();
  std::vector<double> g = v(x.grad());
  CHECK(g[0] == doctest::Approx(3 + std::exp(0.5)));
  CHECK(g[1] == doctest::Approx(3 + std::exp(-1.0)));
}

TEST_CASE("engine: gradients accumulate across backward calls into .grad") {
  Tensor x = ones({2}).requires_grad_();
  sum(x * 2.0).backward();
  sum(x * 3.0).backward();
  CHECK(v(x.grad()) == std::vector<double>{5, 5});
  x.zero_grad();
  CHECK_FALSE(x.grad().defined());
}

TEST_CASE("engine: .grad is owned, so modifying it in place touches nothing else") {
  Tensor a = ones({2}).requires_grad_(), b = ones({2}).requires_grad_();
  sum(a + b).backward();  // both receive the very same gradient tensor
  a.grad().mul_(10.0);
  CHECK(v(b.grad()) == std::vector<double>{1, 1});
}

TEST_CASE("engine: a fresh gradient is adopted as .grad, one the caller still holds is copied") {
  // A leaf's own gradient: the caller keeps g, so .grad must not alias it.
  Tensor x = ones({3}).requires_grad_();
  Tensor g = from_vector<float>({1, 2, 3}, {3});
  x.backward(g);
  g.mul_(10.0);
  CHECK(v(x.grad()) == std::vector<double>{1, 2, 3});
  // linear's weight gradient arrives [out, in] row-major (gᵀ · x) and is adopted as it is.
  Tensor w = ones({2, 3}).requires_grad_(), in = from_vector<float>({1, 2, 3, 4, 5, 6}, {2, 3});
  sum(linear(in, w, Tensor())).backward();
  CHECK(w.grad().is_contiguous());
  CHECK(v(w.grad()) == std::vector<double>{5, 7, 9, 5, 7, 9});
}

TEST_CASE("engine: backward with an explicit gradient for a non-scalar output") {
  Tensor x = from_vector<float>({1, 2}, {2}).requires_grad_();
  Tensor y = x * x;
  CHECK_THROWS_WITH_AS(y.backward(), doctest::Contains("scalar"), Error);
  y.backward(from_vector<float>({1, 10}, {2}));
  CHECK(v(x.grad()) == std::vector<double>{2, 40});
  CHECK_THROWS_WITH_AS((x * 2.0).backward(ones({3})), doctest::Contains("shape"), Error);
}

TEST_CASE("engine: NoGradGuard, detach and requires_grad_") {
  Tensor x = ones({2}).requires_grad_();
  {
    NoGradGuard guard;
    Tensor y = x * 2.0;
    CHECK_FALSE(y.requires_grad());
    CHECK_FALSE(grad_enabled());
  }
  CHECK(grad_enabled());
  Tensor d = (x * 2.0).detach();
  CHECK_FALSE(d.requires_grad());
  CHECK(d.storage() != nullptr);
  CHECK_THROWS_AS(d.backward(), Error);
  CHECK_THROWS_WITH_AS(from_vector<int64_t>({1}, {1}).requires_grad_(),
                       doctest::Contains("floating"), Error);
  CHECK_THROWS_AS((x * 2.0).requires_grad_(false), Error);
}

TEST_CASE("engine: retain_grad keeps the gradient of an intermediate") {
  Tensor x = from_vector<float>({1, 2}, {2}).requires_grad_();
  Tensor h = x * 3.0;
  h.retain_grad();
  Tensor y = sum(h * h);
  y.backward();
  CHECK(v(h.grad()) == std::vector<double>{6, 12});  // 2h
  CHECK(v(x.grad()) == std::vector<double>{18, 36});
}

TEST_CASE("engine: a saved tensor modified in place makes backward raise") {
  Tensor w = ones({3}).requires_grad_();
  Tensor x = full({3}, 2.0);
  Tensor y = sum(w * x);  // saves x
  x.add_(ones({3}));      // bumps its version
  CHECK_THROWS_WITH_AS(y.backward(), doctest::Contains("modified by an in-place operation"), Error);
}

TEST_CASE("engine: ops keep only what their backward reads, as PyTorch's do") {
  // A tensor kept for one input's gradient is not kept when that input needs none (a frozen
  // layer's input; mul by a constant), nor one the derivative does not read (exp's input): the
  // graph holds no reference to its memory. Where it is needed, it is held.
  manual_seed(3);
  const Tensor c = randn({4, 4}), w = randn({3, 2, 3, 3});
  using Op = std::function<Tensor(const Tensor&)>;
  const std::vector<std::pair<const char*, Op>> ops = {
      {"mul", [&](const Tensor& a) { return mul(a, c); }},
      {"matmul", [&](const Tensor& a) { return matmul(a, c); }},
      {"linear", [&](const Tensor& a) { return linear(a, c); }},
      {"exp", [&](const Tensor& a) { return exp(a); }},
      {"conv2d", [&](const Tensor& a) { return conv2d(a.reshape({1, 2, 2, 4}), w, Tensor(), 1, 1); }},
  };
  for (const auto& [name, op] : ops) {
    CAPTURE(name);
    Tensor a = randn({4, 4}).requires_grad_();
    const long before = a.storage().use_count();
    Tensor y = op(a);
    CHECK(y.requires_grad());
    CHECK(a.storage().use_count() == before);
  }
  // Needed: mul's a for b's gradient, matmul's and conv2d's input for the weight's.
  Tensor a = randn({4, 4}), b = randn({4, 4}).requires_grad_();
  const long before = a.storage().use_count();
  Tensor y1 = mul(a, b), y2 = matmul(a, b), y3 = conv2d(a.reshape({1, 2, 2, 4}), w.clone().requires_grad_(), Tensor(), 1, 1);
  CHECK(a.storage().use_count() == before + 3);
  // exp keeps its output, which backward reads: changing it raises there.
  Tensor x = randn({4}).requires_grad_();
  Tensor e = exp(x);
  {
    NoGradGuard no_grad;
    e.fill_(0.0);
  }
  CHECK_THROWS_WITH_AS(sum(e).backward(), doctest::Contains("modified by an in-place operation"), Error);
}

TEST_CASE("engine: layer_norm's fused affine map agrees with normalising, then mul and add") {
  // One kernel each way forms x̂ · w + b (and g · w, and w's and b's gradients) in double and rounds
  // once, where the composition rounds x̂, then the product, then the sum. Both are compared with
  // the fused node run in float64 on the same values, relative to the largest value: float64 to
  // 1e-14, float32 to 5e-7, about 4 units in the last place of each (measured: at most 1.8e-16 and
  // 8.6e-8, the composition's; the fused float32 node's 2.7e-8 to 7.4e-8).
  manual_seed(4);
  const Tensor x0 = randn({3, 5, 6}, kFloat64) * 3.0 + 1.0, w0 = randn({5, 6}, kFloat64), b0 = randn({5, 6}, kFloat64);
  const Tensor g0 = randn({3, 5, 6}, kFloat64);
  auto run = [&](DType dt, bool composed) {
    Tensor x = x0.to(dt).requires_grad_(), w = w0.to(dt).requires_grad_(), b = b0.to(dt).requires_grad_();
    Tensor out = composed ? add(mul(layer_norm(x, {5, 6}, Tensor(), Tensor()), w), b) : layer_norm(x, {5, 6}, w, b);
    out.backward(g0.to(dt));
    return std::vector<Tensor>{out.to(kFloat64), x.grad().to(kFloat64), w.grad().to(kFloat64), b.grad().to(kFloat64)};
  };
  const std::vector<Tensor> reference = run(kFloat64, false);
  {
    INFO("x without a gradient: the weight's and bias's alone, the same values");
    Tensor w = w0.clone().requires_grad_(), b = b0.clone().requires_grad_();
    layer_norm(x0, {5, 6}, w, b).backward(g0);
    CHECK(golden::relative_error(w.grad(), reference[2]) == 0.0);
    CHECK(golden::relative_error(b.grad(), reference[3]) == 0.0);
  }
  for (DType dt : {kFloat32, kFloat64}) {
    for (bool composed : {false, true}) {
      CAPTURE(std::string(dtype_name(dt)));
      CAPTURE(composed);
      const std::vector<Tensor> got = run(dt, composed);
      for (size_t i = 0; i < got.size(); ++i) {
        CAPTURE(i);  // output, then the gradients of x, w and b
        CHECK(golden::relative_error(got[i], reference[i]) <= (dt == kFloat64 ? 1e-14 : 5e-7));
      }
    }
  }
}

TEST_CASE("engine: going through a freed graph twice raises, retain_graph allows it") {
  Tensor x = ones({2}).requires_grad_();
  Tensor y = sum(exp(x));
  y.backward(Tensor(), /*retain_graph=*/true);
  y.backward();
  CHECK(v(x.grad())[0] == doctest::Approx(2 * std::exp(1.0)));
  CHECK_THROWS_WITH_AS(y.backward(), doctest::Contains("second time"), Error);
}

TEST_CASE("engine: in-place ops refuse tensors autograd tracks") {
  Tensor w = ones({2}).requires_grad_();
  CHECK_THROWS_WITH_AS(w.add_(ones({2})), doctest::Contains("leaf"), Error);
  Tensor h = w * 2.0;
  CHECK_THROWS_WITH_AS(h.mul_(2.0), doctest::Contains("graph"), Error);
  {
    NoGradGuard guard;  // optimizer-style updates are fine
    w.add_(ones({2}), -0.5);
  }
  CHECK(v(w) == std::vector<double>{0.5, 0.5});
  Tensor dst = zeros({2});
  CHECK_THROWS_AS(dst.copy_(w * 1.0), Error);
}

TEST_CASE("engine: gradients flow through views and broadcasts back to the base") {
  Tensor base = zeros({3, 4}).requires_grad_();
  Tensor y = sum(base.slice(1, 0, 4, 2) * 2.0) + sum(base.select(0, 2)) + sum(base.t().narrow(0, 3, 1));
  y.backward();
  std::vector<double> g = v(base.grad());
  // column 0 and 2 get 2, row 2 gets +1, column 3 gets +1
  std::vector<double> expect = {2, 0, 2, 1, 2, 0, 2, 1, 3, 1, 3, 2};
  CHECK(g == expect);
  Tensor b = ones({1, 4}).requires_grad_();
  sum(b + zeros({3, 4})).backward();
  CHECK(b.grad().shape() == Shape{1, 4});
  CHECK(v(b.grad()) == std::vector<double>{3, 3, 3, 3});
}

TEST_CASE("engine: dtype and device conversions are differentiable") {
  Tensor x = from_vector<double>({1.5, -2}, {2}, kFloat64).requires_grad_();
  Tensor y = sum(x.to(kFloat32) * 2.0);
  y.backward();
  CHECK(x.grad().dtype() == kFloat64);
  CHECK(v(x.grad()) == std::vector<double>{2, 2});
}

TEST_CASE("engine: a deep chain does not overflow the stack") {
  Tensor x = ones({1}).requires_grad_();
  Tensor y = x;
  for (int i = 0; i < 20000; ++i) y = y * 1.0;
  sum(y).backward();
  CHECK(x.grad().item() == 1.0);
}

TEST_CASE("engine: anomaly detection names the first op that produced a NaN (forward) or a NaN / Inf gradient (backward)") {
  const Tensor x = from_vector<double>({1.0, -1.0}, {2}).requires_grad_(true);
  CHECK(has_nan(log(x)));  // off by default: the NaN goes through
  CHECK_FALSE(anomaly_detection());
  {
    AnomalyDetectionGuard anomaly;
    CHECK_THROWS_WITH_AS(log(x), doctest::Contains("Log produced NaN in its output of shape [2]; inputs: [2] (finite)"),
                         Error);
    // an Inf in a forward output can be meant (a mask's −Inf before a softmax): not flagged
    Tensor logits = from_vector<double>({0.5, 1.0, 2.0}, {3}).requires_grad_(true);
    Tensor masked = masked_fill(logits, from_vector<bool>({false, true, false}, {3}), -INFINITY);
    Tensor p = softmax(masked, 0);
    CHECK(p.to_vector<double>()[1] == 0.0);
    sum(p * from_vector<double>({1.0, 2.0, 3.0}, {3})).backward();
    CHECK(all_finite(logits.grad()));
    // backward: sqrt at 0 is finite, its derivative 1 / (2 sqrt 0) is not
    Tensor z = zeros({3}, DType::f64).requires_grad_(true);
    Tensor y = sum(sqrt(z));
    CHECK_THROWS_WITH_AS(y.backward(), doctest::Contains("the backward of Sqrt produced NaN/Inf in the gradient of its input 0"),
                         Error);
  }
  CHECK_FALSE(anomaly_detection());
  CHECK(all_finite(from_vector<int64_t>({1, 2}, {2})));
  CHECK_FALSE(all_finite(from_vector<float>({1.0f, INFINITY}, {2})));
  CHECK_FALSE(has_nan(from_vector<float>({1.0f, INFINITY}, {2})));
}

TEST_CASE("engine: post-accumulate hooks see each leaf's final gradient; queued callbacks run when backward ends") {
  Tensor a = from_vector<float>({1, 2}, {2}).requires_grad_();
  Tensor b = from_vector<float>({3, 4}, {2}).requires_grad_();
  std::vector<std::string> events;
  add_post_accumulate_grad_hook(a, [&](const Tensor& g) {
    events.push_back("a " + std::to_string(g.to_vector<float>()[1]));
    queue_backward_callback([&] { events.push_back("end"); });
  });
  add_post_accumulate_grad_hook(b, [&](const Tensor& g) { events.push_back("b " + std::to_string(g.to_vector<float>()[0])); });
  // a is used twice: its hook must run once, after both contributions are summed.
  Tensor y = sum(a * b + a * 2.0);
  y.backward();
  REQUIRE(events.size() == 3);
  CHECK(events.back() == "end");
  CHECK(std::count(events.begin(), events.end(), "a " + std::to_string(4.0f + 2.0f)) == 1);
  CHECK(std::count(events.begin(), events.end(), "b " + std::to_string(1.0f)) == 1);
  // The hook sees the accumulated .grad (the second backward adds to the first).
  events.clear();
  sum(a * b + a * 2.0).backward();
  CHECK(std::count(events.begin(), events.end(), "a " + std::to_string(12.0f)) == 1);
  CHECK(error_of([] { queue_backward_callback([] {}); }).find("outside a backward pass") != std::string::npos);
  // Each backward has its own id (0 outside one), also after one that raised midway.
  CHECK(current_backward_id() == 0);
  std::vector<uint64_t> ids;
  Tensor c = from_vector<float>({1}, {1}).requires_grad_();
  add_post_accumulate_grad_hook(c, [&](const Tensor&) {
    ids.push_back(current_backward_id());
    if (ids.size() == 2) fail("a hook that raises");
  });
  sum(c * 2.0).backward();
  CHECK(error_of([&] { sum(c * 3.0).backward(); }).find("a hook that raises") != std::string::npos);
  sum(c * 4.0).backward();
  REQUIRE(ids.size() == 3);
  CHECK(ids[0] != 0);
  CHECK(ids[1] != ids[0]);
  CHECK(ids[2] != ids[1]);
  CHECK(current_backward_id() == 0);
  Tensor not_leaf = a * 2.0;
  CHECK(error_of([&] { add_post_accumulate_grad_hook(not_leaf, [](const Tensor&) {}); }).find("not a leaf") !=
        std::string::npos);
  CHECK(error_of([] { add_post_accumulate_grad_hook(zeros({2}), [](const Tensor&) {}); }).find("no requires_grad") !=
        std::string::npos);
}
