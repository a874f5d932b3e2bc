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

const std::map<std::string, Case>& cases() {
  constexpr double kProduct = 1e-4;
  static const std::map<std::string, Case> table = {
      // elementwise, binary
      {"add_broadcast", {[](In x) { return one(x[0] + x[1]); }}},
      {"add_alpha", {[](In x) { return one(add(x[0], x[1], 2.5)); }}},
      {"sub_transposed", {[](In x) { return one(x[0].t() - x[1]); }}},
      {"mul_broadcast", {[](In x) { return one(x[0] * x[1]); }}},
      {"div_broadcast", {[](In x) { return one(x[0] / x[1]); }}},
      {"pow_tensor", {[](In x) { return one(pow(x[0], x[1])); }}},
      {"minimum", {[](In x) { return one(minimum(x[0], x[1])); }}},
      {"maximum", {[](In x) { return one(maximum(x[0], x[1])); }}},
      {"add_scalar", {[](In x) { return one(x[0] + 1.5); }}},
      {"rsub_scalar", {[](In x) { return one(2.0 - x[0]); }}},
      {"mul_scalar", {[](In x) { return one(x[0] * -0.75); }}},
      {"div_scalar", {[](In x) { return one(x[0] / 3.0); }}},
      {"rdiv_scalar", {[](In x) { return one(2.0 / x[0]); }}},
      {"pow_scalar", {[](In x) { return one(pow(x[0], 2.5)); }}},
      {"pow_square", {[](In x) { return one(pow(x[0], 2.0)); }}},
      {"pow_negative", {[](In x) { return one(pow(x[0], -0.5)); }}},
      // elementwise, unary
      {"neg", {[](In x) { return one(neg(x[0])); }}},
      {"abs", {[](In x) { return one(abs(x[0])); }}},
      {"sign", {[](In x) { return one(sign(x[0])); }}},
      {"exp_transposed", {[](In x) { return one(exp(x[0].t())); }}},
      {"log", {[](In x) { return one(log(x[0])); }}},
      {"log1p", {[](In x) { return one(log1p(x[0])); }}},
      {"sqrt", {[](In x) { return one(sqrt(x[0])); }}},
      {"rsqrt", {[](In x) { return one(rsqrt(x[0])); }}},
      {"square", {[](In x) { return one(square(x[0])); }}},
      {"reciprocal", {[](In x) { return one(reciprocal(x[0])); }}},
      {"sin", {[](In x) { return one(sin(x[0])); }}},
      {"cos", {[](In x) { return one(cos(x[0])); }}},
      {"tanh", {[](In x) { return one(tanh(x[0])); }}},
      {"sigmoid", {[](In x) { return one(sigmoid(x[0])); }}},
      {"relu", {[](In x) { return one(relu(x[0])); }}},
      {"gelu", {[](In x) { return one(gelu(x[0])); }}},
      {"gelu_tanh", {[](In x) { return one(gelu(x[0], "tanh")); }}},
      {"silu", {[](In x) { return one(silu(x[0])); }}},
      {"clamp", {[](In x) { return one(clamp(x[0], -0.5, 0.5)); }}},
      {"clamp_min", {[](In x) { return one(clamp_min(x[0], 0.1)); }}},
      {"clamp_max", {[](In x) { return one(clamp_max(x[0], 0.2)); }}},
      {"where", {[](In x) { return one(where(x[0], x[1], x[2])); }}},
      {"eq", {[](In x) { return one(eq(x[0], x[1])); }}},
      {"lt", {[](In x) { return one(lt(x[0], x[1])); }}},
      {"ge_scalar", {[](In x) { return one(ge(x[0], 0.0)); }}},
      // reductions
      {"sum_all", {[](In x) { return one(sum(x[0])); }}},
      {"sum_dims", {[](In x) { return one(sum(x[0], {0, 2})); }}},
      {"sum_keepdim", {[](In x) { return one(sum(x[0], {1}, true)); }}},
      {"sum_permuted", {[](In x) { return one(sum(x[0].permute({2, 0, 1}), {1})); }}},
      {"mean_last", {[](In x) { return one(mean(x[0], {-1})); }}},
      {"mean_all", {[](In x) { return one(mean(x[0])); }}},
      {"var_unbiased", {[](In x) { return one(var(x[0], {1}, 1)); }}},
      {"var_population", {[](In x) { return one(var(x[0], {}, 0)); }}},
      {"std_dim0", {[](In x) { return one(bcos::std(x[0], {0}, 1)); }}},
      {"prod", {[](In x) { return one(prod(x[0], {1})); }}},
      {"norm2", {[](In x) { return one(norm(x[0], 2, {1})); }}},
      {"norm1", {[](In x) { return one(norm(x[0], 1)); }}},
      {"logsumexp", {[](In x) { return one(logsumexp(x[0], {1})); }}},
      {"amax", {[](In x) { return one(amax(x[0], {0, 2})); }}},
      {"max_all", {[](In x) { return one(max(x[0])); }}},
      {"min_all", {[](In x) { return one(min(x[0])); }}},
      {"max_dim", {[](In x) { return two(max(x[0], 1)); }}},
      {"min_dim_keepdim", {[](In x) { return two(min(x[0], 0, true)); }}},
      {"argmax", {[](In x) { return one(argmax(x[0], 1)); }}},
      {"argmin_all", {[](In x) { return one(argmin(x[0])); }}},
      // softmax and losses
      {"softmax", {[](In x) { return one(softmax(x[0], 1)); }}},
      {"softmax_dim0", {[](In x) { return one(softmax(x[0], 0)); }}},
      {"log_softmax", {[](In x) { return one(log_softmax(x[0], 1)); }}},
      {"cross_entropy", {[](In x) { return one(cross_entropy(x[0], x[1])); }}},
      {"cross_entropy_smooth", {[](In x) { return one(cross_entropy(x[0], x[1], -100, 0.1)); }}},
      {"cross_entropy_ignore", {[](In x) { return one(cross_entropy(x[0], x[1], -100)); }}},
      {"cross_entropy_smooth_ignore_sum",
       {[](In x) { return one(cross_entropy(x[0], x[1], -100, 0.2, Reduction::sum)); }}},
      {"cross_entropy_none",
       {[](In x) { return one(cross_entropy(x[0], x[1], -100, 0.0, Reduction::none)); }}},
      {"cross_entropy_spatial", {[](In x) { return one(cross_entropy(x[0], x[1])); }}},
      {"nll_loss", {[](In x) { return one(nll_loss(log_softmax(x[0], 1), x[1])); }}},
      {"bce_with_logits", {[](In x) { return one(binary_cross_entropy_with_logits(x[0], x[1])); }}},
      {"bce_with_logits_weight_sum",
       {[](In x) { return one(binary_cross_entropy_with_logits(x[0], x[1], x[2], Reduction::sum)); }}},
      // matmul and linear
      {"mm", {[](In x) { return one(matmul(x[0], x[1])); }, kProduct}},
      {"mm_transposed", {[](In x) { return one(matmul(x[0].t(), x[1].t())); }, kProduct}},
      {"mv", {[](In x) { return one(matmul(x[0], x[1])); }, kProduct}},
      {"vm", {[](In x) { return one(matmul(x[0], x[1])); }, kProduct}},
      {"dot", {[](In x) { return one(matmul(x[0], x[1])); }, kProduct}},
      {"bmm", {[](In x) { return one(matmul(x[0], x[1])); }, kProduct}},
      {"matmul_broadcast", {[](In x) { return one(matmul(x[0], x[1])); }, kProduct}},
      {"matmul_batched_2d", {[](In x) { return one(matmul(x[0], x[1])); }, kProduct}},
      {"linear", {[](In x) { return one(linear(x[0], x[1], x[2])); }, kProduct}},
      {"linear_3d_nobias", {[](In x) { return one(linear(x[0], x[1])); }, kProduct}},
      // convolution, pooling, padding
      {"conv2d", {[](In x) { return one(conv2d(x[0], x[1], x[2], 1, 1)); }, kProduct}},
      {"conv2d_stride2", {[](In x) { return one(conv2d(x[0], x[1], Tensor(), 2, 1)); }, kProduct}},
      {"conv2d_dilated", {[](In x) { return one(conv2d(x[0], x[1], x[2], 1, 2, 2)); }, kProduct}},
      {"conv2d_groups", {[](In x) { return one(conv2d(x[0], x[1], x[2], 1, 1, 1, 2)); }, kProduct}},
      {"conv2d_depthwise", {[](In x) { return one(conv2d(x[0], x[1], Tensor(), 1, 1, 1, 3)); }, kProduct}},
      {"conv2d_1x1", {[](In x) { return one(conv2d(x[0], x[1], x[2])); }, kProduct}},
      {"conv2d_asymmetric",
       {[](In x) { return one(conv2d(x[0], x[1], Tensor(), IntPair(2, 1), IntPair(0, 1))); }, kProduct}},
      {"conv2d_permuted_input",
       {[](In x) { return one(conv2d(x[0].permute({0, 3, 1, 2}), x[1], Tensor(), 1, 1)); }, kProduct}},
      {"max_pool2d", {[](In x) { return one(max_pool2d(x[0], 3, 2, 1)); }}},
      {"max_pool2d_ceil", {[](In x) { return one(max_pool2d(x[0], 3, 2, 0, 1, true)); }}},
      {"max_pool2d_dilated", {[](In x) { return one(max_pool2d(x[0], 2, 1, 0, 2)); }}},
      {"max_pool2d_indices", {[](In x) { return two(max_pool2d_with_indices(x[0], 2, 2)); }}},
      {"avg_pool2d", {[](In x) { return one(avg_pool2d(x[0], 3, 2, 1)); }}},
      {"avg_pool2d_exclude_pad", {[](In x) { return one(avg_pool2d(x[0], 3, 2, 1, false, false)); }}},
      {"avg_pool2d_divisor", {[](In x) { return one(avg_pool2d(x[0], 2, std::nullopt, 0, false, true, 3)); }}},
      {"avg_pool2d_ceil", {[](In x) { return one(avg_pool2d(x[0], 3, 2, 1, true)); }}},
      {"adaptive_avg_pool2d", {[](In x) { return one(adaptive_avg_pool2d(x[0], IntPair(3, 4))); }}},
      {"adaptive_avg_pool2d_global", {[](In x) { return one(adaptive_avg_pool2d(x[0], 1)); }}},
      {"pad", {[](In x) { return one(pad(x[0], {1, 2, 0, 3}, 0.5)); }}},
      // normalisation and embedding
      {"batch_norm_train", {bn_train}},
      {"batch_norm_eval",
       {[](In x) { return one(batch_norm(x[0], x[1], x[2], x[3], x[4], false, 0.1, 1e-5)); }}},
      {"batch_norm_2d", {bn_train}},
      {"layer_norm", {[](In x) { return one(layer_norm(x[0], {6}, x[1], x[2], 1e-5)); }}},
      {"layer_norm_2dims", {[](In x) { return one(layer_norm(x[0], {4, 6}, x[1], x[2], 1e-6)); }}},
      {"group_norm", {[](In x) { return one(group_norm(x[0], 3, x[1], x[2], 1e-5)); }}},
      {"embedding", {[](In x) { return one(embedding(x[0], x[1])); }}},
      // joining, views and indexing
      {"cat", {[](In x) { return one(cat({x[0], x[1], x[2]}, 1)); }}},
      {"stack", {[](In x) { return one(stack({x[0], x[1]}, 1)); }}},
      {"split", {[](In x) { return one(split(x[0], std::vector<int64_t>{2, 3}, 1)[1]); }}},
      {"chunk", {[](In x) { return one(chunk(x[0], 3, 0)[1]); }}},
      {"reshape_transposed", {[](In x) { return one(x[0].t().reshape({3, 8})); }}},
      {"view", {[](In x) { return one(x[0].view({2, 3, 4}) * 2.0); }}},
      {"permute", {[](In x) { return one(x[0].permute({2, 0, 1}) * 2.0); }}},
      {"narrow", {[](In x) { return one(x[0].narrow(0, 1, 3) * 2.0); }}},
      {"slice_step", {[](In x) { return one(x[0].slice(0, 1, 6, 2).slice(1, 0, 7, 3) * 2.0); }}},
      {"select", {[](In x) { return one(x[0].select(0, 1) * 2.0); }}},
      {"expand", {[](In x) { return one(x[0].expand({3, 4}) * arange(4.0)); }}},
      {"squeeze_unsqueeze", {[](In x) { return one(x[0].squeeze(1).unsqueeze(0) * 2.0); }}},
      {"flatten", {[](In x) { return one(x[0].flatten(1) * 2.0); }}},
      {"index_select", {[](In x) { return one(index_select(x[0], 0, x[1])); }}},
      {"gather", {[](In x) { return one(gather(x[0], 1, x[1])); }}},
      {"scatter_add", {[](In x) { return one(scatter_add(x[0], 1, x[1], x[2])); }}},
      {"masked_fill", {[](In x) { return one(masked_fill(x[0], x[1], -1.0)); }}},
      {"one_hot", {[](In x) { return one(one_hot(x[0], 5)); }}},
      {"topk", {[](In x) { return two(topk(x[0], 2, 1)); }}},
      {"topk_smallest_dim0", {[](In x) { return two(topk(x[0], 3, 0, false)); }}},
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

}  // namespace

TEST_CASE("golden: every op matches PyTorch (forward and input gradients)") {
  golden::Fixtures fx(golden::golden_dir() + "/ops.safetensors");
  std::set<std::string> fixture_cases;
  for (const std::string& key : fx.keys()) fixture_cases.insert(key.substr(0, key.find('.')));
  for (const auto& name : fixture_cases)
    CHECK_MESSAGE(cases().count(name), "fixture case without a C++ expression: " << name);
  for (const auto& [name, c] : cases()) {
    CAPTURE(name);
    REQUIRE_MESSAGE(fixture_cases.count(name), "C++ case without a fixture (rerun tools/golden/ops.py)");
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
}
