// Golden tests: every op against PyTorch (fixtures from tools/golden/ops.py). Each case runs the
// same expression as the script on the same float32 inputs, compares the outputs, then runs
// backward with the stored output gradient and compares every input gradient.
// Tolerance: norm-wise relative error 1e-5, 1e-4 for products and convolutions (long sums).
#include <doctest/doctest.h>

#include <functional>
#include <set>

#include "autograd/ops.h"
#include "tests/golden.h"

using namespace bcos;
using In = const std::vector<Tensor>&;
using Outs = std::vector<Tensor>;

namespace {

struct Case {
  std::string family;
  std::function<Outs(In)> fn;
  double tol = 1e-5;
};

Outs one(const Tensor& t) { return {t}; }
Outs two(const ValuesIndices& v) { return {v.values, v.indices}; }

Outs bn_train(In in) {
  Tensor rm = in[1].clone(), rv = in[2].clone();
  Tensor y = batch_norm(in[0], rm, rv, in[3], in[4], true, 0.1, 1e-5);
  return {y, rm, rv};
}

Outs bn_relu_train(In in) {
  Tensor rm = in[1].clone(), rv = in[2].clone();
  Tensor y = batch_norm(in[0], rm, rv, in[3], in[4], true, 0.1, 1e-5, /*relu=*/true);
  return {y, rm, rv};
}

const std::map<std::string, Case>& cases() {
  constexpr double kProduct = 1e-4;
  static const std::map<std::string, Case> table = {
      // elementwise, binary
      {"add_broadcast", {"elementwise", [](In x) { return one(x[0] + x[1]); }}},
      {"add_alpha", {"elementwise", [](In x) { return one(add(x[0], x[1], 2.5)); }}},
      {"sub_transposed", {"elementwise", [](In x) { return one(x[0].t() - x[1]); }}},
      {"mul_broadcast", {"elementwise", [](In x) { return one(x[0] * x[1]); }}},
      {"div_broadcast", {"elementwise", [](In x) { return one(x[0] / x[1]); }}},
      {"pow_tensor", {"elementwise", [](In x) { return one(pow(x[0], x[1])); }}},
      {"minimum", {"elementwise", [](In x) { return one(minimum(x[0], x[1])); }}},
      {"maximum", {"elementwise", [](In x) { return one(maximum(x[0], x[1])); }}},
      {"add_relu", {"elementwise", [](In x) { return one(add_relu(x[0], x[1])); }}},
      {"add_scalar", {"elementwise", [](In x) { return one(x[0] + 1.5); }}},
      {"rsub_scalar", {"elementwise", [](In x) { return one(2.0 - x[0]); }}},
      {"mul_scalar", {"elementwise", [](In x) { return one(x[0] * -0.75); }}},
      {"div_scalar", {"elementwise", [](In x) { return one(x[0] / 3.0); }}},
      {"rdiv_scalar", {"elementwise", [](In x) { return one(2.0 / x[0]); }}},
      {"pow_scalar", {"elementwise", [](In x) { return one(pow(x[0], 2.5)); }}},
      {"pow_square", {"elementwise", [](In x) { return one(pow(x[0], 2.0)); }}},
      {"pow_negative", {"elementwise", [](In x) { return one(pow(x[0], -0.5)); }}},
      // elementwise, unary
      {"neg", {"elementwise", [](In x) { return one(neg(x[0])); }}},
      {"abs", {"elementwise", [](In x) { return one(abs(x[0])); }}},
      {"sign", {"elementwise", [](In x) { return one(sign(x[0])); }}},
      {"exp_transposed", {"elementwise", [](In x) { return one(exp(x[0].t())); }}},
      {"log", {"elementwise", [](In x) { return one(log(x[0])); }}},
      {"log1p", {"elementwise", [](In x) { return one(log1p(x[0])); }}},
      {"sqrt", {"elementwise", [](In x) { return one(sqrt(x[0])); }}},
      {"rsqrt", {"elementwise", [](In x) { return one(rsqrt(x[0])); }}},
      {"square", {"elementwise", [](In x) { return one(square(x[0])); }}},
      {"reciprocal", {"elementwise", [](In x) { return one(reciprocal(x[0])); }}},
      {"sin", {"elementwise", [](In x) { return one(sin(x[0])); }}},
      {"cos", {"elementwise", [](In x) { return one(cos(x[0])); }}},
      {"tanh", {"elementwise", [](In x) { return one(tanh(x[0])); }}},
      {"sigmoid", {"elementwise", [](In x) { return one(sigmoid(x[0])); }}},
      {"relu", {"elementwise", [](In x) { return one(relu(x[0])); }}},
      {"gelu", {"elementwise", [](In x) { return one(gelu(x[0])); }}},
      {"gelu_tanh", {"elementwise", [](In x) { return one(gelu(x[0], "tanh")); }}},
      {"silu", {"elementwise", [](In x) { return one(silu(x[0])); }}},
      {"quick_gelu", {"elementwise", [](In x) { return one(quick_gelu(x[0])); }}},
      {"clamp", {"elementwise", [](In x) { return one(clamp(x[0], -0.5, 0.5)); }}},
      {"clamp_min", {"elementwise", [](In x) { return one(clamp_min(x[0], 0.1)); }}},
      {"clamp_max", {"elementwise", [](In x) { return one(clamp_max(x[0], 0.2)); }}},
      {"where", {"elementwise", [](In x) { return one(where(x[0], x[1], x[2])); }}},
      {"eq", {"elementwise", [](In x) { return one(eq(x[0], x[1])); }}},
      {"lt", {"elementwise", [](In x) { return one(lt(x[0], x[1])); }}},
      {"ge_scalar", {"elementwise", [](In x) { return one(ge(x[0], 0.0)); }}},
      // reductions
      {"sum_all", {"reductions", [](In x) { return one(sum(x[0])); }}},
      {"sum_dims", {"reductions", [](In x) { return one(sum(x[0], {0, 2})); }}},
      {"sum_keepdim", {"reductions", [](In x) { return one(sum(x[0], {1}, true)); }}},
      {"sum_permuted", {"reductions", [](In x) { return one(sum(x[0].permute({2, 0, 1}), {1})); }}},
      {"mean_last", {"reductions", [](In x) { return one(mean(x[0], {-1})); }}},
      {"mean_all", {"reductions", [](In x) { return one(mean(x[0])); }}},
      {"var_unbiased", {"reductions", [](In x) { return one(var(x[0], {1}, 1)); }}},
      {"var_population", {"reductions", [](In x) { return one(var(x[0], {}, 0)); }}},
      {"std_dim0", {"reductions", [](In x) { return one(bcos::std(x[0], {0}, 1)); }}},
      {"prod", {"reductions", [](In x) { return one(prod(x[0], {1})); }}},
      {"norm2", {"reductions", [](In x) { return one(norm(x[0], 2, {1})); }}},
      {"norm1", {"reductions", [](In x) { return one(norm(x[0], 1)); }}},
      {"logsumexp", {"reductions", [](In x) { return one(logsumexp(x[0], {1})); }}},
      {"amax", {"reductions", [](In x) { return one(amax(x[0], {0, 2})); }}},
      {"max_all", {"reductions", [](In x) { return one(max(x[0])); }}},
      {"min_all", {"reductions", [](In x) { return one(min(x[0])); }}},
      {"max_dim", {"reductions", [](In x) { return two(max(x[0], 1)); }}},
      {"min_dim_keepdim", {"reductions", [](In x) { return two(min(x[0], 0, true)); }}},
      {"argmax", {"reductions", [](In x) { return one(argmax(x[0], 1)); }}},
      {"argmin_all", {"reductions", [](In x) { return one(argmin(x[0])); }}},
      // softmax and losses
      {"softmax", {"losses", [](In x) { return one(softmax(x[0], 1)); }}},
      {"softmax_dim0", {"losses", [](In x) { return one(softmax(x[0], 0)); }}},
      {"log_softmax", {"losses", [](In x) { return one(log_softmax(x[0], 1)); }}},
      {"cross_entropy", {"losses", [](In x) { return one(cross_entropy(x[0], x[1])); }}},
      {"cross_entropy_smooth", {"losses", [](In x) { return one(cross_entropy(x[0], x[1], -100, 0.1)); }}},
      {"cross_entropy_ignore", {"losses", [](In x) { return one(cross_entropy(x[0], x[1], -100)); }}},
      {"cross_entropy_smooth_ignore_sum",
       {"losses", [](In x) { return one(cross_entropy(x[0], x[1], -100, 0.2, Reduction::sum)); }}},
      {"cross_entropy_none",
       {"losses", [](In x) { return one(cross_entropy(x[0], x[1], -100, 0.0, Reduction::none)); }}},
      {"cross_entropy_spatial", {"losses", [](In x) { return one(cross_entropy(x[0], x[1])); }}},
      {"nll_loss", {"losses", [](In x) { return one(nll_loss(log_softmax(x[0], 1), x[1])); }}},
      {"bce_with_logits", {"losses", [](In x) { return one(binary_cross_entropy_with_logits(x[0], x[1])); }}},
      {"bce_with_logits_weight_sum",
       {"losses", [](In x) { return one(binary_cross_entropy_with_logits(x[0], x[1], x[2], Reduction::sum)); }}},
      // matmul and linear
      {"mm", {"matmul", [](In x) { return one(matmul(x[0], x[1])); }, kProduct}},
      {"mm_transposed", {"matmul", [](In x) { return one(matmul(x[0].t(), x[1].t())); }, kProduct}},
      {"mv", {"matmul", [](In x) { return one(matmul(x[0], x[1])); }, kProduct}},
      {"vm", {"matmul", [](In x) { return one(matmul(x[0], x[1])); }, kProduct}},
      {"dot", {"matmul", [](In x) { return one(matmul(x[0], x[1])); }, kProduct}},
      {"bmm", {"matmul", [](In x) { return one(matmul(x[0], x[1])); }, kProduct}},
      {"matmul_broadcast", {"matmul", [](In x) { return one(matmul(x[0], x[1])); }, kProduct}},
      {"matmul_batched_2d", {"matmul", [](In x) { return one(matmul(x[0], x[1])); }, kProduct}},
      {"linear", {"matmul", [](In x) { return one(linear(x[0], x[1], x[2])); }, kProduct}},
      {"linear_3d_nobias", {"matmul", [](In x) { return one(linear(x[0], x[1])); }, kProduct}},
      // convolution, pooling, padding
      {"conv2d", {"conv", [](In x) { return one(conv2d(x[0], x[1], x[2], 1, 1)); }, kProduct}},
      {"conv2d_stride2", {"conv", [](In x) { return one(conv2d(x[0], x[1], Tensor(), 2, 1)); }, kProduct}},
      {"conv2d_dilated", {"conv", [](In x) { return one(conv2d(x[0], x[1], x[2], 1, 2, 2)); }, kProduct}},
      {"conv2d_groups", {"conv", [](In x) { return one(conv2d(x[0], x[1], x[2], 1, 1, 1, 2)); }, kProduct}},
      {"conv2d_depthwise", {"conv", [](In x) { return one(conv2d(x[0], x[1], Tensor(), 1, 1, 1, 3)); }, kProduct}},
      {"conv2d_1x1", {"conv", [](In x) { return one(conv2d(x[0], x[1], x[2])); }, kProduct}},
      {"conv2d_asymmetric",
       {"conv", [](In x) { return one(conv2d(x[0], x[1], Tensor(), IntPair(2, 1), IntPair(0, 1))); }, kProduct}},
      {"conv2d_permuted_input",
       {"conv", [](In x) { return one(conv2d(x[0].permute({0, 3, 1, 2}), x[1], Tensor(), 1, 1)); }, kProduct}},
      {"max_pool2d", {"conv", [](In x) { return one(max_pool2d(x[0], 3, 2, 1)); }}},
      {"max_pool2d_ceil", {"conv", [](In x) { return one(max_pool2d(x[0], 3, 2, 0, 1, true)); }}},
      {"max_pool2d_dilated", {"conv", [](In x) { return one(max_pool2d(x[0], 2, 1, 0, 2)); }}},
      {"max_pool2d_indices", {"conv", [](In x) { return two(max_pool2d_with_indices(x[0], 2, 2)); }}},
      {"avg_pool2d", {"conv", [](In x) { return one(avg_pool2d(x[0], 3, 2, 1)); }}},
      {"avg_pool2d_exclude_pad", {"conv", [](In x) { return one(avg_pool2d(x[0], 3, 2, 1, false, false)); }}},
      {"avg_pool2d_divisor", {"conv", [](In x) { return one(avg_pool2d(x[0], 2, std::nullopt, 0, false, true, 3)); }}},
      {"avg_pool2d_ceil", {"conv", [](In x) { return one(avg_pool2d(x[0], 3, 2, 1, true)); }}},
      {"adaptive_avg_pool2d", {"conv", [](In x) { return one(adaptive_avg_pool2d(x[0], IntPair(3, 4))); }}},
      {"adaptive_avg_pool2d_global", {"conv", [](In x) { return one(adaptive_avg_pool2d(x[0], 1)); }}},
      {"pad", {"conv", [](In x) { return one(pad(x[0], {1, 2, 0, 3}, 0.5)); }}},
      // normalisation and embedding
      {"batch_norm_train", {"norm", bn_train}},
      {"batch_norm_eval",
       {"norm", [](In x) { return one(batch_norm(x[0], x[1], x[2], x[3], x[4], false, 0.1, 1e-5)); }}},
      {"batch_norm_2d", {"norm", bn_train}},
      {"batch_norm_relu_train", {"norm", bn_relu_train}},
      {"batch_norm_relu_eval",
       {"norm", [](In x) { return one(batch_norm(x[0], x[1], x[2], x[3], x[4], false, 0.1, 1e-5, true)); }}},
      {"layer_norm", {"norm", [](In x) { return one(layer_norm(x[0], {6}, x[1], x[2], 1e-5)); }}},
      {"layer_norm_2dims", {"norm", [](In x) { return one(layer_norm(x[0], {4, 6}, x[1], x[2], 1e-6)); }}},
      {"group_norm", {"norm", [](In x) { return one(group_norm(x[0], 3, x[1], x[2], 1e-5)); }}},
      {"embedding", {"norm", [](In x) { return one(embedding(x[0], x[1])); }}},
      // joining, views and indexing
      {"cat", {"indexing", [](In x) { return one(cat({x[0], x[1], x[2]}, 1)); }}},
      {"stack", {"indexing", [](In x) { return one(stack({x[0], x[1]}, 1)); }}},
      {"split", {"indexing", [](In x) { return one(split(x[0], std::vector<int64_t>{2, 3}, 1)[1]); }}},
      {"chunk", {"indexing", [](In x) { return one(chunk(x[0], 3, 0)[1]); }}},
      {"reshape_transposed", {"indexing", [](In x) { return one(x[0].t().reshape({3, 8})); }}},
      {"view", {"indexing", [](In x) { return one(x[0].view({2, 3, 4}) * 2.0); }}},
      {"permute", {"indexing", [](In x) { return one(x[0].permute({2, 0, 1}) * 2.0); }}},
      {"narrow", {"indexing", [](In x) { return one(x[0].narrow(0, 1, 3) * 2.0); }}},
      {"slice_step", {"indexing", [](In x) { return one(x[0].slice(0, 1, 6, 2).slice(1, 0, 7, 3) * 2.0); }}},
      {"select", {"indexing", [](In x) { return one(x[0].select(0, 1) * 2.0); }}},
      {"expand", {"indexing", [](In x) { return one(x[0].expand({3, 4}) * arange(4.0)); }}},
      {"squeeze_unsqueeze", {"indexing", [](In x) { return one(x[0].squeeze(1).unsqueeze(0) * 2.0); }}},
      {"flatten", {"indexing", [](In x) { return one(x[0].flatten(1) * 2.0); }}},
      {"index_select", {"indexing", [](In x) { return one(index_select(x[0], 0, x[1])); }}},
      {"gather", {"indexing", [](In x) { return one(gather(x[0], 1, x[1])); }}},
      {"scatter_add", {"indexing", [](In x) { return one(scatter_add(x[0], 1, x[1], x[2])); }}},
      {"masked_fill", {"indexing", [](In x) { return one(masked_fill(x[0], x[1], -1.0)); }}},
      {"one_hot", {"indexing", [](In x) { return one(one_hot(x[0], 5)); }}},
      {"topk", {"indexing", [](In x) { return two(topk(x[0], 2, 1)); }}},
      {"topk_smallest_dim0", {"indexing", [](In x) { return two(topk(x[0], 3, 0, false)); }}},
  };
  return table;
}

void compare(const std::string& what, const Tensor& ours, const Tensor& theirs, double tol) {
  INFO(what << ": ours " << ours.shape() << " " << ours.dtype() << ", PyTorch " << theirs.shape()
            << " " << theirs.dtype());
  REQUIRE(ours.shape() == theirs.shape());
  if (theirs.is_floating_point()) {
    REQUIRE(ours.dtype() == theirs.dtype());
    double err = golden::relative_error(ours, theirs);
    INFO("relative error " << err << " (tolerance " << tol << ")");
    CHECK(err <= tol);
  } else {
    CHECK(ours.to(DType::f64).to_vector<double>() == theirs.to(DType::f64).to_vector<double>());
  }
}

const golden::Fixtures& fixtures() {
  static const golden::Fixtures fx(golden::golden_dir() + "/ops.safetensors");
  return fx;
}

void run_family(const std::string& family) {
  const golden::Fixtures& fx = fixtures();
  int ran = 0;
  for (const auto& [name, c] : cases()) {
    if (c.family != family) continue;
    CAPTURE(name);
    REQUIRE_MESSAGE(fx.has(name + ".out"), "C++ case without a fixture (rerun tools/golden/ops.py)");
    std::vector<Tensor> inputs;
    for (int i = 0; fx.has(name + ".in" + std::to_string(i)); ++i) {
      Tensor t = fx[name + ".in" + std::to_string(i)].clone();
      if (fx.has(name + ".grad" + std::to_string(i))) t.requires_grad_();
      inputs.push_back(t);
    }
    Outs outs = c.fn(inputs);
    compare(name + " output", outs[0], fx[name + ".out"], c.tol);
    for (size_t k = 1; k < outs.size(); ++k)
      compare(name + " aux" + std::to_string(k - 1), outs[k], fx[name + ".aux" + std::to_string(k - 1)], c.tol);
    ++ran;
    if (!fx.has(name + ".gout")) continue;
    outs[0].backward(fx[name + ".gout"]);
    for (size_t i = 0; i < inputs.size(); ++i) {
      std::string key = name + ".grad" + std::to_string(i);
      if (!fx.has(key)) continue;
      Tensor g = inputs[i].grad();
      if (!g.defined()) g = zeros_like(inputs[i]);
      compare(name + " grad" + std::to_string(i), g, fx[key], c.tol);
    }
  }
  CHECK(ran > 0);
}

}  // namespace

