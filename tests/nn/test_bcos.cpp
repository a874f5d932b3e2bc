// B-cos layers: f64 gradchecks of the fused transforms over b, max_out, groups, stride, padding
// and dilation; golden parity with the PyTorch reference in tools/golden/bcos.py (outputs,
// gradients, and gradients in explanation mode); and the property explanations rest on: in
// explanation mode the input gradient of a B-cos output is its explicit dynamic weight s · ŵ.
#include <doctest/doctest.h>

#include <cmath>
#include <map>
#include <set>

#include "autograd/gradcheck.h"
#include "nn/bcos.h"
#include "nn/layers.h"
#include "tests/golden.h"

using namespace bcos;

namespace {

Tensor randn64(const Shape& s, uint64_t seed) {
  manual_seed(seed);
  return randn(s, DType::f64);
}

void expect_gradcheck(const std::function<Tensor(const std::vector<Tensor>&)>& f, std::vector<Tensor> in,
                      const std::string& what) {
  for (auto& t : in) t.requires_grad_(true);
  GradcheckResult r = gradcheck(f, in, 1e-6, 1e-6, 1e-4);
  INFO(what, ": ", r.message);
  CHECK(r.ok);
}

struct ConvCase {
  int64_t c, o;
  IntPair k, stride, padding, dilation;
  int64_t groups;
  double b;
  int64_t m;
  bool normalize, bias;
};

// The cases of tools/golden/bcos.py, with the same names and parameters.
const std::map<std::string, ConvCase>& conv_cases() {
  static const std::map<std::string, ConvCase> t = {
      {"conv_b2", {4, 3, 3, 1, 1, 1, 1, 2, 1, true, false}},
      {"conv_b1", {4, 3, 3, 1, 1, 1, 1, 1, 1, true, false}},
      {"conv_b1.5", {4, 3, 3, 1, 1, 1, 1, 1.5, 1, true, false}},
      {"conv_b2.5", {4, 3, 3, 1, 1, 1, 1, 2.5, 1, true, false}},
      {"conv_m2_b2", {4, 3, 3, 1, 1, 1, 1, 2, 2, true, false}},
      {"conv_m2_b1", {4, 3, 3, 1, 1, 1, 1, 1, 2, true, false}},
      {"conv_stride2", {3, 4, 3, 2, 0, 1, 1, 2.5, 2, true, false}},
      {"conv_dilation2", {3, 2, 3, 1, 2, 2, 1, 2, 1, false, false}},
      {"conv_groups2", {4, 4, 3, 1, 1, 1, 2, 2, 2, true, false}},
      {"conv_depthwise", {4, 4, 3, 1, 1, 1, 4, 1.5, 1, true, false}},
      {"conv_rect", {3, 2, {3, 1}, {2, 1}, {1, 0}, 1, 1, 2, 1, true, false}},
      {"conv_1x1", {5, 3, 1, 1, 0, 1, 1, 2, 1, false, false}},
      {"conv_bias", {3, 2, 3, 1, 1, 1, 1, 2, 1, false, true}},
  };
  return t;
}

struct LinearCase {
  double b;
  int64_t m;
  bool normalize, bias;
};

const std::map<std::string, LinearCase>& linear_cases() {
  static const std::map<std::string, LinearCase> t = {
      {"linear_b1_m1", {1, 1, true, false}},    {"linear_b1.5_m1", {1.5, 1, true, false}},
      {"linear_b2_m1", {2, 1, true, false}},    {"linear_b2.5_m1", {2.5, 1, true, false}},
      {"linear_b1_m2", {1, 2, true, false}},    {"linear_b2_m2", {2, 2, true, false}},
      {"linear_b2.5_m2", {2.5, 2, false, false}}, {"linear_b2_bias", {2, 1, false, true}},
  };
  return t;
}

const golden::Fixtures& fixtures() {
  static golden::Fixtures f(golden::golden_dir() + "/bcos.safetensors");
  return f;
}

// Runs `fn` on the case's inputs (converted to dtype), checks the output, then the gradients
// with the stored output gradient, normally and in explanation mode.
void check_golden(const std::string& name, const std::vector<std::string>& inputs,
                  const std::function<Tensor(const std::vector<Tensor>&)>& fn, DType dtype, double tol,
                  const std::vector<std::string>& explained) {
  const auto& fx = fixtures();
  for (bool explain : {false, true}) {
    if (explain && explained.empty()) continue;
    std::vector<Tensor> in;
    for (const auto& k : inputs) in.push_back(fx[name + "." + k].to(dtype).requires_grad_(true));
    ExplanationModeGuard guard(explain);
    Tensor y = fn(in);
    if (!explain) {
      INFO(name, " output (", dtype, ")");
      CHECK(golden::relative_error(y.to(DType::f32), fx[name + ".out"]) <= tol);
    }
    sum(y * fx[name + ".gout"].to(dtype)).backward();
    for (size_t i = 0; i < inputs.size(); ++i) {
      std::string key = name + ".g" + inputs[i] + (explain ? "_explain" : "");
      if (explain && std::find(explained.begin(), explained.end(), inputs[i]) == explained.end()) continue;
      INFO(key, " (", dtype, ")");
      REQUIRE(fx.has(key));
      CHECK(golden::relative_error(in[i].grad().to(DType::f32), fx[key]) <= tol);
    }
  }
}

}  // namespace

