// Optimizers, clipping and LR schedules against PyTorch (tests/golden/optim.safetensors, from
// tools/golden/optim.py).
#include <doctest/doctest.h>

#include <cmath>
#include <functional>
#include <map>

#include "autograd/ops.h"
#include "nn/grad_scaler.h"
#include "nn/optim.h"
#include "nn/schedule.h"
#include "tests/golden.h"

using namespace bcos;
using namespace bcos::nn;

namespace {

const golden::Fixtures& fixtures() {
  static golden::Fixtures f(golden::golden_dir() + "/optim.safetensors");
  return f;
}

using Make = std::function<std::unique_ptr<Optimizer>(std::vector<Tensor>)>;

const std::map<std::string, Make>& optimizers() {
  static const std::map<std::string, Make> m = {
      {"sgd", [](auto p) { return std::make_unique<SGD>(p, SGDOptions{.lr = 0.1}); }},
      {"sgd_momentum_wd", [](auto p) { return std::make_unique<SGD>(p, SGDOptions{.lr = 0.1, .momentum = 0.9, .weight_decay = 1e-4}); }},
      {"sgd_dampening", [](auto p) { return std::make_unique<SGD>(p, SGDOptions{.lr = 0.05, .momentum = 0.8, .dampening = 0.1}); }},
      {"sgd_nesterov", [](auto p) {
         return std::make_unique<SGD>(p, SGDOptions{.lr = 0.1, .momentum = 0.9, .weight_decay = 5e-4, .nesterov = true});
       }},
      {"adam", [](auto p) { return std::make_unique<Adam>(p, AdamOptions{.lr = 1e-2}); }},
      {"adam_wd_amsgrad", [](auto p) {
         return std::make_unique<Adam>(p, AdamOptions{.lr = 1e-2, .beta1 = 0.8, .beta2 = 0.99, .weight_decay = 1e-2, .amsgrad = true});
       }},
      {"adamw", [](auto p) { return std::make_unique<AdamW>(p, AdamOptions{.lr = 1e-2, .weight_decay = 0.05}); }},
      {"adamw_amsgrad", [](auto p) {
         return std::make_unique<AdamW>(p, AdamOptions{.lr = 3e-3, .eps = 1e-6, .weight_decay = 1e-2, .amsgrad = true});
       }},
  };
  return m;
}

std::vector<Tensor> fresh_params() {
  return {fixtures()["params.in0"].clone().requires_grad_(), fixtures()["params.in1"].clone().requires_grad_()};
}

void feed(std::vector<Tensor>& params, int step) {
  for (size_t i = 0; i < params.size(); ++i)
    params[i].set_grad(fixtures()["grads.step" + std::to_string(step) + "." + std::to_string(i)].clone());
}

}  // namespace

// The same float32 operations in the same order as PyTorch: equal to a few ulp.
TEST_CASE("optim: SGD, Adam and AdamW steps match PyTorch") {
  for (const auto& [name, make] : optimizers()) {
    CAPTURE(name);
    std::vector<Tensor> params = fresh_params();
    auto opt = make(params);
    for (int s = 1; s <= 3; ++s) {
      feed(params, s);
      opt->step();
      for (size_t i = 0; i < params.size(); ++i)
        CHECK(golden::relative_error(params[i].detach(), fixtures()[name + ".step" + std::to_string(s) + "." + std::to_string(i)]) <= 1e-6);
    }
    CHECK(opt->steps_taken() == 3);
    opt->zero_grad();
    CHECK(!params[0].grad().defined());
  }
}

TEST_CASE("optim: state dicts resume a run exactly") {
  for (const auto& [name, make] : optimizers()) {
    CAPTURE(name);
    std::vector<Tensor> a = fresh_params();
    auto opt_a = make(a);
    for (int s = 1; s <= 3; ++s) feed(a, s), opt_a->step();
    // Two steps, then a new optimizer on copies of the parameters, loaded from the state dict.
    std::vector<Tensor> b = fresh_params();
    auto opt_b = make(b);
    for (int s = 1; s <= 2; ++s) feed(b, s), opt_b->step();
    std::vector<Tensor> c = {b[0].detach().clone().requires_grad_(), b[1].detach().clone().requires_grad_()};
    auto opt_c = make(c);
    opt_c->load_state_dict(opt_b->state_dict(), opt_b->steps_taken());
    feed(c, 3);
    opt_c->step();
    for (size_t i = 0; i < a.size(); ++i) CHECK(a[i].detach().to_vector<float>() == c[i].detach().to_vector<float>());
  }
}