TEST_CASE("golden: the fixture file and the C++ table list the same cases") {
  std::set<std::string> fixture_cases;
  for (const std::string& key : fixtures().keys()) fixture_cases.insert(key.substr(0, key.find('.')));
  for (const auto& name : fixture_cases)
    CHECK_MESSAGE(cases().count(name), "fixture case without a C++ expression: " << name);
  for (const auto& [name, c] : cases())
    CHECK_MESSAGE(fixture_cases.count(name), "C++ case without a fixture: " << name);
}

TEST_CASE("golden: elementwise (add sub mul div pow minimum maximum, scalar forms, neg abs sign exp "
          "log log1p sqrt rsqrt square reciprocal sin cos tanh sigmoid relu gelu silu quick_gelu clamp, where, "
          "comparisons)") {
  run_family("elementwise");
}
TEST_CASE("golden: reductions (sum mean var std prod norm logsumexp amax max min argmax argmin)") {
  run_family("reductions");
}
TEST_CASE("golden: softmax, log_softmax, cross_entropy, nll_loss, bce_with_logits") {
  run_family("losses");
}
TEST_CASE("golden: matmul (mm, mv, vm, dot, bmm, broadcast batches) and linear") { run_family("matmul"); }
TEST_CASE("golden: conv2d, max_pool2d, avg_pool2d, adaptive_avg_pool2d, pad") { run_family("conv"); }
TEST_CASE("golden: batch_norm, layer_norm, group_norm, embedding") { run_family("norm"); }
TEST_CASE("golden: cat stack split chunk, views, index_select gather scatter_add masked_fill one_hot "
          "topk") {
  run_family("indexing");
}

