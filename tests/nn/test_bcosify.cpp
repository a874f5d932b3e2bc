// B-cosification, explanations and metrics.
//   - the conversion is right: with the biases and max-pool kept and b = 1, the converted model
//     gives the original model's logits (CIFAR ResNet-20, ResNet-18, ResNet-50);
//   - completeness: for a bias-free B-cos ResNet (b = 2) the contributions Σ x₆ · W(x) of one
//     batched explanation sum to the logit minus the logit layer's bias;
//   - the visualisation and GridPG on cases whose answer is known.
#include <doctest/doctest.h>

#include <cmath>
#include <set>

#include "data/transforms.h"
#include "models/bcosify.h"
#include "models/explain.h"
#include "models/metrics.h"
#include "models/resnet.h"
#include "models/vit.h"
#include "nn/optim.h"
#include "tests/golden.h"
#include "tests/nn/pattern.h"

using namespace bcos;
using namespace bcos::models;

namespace {

const std::vector<float> kMean = {0.485f, 0.456f, 0.406f}, kStd = {0.229f, 0.224f, 0.225f};

// Random, non-trivial batch-norm statistics and affine maps, so BN folding is really tested.
void randomize_batch_norms(nn::Module& model, uint64_t seed) {
  manual_seed(seed);
  NoGradGuard no_grad;
  for (auto& [name, m] : model.named_modules())
    if (auto* bn = dynamic_cast<nn::BatchNorm2d*>(m)) {
      bn->weight.copy_(rand({bn->num_features}) + 0.5);
      bn->bias.copy_(randn({bn->num_features}) * 0.2);
      bn->running_mean.copy_(randn({bn->num_features}) * 0.2);
      bn->running_var.copy_(rand({bn->num_features}) + 0.5);
    }
}

Tensor normalized(const Tensor& x) {
  Tensor mean = from_vector(kMean, {1, 3, 1, 1}), std = from_vector(kStd, {1, 3, 1, 1});
  return (x - mean) / std;
}

BcosifyOptions exact_options() {
  BcosifyOptions o;
  o.b = 1, o.keep_bias = true, o.keep_maxpool = true, o.mean = kMean, o.std = kStd;
  return o;
}

// Original logits on normalised images vs. the b = 1 conversion on (x, 1 − x).
void check_equivalence(std::shared_ptr<nn::Module> model, int64_t size, const std::string& what) {
  randomize_batch_norms(*model, 7);
  model->eval();
  manual_seed(8);
  Tensor x = rand({2, 3, size, size});
  NoGradGuard no_grad;
  Tensor expected = (*model)(normalized(x));
  auto converted = bcosify(model, exact_options());
  Tensor got = (*converted)(nn::add_inverse(x));
  INFO(what, ": relative error ", golden::relative_error(got, expected));
  CHECK(golden::relative_error(got, expected) <= 1e-4);
}

// Σ_{c,h,w} x₆ · W(x) = logit − logit bias for the bias-free B-cos model.
void check_completeness(std::shared_ptr<nn::Module> model, int64_t size, const std::string& what) {
  randomize_batch_norms(*model, 9);
  BcosifyOptions o;
  o.mean = kMean, o.std = kStd;
  auto bcos_model = bcosify(model, o);
  manual_seed(10);
  Tensor x6 = nn::add_inverse(rand({3, 3, size, size}));
  // Calibrate the running variances on the batch (momentum 1), as fine-tuning would: with the
  // random ones, 17 B-cos layers shrink the activations of a deep random network to nothing.
  for (auto& [name, m] : bcos_model->named_modules())
    if (auto* bn = dynamic_cast<nn::BatchNormUncentered2d*>(m)) bn->momentum = 1.0;
  {
    NoGradGuard no_grad;
    (*bcos_model)(x6);
  }
  Tensor targets = from_vector(std::vector<int64_t>{0, 3, 7}, {3});
  Explanation e = explain(*bcos_model, x6, targets);
  CHECK(e.weights.shape() == x6.shape());
  CHECK(e.contributions.shape() == Shape{3, size, size});
  const double bias = dynamic_cast<nn::LogitLayer&>(*bcos_model->logit).logit_bias;
  Tensor target_logits = gather(e.logits, 1, targets.reshape({3, 1})).reshape({3}) - bias;
  Tensor sums = sum(e.contributions, {1, 2});
  INFO(what, ": logits ", target_logits, " contributions ", sums);
  CHECK(golden::relative_error(sums, target_logits) <= 1e-4);
  CHECK(sum(abs(target_logits)).item() > 1e-3);  // a real test: the logits are not all ~0
  CHECK(bcos_model->is_training());  // explain() restores the mode it found
  for (auto& [name, p] : bcos_model->named_parameters()) {
    CHECK(p.requires_grad());  // ... and the parameters' requires_grad
    CHECK(!p.grad().defined());
  }
  // No targets: the predicted classes are explained.
  Explanation predicted = explain(*bcos_model, x6, Tensor());
  CHECK(golden::equal(predicted.targets, argmax(predicted.logits, 1)));
  // Several targets per input from one forward pass: the same maps as one explain() per target.
  Tensor two = from_vector(std::vector<int64_t>{0, 5, 3, 1, 7, 7}, {3, 2});
  Tensor maps = contribution_maps(*bcos_model, x6, two);
  CHECK(maps.shape() == Shape{3, 2, size, size});
  for (int64_t k = 0; k < 2; ++k) {
    Tensor single = explain(*bcos_model, x6, two.select(1, k).contiguous()).contributions;
    CHECK(golden::relative_error(maps.select(1, k), single) <= 1e-6);
  }
}

}  // namespace