TEST_CASE("bcos: gradcheck of the B-cos linear map over b and max_out") {
  for (double b : {1.0, 1.5, 2.0, 2.5})
    for (int64_t m : {1, 2})
      for (bool bias : {false, true}) {
        std::vector<Tensor> in = {randn64({3, 2, 5}, 11), randn64({3 * m, 5}, 12)};
        if (bias) in.push_back(randn64({3 * m}, 13));
        expect_gradcheck([&](const std::vector<Tensor>& t) {
          return bcos_linear(t[0], unit_rows(t[1]), bias ? t[2] : Tensor(), b, m);
        }, in, str("linear b=", b, " max_out=", m, " bias=", bias));
      }
}

TEST_CASE("bcos: gradcheck of the B-cos conv over b, max_out, groups, stride, padding, dilation") {
  struct G {
    int64_t c, o;
    IntPair k, stride, padding, dilation;
    int64_t groups;
  };
  const std::vector<G> geometries = {
      {2, 2, 3, 1, 1, 1, 1},       {3, 2, 3, 2, 0, 1, 1},  {2, 2, 3, 1, 2, 2, 1},
      {4, 2, 3, 1, 1, 1, 2},       {2, 2, {3, 2}, {2, 1}, {1, 0}, {1, 2}, 2},
      {3, 2, 1, 1, 0, 1, 1},
  };
  for (const G& g : geometries)
    for (double b : {1.0, 1.5, 2.0, 2.5})
      for (int64_t m : {1, 2}) {
        std::vector<Tensor> in = {randn64({2, g.c, 5, 4}, 21), randn64({g.o * m, g.c / g.groups, g.k.h, g.k.w}, 22)};
        expect_gradcheck([&](const std::vector<Tensor>& t) {
          return bcos_conv2d(t[0], unit_rows(t[1]), Tensor(), g.stride, g.padding, g.dilation, g.groups, b, m);
        }, in, str("conv c=", g.c, " k=", g.k.h, "x", g.k.w, " stride ", g.stride.h, " pad ", g.padding.h,
                   " dil ", g.dilation.h, " groups ", g.groups, " b=", b, " max_out=", m));
      }
}

TEST_CASE("bcos: gradcheck when only the weight needs a gradient (the first layer: a constant input)") {
  // The norm then needs no gradient, but ∂y/∂v must still include the scale's own derivative.
  for (double b : {1.5, 2.0, 2.5}) {
    const Tensor x = randn64({2, 3, 5, 4}, 25), xl = randn64({4, 5}, 26);
    expect_gradcheck([&](const std::vector<Tensor>& t) { return bcos_conv2d(x, t[0], Tensor(), 1, 1, 1, 1, b, 1); },
                     {randn64({2, 3, 3, 3}, 27)}, str("conv, constant input, b=", b));
    expect_gradcheck([&](const std::vector<Tensor>& t) { return bcos_linear(xl, t[0], Tensor(), b, 2); },
                     {randn64({4, 5}, 28)}, str("linear, constant input, b=", b));
  }
}

