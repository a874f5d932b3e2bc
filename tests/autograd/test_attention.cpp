// scaled_dot_product_attention: the fused kernels and the composed form against PyTorch's
// definition (tests/golden/attention.safetensors, tools/golden/attention.py), f64 gradchecks,
// masks and their edge cases, errors, and nn::MultiheadAttention through either path.
// Tolerance: 1e-5 norm-wise (the golden tolerance; both paths sum in float32).
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>

#include "autograd/gradcheck.h"
#include "autograd/ops.h"
#include "nn/attention.h"
#include "tests/errors.h"
#include "tests/golden.h"

using namespace bcos;

namespace {

const golden::Fixtures& fixtures() {
  static const golden::Fixtures f(golden::golden_dir() + "/attention.safetensors");
  return f;
}

struct Case {
  const char* name;
  bool causal;
  double scale;  // 0: 1/sqrt(D)
};

const Case kCases[] = {{"plain", false, 0},          {"causal_two_blocks", true, 0}, {"causal_fewer_queries", true, 0},
                       {"bool_padding", false, 0},   {"float_mask", false, 0},       {"three_dims_scaled", false, 0.3},
                       {"mask_and_causal", true, 0}};

}  // namespace

TEST_CASE("attention: fused and composed match PyTorch's definition, forward and backward") {
  const auto& f = fixtures();
  for (const Case& c : kCases) {
    for (bool fused : {true, false}) {
      const std::string key = c.name;
      CAPTURE(key);
      CAPTURE(fused);
      Tensor q = f[key + ".q"].clone().requires_grad_(), k = f[key + ".k"].clone().requires_grad_();
      Tensor v = f[key + ".v"].clone().requires_grad_();
      const Tensor mask = f.has(key + ".mask") ? f[key + ".mask"] : Tensor();
      const Tensor y = scaled_dot_product_attention(q, k, v, mask, c.causal, c.scale, fused);
      CHECK(golden::relative_error(y, f[key + ".out"]) <= 1e-5);
      y.backward(f[key + ".gout"]);
      CHECK(golden::relative_error(q.grad(), f[key + ".grad_q"]) <= 1e-5);
      CHECK(golden::relative_error(k.grad(), f[key + ".grad_k"]) <= 1e-5);
      CHECK(golden::relative_error(v.grad(), f[key + ".grad_v"]) <= 1e-5);
    }
  }
}

TEST_CASE("attention: f64 gradcheck of the fused kernels (masks, causal, strided inputs, several blocks)") {
  manual_seed(31);
  const Tensor q = randn({1, 2, 130, 3}, kFloat64).requires_grad_(), k = randn({1, 2, 5, 3}, kFloat64).requires_grad_();
  const Tensor v = randn({1, 2, 5, 2}, kFloat64).requires_grad_();
  auto fused = [](const Tensor& mask, bool causal) {
    return [=](const std::vector<Tensor>& in) { return scaled_dot_product_attention(in[0], in[1], in[2], mask, causal); };
  };
  auto check = [](const GradcheckResult& r) {
    INFO(r.message);
    CHECK(r.ok);
  };
  check(gradcheck(fused(Tensor(), false), {q, k, v}));
  // query rows past the keys under causal: every row keeps key 0
  check(gradcheck(fused(Tensor(), true), {q, k, v}));
  check(gradcheck(fused(randn({130, 5}, kFloat64), false), {q, k, v}));
  Tensor keep = ones({1, 1, 1, 5}, DType::boolean);
  keep.narrow(3, 3, 2).fill_(0);
  check(gradcheck(fused(keep, false), {q, k, v}));
  // [N, L, heads, D] transposed to [N, heads, L, D]: strided rows, as MultiheadAttention makes them
  const Tensor qt = randn({2, 4, 3, 3}, kFloat64).requires_grad_(), kt = randn({2, 6, 3, 3}, kFloat64).requires_grad_();
  const Tensor vt = randn({2, 6, 3, 2}, kFloat64).requires_grad_();
  check(gradcheck([](const std::vector<Tensor>& in) {
    return scaled_dot_product_attention(in[0].transpose(1, 2), in[1].transpose(1, 2), in[2].transpose(1, 2));
  }, {qt, kt, vt}));
}

