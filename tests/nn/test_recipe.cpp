// The fine-tuning recipe of a B-cosified model (models/bcosify.h): the bias-decay and b warm-up
// schedule, removing the biases at the end, and batch-norm recalibration.
#include <doctest/doctest.h>

#include <cmath>
#include <map>
#include <set>

#include "models/bcosify.h"
#include "models/explain.h"
#include "models/resnet.h"
#include "nn/norm.h"
#include "tests/golden.h"

using namespace bcos;
using namespace bcos::models;

namespace {

const std::vector<float> kMean = {0.485f, 0.456f, 0.406f}, kStd = {0.229f, 0.224f, 0.225f};

// A CIFAR ResNet-20 with random BN shifts and statistics, converted with its biases kept.
std::shared_ptr<BcosClassifier> converted_with_biases(double b, uint64_t seed) {
  auto model = std::make_shared<CifarResNet>(20);
  manual_seed(seed);
  {
    NoGradGuard no_grad;
    for (auto& [name, m] : model->named_modules())
      if (auto* bn = dynamic_cast<nn::BatchNorm2d*>(m)) {
        bn->weight.copy_(rand({bn->num_features}) + 0.5);
        bn->bias.copy_(randn({bn->num_features}) * 0.2);
        bn->running_mean.copy_(randn({bn->num_features}) * 0.2);
        bn->running_var.copy_(rand({bn->num_features}) + 0.5);
      }
  }
  BcosifyOptions o;
  o.b = b, o.keep_bias = true, o.mean = kMean, o.std = kStd, o.logit_bias = nn::default_logit_bias(10);
  return bcosify(model, o);
}

std::map<std::string, Tensor> biases_of(const nn::Module& m) {  // copies, by name
  std::map<std::string, Tensor> out;
  for (const auto& [name, p] : m.named_parameters())
    if (name.size() >= 4 && name.compare(name.size() - 4, 4, "bias") == 0) out[name] = p.detach().clone();
  return out;
}

}  // namespace

TEST_CASE("recipe: the schedule's b and bias fractions follow their closed forms") {
  FinetuneSchedule s;
  s.total_steps = 100, s.b = 2.5, s.b_warmup = 0.2, s.bias_decay = 0.5, s.head_bias_decay = 0.1;
  CHECK(s.exponent(0) == 1.0);
  CHECK(s.exponent(10) == doctest::Approx(1.75));  // halfway through the 20 warm-up steps
  CHECK(s.exponent(20) == 2.5);
  CHECK(s.exponent(99) == 2.5);
  CHECK(s.bias_fraction(-1, false) == 1.0);  // as converted
  CHECK(s.bias_fraction(0, false) == 1.0);
  CHECK(s.bias_fraction(25, false) == doctest::Approx(0.5));
  CHECK(s.bias_fraction(50, false) == 0.0);
  CHECK(s.bias_fraction(80, false) == 0.0);
  CHECK(s.bias_fraction(5, true) == doctest::Approx(0.5));
  CHECK(s.bias_fraction(10, true) == 0.0);
  s.b_warmup = 0, s.bias_decay = 0;
  CHECK(s.exponent(0) == 2.5);
  CHECK(s.bias_fraction(0, false) == 0.0);  // no decay: gone from the first step
}

TEST_CASE("recipe: apply_finetune_schedule fades the biases, the head's on its own schedule, and sets b everywhere") {
  auto model = converted_with_biases(1.0, 3);
  const auto original = biases_of(*model);
  REQUIRE(original.count("model.bn1.bias") == 1);
  REQUIRE(original.count("model.linear.bias") == 1);
  FinetuneSchedule s;
  s.total_steps = 10, s.b = 2, s.b_warmup = 0.4, s.bias_decay = 0.5, s.head_bias_decay = 0.2;
  for (int64_t step = 0; step < 10; ++step) {
    apply_finetune_schedule(*model, s, step);
    INFO("step ", step);
    for (const auto& [name, p] : model->named_parameters()) {
      if (!original.count(name)) continue;
      const bool head = name.rfind("model.linear.", 0) == 0;
      Tensor expected = original.at(name) * s.bias_fraction(step, head);
      CHECK(golden::relative_error(p.detach(), expected) <= 1e-6);
      if (s.bias_fraction(step, head) == 0) CHECK(max(abs(p.detach())).item() == 0);
    }
    for (const auto& [path, m] : model->named_modules())
      if (auto* conv = dynamic_cast<nn::BcosConv2d*>(m)) CHECK(conv->options.bcos.b == s.exponent(step));
    // The optimizer moves the biases between steps: a faded-out one is zeroed again, a fading one
    // is rescaled from where the optimizer left it.
    if (step == 6) {
      NoGradGuard no_grad;
      for (const auto& [name, p] : model->named_parameters())
        if (original.count(name)) {
          Tensor slot = p;
          slot.add_(full_like(slot, 0.25));
        }
    }
  }
  CHECK(biases_of(*model).size() == original.size());  // still registered: removed only at the end

  // Stateless: a model resumed at step 3 (biases as the checkpoint had them) continues identically.
  auto a = converted_with_biases(1.0, 4), b = converted_with_biases(1.0, 4);
  for (int64_t step = 0; step <= 3; ++step) apply_finetune_schedule(*a, s, step);
  {
    NoGradGuard no_grad;
    for (const auto& [name, p] : b->named_parameters())
      if (biases_of(*b).count(name)) {
        Tensor slot = p;
        slot.mul_(s.bias_fraction(3, name.rfind("model.linear.", 0) == 0));
      }
  }
  apply_finetune_schedule(*a, s, 4);
  apply_finetune_schedule(*b, s, 4);
  const auto fa = biases_of(*a), fb = biases_of(*b);
  for (const auto& [name, t] : fa) CHECK(golden::relative_error(t, fb.at(name)) <= 1e-6);

  FinetuneSchedule bad = s;
  bad.bias_decay = -1;
  CHECK_THROWS_WITH_AS(apply_finetune_schedule(*a, bad, 0), doctest::Contains("non-negative"), Error);
  CHECK_THROWS_WITH_AS(apply_finetune_schedule(*a, s, -1), doctest::Contains("step -1"), Error);
  CHECK_THROWS_WITH_AS(set_bcos_exponent(*a, 0.5), doctest::Contains("at least 1"), Error);
}

