// f64 central-difference gradchecks for every differentiable op, on small shapes, with
// broadcast operands and non-contiguous (transposed / sliced) inputs.
#include <doctest/doctest.h>

#include "autograd/gradcheck.h"
#include "autograd/ops.h"

using namespace bcos;
using In = const std::vector<Tensor>&;

namespace {

Tensor leaf(const Shape& s) { return randn(s, kFloat64).requires_grad_(); }
// Values in [lo, hi): for logs, roots and divisors.
Tensor leaf_in(const Shape& s, double lo, double hi) {
  NoGradGuard g;
  return add(mul(rand(s, kFloat64), hi - lo), lo).requires_grad_();
}
// A non-contiguous leaf of shape [a, b]: the transpose of a contiguous [b, a] tensor.
Tensor leaf_t(int64_t a, int64_t b) { return randn({b, a}, kFloat64).t().requires_grad_(); }
// Distinct values (no ties for max / min / pooling), shuffled.
Tensor leaf_distinct(const Shape& s) {
  int64_t n = s.numel();
  std::vector<double> v(static_cast<size_t>(n));
  Tensor perm = randn({n}, kFloat64);
  std::vector<double> keys = perm.to_vector<double>();
  std::vector<int64_t> order(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) order[size_t(i)] = i;
  std::sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return keys[size_t(a)] < keys[size_t(b)]; });
  for (int64_t i = 0; i < n; ++i) v[size_t(order[size_t(i)])] = double(i) / double(n) * 4 - 2;
  return from_vector(v, s, kFloat64).requires_grad_();
}

void check(const char* what, const std::function<Tensor(In)>& f, const std::vector<Tensor>& inputs,
           double atol = 1e-5, double rtol = 1e-3) {
  GradcheckResult r = gradcheck(f, inputs, 1e-6, atol, rtol);
  CHECK_MESSAGE(r.ok, what << ": " << r.message);
}

struct Seeded {
  Seeded() { manual_seed(1234); }
};

}  // namespace

TEST_CASE_FIXTURE(Seeded, "gradcheck: add / sub / mul / div with broadcasting and strides") {
  check("add", [](In x) { return add(x[0], x[1], 0.7); }, {leaf_t(3, 4), leaf({4})});
  check("sub", [](In x) { return sub(x[0], x[1]); }, {leaf({2, 1, 4}), leaf({3, 1})});
  check("mul", [](In x) { return mul(x[0], x[1]); }, {leaf_t(4, 3), leaf({4, 1})});
  check("div", [](In x) { return div(x[0], x[1]); }, {leaf({3, 4}), leaf_in({4}, 0.5, 2)});
  check("scalar ops", [](In x) { return (2.0 - x[0]) * 3.0 / 1.5 + 1.0 + 2.0 / x[0]; },
        {leaf_in({3, 2}, 0.5, 2)});
}

TEST_CASE_FIXTURE(Seeded, "gradcheck: pow (tensor and scalar exponents)") {
  check("pow tensor", [](In x) { return pow(x[0], x[1]); }, {leaf_in({3, 4}, 0.5, 2), leaf({4})});
  check("pow scalar", [](In x) { return pow(x[0], 2.5); }, {leaf_in({3, 4}, 0.5, 2)});
  check("pow negative", [](In x) { return pow(x[0], -1.5); }, {leaf_in({3, 4}, 0.5, 2)});
}

TEST_CASE_FIXTURE(Seeded, "gradcheck: minimum / maximum") {
  check("minimum", [](In x) { return minimum(x[0], x[1]); }, {leaf_distinct({3, 4}), leaf_in({4}, -0.1, 0.1)});
  check("maximum", [](In x) { return maximum(x[0], x[1]); }, {leaf_distinct({3, 4}), leaf_in({3, 1}, -0.1, 0.1)});
  // sums of both signs, at least 0.13 from relu's kink at 0 (the distinct values are 1/3 apart)
  check("add_relu", [](In x) { return add_relu(x[0], x[1]); }, {leaf_distinct({3, 4}), leaf_in({3, 1}, 0.15, 0.2)});
}