TEST_CASE("optim: clip_grad_norm_ matches PyTorch for the 2-norm and the max norm") {
  for (const auto& [tag, type] : std::vector<std::pair<std::string, double>>{{"clip", 2.0}, {"clip_inf", INFINITY}}) {
    std::vector<Tensor> params = fresh_params();
    feed(params, 1);
    const double total = clip_grad_norm_(params, 0.5, type).item();
    CHECK(total == doctest::Approx(fixtures()[tag + ".norm"].item()).epsilon(1e-6));
    for (size_t i = 0; i < params.size(); ++i)
      CHECK(golden::relative_error(params[i].grad(), fixtures()[tag + ".grads." + std::to_string(i)]) <= 1e-6);
  }
  // Gradients of two dtypes: the norms stacked in float64 (as torch.stack promotes) -- a's norm
  // sqrt(27) computed in float32 --, each gradient scaled in its own dtype.
  Tensor a = ones({3}).requires_grad_(), b = ones({2}, DType::f64).requires_grad_();
  (sum(a * 3.0) + sum(b * 4.0).to(DType::f32)).backward();
  const Tensor total = clip_grad_norm_({a, b}, 1.0);
  CHECK(total.dtype() == DType::f64);
  const double norm_a = double(std::sqrt(27.0f)), norm_b = std::sqrt(32.0);
  CHECK(total.item() == doctest::Approx(std::sqrt(norm_a * norm_a + norm_b * norm_b)).epsilon(1e-15));
  const double coef = 1.0 / (total.item() + 1e-6);
  CHECK(golden::equal(a.grad(), full({3}, float(3.0 * float(coef)))));
  CHECK(golden::relative_error(b.grad(), full({2}, 4.0 * coef, DType::f64)) <= 1e-15);
}

TEST_CASE("optim: schedules give PyTorch's learning rates step by step") {
  auto check = [](const std::string& name, Schedule schedule) {
    CAPTURE(name);
    const auto ref = fixtures()["lr." + name].to_vector<double>();
    std::vector<Tensor> params = fresh_params();
    SGD opt(params, {.lr = 0.1});
    Scheduler sched(opt, schedule);
    for (size_t t = 0; t < ref.size(); ++t) {
      CAPTURE(t);
      CHECK(opt.lr == doctest::Approx(ref[t]).epsilon(1e-12));
      sched.step();
    }
  };
  check("cosine_warmup", cosine_schedule(0.1, 20, 1e-4, 5));
  check("cosine", cosine_schedule(0.1, 12));
  check("step", step_schedule(0.1, 3, 0.5));
  check("multistep", multistep_schedule(0.1, {2, 5}, 0.1));
}