TEST_CASE("bcos: the B-cos conv's one node gives the composed ops' values and gradients") {
  // With x wanting a gradient bcos_conv2d records one node that adds the norm's share of x's
  // gradient into the product's; recorded one by one (conv2d, patch norm, scale) the engine adds
  // the two. Float32: outputs and the weight's and bias's gradients bit for bit; x's within a
  // rounding of the largest (the add may be contracted with the norm term's product into one fma:
  // one rounding where the engine's add makes two). Without the norm's share x's gradient is off
  // by far more (its share is about half).
  struct C {
    IntPair k, stride, padding, dilation;
    int64_t groups;
    double b;
    int64_t m;
    bool bias, relu_epilogue;
  };
  const std::vector<C> cases = {{3, 1, 1, 1, 1, 2, 1, false, false}, {3, 2, 1, 1, 2, 2.5, 2, true, false},
                                {3, 1, 2, 2, 1, 2, 1, true, true},   {1, 1, 0, 1, 1, 2, 1, false, true},
                                {{3, 2}, {2, 1}, {1, 0}, 1, 1, 1.5, 2, false, false}};
  int index = 0;
  for (const C& c : cases)
    for (bool explain : {false, true}) {
      const std::string what = str("case ", index, explain ? " (explanation mode)" : "");
      INFO(what);
      ExplanationModeGuard guard(explain);
      manual_seed(70 + index++);
      const int64_t channels = 4, outputs = 4;
      const Tensor x0 = randn({2, channels, 7, 6}), w0 = randn({outputs * c.m, channels / c.groups, c.k.h, c.k.w});
      const Tensor b0 = c.bias ? randn({outputs * c.m}) : Tensor();
      BcosEpilogue post;
      if (c.relu_epilogue) post.scale = abs(randn({outputs})) + 0.5, post.shift = randn({outputs}), post.relu = true;
      auto leaf = [](const Tensor& t) { return t.defined() ? t.clone().requires_grad_(true) : Tensor(); };
      const Tensor x1 = leaf(x0), w1 = leaf(w0), b1 = leaf(b0), x2 = leaf(x0), w2 = leaf(w0), b2 = leaf(b0);
      Tensor y1 = bcos_conv2d(x1, w1, b1, c.stride, c.padding, c.dilation, c.groups, c.b, c.m, post);
      CHECK(y1.grad_fn_name() == "BcosConv2dBackward");
      Tensor lin = conv2d(x2, w2, b2, c.stride, c.padding, c.dilation, c.groups);
      Tensor y2 = bcos_scale(lin, bcos_patch_sumsq(x2, c.k, c.stride, c.padding, c.dilation, c.groups), c.b, c.m, 1e-6, 0,
                             post);
      const Tensor gout = randn(y1.shape());
      sum(y1 * gout).backward();
      sum(y2 * gout).backward();
      CHECK(y1.to_vector<float>() == y2.to_vector<float>());
      CHECK(golden::relative_error(x1.grad(), x2.grad()) <= 2.5e-7);
      CHECK(w1.grad().to_vector<float>() == w2.grad().to_vector<float>());
      if (c.bias) CHECK(b1.grad().to_vector<float>() == b2.grad().to_vector<float>());
    }
}

TEST_CASE("bcos: the B-cos linear map's one node gives the composed ops' values and gradients") {
  // As the conv's (above); here the GEMM itself adds the product's share of x's gradient onto the
  // norm's (bmm's accumulate), so that sum runs in another order than the engine's add: x's
  // gradient within a few roundings of its largest value (sums of K = 12 terms).
  int index = 0;
  for (double b : {2.0, 2.5})
    for (int64_t m : {1, 2})
      for (bool bias : {false, true})
        for (bool explain : {false, true}) {
          const std::string what = str("b=", b, " max_out=", m, bias ? " bias" : "", explain ? " (explanation mode)" : "");
          INFO(what);
          ExplanationModeGuard guard(explain);
          manual_seed(90 + index++);
          const int64_t k = 12, o = 5;
          // x [3, 2, K] read through a transpose (not contiguous): the rows are a copy
          const Tensor x0 = randn({2, 3, k}).transpose(0, 1), w0 = randn({o * m, k}), b0 = bias ? randn({o * m}) : Tensor();
          auto leaf = [](const Tensor& t) { return t.defined() ? t.detach().clone().requires_grad_(true) : Tensor(); };
          const Tensor x1 = leaf(x0), w1 = leaf(w0), b1 = leaf(b0), x2 = leaf(x0), w2 = leaf(w0), b2 = leaf(b0);
          Tensor y1 = bcos_linear(x1, w1, b1, b, m);
          CHECK(y1.grad_fn_name() == "BcosLinearBackward");
          const int64_t rows = 6;
          Tensor lin = linear(x2, w2, b2).reshape({rows, o * m, 1});
          Tensor q = bcos_patch_sumsq(x2.reshape({rows, k, 1, 1}), 1, 1, 0, 1, 1).reshape({rows, 1, 1});
          Tensor y2 = bcos_scale(lin, q, b, m, 0, 1e-12).reshape({3, 2, o});
          const Tensor gout = randn(y1.shape());
          sum(y1 * gout).backward();
          sum(y2 * gout).backward();
          CHECK(y1.to_vector<float>() == y2.to_vector<float>());
          CHECK(golden::relative_error(x1.grad(), x2.grad()) <= 1e-6);
          CHECK(w1.grad().to_vector<float>() == w2.grad().to_vector<float>());
          if (bias) CHECK(b1.grad().to_vector<float>() == b2.grad().to_vector<float>());
        }
}