TEST_CASE("bcosify: with b = 1 and biases and max-pool kept, the converted model gives the original logits") {
  check_equivalence(std::make_shared<CifarResNet>(20), 32, "CIFAR ResNet-20");
  check_equivalence(resnet18(), 64, "ResNet-18");
  check_equivalence(resnet50(ResNetOptions{10}), 32, "ResNet-50");
}

TEST_CASE("bcosify: contributions of a bias-free B-cos ResNet sum to the logit minus the logit bias") {
  check_completeness(std::make_shared<CifarResNet>(20), 32, "CIFAR ResNet-20");
  check_completeness(resnet18(ResNetOptions{10}), 64, "ResNet-18");
}

TEST_CASE("bcosify: the converted layers carry the pretrained weights as the recipe says") {
  auto model = std::make_shared<CifarResNet>(20);
  randomize_batch_norms(*model, 11);
  Tensor w = dynamic_cast<nn::Conv2d&>(*model->conv1).weight.detach().clone();
  Tensor fc = dynamic_cast<nn::Linear&>(*model->linear).weight.detach().clone();
  auto& bn = dynamic_cast<nn::BatchNorm2d&>(*model->bn1);
  Tensor gamma = bn.weight.detach().clone(), beta = bn.bias.detach().clone();
  Tensor mu = bn.running_mean.clone(), var = bn.running_var.clone();
  BcosifyOptions o;
  o.mean = kMean, o.std = kStd, o.keep_bias = true;
  auto b = bcosify(model, o);
  auto& body = dynamic_cast<CifarResNet&>(*b->model);
  auto& stem = dynamic_cast<nn::BcosConv2d&>(*body.conv1);
  CHECK(stem.weight.shape() == Shape{16, 6, 3, 3});
  CHECK(golden::relative_error(stem.weight.detach(), cat({w, -w}, 1) * 0.5) == 0);
  CHECK(!stem.options.bcos.normalize_weights);
  CHECK(stem.options.bcos.b == 2);
  auto& head = dynamic_cast<nn::BcosConv2d&>(*body.linear);
  CHECK(golden::relative_error(head.weight.detach().reshape({10, 64}), fc) == 0);
  auto& ubn = dynamic_cast<nn::BatchNormUncentered2d&>(*body.bn1);
  CHECK(golden::relative_error(ubn.bias.detach(), beta - gamma * mu / sqrt(var + 1e-5)) <= 1e-6);
  CHECK(golden::relative_error(ubn.running_var, var) == 0);
  // Names: the original ones under "model.", plus the normalisation buffer.
  std::set<std::string> keys;
  for (auto& [k, t] : b->state_dict()) keys.insert(k);
  CHECK(keys.count("model.conv1.weight") == 1);
  CHECK(keys.count("model.layer3.2.bn2.running_var") == 1);
  CHECK(keys.count("model.linear.weight") == 1);
  CHECK(keys.count("normalize.weight") == 1);
  // No bias anywhere without keep_bias, and the logit bias is −ln(9).
  auto plain = bcosify(std::make_shared<CifarResNet>(20), BcosifyOptions{2, false, false, kMean, kStd, std::nullopt});
  for (auto& [k, t] : plain->named_parameters()) CHECK(k.find("bias") == std::string::npos);
  CHECK(dynamic_cast<nn::LogitLayer&>(*plain->logit).logit_bias == doctest::Approx(-std::log(9.0)));
  // ResNet-18: the max-pool becomes AvgPool2d(3, 2, 1).
  auto r18 = bcosify(resnet18(), BcosifyOptions{2, false, false, kMean, kStd, std::nullopt});
  CHECK(dynamic_cast<ResNet&>(*r18->model).maxpool->type_name() == "AvgPool2d");
}