TEST_CASE("recipe: keep_biases leaves the biases where the optimizer puts them, b still warming up") {
  auto model = converted_with_biases(1.0, 6);
  FinetuneSchedule s;
  s.total_steps = 8, s.b = 2, s.b_warmup = 0.5, s.bias_decay = 0, s.head_bias_decay = 0, s.keep_biases = true;
  for (int64_t step = -1; step < 8; ++step) CHECK(s.bias_fraction(step, step % 2 == 0) == 1.0);
  for (int64_t step = 0; step < 8; ++step) {
    {
      NoGradGuard no_grad;  // the optimizer's move between steps
      for (const auto& [name, p] : model->named_parameters())
        if (name.size() >= 4 && name.compare(name.size() - 4, 4, "bias") == 0) {
          Tensor slot = p;
          slot.add_(full_like(slot, 0.125));
        }
    }
    const auto moved = biases_of(*model);
    apply_finetune_schedule(*model, s, step);
    INFO("step ", step);
    for (const auto& [name, t] : biases_of(*model)) CHECK(golden::equal(t, moved.at(name)));
    for (const auto& [path, m] : model->named_modules())
      if (auto* conv = dynamic_cast<nn::BcosConv2d*>(m)) CHECK(conv->options.bcos.b == s.exponent(step));
  }
}

TEST_CASE("recipe: from settled_step() on, apply_finetune_schedule does the same at every step, and not before") {
  // What one application does to biases the optimizer moved (each set to 0.5 first), and b.
  auto effect = [](const FinetuneSchedule& s, int64_t step) {
    auto model = converted_with_biases(1.0, 7);
    {
      NoGradGuard no_grad;
      for (const auto& [name, p] : model->named_parameters())
        if (name.size() >= 4 && name.compare(name.size() - 4, 4, "bias") == 0) {
          Tensor slot = p;
          slot.fill_(0.5);
        }
    }
    apply_finetune_schedule(*model, s, step);
    std::vector<double> out;
    for (const auto& [name, t] : biases_of(*model)) out.push_back(sum(t.to(DType::f64)).item());
    for (const auto& [path, m] : model->named_modules())
      if (auto* conv = dynamic_cast<nn::BcosConv2d*>(m)) out.push_back(conv->options.bcos.b);
    return out;
  };
  struct Case {
    int64_t total;
    double b_warmup, bias_decay, head_bias_decay;
    bool keep;
  };
  for (const Case c : {Case{10, 0.25, 0.3, 0.3, false}, Case{7, 0.25, 0.3, 0.1, false}, Case{12, 0.5, 0.0, 0.0, false},
                       Case{9, 0.0, 0.0, 0.0, false}, Case{6, 0.0, 0.5, 0.0, false}, Case{11, 0.3, 0.0, 0.0, true},
                       Case{5, 0.0, 0.0, 0.0, true}, Case{40, 0.1, 0.35, 0.2, false}}) {
    FinetuneSchedule s;
    s.total_steps = c.total, s.b = 2.5, s.b_warmup = c.b_warmup, s.bias_decay = c.bias_decay;
    s.head_bias_decay = c.head_bias_decay, s.keep_biases = c.keep;
    const int64_t settled = s.settled_step();
    INFO("total ", c.total, ", b warm-up ", c.b_warmup, ", bias decay ", c.bias_decay, " / ", c.head_bias_decay,
         c.keep ? ", kept" : "", ": settled at ", settled);
    REQUIRE(settled >= 0);
    REQUIRE(settled < c.total);
    const auto from = effect(s, settled);
    for (int64_t step = settled + 1; step < c.total + 3; ++step) CHECK(effect(s, step) == from);
    if (settled > 0) CHECK(effect(s, settled - 1) != from);
  }
}