TEST_CASE("attention: hidden keys and rows, empty queries, and the mask's own gradient") {
  manual_seed(32);
  const Tensor q = randn({1, 1, 3, 4}), k = randn({1, 1, 4, 4}), v = randn({1, 1, 4, 2});
  // A row whose every key is hidden gives NaN, as softmax over all −inf does in PyTorch.
  Tensor keep = ones({3, 4}, DType::boolean);
  keep.narrow(0, 1, 1).fill_(0);
  for (bool fused : {true, false}) {
    CAPTURE(fused);
    const std::vector<float> y = scaled_dot_product_attention(q, k, v, keep, false, 0, fused).to_vector<float>();
    CHECK(std::isfinite(y[0]));
    CHECK(std::isnan(y[2]));
    CHECK(std::isnan(y[3]));
    CHECK(std::isfinite(y[4]));
  }
  // No queries: an empty result, and zero gradients for keys and values.
  Tensor k2 = k.clone().requires_grad_(), v2 = v.clone().requires_grad_();
  const Tensor none = scaled_dot_product_attention(randn({1, 1, 0, 4}), k2, v2);
  CHECK(none.shape() == Shape{1, 1, 0, 2});
  sum(none).backward();
  CHECK(sum(abs(k2.grad())).item<float>() == 0.0f);
  // A float mask that needs a gradient gets it (through the composed form).
  Tensor bias = randn({3, 4}).requires_grad_();
  sum(scaled_dot_product_attention(q, k, v, bias)).backward();
  REQUIRE(bias.grad().defined());
  CHECK(sum(abs(bias.grad())).item<float>() > 0.0f);
}

TEST_CASE("attention: bad input raises naming the op and the shapes") {
  const Tensor q = zeros({2, 3, 4, 8}), k = zeros({2, 3, 5, 8}), v = zeros({2, 3, 5, 6});
  using testing::error_of;
  CHECK(error_of([&] { scaled_dot_product_attention(q, zeros({2, 3, 5, 7}), v); }) ==
        "scaled_dot_product_attention: query [2, 3, 4, 8] and key [2, 3, 5, 7] differ in their last dim");
  CHECK(error_of([&] { scaled_dot_product_attention(q, k, zeros({2, 3, 4, 6})); }) ==
        "scaled_dot_product_attention: key [2, 3, 5, 8] and value [2, 3, 4, 6] differ in length");
  CHECK(error_of([&] { scaled_dot_product_attention(q, zeros({2, 2, 5, 8}), zeros({2, 2, 5, 6})); }) ==
        "scaled_dot_product_attention: the leading dims of query [2, 3, 4, 8], key [2, 2, 5, 8] and value [2, 2, 5, 6] "
        "must agree");
  CHECK(error_of([&] { scaled_dot_product_attention(zeros({4, 8}), zeros({5, 8}), zeros({5, 6})); }) ==
        "scaled_dot_product_attention: expected query, key and value of 3 dims [B, L, D] or 4 [N, heads, L, D], got "
        "[4, 8], [5, 8] and [5, 6]");
  CHECK(error_of([&] { scaled_dot_product_attention(q, k, v, zeros({4, 4})); }) ==
        "scaled_dot_product_attention: shapes [4, 4] and [2, 3, 4, 5] cannot be broadcast together");
  CHECK(error_of([&] { scaled_dot_product_attention(q, k, v, zeros({1, 1, 1, 4, 5})); }) ==
        "scaled_dot_product_attention: mask [1, 1, 1, 4, 5] does not broadcast to the logits [2, 3, 4, 5]");
  CHECK(error_of([&] { scaled_dot_product_attention(q, k, v, zeros({4, 5}, DType::i64)); }) ==
        "scaled_dot_product_attention: mask must be bool or float, got int64 (shape [4, 5])");
  CHECK(error_of([&] { scaled_dot_product_attention(q, zeros({2, 3, 0, 8}), zeros({2, 3, 0, 6})); }) ==
        "scaled_dot_product_attention: no keys (key [2, 3, 0, 8])");
  CHECK(error_of([&] { scaled_dot_product_attention(q.to(DType::i64), k.to(DType::i64), v.to(DType::i64)); })
            .find("expected a float32 or float64 tensor, got int64") != std::string::npos);
}