TEST_CASE_FIXTURE(Seeded, "gradcheck: unary maps") {
  auto x = [] { return leaf_t(3, 4); };
  auto pos = [] { return leaf_in({3, 4}, 0.5, 2); };
  check("neg", [](In v) { return neg(v[0]); }, {x()});
  check("abs", [](In v) { return abs(v[0]); }, {x()});
  check("sign", [](In v) { return sign(v[0]); }, {x()});
  check("exp", [](In v) { return exp(v[0]); }, {x()});
  check("log", [](In v) { return log(v[0]); }, {pos()});
  check("log1p", [](In v) { return log1p(v[0]); }, {pos()});
  check("sqrt", [](In v) { return sqrt(v[0]); }, {pos()});
  check("rsqrt", [](In v) { return rsqrt(v[0]); }, {pos()});
  check("square", [](In v) { return square(v[0]); }, {x()});
  check("reciprocal", [](In v) { return reciprocal(v[0]); }, {pos()});
  check("sin", [](In v) { return sin(v[0]); }, {x()});
  check("cos", [](In v) { return cos(v[0]); }, {x()});
  check("tanh", [](In v) { return tanh(v[0]); }, {x()});
  check("sigmoid", [](In v) { return sigmoid(v[0]); }, {x()});
  check("relu", [](In v) { return relu(v[0]); }, {x()});
  check("gelu", [](In v) { return gelu(v[0]); }, {x()});
  check("gelu tanh", [](In v) { return gelu(v[0], "tanh"); }, {x()});
  check("silu", [](In v) { return silu(v[0]); }, {x()});
  check("quick_gelu", [](In v) { return quick_gelu(v[0]); }, {x()});
  check("clamp", [](In v) { return clamp(v[0], -0.5, 0.5); }, {x()});
  check("clamp_min", [](In v) { return clamp_min(v[0], 0.1); }, {x()});
}

TEST_CASE_FIXTURE(Seeded, "gradcheck: where and masked_fill") {
  Tensor mask = lt(rand({3, 4}), 0.5);
  check("where", [&](In v) { return where(mask, v[0], v[1]); }, {leaf_t(3, 4), leaf({4})});
  check("masked_fill", [&](In v) { return masked_fill(v[0], mask, 2.0); }, {leaf({3, 4})});
}

TEST_CASE_FIXTURE(Seeded, "gradcheck: sum / mean / var / std") {
  check("sum all", [](In v) { return sum(v[0]); }, {leaf_t(3, 4)});
  check("sum dims", [](In v) { return sum(v[0], {0, 2}, true); }, {leaf({2, 3, 4})});
  check("mean", [](In v) { return mean(v[0], {1}); }, {leaf_t(3, 4)});
  check("var", [](In v) { return var(v[0], {1}, 1); }, {leaf_t(3, 4)});
  check("var population", [](In v) { return var(v[0], {}, 0); }, {leaf({3, 4})});
  check("std", [](In v) { return bcos::std(v[0], {0}, 1, true); }, {leaf_t(3, 4)});
}

TEST_CASE_FIXTURE(Seeded, "gradcheck: prod / norm / logsumexp") {
  check("prod", [](In v) { return prod(v[0], {1}); }, {leaf_t(3, 4)});
  check("prod with a zero", [](In v) { return prod(v[0]); },
        {from_vector<double>({1.5, 0.0, -2.0, 0.7}, {4}, kFloat64).requires_grad_()});
  check("norm2", [](In v) { return norm(v[0], 2, {1}); }, {leaf_t(3, 4)});
  check("norm1", [](In v) { return norm(v[0], 1); }, {leaf({3, 4})});
  check("logsumexp", [](In v) { return logsumexp(v[0], {0}); }, {leaf_t(3, 4)});
}