TEST_CASE("bcos: gradcheck of the patch norm and the scale on their own") {
  expect_gradcheck([](const std::vector<Tensor>& t) { return bcos_patch_sumsq(t[0], 3, 2, 1, 1, 2); },
                   {randn64({2, 4, 6, 5}, 31)}, "patch_sumsq 3x3 stride 2 groups 2");
  expect_gradcheck([](const std::vector<Tensor>& t) { return bcos_patch_sumsq(t[0], {2, 3}, 1, {1, 2}, {2, 1}, 1); },
                   {randn64({1, 3, 5, 6}, 32)}, "patch_sumsq 2x3 dilated");
  for (double b : {1.5, 2.0, 2.5})
    expect_gradcheck([b](const std::vector<Tensor>& t) { return bcos_scale(t[0], square(t[1]) + 0.5, b, 2, 1e-6, 0); },
                     {randn64({2, 4, 3}, 33), randn64({2, 1, 3}, 34)}, str("bcos_scale b=", b));
}

TEST_CASE("bcos: the scale pass along rows (spatial size 1: a linear layer's) gives the per-position pass's values") {
  // The kernel runs [N, O, 1] along the channels and [N, O, S > 1] position by position; each
  // column of an S > 1 input, scaled on its own, must give that column's output and linear-output
  // gradient bit for bit, and the norm's gradient up to the order of its sum over the channels.
  const int64_t n = 3, o = 12, s = 5;
  for (DType dt : {DType::f32, DType::f64})
    for (double b : {1.0, 2.0, 2.5})
      for (int64_t groups : {1, 2})
        for (bool with_post : {false, true})
          for (bool explain : {false, true}) {
            INFO(dt, " b=", b, " groups=", groups, " epilogue=", with_post, " explain=", explain);
            const Tensor lin = randn64({n, o, s}, 71).to(dt), gout = randn64({n, o, s}, 72).to(dt);
            const Tensor q = (square(randn64({n, groups, s}, 73)) + 0.25).to(dt);
            BcosEpilogue post;
            if (with_post) post.scale = randn64({o}, 74).to(dt), post.shift = randn64({o}, 75).to(dt), post.relu = true;
            ExplanationModeGuard guard(explain);
            auto run = [&](const Tensor& l, const Tensor& sq) {
              Tensor lv = l.clone().requires_grad_(true), qv = sq.clone().requires_grad_(true);
              Tensor y = bcos_scale(lv, b == 1 ? Tensor() : qv, b, 1, 1e-6, 1e-12, post);
              sum(y * gout).backward();
              return std::vector<Tensor>{y.detach(), lv.grad(), qv.grad()};
            };
            const std::vector<Tensor> whole = run(lin, q);
            for (int64_t j = 0; j < s; ++j) {
              INFO("column ", j);
              Tensor lv = lin.narrow(2, j, 1).clone().requires_grad_(true);
              Tensor qv = q.narrow(2, j, 1).clone().requires_grad_(true);
              Tensor y = bcos_scale(lv, b == 1 ? Tensor() : qv, b, 1, 1e-6, 1e-12, post);
              sum(y * gout.narrow(2, j, 1).contiguous()).backward();
              CHECK(y.to_vector<double>() == whole[0].narrow(2, j, 1).contiguous().to_vector<double>());
              CHECK(lv.grad().to_vector<double>() == whole[1].narrow(2, j, 1).contiguous().to_vector<double>());
              if (b != 1 && !explain)
                CHECK(golden::relative_error(qv.grad(), whole[2].narrow(2, j, 1).contiguous()) <=
                      (dt == DType::f32 ? 1e-5 : 1e-13));
            }
          }
}

TEST_CASE("bcos: golden parity of the B-cos linear map with the PyTorch reference") {
  for (const auto& [name, c] : linear_cases())
    for (DType dt : {DType::f32, DType::f64}) {
      std::vector<std::string> in = {"x", "w"};
      if (c.bias) in.push_back("bias");
      auto fn = [c](const std::vector<Tensor>& t) {
        return bcos_linear(t[0], c.normalize ? unit_rows(t[1]) : t[1], c.bias ? t[2] : Tensor(), c.b, c.m);
      };
      check_golden(name, in, fn, dt, dt == DType::f32 ? 1e-5 : 1e-6, {"x", "w"});
    }
}

TEST_CASE("bcos: golden parity of the B-cos conv with the PyTorch reference") {
  for (const auto& [name, c] : conv_cases())
    for (DType dt : {DType::f32, DType::f64}) {
      std::vector<std::string> in = {"x", "w"};
      if (c.bias) in.push_back("bias");
      auto fn = [c](const std::vector<Tensor>& t) {
        return bcos_conv2d(t[0], c.normalize ? unit_rows(t[1]) : t[1], c.bias ? t[2] : Tensor(), c.stride,
                           c.padding, c.dilation, c.groups, c.b, c.m);
      };
      check_golden(name, in, fn, dt, dt == DType::f32 ? 1e-5 : 1e-6, {"x", "w"});
    }
}