TEST_CASE("bcosify: unsupported models and missing options are clear errors") {
  BcosifyOptions o;
  CHECK_THROWS_WITH_AS(bcosify(std::make_shared<CifarResNet>(20), o), doctest::Contains("normalisation"), Error);
  o.mean = kMean, o.std = kStd;
  CHECK_THROWS_WITH_AS(bcosify(std::make_shared<nn::Linear>(3, 4), o), doctest::Contains("not supported"), Error);
  auto b = bcosify(std::make_shared<CifarResNet>(20), o);
  CHECK_THROWS_WITH_AS((*b)(rand({1, 3, 32, 32})), doctest::Contains("[N, 6, H, W]"), Error);
  CHECK_THROWS_WITH_AS(explain(*b, rand({1, 6, 32, 32}), from_vector(std::vector<int64_t>{10}, {1})),
                       doctest::Contains("explain: target 10 is out of range for 10 classes"), Error);
}

TEST_CASE("explain: the folded input normalisation is exactly the 6-channel normalisation") {
  manual_seed(12);
  Tensor x = rand({2, 3, 5, 4});
  InverseNormalize n(kMean, kStd);
  Tensor got = n(nn::add_inverse(x));
  Tensor z = normalized(x);
  CHECK(golden::relative_error(got, cat({z, -z}, 1)) <= 1e-6);
}