// PyTorch's random masks cannot be reproduced, so dropout is checked against its definition:
// kept elements are x / (1 − p), the rest 0, about a fraction p is dropped, the gradient uses the
// same mask, a seed fixes the mask, and eval mode is the identity.
TEST_CASE("golden: dropout follows PyTorch's definition (masks differ, so checked by identity)") {
  manual_seed(3);
  const double p = 0.3;
  Tensor x = add(rand({200, 50}), 0.5).requires_grad_();
  manual_seed(9);
  Tensor y = dropout(x, p, true);
  Tensor g = randn(y.shape());
  y.backward(g);
  std::vector<double> xv = x.detach().to_vector<double>(), yv = y.detach().to_vector<double>();
  std::vector<double> gv = g.to_vector<double>(), gx = x.grad().to_vector<double>();
  size_t dropped = 0;
  for (size_t i = 0; i < xv.size(); ++i) {
    if (yv[i] == 0) {
      ++dropped;
      CHECK(gx[i] == 0);
    } else {
      CHECK(yv[i] == doctest::Approx(xv[i] / (1 - p)).epsilon(1e-6));
      CHECK(gx[i] == doctest::Approx(gv[i] / (1 - p)).epsilon(1e-6));
    }
  }
  CHECK(double(dropped) / double(xv.size()) == doctest::Approx(p).epsilon(0.1));
  manual_seed(9);
  CHECK(golden::equal(dropout(x.detach(), p, true), y.detach()));
  CHECK(dropout(x, p, false).storage() == x.storage());
}