TEST_CASE("bcos: unit_rows (the weight normalisation) matches the reference and the composed w / norm(w)") {
  const auto& fx = fixtures();
  for (const std::string name : {"unit_rows_linear", "unit_rows_conv"})
    for (DType dt : {DType::f32, DType::f64}) {
      INFO(name, " ", dt);
      Tensor w = fx[name + ".w"].to(dt).requires_grad_(true);
      Tensor y = unit_rows(w);
      sum(y * fx[name + ".gout"].to(dt)).backward();
      // Stored as float32: 1e-7 is a few of its roundings; float32 arithmetic adds a few more.
      const double tol = dt == DType::f32 ? 1e-6 : 1e-7;
      CHECK(golden::relative_error(y.detach().to(DType::f32), fx[name + ".out"]) <= tol);
      CHECK(golden::relative_error(w.grad().to(DType::f32), fx[name + ".gw"]) <= tol);
      // The composed form it replaces (its norm and quotient, their backwards), in float64.
      Tensor w64 = fx[name + ".w"].to(DType::f64).requires_grad_(true);
      Dims dims;
      for (int64_t d = 1; d < w64.dim(); ++d) dims.push_back(d);
      Tensor composed = w64 / norm(w64, 2, dims, true);
      sum(composed * fx[name + ".gout"].to(DType::f64)).backward();
      if (dt == DType::f64) {
        CHECK(golden::relative_error(y.detach(), composed.detach()) <= 1e-14);
        CHECK(golden::relative_error(w.grad(), w64.grad()) <= 1e-14);
      }
    }
  // A zero row gives NaN (0 / 0, as the composed quotient) and leaves the other rows alone; no
  // rows, or rows of no elements, give empty results.
  Tensor w = from_vector<float>({0, 0, 3, 4}, {2, 2}).requires_grad_(true);
  Tensor y = unit_rows(w);
  std::vector<float> v = y.to_vector<float>();
  CHECK((std::isnan(v[0]) && std::isnan(v[1])));
  CHECK(v[2] == 0.6f);
  CHECK(v[3] == 0.8f);
  sum(y * from_vector<float>({1, 1, 1, -1}, {2, 2})).backward();
  std::vector<float> g = w.grad().to_vector<float>();
  CHECK((std::isnan(g[0]) && std::isnan(g[1])));
  CHECK(std::abs(g[2] - 0.8f * 1.4f / 5) < 1e-7);  // (g − ŵ (ŵ · g)) / ‖w‖, ŵ · g = −0.2
  CHECK(std::abs(g[3] - (-1 + 0.8f * 0.2f) / 5) < 1e-7);
  CHECK(unit_rows(zeros({0, 3})).shape() == Shape{0, 3});
  Tensor none = zeros({3, 0}).requires_grad_(true);
  sum(unit_rows(none)).backward();
  CHECK(none.grad().shape() == Shape{3, 0});
}

TEST_CASE("bcos: every golden case of the fixture file is tested") {
  std::set<std::string> known = {"bnu_train", "bnu_eval", "bnu_nobias_train", "bnu_relu_train", "bnu_relu_eval",
                                 "dln",       "dgelu",    "bce",              "agc", "conv_bnu_relu_eval",
                                 "conv_bnu_eval_b2.5_m2", "unit_rows_linear", "unit_rows_conv"};
  for (const auto& [name, c] : conv_cases()) known.insert(name);
  for (const auto& [name, c] : linear_cases()) known.insert(name);
  for (const std::string& key : fixtures().keys()) {
    // Case names may contain dots (b1.5): the field is the part after the last dot.
    std::string case_name = key.substr(0, key.rfind('.'));
    INFO(key);
    CHECK(known.count(case_name) == 1);
  }
}