TEST_CASE("optim: bad settings raise") {
  std::vector<Tensor> params = fresh_params();
  CHECK_THROWS_AS(SGD(params, {.lr = -1}), Error);
  CHECK_THROWS_AS(SGD(params, {.lr = 0.1, .nesterov = true}), Error);
  CHECK_THROWS_AS(Adam(params, {.beta1 = 1.0}), Error);
  CHECK_THROWS_AS(SGD({zeros({2}, DType::i64)}, {}), Error);
  CHECK_THROWS_AS(cosine_schedule(0.1, 10, 0, 10), Error);
  SGD opt(params, {.lr = 0.1, .momentum = 0.9});
  CHECK_THROWS_AS(opt.load_state_dict({{"0.momentum_buffer", zeros({2, 2})}}, 1), Error);
  // The fused step ops check what the optimizers hand them.
  const Tensor p = zeros({3, 2}), g = ones({3, 2});
  CHECK_THROWS_WITH_AS(sgd_step_(p, ones({2, 3}), Tensor(), {.lr = 0.1}), doctest::Contains("sgd_step_: gradient has shape"), Error);
  CHECK_THROWS_WITH_AS(sgd_step_(p, g, Tensor(), {.lr = 0.1, .momentum = 0.9}), doctest::Contains("momentum buffer"), Error);
  CHECK_THROWS_WITH_AS(sgd_step_(p.to(kInt64), g.to(kInt64), Tensor(), {.lr = 0.1}), doctest::Contains("floating-point"), Error);
  CHECK_THROWS_WITH_AS(sgd_step_(p.to(kFloat16), g, Tensor(), {.lr = 0.1}), doctest::Contains("float16"), Error);
  // Scalars read from device memory are a CUDA graph's: never on the CPU (a stray pointer there would be read).
  const SgdStepParams sp_here{.lr = 0.1};
  CHECK_THROWS_WITH_AS(sgd_step_(p, g, Tensor(), {.lr = 0.1, .on_device = &sp_here}),
                       doctest::Contains("sgd_step_: scalars read from device memory (on_device) are for steps inside a "
                                         "CUDA graph, but parameter 0 [3, 2] is on cpu"), Error);
  const AdamStepParams ap_here{.lr = 0.1, .step_size = 1, .bias2_sqrt = 0.1};
  AdamStepParams ap = ap_here;
  ap.on_device = &ap_here;
  CHECK_THROWS_WITH_AS(adam_step_(p, g, zeros({3, 2}), zeros({3, 2}), Tensor(), ap),
                       doctest::Contains("adam_step_: scalars read from device memory (on_device)"), Error);
  // A 16-bit parameter and its state step in float32 copies, written back rounded once.
  for (DType dt : {kFloat16, kBFloat16}) {
    CAPTURE(dt);
    manual_seed(3);
    const Tensor w0 = randn({3, 2}).to(dt), g0 = randn({3, 2}).to(dt), m0 = randn({3, 2}).to(dt);
    Tensor w = w0.clone(), m = m0.clone(), wf = w0.to(kFloat32), mf = m0.to(kFloat32);
    const SgdStepParams sp{.lr = 0.1, .momentum = 0.9, .weight_decay = 1e-2};
    sgd_step_(w, g0, m, sp);
    sgd_step_(wf, g0.to(kFloat32), mf, sp);
    CHECK(golden::equal(w, wf.to(dt)));
    CHECK(golden::equal(m, mf.to(dt)));
  }
  CHECK_THROWS_WITH_AS(adam_step_(p, g, zeros({3, 2}), zeros({3, 2}, kFloat64), Tensor(), {.bias2_sqrt = 1}), doctest::Contains("adam_step_"), Error);
  CHECK_THROWS_WITH_AS(adam_step_(p, g, zeros({3, 2}), zeros({3, 2}), Tensor(), {.bias2_sqrt = 1, .amsgrad = true}), doctest::Contains("max_exp_avg_sq"), Error);
}

TEST_CASE("optim: the fused step updates strided parameters and gradients in place") {
  // A transposed view as the parameter and a broadcast gradient: the step goes through
  // contiguous copies and lands in the parameter's own storage.
  Tensor base = arange(6, kFloat64).reshape({2, 3});
  Tensor param = base.t();                     // [3, 2], strided
  Tensor grad = ones({1, 2}, kFloat64).expand({3, 2});  // stride 0
  Tensor expected = param.clone() - 0.5 * ones({3, 2}, kFloat64);
  sgd_step_(param, grad, Tensor(), {.lr = 0.5});
  CHECK(golden::equal(base.t(), expected));
  Tensor m = zeros({3, 2}, kFloat64), v = zeros({3, 2}, kFloat64);
  adam_step_(param, grad, m, v, Tensor(), {.lr = 0.1, .step_size = 0.1 / (1 - 0.9), .bias2_sqrt = std::sqrt(1 - 0.999)});
  // First Adam step: m = 0.1 g, v = 0.001 g², the update is step_size · m / (sqrt(v) / bias2 + eps) ≈ lr.
  CHECK(golden::relative_error(base.t(), expected - 0.1) <= 1e-6);
}