TEST_CASE("recipe: remove_biases leaves the model a bias-free B-cos network with complete explanations") {
  auto model = converted_with_biases(2.0, 5);
  remove_biases(*model);
  CHECK(biases_of(*model).empty());
  // The same state-dict keys as a model converted without biases, so the result loads there.
  BcosifyOptions plain_options;
  plain_options.mean = kMean, plain_options.std = kStd;
  auto plain = bcosify(std::make_shared<CifarResNet>(20), plain_options);
  std::vector<std::string> got, expected;
  for (const auto& [k, t] : model->state_dict()) got.push_back(k);
  for (const auto& [k, t] : plain->state_dict()) expected.push_back(k);
  CHECK(got == expected);
  plain->load_state_dict(model->state_dict());
  auto& head = dynamic_cast<nn::BcosConv2d&>(*dynamic_cast<CifarResNet&>(*model->model).linear);
  CHECK(!head.options.bcos.bias);
  CHECK(head.describe().find("bias") == std::string::npos);
  // Completeness after calibrating the variances on the batch itself.
  manual_seed(6);
  Tensor x6 = nn::add_inverse(rand({3, 3, 32, 32}));
  recalibrate_batch_norm(*model, [&] { return x6; }, 1);
  model->eval();
  Explanation e = explain(*model, x6, Tensor());
  Tensor logits = gather(e.logits, 1, e.targets.reshape({3, 1})).reshape({3}) - nn::default_logit_bias(10);
  CHECK(golden::relative_error(sum(e.contributions, {1, 2}), logits) <= 1e-4);
  CHECK(sum(abs(logits)).item() > 1e-3);
}

TEST_CASE("recipe: recalibrate_batch_norm averages the batches' statistics, weights frozen, mode and momentum kept") {
  nn::Sequential net;
  auto bnu = std::make_shared<nn::BatchNormUncentered2d>(3, 1e-5, 0.1, true);
  auto bn = std::make_shared<nn::BatchNorm2d>(3);
  net.push_back(bnu);
  net.push_back(bn);
  {
    NoGradGuard no_grad;
    bnu->weight.copy_(from_vector(std::vector<float>{0.5f, 1.5f, 2.0f}, {3}));
    bnu->bias.copy_(from_vector(std::vector<float>{0.1f, -0.2f, 0.3f}, {3}));
  }
  const Tensor weight_before = bnu->weight.detach().clone();
  manual_seed(7);
  std::vector<Tensor> batches;
  for (int i = 0; i < 3; ++i) batches.push_back(randn({4, 3, 5, 5}) * (1.0 + i) + 0.3 * i);
  net.eval();
  size_t next = 0;
  recalibrate_batch_norm(net, [&] { return batches.at(next++); }, 3);
  CHECK(next == 3);
  CHECK(!net.is_training());
  CHECK(bnu->momentum == 0.1);
  CHECK(bn->momentum == 0.1);
  CHECK(golden::relative_error(bnu->weight.detach(), weight_before) == 0);
  CHECK(!bnu->weight.grad().defined());
  // Expected: the plain mean over the batches of each layer's batch statistics.
  Tensor var_u = zeros({3}), mean_b = zeros({3}), var_b = zeros({3});
  for (const Tensor& x : batches) {
    Tensor v = mean(square(x - mean(x, {0, 2, 3}, true)), {0, 2, 3});  // biased
    var_u = var_u + v / 3.0;
    Tensor y = x * (bnu->weight.detach() * rsqrt(v + 1e-5)).reshape({1, 3, 1, 1}) + bnu->bias.detach().reshape({1, 3, 1, 1});
    Tensor m = mean(y, {0, 2, 3});
    const double n = double(y.numel() / 3);
    mean_b = mean_b + m / 3.0;
    var_b = var_b + mean(square(y - m.reshape({1, 3, 1, 1})), {0, 2, 3}) * (n / (n - 1)) / 3.0;  // unbiased
  }
  CHECK(golden::relative_error(bnu->running_var, var_u) <= 1e-5);
  CHECK(golden::relative_error(bn->running_mean, mean_b) <= 1e-5);
  CHECK(golden::relative_error(bn->running_var, var_b) <= 1e-5);
  CHECK_THROWS_WITH_AS(recalibrate_batch_norm(net, [&] { return batches[0]; }, -1), doctest::Contains("non-negative"),
                       Error);
  // A failing batch source leaves the momenta and the mode as they were.
  CHECK_THROWS_AS(recalibrate_batch_norm(net, [&]() -> Tensor { fail("no more batches"); }, 2), Error);
  CHECK(bn->momentum == 0.1);
  CHECK(!net.is_training());
}