TEST_CASE("attention: MultiheadAttention gives the same through the fused kernel and the composed form") {
  manual_seed(33);
  nn::MultiheadAttention mha(24, 3);
  const Tensor x = randn({2, 7, 24}), kv = randn({2, 9, 24});
  Tensor causal = ones({7, 9}, DType::boolean);  // MultiheadAttention: true hides
  for (int64_t i = 0; i < 7; ++i) causal.narrow(0, i, 1).narrow(1, 0, i + 1).fill_(0);
  for (const Tensor& mask : {Tensor(), causal, randn({6, 7, 9})}) {
    std::vector<Tensor> results[2];
    for (int fused = 0; fused < 2; ++fused) {
      mha.fused_attention = fused == 1;
      Tensor a = x.clone().requires_grad_(), b = kv.clone().requires_grad_();
      for (auto& [name, p] : mha.named_parameters()) p.set_grad(Tensor());
      const Tensor y = mha.forward(a, b, b, mask);
      sum(y * y).backward();
      results[fused] = {y, a.grad(), b.grad(), mha.in_proj_weight.grad()};
    }
    for (size_t i = 0; i < results[0].size(); ++i) {
      CAPTURE(i);
      CHECK(golden::relative_error(results[1][i], results[0][i]) <= 1e-5);
    }
  }
  // Explanation mode with the pattern detached: only the value path carries the gradient.
  mha.detach_qk_when_explaining = true;
  for (int fused = 0; fused < 2; ++fused) {
    mha.fused_attention = fused == 1;
    Tensor a = x.clone().requires_grad_();
    {
      ExplanationModeGuard explain;
      sum(mha.forward(a)).backward();
    }
    static Tensor first;
    if (fused == 0) first = a.grad().clone();
    else CHECK(golden::relative_error(a.grad(), first) <= 1e-5);
  }
}

TEST_CASE("attention: for head size 64 the scale on the logits gives the bits of q divided by 8 first") {
  // MultiheadAttention hands the fused kernels q unscaled with scale 1/√d, where it divided q by
  // √d before (and still does for the composed form with dropout): for d = 64, 1/√d = 2^-3 and
  // every product and partial sum only moves by that power of two, so forward and gradients are
  // the same bits, float32 and under bf16 autocast (rounding commutes with 2^-3 too). The second
  // shape has products the bf16 GEMM takes.
  manual_seed(36);
  for (const Shape& shape : {Shape{2, 3, 7, 64}, Shape{1, 2, 300, 64}}) {
    const Tensor q0 = randn(shape), k0 = randn(shape), v0 = randn(shape), gout = randn(shape);
    for (bool autocast : {false, true}) {
      CAPTURE(shape);
      CAPTURE(autocast);
      auto run = [&](bool divide_first) {
        Tensor q = q0.clone().requires_grad_(), k = k0.clone().requires_grad_(), v = v0.clone().requires_grad_();
        Tensor y;
        {
          AutocastGuard guard(DeviceType::cpu, DType::bf16, autocast);
          y = divide_first ? scaled_dot_product_attention(q / 8.0, k, v, Tensor(), false, 1.0)
                           : scaled_dot_product_attention(q, k, v, Tensor(), false, 0.125);
        }
        y.backward(gout.to(y.dtype()));  // (under autocast y is bf16)
        return std::vector<Tensor>{y.detach(), q.grad(), k.grad(), v.grad()};
      };
      const auto before = run(true), now = run(false);
      for (size_t i = 0; i < before.size(); ++i) {
        CAPTURE(i);
        CHECK(before[i].to_vector<float>() == now[i].to_vector<float>());
      }
    }
  }
}

// The share of a's elements further than 1e-4 of b's RMS from b's.
double share_apart(const Tensor& a, const Tensor& b) {
  const std::vector<double> x = a.contiguous().to_vector<double>(), y = b.contiguous().to_vector<double>();
  double sq = 0;
  for (double v : y) sq += v * v;
  const double tol = 1e-4 * std::sqrt(sq / double(std::max<size_t>(y.size(), 1)));
  size_t apart = 0;
  for (size_t i = 0; i < x.size(); ++i) apart += std::fabs(x[i] - y[i]) > tol;
  return double(apart) / double(std::max<size_t>(x.size(), 1));
}

// x as bf16 rounds it in the forward, its gradient passed on as it is; and x as it is, with its
// gradient rounded: the two roundings a product of autocast's makes, written as float32 ops.
Tensor round_forward(const Tensor& x) {
  const Tensor r = x.to(DType::bf16).to(DType::f32);
  return x + (r - x).detach();  // r − x is exact, and so is the sum: r
}
Tensor round_backward(const Tensor& x) {
  const Tensor r = x.to(DType::bf16).to(DType::f32);
  return r + (x - r).detach();
}