TEST_CASE_FIXTURE(Seeded, "gradcheck: max / min / amax / amin") {
  check("max all", [](In v) { return max(v[0]); }, {leaf_distinct({3, 4})});
  check("min all", [](In v) { return min(v[0]); }, {leaf_distinct({3, 4})});
  check("max dim", [](In v) { return max(v[0], 1).values; }, {leaf_distinct({3, 4})});
  check("min dim keepdim", [](In v) { return min(v[0], 0, true).values; }, {leaf_distinct({3, 4})});
  check("amax", [](In v) { return amax(v[0], {0, 2}); }, {leaf_distinct({2, 3, 2})});
  check("amin", [](In v) { return amin(v[0], {1}); }, {leaf_distinct({2, 3, 2})});
}

TEST_CASE_FIXTURE(Seeded, "gradcheck: softmax / log_softmax") {
  check("softmax", [](In v) { return softmax(v[0], 1); }, {leaf_t(3, 4)});
  check("softmax dim 0", [](In v) { return softmax(v[0], 0); }, {leaf({3, 2, 2})});
  check("log_softmax", [](In v) { return log_softmax(v[0], -1); }, {leaf_t(3, 4)});
}

TEST_CASE_FIXTURE(Seeded, "gradcheck: cross_entropy / nll_loss / bce_with_logits") {
  Tensor target = from_vector<int64_t>({0, 3, -100, 2, 1}, {5});
  check("cross_entropy", [&](In v) { return cross_entropy(v[0], target); }, {leaf({5, 4})});
  check("cross_entropy smoothed sum",
        [&](In v) { return cross_entropy(v[0], target, -100, 0.2, Reduction::sum); }, {leaf_t(5, 4)});
  check("cross_entropy none",
        [&](In v) { return cross_entropy(v[0], target, -100, 0.1, Reduction::none); }, {leaf({5, 4})});
  Tensor spatial_target = randint(0, 3, {2, 2, 2});
  check("cross_entropy spatial", [&](In v) { return cross_entropy(v[0], spatial_target); },
        {leaf({2, 3, 2, 2})});
  check("nll_loss", [&](In v) { return nll_loss(log_softmax(v[0], 1), target); }, {leaf({5, 4})});
  check("bce_with_logits", [](In v) { return binary_cross_entropy_with_logits(v[0], v[1]); },
        {leaf({3, 4}), leaf_in({3, 4}, 0, 1)});
  check("bce_with_logits weight",
        [](In v) { return binary_cross_entropy_with_logits(v[0], v[1], v[2], Reduction::none); },
        {leaf_t(3, 4), leaf_in({3, 4}, 0, 1), leaf_in({4}, 0.5, 2)});
}

TEST_CASE_FIXTURE(Seeded, "gradcheck: matmul / linear") {
  check("mm", [](In v) { return matmul(v[0], v[1]); }, {leaf_t(3, 4), leaf({4, 2})});
  check("mv", [](In v) { return matmul(v[0], v[1]); }, {leaf({3, 4}), leaf({4})});
  check("vm", [](In v) { return matmul(v[0], v[1]); }, {leaf({3}), leaf_t(3, 2)});
  check("dot", [](In v) { return matmul(v[0], v[1]); }, {leaf({4}), leaf({4})});
  check("batched broadcast", [](In v) { return matmul(v[0], v[1]); }, {leaf({2, 1, 2, 3}), leaf({3, 3, 2})});
  check("batched x 2-D", [](In v) { return matmul(v[0], v[1]); }, {leaf({2, 2, 3}), leaf_t(3, 2)});
  check("linear", [](In v) { return linear(v[0], v[1], v[2]); }, {leaf({2, 3, 4}), leaf({5, 4}), leaf({5})});
}

TEST_CASE_FIXTURE(Seeded, "gradcheck: conv2d") {
  check("conv2d padding + bias", [](In v) { return conv2d(v[0], v[1], v[2], 1, 1); },
        {leaf({2, 2, 5, 5}), leaf({3, 2, 3, 3}), leaf({3})});
  check("conv2d stride 2 asymmetric", [](In v) { return conv2d(v[0], v[1], Tensor(), IntPair(2, 1), IntPair(1, 0)); },
        {leaf({1, 2, 5, 6}), leaf({2, 2, 3, 2})});
  check("conv2d dilation", [](In v) { return conv2d(v[0], v[1], Tensor(), 1, 2, 2); },
        {leaf({1, 1, 6, 6}), leaf({2, 1, 3, 3})});
  check("conv2d groups", [](In v) { return conv2d(v[0], v[1], v[2], 1, 1, 1, 2); },
        {leaf({1, 4, 4, 4}), leaf({4, 2, 3, 3}), leaf({4})});
  check("conv2d 1x1 non-contiguous input", [](In v) { return conv2d(v[0].permute({0, 3, 1, 2}), v[1]); },
        {leaf({2, 3, 3, 2}), leaf({3, 2, 1, 1})});
}