TEST_CASE("bcos: in explanation mode the input gradient of BcosLinear is its dynamic weight s · ŵ") {
  for (double b : {2.0, 2.5})
    for (int64_t m : {1, 2}) {
      manual_seed(41);
      nn::BcosLinear layer(6, 4, {b, m, true, false});
      Tensor x = randn({5, 6}, DType::f32).requires_grad_(true);
      Tensor w_hat = layer.effective_weight().detach();  // [4·m, 6]
      for (int64_t r = 0; r < 5; ++r)
        for (int64_t o = 0; o < 4; ++o) {
          x.zero_grad();
          ExplanationModeGuard explain;
          Tensor y = layer(x);  // [5, 4]
          y.select(0, r).select(0, o).backward();
          // The explicit dynamic weight: the winning row of the max-out group, scaled by s.
          Tensor xr = x.detach().select(0, r);
          Tensor lin = matmul(w_hat, xr);  // [4·m]
          int64_t best = o * m;
          for (int64_t k = 1; k < m; ++k)
            if (lin.select(0, o * m + k).item() > lin.select(0, best).item()) best = o * m + k;
          const double v = lin.select(0, best).item(), n = std::sqrt(sum(xr * xr).item()) + 1e-12;
          const double s = b == 2 ? std::abs(v) / n : std::pow(std::abs(v / n) + 1e-6, b - 1);
          Tensor expected = w_hat.select(0, best) * s;
          INFO("b=", b, " max_out=", m, " row ", r, " output ", o);
          CHECK(golden::relative_error(x.grad().select(0, r), expected) <= 1e-6);
          // Rows other than r get nothing, and W(x) · x gives the output back.
          CHECK(sum(abs(x.grad())).item() == doctest::Approx(sum(abs(expected)).item()).epsilon(1e-6));
          CHECK(sum(x.grad().select(0, r) * xr).item() == doctest::Approx(y.detach().select(0, r).select(0, o).item()).epsilon(1e-5));
        }
    }
}

namespace {
void load_into(Tensor& param, const Tensor& value) {
  NoGradGuard no_grad;
  param.copy_(value);
}

// One BatchNormUncentered2d case: forward in the case's mode, gradients, updated statistics.
void check_bnu(const std::string& name, bool training, bool with_bias, bool explain, bool relu = false) {
  const auto& fx = fixtures();
  nn::BatchNormUncentered2d bn(3, 1e-5, 0.1, with_bias);
  load_into(bn.weight, fx[name + ".weight"]);
  if (with_bias) load_into(bn.bias, fx[name + ".bias"]);
  load_into(bn.running_mean, fx[name + ".running_mean"]);
  load_into(bn.running_var, fx[name + ".running_var"]);
  training ? bn.train() : bn.eval();
  Tensor x = fx[name + ".x"].clone().requires_grad_(true);
  ExplanationModeGuard guard(explain);
  Tensor y = relu ? bn.forward_relu(x) : bn(x);
  sum(y * fx[name + ".gout"]).backward();
  const std::string what = name + (explain ? " (explanation mode)" : "");
  INFO(what);
  CHECK(golden::relative_error(y.detach(), fx[name + ".out"]) <= 1e-6);
  CHECK(golden::relative_error(x.grad(), fx[name + (explain ? ".gx_explain" : ".gx")]) <= 1e-5);
  if (explain) return;
  CHECK(golden::relative_error(bn.weight.grad(), fx[name + ".gweight"]) <= 1e-5);
  if (with_bias) CHECK(golden::relative_error(bn.bias.grad(), fx[name + ".gbias"]) <= 1e-5);
  if (training) {
    CHECK(golden::relative_error(bn.running_mean, fx[name + ".running_mean"]) == 0);  // not updated
    CHECK(golden::relative_error(bn.running_var, fx[name + ".running_var_after"]) <= 1e-6);
    CHECK(bn.num_batches_tracked.item<int64_t>() == 1);
  }
}
}  // namespace

TEST_CASE("bcos: BatchNormUncentered2d matches the reference (train, eval, no bias, explanation mode)") {
  for (bool explain : {false, true}) {
    check_bnu("bnu_train", true, true, explain);
    check_bnu("bnu_nobias_train", true, false, explain);
  }
  check_bnu("bnu_eval", false, true, false);
  // With the ReLU fused (nn::batch_norm_relu in the B-cosified ResNets).
  check_bnu("bnu_relu_train", true, true, false, true);
  check_bnu("bnu_relu_train", true, true, true, true);
  check_bnu("bnu_relu_eval", false, true, false, true);
  // A plain function of x: gradcheck in f64 (training mode, through the batch variance).
  nn::BatchNormUncentered2d bn(2);
  bn.to(DType::f64);
  expect_gradcheck([&](const std::vector<Tensor>& t) { return bn(t[0]); }, {randn64({3, 2, 2, 2}, 51)},
                   "BatchNormUncentered2d");
  expect_gradcheck([&](const std::vector<Tensor>& t) { return bn.forward_relu(t[0]); }, {randn64({3, 2, 2, 2}, 52)},
                   "BatchNormUncentered2d + ReLU");
}