TEST_CASE("optim: a list step gives each parameter the bits of its own step, across dtypes and layouts") {
  // One list op over parameters of every kind the op groups or copies -- float32 and float64 (two
  // kernel calls), bfloat16 (float32 copies), a transposed view (a contiguous copy), a scalar, an
  // empty tensor, one past a GPU block's chunk -- must leave each exactly where its one-parameter
  // step does.
  auto make = [](uint64_t seed, bool square = false) {
    manual_seed(seed);
    std::vector<Tensor> t{randn({5, 3}), randn({4}, kFloat64), randn({3, 2}).to(kBFloat16), randn({2, 3}).t(),
                          randn({}), randn({0, 3}), randn({2049})};
    if (square)
      for (Tensor& x : t) x = x * x;  // second moments are non-negative
    return t;
  };
  const std::vector<Tensor> grads = make(2);
  auto check_same = [](const std::vector<Tensor>& a, const std::vector<Tensor>& b) {
    REQUIRE(a.size() == b.size());
    for (size_t i = 0; i < a.size(); ++i) {
      CAPTURE(i);
      CHECK(golden::equal(a[i], b[i]));
    }
  };
  for (const SgdStepParams& sp : {SgdStepParams{.lr = 0.1}, SgdStepParams{.lr = 0.1, .momentum = 0.9, .weight_decay = 1e-2,
                                                                          .nesterov = true, .first_step = true},
                                  SgdStepParams{.lr = 0.05, .momentum = 0.8, .dampening = 0.1}}) {
    CAPTURE(sp.momentum);
    std::vector<Tensor> wa = make(1), wb = make(1), ma = make(3), mb = make(3);
    sgd_step_(wa, grads, sp.momentum != 0 ? ma : std::vector<Tensor>{}, sp);
    for (size_t i = 0; i < wb.size(); ++i) sgd_step_(wb[i], grads[i], sp.momentum != 0 ? mb[i] : Tensor(), sp);
    check_same(wa, wb);
    check_same(ma, mb);
  }
  for (const bool amsgrad : {false, true})
    for (const bool decoupled : {false, true}) {
      CAPTURE(amsgrad);
      CAPTURE(decoupled);
      const AdamStepParams ap{.lr = 1e-2, .weight_decay = 0.1, .step_size = 1e-2 / (1 - 0.9 * 0.9),
                              .bias2_sqrt = std::sqrt(1 - 0.999 * 0.999), .decoupled = decoupled, .amsgrad = amsgrad};
      std::vector<Tensor> wa = make(1), wb = make(1), ma = make(3), mb = make(3);
      std::vector<Tensor> va = make(4, true), vb = make(4, true), xa = make(5, true), xb = make(5, true);
      adam_step_(wa, grads, ma, va, amsgrad ? xa : std::vector<Tensor>{}, ap);
      for (size_t i = 0; i < wb.size(); ++i) adam_step_(wb[i], grads[i], mb[i], vb[i], amsgrad ? xb[i] : Tensor(), ap);
      check_same(wa, wb);
      check_same(ma, mb);
      check_same(va, vb);
      check_same(xa, xb);
    }
  // SGD's momentum buffers start at different steps for a parameter whose first gradient comes late.
  manual_seed(6);
  const Tensor w0 = randn({4}), w1 = randn({3}), g0 = randn({4}), g1 = randn({3});
  Tensor a0 = w0.clone().requires_grad_(), a1 = w1.clone().requires_grad_();
  SGD sgd({a0, a1}, {.lr = 0.1, .momentum = 0.9});
  a0.set_grad(g0.clone());
  sgd.step();
  a1.set_grad(g1.clone());
  sgd.step();
  Tensor b0 = w0.clone(), b1 = w1.clone(), m0 = empty({4}), m1 = empty({3});
  sgd_step_(b0, g0, m0, {.lr = 0.1, .momentum = 0.9, .first_step = true});
  sgd_step_(b0, g0, m0, {.lr = 0.1, .momentum = 0.9});
  sgd_step_(b1, g1, m1, {.lr = 0.1, .momentum = 0.9, .first_step = true});
  CHECK(golden::equal(a0.detach(), b0));
  CHECK(golden::equal(a1.detach(), b1));
  // The lists' errors name the op, the parameter and the shapes.
  const Tensor p = zeros({3, 2}), q = zeros({4}), g = ones({3, 2});
  CHECK_THROWS_WITH_AS(sgd_step_({p, q}, {g}, {}, {.lr = 0.1}), doctest::Contains("sgd_step_: 2 parameters but 1 gradients"), Error);
  CHECK_THROWS_WITH_AS(sgd_step_({p, q}, {g, g}, {}, {.lr = 0.1}),
                       doctest::Contains("sgd_step_ (parameter 1): gradient has shape [3, 2] but the parameter has [4]"), Error);
  CHECK_THROWS_WITH_AS(sgd_step_({p, q}, {g, ones({4})}, {}, {.lr = 0.1, .momentum = 0.9}),
                       doctest::Contains("2 parameters but 0 momentum buffers"), Error);
  CHECK_THROWS_WITH_AS(sgd_step_({p, q, p}, {g, ones({4}), g}, {}, {.lr = 0.1}),
                       doctest::Contains("sgd_step_: parameter 2 is parameter 0 again"), Error);
  using List = std::vector<Tensor>;
  CHECK_THROWS_WITH_AS(adam_step_(List{p}, List{g}, List{zeros({3, 2})}, List{}, List{}, {.bias2_sqrt = 1}),
                       doctest::Contains("adam_step_: 1 parameters but 0 exp_avg_sq tensors"), Error);
  CHECK(golden::equal(p, zeros({3, 2})));  // nothing stepped
}