TEST_CASE_FIXTURE(Seeded, "gradcheck: pooling and padding") {
  check("max_pool2d", [](In v) { return max_pool2d(v[0], 3, 2, 1); }, {leaf_distinct({1, 2, 6, 6})});
  check("max_pool2d ceil dilation", [](In v) { return max_pool2d(v[0], 2, 2, 0, 2, true); },
        {leaf_distinct({1, 1, 7, 7})});
  check("avg_pool2d", [](In v) { return avg_pool2d(v[0], 3, 2, 1); }, {leaf({1, 2, 6, 6})});
  check("avg_pool2d exclude pad, ceil", [](In v) { return avg_pool2d(v[0], 3, 2, 1, true, false); },
        {leaf({1, 1, 6, 6})});
  check("avg_pool2d divisor", [](In v) { return avg_pool2d(v[0], 2, 2, 0, false, true, 3); }, {leaf({1, 1, 4, 4})});
  check("adaptive_avg_pool2d", [](In v) { return adaptive_avg_pool2d(v[0], IntPair(2, 3)); }, {leaf({1, 2, 5, 7})});
  check("pad", [](In v) { return pad(v[0], {1, 0, 2, 1}, -1.0); }, {leaf({1, 2, 3, 3})});
}

TEST_CASE_FIXTURE(Seeded, "gradcheck: batch_norm / layer_norm / group_norm") {
  check("batch_norm train", [](In v) {
    return batch_norm(v[0], Tensor(), Tensor(), v[1], v[2], true);
  }, {leaf({3, 2, 2, 2}), leaf({2}), leaf({2})});
  Tensor rm = randn({2}, kFloat64), rv = add(rand({2}, kFloat64), 0.5);
  check("batch_norm eval", [&](In v) { return batch_norm(v[0], rm, rv, v[1], v[2], false); },
        {leaf({3, 2, 2, 2}), leaf({2}), leaf({2})});
  check("batch_norm + relu train", [](In v) {
    return batch_norm(v[0], Tensor(), Tensor(), v[1], v[2], true, 0.1, 1e-5, true);
  }, {leaf({3, 2, 2, 2}), leaf({2}), leaf({2})});
  check("batch_norm + relu eval", [&](In v) { return batch_norm(v[0], rm, rv, v[1], v[2], false, 0.1, 1e-5, true); },
        {leaf({3, 2, 2, 2}), leaf({2}), leaf({2})});
  check("batch_norm 2-D", [](In v) { return batch_norm(v[0], Tensor(), Tensor(), v[1], Tensor(), true); },
        {leaf_t(4, 3), leaf({3})});
  // Synchronised over replicas: alone (the identity sum), and beside an identical second replica
  // (a doubled sum: moving x moves both, whose losses the analytic gradient sums, symmetrically).
  for (double replicas : {1.0, 2.0})
    for (bool centred : {true, false})
      for (bool relu : {false, true}) {
        INFO("replicas ", replicas, " centred ", centred, " relu ", relu);
        auto sum_over = [replicas](const Tensor& t) { return t * replicas; };
        check("batch_norm_synced", [&](In v) {
          return batch_norm_synced(v[0], Tensor(), Tensor(), v[1], v[2], 0.0, 1e-5, relu, centred, sum_over);
        }, {leaf({3, 2, 2, 2}), leaf({2}), leaf({2})});
      }
  check("layer_norm", [](In v) { return layer_norm(v[0], {4}, v[1], v[2]); },
        {leaf_t(3, 4), leaf({4}), leaf({4})});
  check("layer_norm, weight only", [](In v) { return layer_norm(v[0], {4}, v[1], Tensor()); },
        {leaf({3, 4}), leaf({4})});
  check("layer_norm, bias only, over two dims", [](In v) { return layer_norm(v[0], {2, 3}, Tensor(), v[1]); },
        {leaf({2, 2, 3}), leaf({2, 3})});
  check("group_norm", [](In v) { return group_norm(v[0], 2, v[1], v[2]); },
        {leaf({2, 4, 2, 2}), leaf({4}), leaf({4})});
  check("unit_rows", [](In v) { return unit_rows(v[0]); }, {leaf({3, 2, 2, 2})});
  check("unit_rows (a strided view)", [](In v) { return unit_rows(v[0]); }, {leaf_t(3, 4)});
  check("unit_rows of a vector (one row per element)", [](In v) { return unit_rows(v[0]); }, {leaf({4})});
}