TEST_CASE("explain: percentile, colour coding and heatmap on hand-made inputs") {
  CHECK(percentile(from_vector(std::vector<float>{4, 1, 3, 2}, {4}), 50) == doctest::Approx(2.5));
  CHECK(percentile(from_vector(std::vector<float>{4, 1, 3, 2}, {4}), 99.5) == doctest::Approx(3.985));
  // Two pixels. Pixel 0: W all on the (x) channels -> rgb 1, positive contribution. Pixel 1: W on
  // the (1 − x) channels -> rgb 0, and a negative contribution -> alpha ~ 0.
  std::vector<float> w(12, 0.0f);
  for (int c = 0; c < 3; ++c) w[size_t(c * 2 + 0)] = 2.0f, w[size_t((c + 3) * 2 + 1)] = 1.0f;
  Tensor weights = from_vector(w, {6, 1, 2});
  Tensor contrib = from_vector(std::vector<float>{1.0f, -1.0f}, {1, 2});
  Tensor rgba = explanation_rgba(weights, contrib, 1, 100);
  CHECK(rgba.shape() == Shape{1, 2, 4});
  std::vector<float> v = rgba.to_vector<float>();
  for (int c = 0; c < 3; ++c) {
    CHECK(v[size_t(c)] == doctest::Approx(1.0));
    CHECK(v[size_t(4 + c)] == doctest::Approx(0.0));
  }
  CHECK(v[3] == doctest::Approx(1.0));   // alpha: ‖W‖ / its 100th percentile
  CHECK(v[7] == doctest::Approx(0.0));   // negative contribution
  Tensor heat = contribution_heatmap(from_vector(std::vector<float>{2, -2, 0, 1}, {2, 2}), 100);
  std::vector<float> hv = heat.to_vector<float>();
  CHECK((hv[0] == 1 && hv[1] == 0 && hv[2] == 0));   // +max: red
  CHECK((hv[3] == 0 && hv[4] == 0 && hv[5] == 1));   // −max: blue
  CHECK((hv[6] == 1 && hv[7] == 1 && hv[8] == 1));   // 0: white
  Tensor u8 = to_u8_image(heat, 2);
  CHECK(u8.shape() == Shape{4, 4, 3});
  CHECK(u8.dtype() == DType::u8);
}

TEST_CASE("metrics: accuracy and GridPG on synthetic attributions with a known score") {
  Tensor logits = from_vector(std::vector<float>{1, 2, 3, 0, 5, 1}, {2, 3});
  CHECK(accuracy(logits, from_vector(std::vector<int64_t>{2, 0}, {2})) == doctest::Approx(0.5));
  CHECK(gridpg_smoothing(224) == 15);
  CHECK(gridpg_smoothing(32) == 3);
  // Images of class c are filled with the value c, so an attribution can find its cell.
  const int64_t classes = 10, h = 4;
  std::vector<float> pix;
  std::vector<int64_t> labels;
  for (int64_t c = 0; c < classes; ++c)
    for (int copy = 0; copy < 2; ++copy) {
      for (int64_t i = 0; i < 3 * h * h; ++i) pix.push_back(float(c));
      labels.push_back(c);
    }
  Tensor images = from_vector(pix, {2 * classes, 3, h, h});
  Tensor label_t = from_vector(labels, {2 * classes});
  auto in_cell = [](const Tensor& imgs, const Tensor& targets) {  // 1 where the target's pixels are
    Tensor t = targets.to(DType::f32).unsqueeze(2).unsqueeze(3);   // [B, K, 1, 1]
    return eq(imgs.select(1, 0).unsqueeze(1), t).to(DType::f32);  // [B, K, H, W]
  };
  GridPGOptions o;
  o.grids = 20, o.smooth = 1, o.seed = 3, o.batch = 3;
  GridPGResult perfect = grid_pointing_game(images, label_t, in_cell, o);
  CHECK(perfect.scores.size() == 180);
  CHECK(perfect.mean == doctest::Approx(1.0));
  GridPGResult uniform = grid_pointing_game(images, label_t, [](const Tensor& imgs, const Tensor& t) {
    return ones({imgs.size(0), t.size(1), imgs.size(2), imgs.size(3)});
  }, o);
  CHECK(uniform.mean == doctest::Approx(1.0 / 9));
  CHECK(uniform.q1 == doctest::Approx(1.0 / 9));
  // Half inside: the cell at 1, the other eight cells at 1/8.
  GridPGResult half = grid_pointing_game(images, label_t, [&](const Tensor& imgs, const Tensor& t) {
    Tensor m = in_cell(imgs, t);
    return m + (1.0 - m) * 0.125;
  }, o);
  CHECK(half.mean == doctest::Approx(0.5));
  // Too few classes for a 3 x 3 grid.
  CHECK_THROWS_WITH_AS(grid_pointing_game(images.slice(0, 0, 10), label_t.slice(0, 0, 10), in_cell, o),
                       doctest::Contains("distinct classes"), Error);
}