// Equal values, NaN where the other has NaN (golden::equal compares with ==).
bool same_values(const Tensor& a, const Tensor& b) {
  if (a.shape() != b.shape()) return false;
  const std::vector<double> x = a.to_vector<double>(), y = b.to_vector<double>();
  for (size_t i = 0; i < x.size(); ++i)
    if (!(x[i] == y[i] || (std::isnan(x[i]) && std::isnan(y[i])))) return false;
  return true;
}

TEST_CASE("optim: adaptive clipping's one kernel gives the composed ops' values, unit by unit") {
  // The reference: NFNets' unit-wise clipping as the authors compose it (and as 16-bit parameters
  // still run it): norms over all dims but the first, the limit, the comparison, the quotient.
  auto composed = [](const Tensor& p, const Tensor& g) {
    Dims dims;
    for (int64_t d = 1; d < p.dim(); ++d) dims.push_back(d);
    const Tensor limit = clamp_min(norm(p, 2, dims, p.dim() > 1), 1e-3) * 0.01;
    const Tensor grad_norm = norm(g, 2, dims, p.dim() > 1);
    return g * where(gt(grad_norm, limit), limit / clamp_min(grad_norm, 1e-6), 1.0);
  };
  // Units clipped and not (the gradient's scale per row), a zero row (the eps floor), a NaN row
  // (left as it is), a conv weight, a matrix, a vector, a scalar, an empty tensor, a transposed
  // view (a contiguous copy, written back), float64, and bfloat16 (through the composed ops).
  manual_seed(12);
  std::vector<Tensor> params{randn({6, 3, 3, 3}), randn({5, 7}), randn({9}), randn({}), randn({0, 4}),
                             randn({7, 5}).t(), randn({4, 3}, kFloat64), randn({3, 4}).to(kBFloat16)};
  params[1].select(0, 2).zero_();
  std::vector<Tensor> grads;
  for (const Tensor& p : params) {
    const DType wide = p.dtype() == kFloat64 ? kFloat64 : kFloat32;
    Tensor g = randn(p.shape(), wide) * 0.05;
    if (p.dim() > 1) {  // row r's gradient scaled by 10^(r - 3)
      std::vector<int64_t> column(size_t(p.dim()), 1);
      column[0] = p.size(0);
      g = g * exp((arange(p.size(0), wide) - 3.0) * std::log(10.0)).reshape(Shape(column));
    }
    grads.push_back(g.to(p.dtype()));
  }
  grads[1].select(0, 4).select(0, 3).fill_(std::nan(""));
  std::vector<Tensor> expected;
  for (size_t i = 0; i < params.size(); ++i) expected.push_back(composed(params[i], grads[i]));
  std::vector<Tensor> clipped;
  for (const Tensor& g : grads) clipped.push_back(g.clone());
  clipped[5] = grads[5].t().clone().t();  // (a strided gradient too)
  adaptive_clip_(params, clipped, 0.01, 1e-3);
  int units_clipped = 0;
  for (size_t i = 0; i < params.size(); ++i) {
    CAPTURE(i);
    CHECK(same_values(clipped[i], expected[i]));
    if (params[i].dim() > 1 && params[i].numel() > 0)
      units_clipped += int(sum(any(ne(clipped[i], grads[i]).reshape({params[i].size(0), -1}), {1}).to(kInt64)).item());
  }
  CHECK(units_clipped >= 10);  // (and the rest not: the comparison goes both ways)
  CHECK(same_values(clipped[1].select(0, 4), grads[1].select(0, 4)));  // the NaN unit as it was
  CHECK_THROWS_WITH_AS(adaptive_clip_({params[0]}, {grads[1]}, 0.01, 1e-3),
                       doctest::Contains("adaptive_clip_: gradient has shape [5, 7] but the parameter has [6, 3, 3, 3]"), Error);
  CHECK_THROWS_WITH_AS(adaptive_clip_({params[0]}, {grads[0]}, 0, 1e-3), doctest::Contains("clip must be positive"), Error);
}