// The fused kernels' rule under bf16 autocast, composed of float32 ops: every product (q kᵀ, P v
// and the backward's four) multiplies bf16 roundings of its operands and sums in float32; the
// softmax and dS = P ∘ (dP − rowsum(P ∘ dP)) stay float32, dS · scale rounded before its products.
Tensor attention_rule(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& mask, bool causal, double scale) {
  if (scale == 0) scale = 1.0 / std::sqrt(double(q.size(-1)));
  Tensor logits = round_backward(matmul(round_forward(q), round_forward(k).transpose(-2, -1))) * scale;
  if (mask.defined())
    logits = logits + (mask.dtype() == DType::boolean ? where(mask, zeros(Shape{}), -INFINITY) : mask);
  if (causal) {
    const int64_t lq = q.size(-2), lk = k.size(-2);
    const Tensor rows = arange(double(lq), DType::i64).reshape({lq, 1}), cols = arange(double(lk), DType::i64).reshape({1, lk});
    logits = masked_fill(logits, gt(cols, rows), -INFINITY);
  }
  return matmul(round_forward(softmax(logits, -1)), round_forward(v));
}

TEST_CASE("attention: under bf16 autocast the fused kernels multiply bf16 operands, with a bf16 result") {
  // torch.autocast runs scaled_dot_product_attention in bf16: a bf16 result. Inside, every
  // product multiplies bf16 roundings of its operands and sums in float32, the softmax staying
  // float32; the reference is that rule composed of float32 ops (attention_rule), its output
  // rounded to bf16 once. Shapes: the fixture cases (products too small for the bf16 GEMM:
  // rounded copies), and one whose products the bf16 GEMM takes where the CPU has one
  // (256 x 100 x 64 and a second block of 44 rows).
  // The two compute the probabilities and dS with different float32 roundings (the fused
  // backward recomputes P from the log-sum-exp), so now and then one of them sits on the other
  // side of a bf16 rounding boundary and moves by 2^-8: a handful of such flips among 10^5
  // probabilities moved a result by up to 2.7e-3 norm-wise, as much as the rounding itself. So
  // the check counts elements: further than 1e-4 of the RMS from the reference, at most 5 %
  // (the rows a flip touches), where rounding against not rounding moves 53-98 % (bound 30 %);
  // and norm-wise no further than bf16's own rounding (1e-2).
  const auto& f = fixtures();
  manual_seed(35);
  struct Input {
    std::string name;
    Tensor q, k, v, mask;
    bool causal;
    double scale;
  };
  std::vector<Input> inputs;
  for (const Case& c : kCases) {
    const std::string key = c.name;
    inputs.push_back({key, f[key + ".q"], f[key + ".k"], f[key + ".v"],
                      f.has(key + ".mask") ? f[key + ".mask"] : Tensor(), c.causal, c.scale});
  }
  inputs.push_back({"bf16 GEMM sizes, two blocks", randn({2, 2, 300, 64}), randn({2, 2, 100, 64}),
                     randn({2, 2, 100, 64}), Tensor(), false, 0});
  for (const Input& in : inputs) {
    CAPTURE(in.name);
    const Tensor gout = randn(in.q.shape().size() == 3 ? Shape{in.q.size(0), in.q.size(1), in.v.size(-1)}
                                                       : Shape{in.q.size(0), in.q.size(1), in.q.size(2), in.v.size(-1)});
    auto run = [&](bool fused, bool autocast) {
      Tensor q = in.q.clone().requires_grad_(), k = in.k.clone().requires_grad_(), v = in.v.clone().requires_grad_();
      Tensor y;
      {
        AutocastGuard guard(DeviceType::cpu, DType::bf16, autocast);
        y = scaled_dot_product_attention(q, k, v, in.mask, in.causal, in.scale, fused);
      }
      y.backward(gout.to(y.dtype()));  // outside the guard: the backward keeps the forward's setting
      return std::vector<Tensor>{y.detach(), q.grad(), k.grad(), v.grad()};
    };
    const auto fused = run(true, true), plain = run(true, false);
    REQUIRE(fused[0].dtype() == DType::bf16);
    Tensor q = in.q.clone().requires_grad_(), k = in.k.clone().requires_grad_(), v = in.v.clone().requires_grad_();
    const Tensor y = attention_rule(q, k, v, in.mask, in.causal, in.scale);
    y.backward(gout.to(DType::bf16).to(DType::f32));
    const std::vector<Tensor> rule{y.detach().to(DType::bf16), q.grad(), k.grad(), v.grad()};
    for (size_t i = 0; i < fused.size(); ++i) {
      CAPTURE(i);
      CHECK(share_apart(fused[i], rule[i]) <= 0.05);
      CHECK(share_apart(fused[i], plain[i]) >= 0.3);
      CHECK(golden::relative_error(fused[i], rule[i]) <= 1e-2);
    }
  }
}