TEST_CASE("bcos: DetachableLayerNorm and DetachableGELU match the reference") {
  const auto& fx = fixtures();
  for (bool explain : {false, true}) {
    nn::DetachableLayerNorm ln(8);
    load_into(ln.weight, fx["dln.weight"]);
    load_into(ln.bias, fx["dln.bias"]);
    Tensor x = fx["dln.x"].clone().requires_grad_(true);
    ExplanationModeGuard guard(explain);
    Tensor y = ln(x);
    sum(y * fx["dln.gout"]).backward();
    INFO("layer norm, explain = ", explain);
    CHECK(golden::relative_error(y.detach(), fx["dln.out"]) <= 1e-6);
    CHECK(golden::relative_error(x.grad(), fx[explain ? "dln.gx_explain" : "dln.gx"]) <= 1e-5);
    if (!explain) {
      CHECK(golden::relative_error(ln.weight.grad(), fx["dln.gweight"]) <= 1e-5);
      CHECK(golden::relative_error(ln.bias.grad(), fx["dln.gbias"]) <= 1e-5);
    }
    nn::DetachableGELU act;
    Tensor z = fx["dgelu.x"].clone().requires_grad_(true);
    Tensor a = act(z);
    sum(a * fx["dgelu.gout"]).backward();
    INFO("GELU, explain = ", explain);
    CHECK(golden::relative_error(a.detach(), fx["dgelu.out"]) <= 1e-6);
    CHECK(golden::relative_error(z.grad(), fx[explain ? "dgelu.gx_explain" : "dgelu.gx"]) <= 1e-5);
  }
  // Explanation mode changes only the backward: the outputs are the same, and gelu(0) stays 0.
  ExplanationModeGuard explain;
  nn::DetachableGELU act;
  Tensor zero = zeros({3});
  CHECK(sum(abs(act(zero))).item() == 0);
  nn::DetachableLayerNorm ln(5);
  ln.to(DType::f64);
  ExplanationModeGuard normal(false);
  expect_gradcheck([&](const std::vector<Tensor>& t) { return ln(t[0]); }, {randn64({3, 5}, 52)}, "DetachableLayerNorm");
}

TEST_CASE("bcos: UniformOffLabelsBCE, LogitLayer and adaptive gradient clipping") {
  const auto& fx = fixtures();
  Tensor logits = fx["bce.logits"].clone().requires_grad_(true);
  Tensor loss = nn::UniformOffLabelsBCE()(logits, fx["bce.target"]);
  loss.backward();
  CHECK(golden::relative_error(loss.detach(), fx["bce.loss"]) <= 1e-6);
  CHECK(golden::relative_error(logits.grad(), fx["bce.glogits"]) <= 1e-5);
  CHECK_THROWS_WITH_AS(nn::uniform_off_labels_bce(zeros({4, 3}), zeros({5}, DType::i64)),
                       doctest::Contains("uniform_off_labels_bce"), Error);

  nn::LogitLayer logit(std::nullopt, nn::default_logit_bias(10));
  CHECK(logit(zeros({1})).item() == doctest::Approx(-std::log(9.0)));
  CHECK(nn::LogitLayer(2.0, 1.0)(full({1}, 4.0)).item() == doctest::Approx(3.0));
  CHECK(logit.named_parameters().empty());

  std::vector<Tensor> params;
  for (int i = 0; i < 3; ++i) {
    Tensor p = fx[str("agc.p", i)].clone().requires_grad_(true);
    sum(p * fx[str("agc.g", i)]).backward();  // sets p.grad = g
    params.push_back(p);
  }
  params.push_back(zeros({2}).requires_grad_(true));  // no gradient: skipped
  nn::adaptive_clip_grad_(params, 0.01, 1e-3);
  for (int i = 0; i < 3; ++i) {
    INFO("parameter ", i);
    CHECK(golden::relative_error(params[size_t(i)].grad(), fx[str("agc.clipped", i)]) <= 1e-6);
  }
}