TEST_CASE("optim: a step marks the parameters it wrote, so a graph saved before it refuses its backward") {
  // As PyTorch's in-place updates: a forward, a step, then the forward's backward would use the
  // stepped weights with the old activations -- an error naming the change, not a wrong gradient.
  for (const bool adam : {false, true})
    for (const DType dt : {kFloat32, kBFloat16}) {
      CAPTURE(adam);
      CAPTURE(dt);
      Tensor w = full({3}, 0.5, dt).requires_grad_(), x = full({3}, 2.0, dt).requires_grad_();
      w.set_grad(ones({3}, dt));
      Tensor y = sum(x * w);  // saves w for x's gradient
      const uint64_t before = w.version();
      if (adam) {
        Tensor m = zeros({3}, dt), v = zeros({3}, dt);
        adam_step_(w, w.grad(), m, v, Tensor(), {.lr = 0.1, .step_size = 0.1, .bias2_sqrt = 1.0});
        CHECK(m.version() > 0);
      } else {
        sgd_step_(w, w.grad(), Tensor(), {.lr = 0.1});
      }
      CHECK(w.version() > before);
      CHECK_THROWS_WITH_AS(y.backward(), doctest::Contains("modified"), Error);
    }
}

TEST_CASE("optim: a step with no gradient anywhere raises; Adam counts steps per parameter") {
  std::vector<Tensor> params = fresh_params();
  SGD sgd(params, {.lr = 0.1});
  CHECK_THROWS_WITH_AS(sgd.step(), doctest::Contains("none of the 2 parameters has a gradient"), Error);
  // A parameter that first gets a gradient at step 3 starts its bias correction there, as in
  // PyTorch: its first update is lr * g / (|g| + eps), about lr per element.
  Adam adam(params, {.lr = 1e-2});
  for (int s = 1; s <= 3; ++s) {
    params[0].set_grad(fixtures()["grads.step" + std::to_string(s) + ".0"].clone());
    if (s == 3) params[1].set_grad(fixtures()["grads.step3.1"].clone());
    const Tensor before = params[1].detach().clone();
    adam.step();
    if (s == 3) {
      const auto delta = (params[1].detach() - before).to_vector<float>();
      for (float d : delta) CHECK(std::abs(d) == doctest::Approx(1e-2).epsilon(1e-4));
    }
  }
  CHECK(find(adam.state_dict(), "1.step")->item<int64_t>() == 1);
  CHECK(find(adam.state_dict(), "0.step")->item<int64_t>() == 3);
  AdamOptions ams{.amsgrad = true};
  Adam needs_max(params, ams);
  CHECK_THROWS_WITH_AS(needs_max.load_state_dict(adam.state_dict(), 3), doctest::Contains("max_exp_avg_sq missing"), Error);
}