TEST_CASE("metrics: border_share on maps with a known share") {
  CHECK(border_area_share(32, 32, 2) == doctest::Approx(1.0 - 28.0 * 28.0 / 1024.0));
  CHECK(border_area_share(4, 4, 2) == 1.0);
  CHECK(border_share(ones({2, 32, 32}), 2) == doctest::Approx(border_area_share(32, 32, 2)));
  // All positive mass on the frame, negative mass inside (ignored): 1.
  Tensor frame = full({1, 8, 8}, -5.0);
  {
    NoGradGuard no_grad;
    frame.select(1, 0).fill_(1.0);
  }
  CHECK(border_share(frame, 1) == doctest::Approx(1.0));
  // A centred blob: 0. Two maps pooled: the mass-weighted share.
  Tensor blob = zeros({1, 8, 8});
  {
    NoGradGuard no_grad;
    blob.select(0, 0).slice(0, 3, 5).slice(1, 3, 5).fill_(2.0);  // 4 pixels x 2 = mass 8
  }
  CHECK(border_share(blob, 2) == 0.0);
  Tensor edge = zeros({1, 8, 8});
  {
    NoGradGuard no_grad;
    edge.select(0, 0).select(0, 0).fill_(1.0);  // 8 pixels on the top row, mass 8
  }
  CHECK(border_share(cat({blob, edge}, 0), 2) == doctest::Approx(0.5));
  CHECK(border_share(zeros({1, 8, 8}), 1) == 0.0);
  CHECK_THROWS_WITH_AS(border_share(zeros({8, 8}), 1), doctest::Contains("[N, H, W]"), Error);
}

namespace {
std::shared_ptr<VisionTransformer> tiny_vit() {
  auto v = std::make_shared<VisionTransformer>(ViTOptions{.image_size = 16, .patch_size = 4, .num_layers = 2,
                                                          .num_heads = 2, .hidden_dim = 8, .mlp_dim = 16,
                                                          .num_classes = 5});
  // torchvision zeroes the head and the attention biases: random values make the test see them.
  manual_seed(21);
  NoGradGuard no_grad;
  for (auto& [name, p] : v->named_parameters()) p.copy_(randn(p.shape()) * 0.3 + (name.find("ln") != std::string::npos ? 1.0 : 0.0));
  return v;
}
}  // namespace

TEST_CASE("bcosify: a ViT converted with b = 1 and biases kept gives the original logits") {
  auto v = tiny_vit();
  v->eval();
  manual_seed(22);
  Tensor x = rand({2, 3, 16, 16});
  Tensor expected;
  {
    NoGradGuard no_grad;
    expected = (*v)(normalized(x));
  }
  auto b = bcosify(v, exact_options());
  NoGradGuard no_grad;
  Tensor got = (*b)(nn::add_inverse(x));
  INFO("relative error ", golden::relative_error(got, expected));
  CHECK(golden::relative_error(got, expected) <= 1e-4);
}

TEST_CASE("bcosify: a B-cos ViT has B-cos linears, detachable norms and a linear attention when explaining") {
  BcosifyOptions o;
  o.mean = kMean, o.std = kStd;
  auto b = bcosify(tiny_vit(), o);
  std::map<std::string, int> types;
  for (auto& [name, m] : b->named_modules()) ++types[m->type_name()];
  CHECK(types["BcosLinear"] == 2 * 3 + 1);  // per layer: out_proj, mlp.0, mlp.3; and the head
  CHECK(types["DetachableLayerNorm"] == 2 * 2 + 1);
  CHECK(types["DetachableGELU"] == 2);
  CHECK(types["Linear"] == 0);
  CHECK(types["LayerNorm"] == 0);
  for (auto& [k, t] : b->named_parameters()) CHECK(k.find("bias") == std::string::npos);
  auto& stem = dynamic_cast<nn::BcosConv2d&>(*dynamic_cast<VisionTransformer&>(*b->model).conv_proj);
  CHECK(stem.in_channels == 6);
  // In explanation mode the attention pattern is constant: the gradient differs from the plain one.
  manual_seed(23);
  Tensor x6 = nn::add_inverse(rand({2, 3, 16, 16}));
  Tensor targets = from_vector(std::vector<int64_t>{1, 4}, {2});
  Explanation e = explain(*b, x6, targets);
  b->eval();
  Tensor x = x6.clone().requires_grad_(true);
  sum(gather((*b)(x), 1, targets.reshape({2, 1}))).backward();
  CHECK(golden::relative_error(e.weights, x.grad()) > 1e-3);
  CHECK(std::isfinite(sum(abs(e.contributions)).item()));
}