TEST_CASE_FIXTURE(Seeded, "gradcheck: embedding and dropout") {
  Tensor idx = from_vector<int64_t>({1, 3, 1, 0}, {2, 2});
  check("embedding", [&](In v) { return embedding(idx, v[0]); }, {leaf({4, 3})});
  check("dropout (reseeded, so the mask is fixed)", [](In v) {
    manual_seed(7);
    return dropout(v[0], 0.3, true);
  }, {leaf({4, 5})});
}

TEST_CASE_FIXTURE(Seeded, "gradcheck: views") {
  check("view / reshape", [](In v) { return v[0].reshape({2, 6}).view({3, 4}) * 2.0; }, {leaf_t(3, 4)});
  check("permute / transpose", [](In v) { return v[0].permute({2, 0, 1}).transpose(0, 1) * 2.0; }, {leaf({2, 3, 4})});
  check("slice with step / narrow", [](In v) { return v[0].slice(1, 0, 5, 2).narrow(0, 1, 2) * 2.0; }, {leaf({3, 5})});
  check("select", [](In v) { return v[0].select(1, -1) * 2.0; }, {leaf({3, 4})});
  check("expand / broadcast_to", [](In v) { return broadcast_to(v[0].expand({2, 3, 4}), {2, 2, 3, 4}) * 2.0; },
        {leaf({3, 1})});
  check("squeeze / unsqueeze / flatten", [](In v) { return v[0].squeeze().unsqueeze(2).flatten() * 2.0; },
        {leaf({3, 1, 4})});
  check("contiguous / clone", [](In v) { return v[0].contiguous().clone() * 2.0; }, {leaf_t(3, 4)});
}

TEST_CASE_FIXTURE(Seeded, "gradcheck: cat / stack / split / chunk") {
  check("cat", [](In v) { return cat({v[0], v[1]}, 1); }, {leaf_t(2, 3), leaf({2, 2})});
  check("stack", [](In v) { return stack({v[0], v[1]}, 2); }, {leaf({2, 3}), leaf_t(2, 3)});
  check("split", [](In v) { return split(v[0], 2, 1)[1] * 2.0; }, {leaf({3, 5})});
  check("chunk", [](In v) { return chunk(v[0], 2, 0)[0] * 2.0 + chunk(v[0], 2, 0)[1]; }, {leaf({4, 3})});
}

TEST_CASE_FIXTURE(Seeded, "gradcheck: index_select / gather / scatter_add / topk") {
  Tensor idx = from_vector<int64_t>({2, 0, 2}, {3});
  check("index_select", [&](In v) { return index_select(v[0], 1, idx); }, {leaf_t(3, 4)});
  Tensor gidx = from_vector<int64_t>({0, 2, 1, 1, 3, 0}, {3, 2});
  check("gather", [&](In v) { return gather(v[0], 1, gidx); }, {leaf_t(3, 4)});
  check("scatter_add", [&](In v) { return scatter_add(v[0], 1, gidx, v[1]); }, {leaf({3, 4}), leaf({3, 2})});
  check("topk", [](In v) { return topk(v[0], 2, 0).values; }, {leaf_distinct({4, 3})});
}