TEST_CASE("bcos: conv -> uncentred batch norm (-> ReLU) in eval runs as one fused B-cos conv (nn::conv_bn), "
          "matching the reference and the unfused modules") {
  const auto& fx = fixtures();
  struct Case {
    std::string name;
    double b;
    int64_t m;
    bool relu;
  };
  for (const Case& c : {Case{"conv_bnu_relu_eval", 2.0, 1, true}, Case{"conv_bnu_eval_b2.5_m2", 2.5, 2, false}})
    for (bool explain : {false, true}) {
      const std::string what = c.name + (explain ? " (explanation mode)" : "");
      INFO(what);
      nn::BcosConv2dOptions o;
      o.padding = 1, o.bcos.b = c.b, o.bcos.max_out = c.m;
      nn::BcosConv2d conv(4, 3, 3, o);
      load_into(conv.weight, fx[c.name + ".w"]);
      nn::BatchNormUncentered2d bn(3);
      load_into(bn.weight, fx[c.name + ".weight"]);
      load_into(bn.bias, fx[c.name + ".bias"]);
      load_into(bn.running_var, fx[c.name + ".running_var"]);
      bn.eval();
      bn.weight.requires_grad_(false), bn.bias.requires_grad_(false);  // as explain() freezes them
      nn::ReLU relu_module;
      nn::Module* relu = c.relu ? &relu_module : nullptr;
      ExplanationModeGuard guard(explain);
      const Tensor gout = fx[c.name + ".gout"];

      Tensor x = fx[c.name + ".x"].clone().requires_grad_(true);
      Tensor y = nn::conv_bn(conv, bn, relu, x);
      CHECK(y.grad_fn_name() == "BcosConv2dBackward");  // the norm ran inside the layer's own node
      sum(y * gout).backward();
      CHECK(golden::relative_error(y.detach(), fx[c.name + ".out"]) <= 1e-6);
      CHECK(golden::relative_error(x.grad(), fx[c.name + (explain ? ".gx_explain" : ".gx")]) <= 1e-5);
      CHECK(golden::relative_error(conv.weight.grad(), fx[c.name + (explain ? ".gw_explain" : ".gw")]) <= 1e-5);

      // The modules one after the other: the same bits forward, gradients within float rounding.
      const Tensor w_grad = conv.weight.grad().clone();
      conv.weight.zero_grad();
      Tensor x2 = fx[c.name + ".x"].clone().requires_grad_(true);
      Tensor y2 = c.relu ? relu_module(bn(conv(x2))) : bn(conv(x2));
      CHECK(y2.grad_fn_name() != "BcosConv2dBackward");
      sum(y2 * gout).backward();
      CHECK(y.to_vector<double>() == y2.to_vector<double>());
      CHECK(golden::relative_error(x.grad(), x2.grad()) <= 1e-6);
      CHECK(golden::relative_error(w_grad, conv.weight.grad()) <= 1e-6);

      // Not folded where the norm is not a fixed map: training, or its parameters wanting a gradient.
      bn.weight.requires_grad_(true);
      CHECK(nn::conv_bn(conv, bn, relu, x).grad_fn_name() != "BcosConv2dBackward");
      bn.weight.requires_grad_(false);
      bn.train();
      CHECK(nn::conv_bn(conv, bn, relu, x).grad_fn_name() != "BcosConv2dBackward");
    }
  // f64 gradcheck of the scale with an epilogue, for x and w (and the norm's gradient through sumsq).
  BcosEpilogue post;
  post.scale = abs(randn64({3}, 61)) + 0.5, post.shift = randn64({3}, 62), post.relu = true;
  for (double b : {2.0, 2.5})
    expect_gradcheck([&](const std::vector<Tensor>& t) { return bcos_conv2d(t[0], unit_rows(t[1]), {}, 1, 1, 1, 1, b, 2, post); },
                     {randn64({2, 4, 5, 4}, 63), randn64({6, 4, 3, 3}, 64)}, "bcos_conv2d with epilogue");
  // An epilogue that does not fit, or that would need a gradient, is refused.
  const Tensor x = randn64({1, 4, 5, 4}, 65), w = randn64({3, 4, 3, 3}, 66);
  BcosEpilogue wrong = post;
  wrong.shift = randn64({2}, 67);
  CHECK_THROWS_WITH_AS(bcos_conv2d(x, w, {}, 1, 1, 1, 1, 2, 1, wrong), doctest::Contains("epilogue"), Error);
  BcosEpilogue trained = post;
  trained.scale = post.scale.clone().requires_grad_(true);
  CHECK_THROWS_WITH_AS(bcos_conv2d(x, w, {}, 1, 1, 1, 1, 2, 1, trained), doctest::Contains("constants"), Error);
  // The folded norm's scale from its statistics: γ / sqrt(var + eps), and its checks.
  const Tensor var = abs(randn64({3}, 68)), gamma = randn64({3}, 69);
  const std::vector<double> got = batch_norm_eval_scale(var, gamma, 1e-5).to_vector<double>();
  const std::vector<double> v = var.to_vector<double>(), g = gamma.to_vector<double>();
  for (size_t c = 0; c < 3; ++c) CHECK(got[c] == 1.0 / std::sqrt(v[c] + 1e-5) * g[c]);
  CHECK(batch_norm_eval_scale(var, Tensor(), 0.5).to_vector<double>()[1] == 1.0 / std::sqrt(v[1] + 0.5));
  CHECK_THROWS_WITH_AS(batch_norm_eval_scale(var, randn64({4}, 70), 1e-5), doctest::Contains("batch_norm_eval_scale: weight [4]"),
                       Error);
  CHECK_THROWS_WITH_AS(batch_norm_eval_scale(var.reshape({1, 3}), Tensor(), 1e-5), doctest::Contains("running_var must be [C]"),
                       Error);
}