TEST_CASE("bcosify: a B-cos CIFAR ResNet-20 matches PyTorch: eval logits, explanation, one fine-tuning step") {
  // tools/golden/bcosify.py: the same pattern weights, converted in float64 by a PyTorch
  // implementation of the recipe. Fixtures are float32 values of float64 results.
  golden::Fixtures fx(golden::golden_dir() + "/bcosify.safetensors");
  auto original = std::make_shared<CifarResNet>(20);
  testnn::fill_pattern(*original);
  original->to(DType::f64);
  auto model = bcosify(original, {2, false, false, kMean, kStd, std::nullopt});
  Tensor x6 = nn::add_inverse(fx["x"].to(DType::f64));
  const Tensor& targets = fx["targets"];

  model->eval();
  Tensor eval_logits;
  {
    NoGradGuard no_grad;
    eval_logits = (*model)(x6);
  }
  // The logits are −ln 9 plus a small signal: compare the signal.
  // (Stored as float32, the logits carry 6e-8 relative precision; their signal beside the −ln 9
  // bias is checked through the contributions, stored directly.)
  CHECK(golden::relative_error(eval_logits, fx["eval_logits"]) <= 1e-6);
  Explanation e = explain(*model, x6, targets);
  CHECK(golden::relative_error(e.weights, fx["explain_grad"]) <= 1e-5);
  CHECK(golden::relative_error(sum(e.contributions, {1, 2}), fx["explain_contrib_sum"]) <= 1e-5);

  model->train();
  std::vector<Tensor> params = model->parameters();
  nn::AdamW opt(params, {.lr = 1e-3, .weight_decay = 0.0});
  Tensor logits = (*model)(x6);
  Tensor loss = nn::uniform_off_labels_bce(logits, targets);
  CHECK(golden::relative_error(logits.detach(), fx["train_logits"]) <= 1e-6);
  CHECK(loss.item() == doctest::Approx(fx["train_loss"].item()).epsilon(1e-6));
  loss.backward();
  nn::adaptive_clip_grad_(params, 0.01, 1e-3);
  opt.step();
  std::map<std::string, Tensor> named;
  for (auto& [k, p] : model->named_parameters()) named[k] = p;
  for (const char* key : {"model.conv1.weight", "model.bn1.weight", "model.layer2.0.conv1.weight",
                          "model.layer3.2.bn2.weight", "model.linear.weight"}) {
    INFO(std::string(key));
    REQUIRE(named.count(key) == 1);
    CHECK(golden::relative_error(named[key].grad(), fx[str("grad.", key)]) <= 1e-5);
    // AdamW's first step moves each weight by ~lr · sign(g): absolute, as tiny gradients make the
    // direction of the smallest ones sensitive.
    CHECK(max(abs(named[key].detach() - fx[str("step.", key)].to(DType::f64))).item() <= 1e-5);
  }
  auto& bn = dynamic_cast<nn::BatchNormUncentered2d&>(
      *dynamic_cast<CifarBasicBlock&>(dynamic_cast<nn::Sequential&>(*dynamic_cast<CifarResNet&>(*model->model).stages[0])[0]).bn1);
  CHECK(golden::relative_error(bn.running_mean, fx["running_mean.model.layer1.0.bn1"]) <= 1e-6);
  CHECK(golden::relative_error(bn.running_var, fx["running_var.model.layer1.0.bn1"]) <= 1e-6);
}