namespace {
// [N, H, L, D] -> [N, L, H·D]
Tensor merge_heads(const Tensor& t) { return t.transpose(1, 2).reshape({t.size(0), t.size(2), t.size(1) * t.size(3)}); }
// Part i (q, k, v) of a packed [N, L, 3·H·D] as [N, H, L, D].
Tensor head_part(const Tensor& qkv, int64_t heads, int64_t i) {
  const int64_t n = qkv.size(0), len = qkv.size(1), d = qkv.size(2) / 3 / heads;
  return qkv.reshape({n, len, 3, heads, d}).select(2, i).transpose(1, 2);
}
}  // namespace

TEST_CASE("attention: packed_self_attention matches PyTorch's definition on the packed layout") {
  // The fixture cases whose q, k and v share one shape, packed as MultiheadAttention's in_proj
  // output lays them out: [N, L, q heads | k heads | v heads].
  const auto& f = fixtures();
  for (const char* name : {"causal_two_blocks", "mask_and_causal"}) {
    const std::string key = name;
    CAPTURE(key);
    const int64_t heads = f[key + ".q"].size(1);
    const Tensor mask = f.has(key + ".mask") ? f[key + ".mask"] : Tensor();
    for (bool fused : {true, false}) {
      CAPTURE(fused);
      Tensor qkv = cat({merge_heads(f[key + ".q"]), merge_heads(f[key + ".k"]), merge_heads(f[key + ".v"])}, 2)
                       .requires_grad_();
      const Tensor y = packed_self_attention(qkv, heads, mask, true, 0, fused);
      CHECK(golden::relative_error(y, merge_heads(f[key + ".out"])) <= 1e-5);
      y.backward(merge_heads(f[key + ".gout"]));
      CHECK(golden::relative_error(head_part(qkv.grad(), heads, 0), f[key + ".grad_q"]) <= 1e-5);
      CHECK(golden::relative_error(head_part(qkv.grad(), heads, 1), f[key + ".grad_k"]) <= 1e-5);
      CHECK(golden::relative_error(head_part(qkv.grad(), heads, 2), f[key + ".grad_v"]) <= 1e-5);
    }
  }
}

TEST_CASE("attention: packed_self_attention is scaled_dot_product_attention on its slices, bit for bit") {
  // The same kernels on the same values: only where the output and the gradients are written
  // differs (straight into the merged / packed layouts), so float32 and bf16 autocast results
  // must be the same bits. One shape with two query blocks and products the bf16 GEMM takes.
  manual_seed(37);
  for (const Shape& shape : {Shape{2, 7, 3 * 4 * 8}, Shape{1, 300, 3 * 2 * 64}}) {
    const int64_t heads = shape[2] == 96 ? 4 : 2;
    const Tensor x = randn(shape), gout = randn({shape[0], shape[1], shape[2] / 3});
    for (bool autocast : {false, true}) {
      CAPTURE(shape);
      CAPTURE(autocast);
      Tensor packed = x.clone().requires_grad_(), split = x.clone().requires_grad_();
      Tensor y_packed, y_split;
      {
        AutocastGuard guard(DeviceType::cpu, DType::bf16, autocast);
        y_packed = packed_self_attention(packed, heads);
        y_split = merge_heads(scaled_dot_product_attention(head_part(split, heads, 0), head_part(split, heads, 1),
                                                           head_part(split, heads, 2)));
      }
      y_packed.backward(gout.to(y_packed.dtype()));
      y_split.backward(gout.to(y_split.dtype()));
      CHECK(y_packed.to_vector<float>() == y_split.to_vector<float>());
      CHECK(packed.grad().to_vector<float>() == split.grad().to_vector<float>());
    }
  }
}