TEST_CASE("optim: GradScaler scales, unscales, skips non-finite steps and adapts its scale") {
  // float16 autocast: an incoming gradient of 1e-8 rounds to 0 in float16 (smallest subnormal
  // 6e-8), so the weight learns nothing -- unless the loss was scaled up first.
  const Tensor x = ones({4, 8}), w0 = full({3, 8}, 0.5);
  auto weight_grad = [&](GradScaler* scaler) {
    Tensor w = w0.clone().requires_grad_();
    SGD sgd({w}, {.lr = 1.0});
    Tensor loss;
    {
      AutocastGuard f16(DeviceType::cpu, DType::f16);
      loss = sum(linear(x, w).to(DType::f32)) * 1e-8;  // a float32 loss, as autocast's losses are
    }
    (scaler ? scaler->scale(loss) : loss).backward();
    if (scaler) scaler->unscale_(sgd);
    return w.grad().clone();
  };
  CHECK(sum(abs(weight_grad(nullptr))).item<float>() == 0.0f);
  GradScaler scaler;
  CHECK(scaler.get_scale() == 65536.0);
  const Tensor g = weight_grad(&scaler);  // each element: 4 rows x 1e-8, to f16's rounding of 1e-8 * 65536
  for (float v : g.to_vector<float>()) CHECK(v == doctest::Approx(4e-8).epsilon(1e-3));

  // Steps: a non-finite gradient skips the step and halves the scale; growth_interval clean
  // steps in a row double it.
  Tensor p = full({2}, 1.0).requires_grad_();
  SGD sgd({p}, {.lr = 0.5});
  GradScaler s2({.init_scale = 8.0, .growth_interval = 2});
  auto step_with = [&](double grad) {
    p.set_grad(full({2}, grad * s2.get_scale()));  // as a backward of the scaled loss gives
    const bool stepped = s2.step(sgd);
    s2.update();
    return stepped;
  };
  CHECK(step_with(1.0));  // p = 1 - 0.5 * 1
  CHECK(p.detach().to_vector<float>() == std::vector<float>{0.5f, 0.5f});
  CHECK(s2.get_scale() == 8.0);
  CHECK(step_with(1.0));  // second clean step in a row: the scale doubles
  CHECK(s2.get_scale() == 16.0);
  CHECK(!step_with(INFINITY));  // skipped, the scale halves, parameters unchanged
  CHECK(p.detach().to_vector<float>() == std::vector<float>{0.0f, 0.0f});
  CHECK(s2.get_scale() == 8.0);
  CHECK(s2.skipped_steps() == 1);
  CHECK(!step_with(NAN));
  CHECK(s2.get_scale() == 4.0);
  CHECK(step_with(1.0));
  CHECK(s2.get_scale() == 4.0);  // one clean step since the last overflow
  // Resume: the scale and the count of clean steps.
  GradScaler s3;
  s3.load_state_dict(s2.state_dict());
  CHECK(s3.get_scale() == 4.0);
  CHECK(find(s3.state_dict(), "growth_tracker")->to(DType::f64).item<double>() == 1.0);

  // In a training checkpoint's extra entries: the exact scale and the count of clean steps.
  TrainingState saved;
  s2.save_to(saved);
  CHECK(saved.extra.at("grad_scaler.scale") == "4");
  CHECK(saved.extra.at("grad_scaler.growth_tracker") == "1");
  GradScaler s4;
  s4.load_from(saved);
  CHECK(s4.get_scale() == 4.0);
  CHECK(find(s4.state_dict(), "growth_tracker")->to(DType::f64).item<double>() == 1.0);
  TrainingState without;  // a checkpoint of a run without f16: the scaler keeps its state
  s4.load_from(without);
  CHECK(s4.get_scale() == 4.0);
  saved.extra["grad_scaler.scale"] = "abc";
  CHECK_THROWS_WITH_AS(s4.load_from(saved), doctest::Contains("unreadable grad_scaler entries 'abc'"), Error);
  saved.extra.erase("grad_scaler.growth_tracker");
  CHECK_THROWS_WITH_AS(s4.load_from(saved), doctest::Contains("only one of"), Error);
  // float16 gradients are refused, as PyTorch's scaler refuses them (they underflow when unscaled).
  Tensor half_weight = zeros({2}, kFloat16).requires_grad_();
  sum(half_weight * 2.0).backward();
  SGD half_sgd({half_weight}, {.lr = 0.1});
  GradScaler s5;
  CHECK_THROWS_WITH_AS(s5.unscale_(half_sgd), doctest::Contains("float16 gradient"), Error);

  // Misuse raises; a disabled scaler is a no-op.
  p.set_grad(full({2}, 1.0));
  s2.unscale_(sgd);
  CHECK_THROWS_WITH_AS(s2.unscale_(sgd), doctest::Contains("already unscaled"), Error);
  s2.step(sgd);
  CHECK_THROWS_WITH_AS(s2.step(sgd), doctest::Contains("already stepped"), Error);
  s2.update();
  CHECK_THROWS_WITH_AS(s2.update(), doctest::Contains("call step()"), Error);
  CHECK_THROWS_WITH_AS(GradScaler({.backoff_factor = 2.0}), doctest::Contains("backoff_factor"), Error);
  CHECK_THROWS_WITH_AS(s3.load_state_dict({}), doctest::Contains("missing or malformed 'scale'"), Error);
  GradScaler off({.enabled = false});
  const Tensor l = full({}, 3.0);
  CHECK(off.scale(l).item<float>() == 3.0f);
  CHECK(off.get_scale() == 1.0);
  off.save_to(without);
  CHECK(without.extra.empty());
}