TEST_CASE("attention: f64 gradcheck of packed_self_attention; q and k as constants; bad input") {
  manual_seed(38);
  const Tensor qkv = randn({2, 5, 3 * 2 * 3}, kFloat64).requires_grad_();
  auto check = [](const GradcheckResult& r) {
    INFO(r.message);
    CHECK(r.ok);
  };
  for (bool fused : {true, false}) {
    CAPTURE(fused);
    check(gradcheck([=](const std::vector<Tensor>& in) { return packed_self_attention(in[0], 2, Tensor(), false, 0, fused); },
                    {qkv}));
    check(gradcheck([=](const std::vector<Tensor>& in) { return packed_self_attention(in[0], 2, Tensor(), true, 0.7, fused); },
                    {qkv}));
    const Tensor mask = randn({2, 1, 5, 5}, kFloat64);
    check(gradcheck([=](const std::vector<Tensor>& in) { return packed_self_attention(in[0], 2, mask, false, 0, fused); },
                    {qkv}));
    // qk_grad false: the gradient of detached q and k -- zero there, the value path's elsewhere.
    Tensor a = qkv.detach().clone().requires_grad_(), b = qkv.detach().clone().requires_grad_();
    const Tensor g = randn({2, 5, 6}, kFloat64);
    packed_self_attention(a, 2, mask, false, 0, fused, false).backward(g);
    scaled_dot_product_attention(head_part(b, 2, 0).detach(), head_part(b, 2, 1).detach(), head_part(b, 2, 2), mask,
                                 false, 0, fused)
        .transpose(1, 2)
        .reshape({2, 5, 6})
        .backward(g);
    CHECK(sum(abs(a.grad().narrow(2, 0, 12))).item<double>() == 0.0);
    CHECK(golden::relative_error(a.grad(), b.grad()) <= 1e-12);
  }
  CHECK(testing::error_of([] { packed_self_attention(zeros({2, 5, 16}), 2); }) ==
        "packed_self_attention: expected qkv [N, L, 3 * heads * d] for 2 heads, got [2, 5, 16]");
  CHECK(testing::error_of([] { packed_self_attention(zeros({10, 18}), 2); }) ==
        "packed_self_attention: expected qkv [N, L, 3 * heads * d] for 2 heads, got [10, 18]");
  CHECK(testing::error_of([] { packed_self_attention(zeros({2, 5, 18}), 2, zeros({4, 4})); }) ==
        "packed_self_attention: shapes [4, 4] and [2, 2, 5, 5] cannot be broadcast together");
}

TEST_CASE("attention: MultiheadAttention's self-attention (one packed product) equals its three products") {
  // forward(x) takes one product with in_proj_weight and packed_self_attention; the same values
  // in three different tensors take three products over the weight's chunks. Float32 sums
  // grouped differently: 1e-5 norm-wise.
  manual_seed(39);
  nn::MultiheadAttention mha(24, 3);
  const Tensor x = randn({2, 7, 24});
  for (const Tensor& mask : {Tensor(), randn({7, 7})}) {
    for (bool explain : {false, true}) {
      CAPTURE(explain);
      mha.detach_qk_when_explaining = explain;
      std::vector<Tensor> results[2];
      for (int packed = 0; packed < 2; ++packed) {
        Tensor a = x.clone().requires_grad_();
        for (auto& [name, p] : mha.named_parameters()) p.set_grad(Tensor());
        ExplanationModeGuard guard(explain);
        // (a * 1) three times: one history, three tensors -- not self-attention's one tensor.
        const Tensor y = packed ? mha.forward(a, a, a, mask) : mha.forward(a * 1.0, a * 1.0, a * 1.0, mask);
        sum(y * y).backward();
        results[packed] = {y, a.grad(), explain ? Tensor() : mha.in_proj_weight.grad(),
                           explain ? Tensor() : mha.in_proj_bias.grad()};
      }
      for (size_t i = 0; i < results[0].size(); ++i) {
        if (!results[0][i].defined()) continue;
        CAPTURE(i);
        CHECK(golden::relative_error(results[1][i], results[0][i]) <= 1e-5);
      }
    }
  }
  // forward(x) is the packed composition itself, bit for bit (the three products would sum the
  // input gradient in another order).
  mha.detach_qk_when_explaining = false;
  auto gradient_of = [&](bool through_module) {
    Tensor a = x.clone().requires_grad_();
    const Tensor y = through_module ? mha.forward(a)
                                    : (*mha.out_proj)(packed_self_attention(linear(a, mha.in_proj_weight, mha.in_proj_bias),
                                                                            3, Tensor(), false, 1.0 / std::sqrt(8.0)));
    sum(y * y).backward();
    return a.grad().to_vector<float>();
  };
  CHECK(gradient_of(true) == gradient_of(false));
}
