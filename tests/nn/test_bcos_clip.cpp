// B-cos CLIP image towers (models/bcos_clip.h):
//   - the conversion is right: with b = 1 and the biases and positional embeddings kept, the
//     converted ModifiedResNet and ViT give the original towers' embeddings;
//   - completeness: for bias-free towers (b = 2), the contributions of an explanation of
//     cos(embedding, text) sum to that cosine;
//   - the distillation losses against their formulas, and errors.
#include <doctest/doctest.h>

#include <cmath>

#include "models/bcos_clip.h"
#include "models/explain.h"
#include "nn/bcos.h"
#include "nn/linear.h"
#include "tests/golden.h"

using namespace bcos;
using namespace bcos::models;

namespace {

// Small towers in OpenAI's layouts: a 2-stage ModifiedResNet and a 2-block ViT, 32 px.
std::shared_ptr<nn::Module> small_resnet() { return std::make_shared<ModifiedResNet>(std::vector<int64_t>{1, 2}, 24, 2, 32, 16); }
std::shared_ptr<nn::Module> small_vit() { return std::make_shared<ClipVisionTransformer>(32, 8, 32, 2, 2, 24, true); }

// Non-trivial batch-norm statistics and gains (OpenAI's init zeroes every block's last BN gain).
void randomize(nn::Module& m, uint64_t seed) {
  manual_seed(seed);
  NoGradGuard no_grad;
  for (auto& [name, mod] : m.named_modules())
    if (auto* bn = dynamic_cast<nn::BatchNorm2d*>(mod)) {
      bn->weight.copy_(rand({bn->num_features}) + 0.5);
      bn->bias.copy_(randn({bn->num_features}) * 0.2);
      bn->running_mean.copy_(randn({bn->num_features}) * 0.2);
      bn->running_var.copy_(rand({bn->num_features}) + 0.5);
    }
  for (auto& [name, p] : m.named_parameters())  // biases of the linear maps too: nonzero
    if (name.size() > 4 && name.substr(name.size() - 4) == "bias") p.copy_(randn(p.shape()) * 0.1);
}

Tensor clip_normalized(const Tensor& x) {
  return (x - from_vector(kClipMean, {1, 3, 1, 1})) / from_vector(kClipStd, {1, 3, 1, 1});
}

void check_equivalence(std::shared_ptr<nn::Module> tower, const std::string& what) {
  randomize(*tower, 3);
  tower->eval();
  manual_seed(4);
  const Tensor x = rand({3, 3, 32, 32});
  NoGradGuard no_grad;
  const Tensor expected = (*tower)(clip_normalized(x));
  BcosClipOptions o;
  o.b = 1, o.keep_bias = true, o.keep_position = true;
  auto converted = bcosify_clip_visual(tower, o);
  CHECK(!converted->is_training());
  const Tensor got = (*converted)(nn::add_inverse(x));
  INFO(what, ": relative error ", golden::relative_error(got, expected));
  CHECK(got.shape() == expected.shape());
  CHECK(golden::relative_error(got, expected) <= 1e-4);
}

void check_completeness(std::shared_ptr<nn::Module> tower, const std::string& what) {
  randomize(*tower, 5);
  BcosClipOptions o;  // b = 2, bias-free
  o.keep_position = false;  // the ViT's default keeps them: constants no pixel explains
  auto student = bcosify_clip_visual(tower, o);
  for (auto& [name, p] : student->named_parameters()) {
    INFO(what, ": ", name);
    CHECK(name.find("bias") == std::string::npos);
    CHECK(name.find("positional_embedding") == std::string::npos);
  }
  // Running variances from the batch (momentum 1), so deep random layers keep a signal.
  for (auto& [name, m] : student->named_modules())
    if (auto* bn = dynamic_cast<nn::BatchNormUncentered2d*>(m)) bn->momentum = 1.0;
  manual_seed(6);
  const Tensor x6 = nn::add_inverse(rand({3, 3, 32, 32}));
  {
    NoGradGuard no_grad;
    student->train();
    (*student)(x6);
    student->eval();
  }
  const Tensor texts = randn({4, 24});
  auto similarity = std::make_shared<TextSimilarity>(student, texts);
  const Tensor targets = from_vector(std::vector<int64_t>{0, 3, 2}, {3});
  const Explanation e = explain(*similarity, x6, targets);
  const Tensor cosines = gather(e.logits, 1, targets.reshape({3, 1})).reshape({3});
  const Tensor sums = sum(e.contributions, {1, 2});
  INFO(what, ": cosines ", cosines, " contributions ", sums);
  CHECK(golden::relative_error(sums, cosines) <= 1e-4);
  CHECK(sum(abs(cosines)).item() > 1e-2);  // a real test: the similarities are not all ~0
  // The similarities are cosines: unit text rows, unit embeddings.
  NoGradGuard no_grad;
  const Tensor direct = matmul(l2_normalize((*student)(x6)), l2_normalize(texts).transpose(0, 1));
  CHECK(golden::relative_error((*similarity)(x6), direct) <= 1e-5);
}

}  // namespace

TEST_CASE("bcos_clip: with b = 1 and biases and positions kept, the converted towers give CLIP's embeddings") {
  check_equivalence(small_resnet(), "ModifiedResNet");
  check_equivalence(small_vit(), "VisionTransformer");
}

TEST_CASE("bcos_clip: bias-free towers explain cos(image, text) completely") {
  check_completeness(small_resnet(), "ModifiedResNet");
  check_completeness(small_vit(), "VisionTransformer");
}

TEST_CASE("bcos_clip: the converted ResNet tower's layers are B-cos layers with the pretrained weights") {
  auto tower = small_resnet();
  randomize(*tower, 8);
  auto& original = dynamic_cast<ModifiedResNet&>(*tower);
  const Tensor stem = dynamic_cast<nn::Conv2d&>(*original.conv1).weight.detach().clone();
  const Tensor v_proj = dynamic_cast<nn::Linear&>(*dynamic_cast<AttentionPool2d&>(*original.attnpool).v_proj).weight.detach().clone();
  auto converted = bcosify_clip_visual(tower, {});
  auto& r = dynamic_cast<ModifiedResNet&>(*converted->visual);
  auto& conv1 = dynamic_cast<nn::BcosConv2d&>(*r.conv1);
  CHECK(conv1.in_channels == 6);
  CHECK(conv1.options.bcos.b == 2);
  CHECK(golden::equal(conv1.weight.detach(), cat({stem, -stem}, 1) * 0.5));
  CHECK(dynamic_cast<nn::AvgPool2d*>(r.avgpool.get()) != nullptr);  // the stem's pooling kept
  auto& pool = dynamic_cast<BcosAttentionPool2d&>(*r.attnpool);
  CHECK(!pool.positional_embedding.defined());
  CHECK(golden::equal(dynamic_cast<nn::Linear&>(*pool.v_proj).weight.detach(), v_proj));
  int64_t bcos_convs = 0, uncentred = 0;
  for (auto& [name, m] : converted->named_modules()) {
    CHECK(dynamic_cast<nn::Conv2d*>(m) == nullptr);
    CHECK(dynamic_cast<nn::BatchNorm2d*>(m) == nullptr);
    bcos_convs += dynamic_cast<nn::BcosConv2d*>(m) != nullptr;
    uncentred += dynamic_cast<nn::BatchNormUncentered2d*>(m) != nullptr;
  }
  CHECK(bcos_convs == 3 + 4 + 4 + 3);  // stem, layer1 (with its downsample), layer2's two blocks
  CHECK(uncentred == bcos_convs);
  CHECK_THROWS_WITH_AS(bcosify_clip_visual(std::make_shared<nn::Linear>(3, 4), {}),
                       doctest::Contains("not a CLIP image tower"), Error);
  CHECK_THROWS_WITH_AS((*converted)(rand({1, 3, 32, 32})), doctest::Contains("(x, 1 − x) [N, 6, 32, 32]"), Error);
}

TEST_CASE("bcos_clip: the sigmoid and cosine distillation losses follow their formulas") {
  manual_seed(9);
  const Tensor s = randn({5, 7}, kFloat64), t = randn({5, 7}, kFloat64);
  const auto sv = l2_normalize(s).to_vector<double>(), tv = l2_normalize(t).to_vector<double>();
  double expected = 0, cosines = 0;
  for (int i = 0; i < 5; ++i)
    for (int j = 0; j < 5; ++j) {
      double dot = 0;
      for (int k = 0; k < 7; ++k) dot += sv[size_t(i * 7 + k)] * tv[size_t(j * 7 + k)];
      const double logit = 10 * dot - 10, label = i == j ? 1 : -1;
      expected += std::log1p(std::exp(-label * logit));
      if (i == j) cosines += dot;
    }
  CHECK(sigmoid_distillation_loss(s, t).item() == doctest::Approx(expected / 5).epsilon(1e-12));
  CHECK(cosine_distillation_loss(s, t).item() == doctest::Approx(1 - cosines / 5).epsilon(1e-12));
  // Gradients flow to the student only through its embeddings; a perfect student is near the floor.
  const Tensor st = s.clone().requires_grad_();
  sigmoid_distillation_loss(st, t).backward();
  CHECK(st.grad().defined());
  CHECK(sigmoid_distillation_loss(t, t).item() < sigmoid_distillation_loss(s, t).item());
  CHECK_THROWS_WITH_AS(sigmoid_distillation_loss(s, randn({4, 7}, kFloat64)), doctest::Contains("sigmoid_distillation_loss"), Error);
  // Under autocast a bf16 teacher (a standard tower's embedding) is widened and the losses stay
  // float32 (no bf16 product inside): the float32 losses of the widened values, bit for bit.
  const Tensor s32 = s.to(kFloat32), t16 = t.to(DType::bf16);
  const Tensor plain_sigmoid = sigmoid_distillation_loss(s32, t16.to(kFloat32)),
               plain_cosine = cosine_distillation_loss(s32, t16.to(kFloat32));
  AutocastGuard autocast(DeviceType::cpu);
  const Tensor sigmoid = sigmoid_distillation_loss(s32, t16), cosine = cosine_distillation_loss(s32, t16);
  CHECK(sigmoid.dtype() == kFloat32);
  CHECK(sigmoid.item() == plain_sigmoid.item());
  CHECK(cosine.item() == plain_cosine.item());
}

TEST_CASE("bcos_clip: towers take other resolutions (GridPG's 3 x 3 grids); the same resolution changes nothing") {
  auto tower = small_resnet();
  randomize(*tower, 11);
  tower->eval();
  manual_seed(12);
  const Tensor x = rand({2, 3, 32, 32}), big = rand({2, 3, 96, 96});
  NoGradGuard no_grad;
  const Tensor before = (*tower)(clip_normalized(x));
  set_image_resolution(*tower, 32);
  CHECK(golden::equal((*tower)(clip_normalized(x)), before));
  set_image_resolution(*tower, 96);
  CHECK((*tower)(clip_normalized(big)).shape() == Shape{2, 24});
  CHECK(dynamic_cast<AttentionPool2d&>(*dynamic_cast<ModifiedResNet&>(*tower).attnpool).positional_embedding.shape() ==
        Shape{1 + 12 * 12, 128});  // width 16 · 2 · 4 channels after two stages
  CHECK_THROWS_WITH_AS((*tower)(clip_normalized(x)), doctest::Contains("ModifiedResNet: expected images [N, 3, 96, 96]"), Error);
  CHECK_THROWS_WITH_AS(set_image_resolution(*tower, 20), doctest::Contains("not a multiple"), Error);
  auto student = bcosify_clip_visual(small_resnet(), {});
  student->eval();
  set_image_resolution(*student, 96);
  CHECK((*student)(nn::add_inverse(big)).shape() == Shape{2, 24});
  auto vit = bcosify_clip_visual(small_vit(), {});
  vit->eval();
  set_image_resolution(*vit, 64);
  CHECK((*vit)(nn::add_inverse(rand({1, 3, 64, 64}))).shape() == Shape{1, 24});
}

TEST_CASE("bcos_clip: ImageResolutionScope gives a tower back its own positions, bit for bit") {
  // Setting the old resolution again resamples the resampled grid (a smoothing); the scope
  // restores what the tower had, for a standard, a B-cos ResNet and a B-cos ViT tower.
  manual_seed(21);
  const Tensor x = rand({2, 3, 32, 32});
  std::vector<std::pair<std::string, std::shared_ptr<nn::Module>>> towers = {
      {"ModifiedResNet", small_resnet()},
      {"B-cos ResNet", bcosify_clip_visual(small_resnet(), {.keep_position = true})},
      {"B-cos ViT", bcosify_clip_visual(small_vit(), {})}};
  for (auto& [name, tower] : towers) {
    CAPTURE(name);
    randomize(*tower, 22);
    tower->eval();
    NoGradGuard no_grad;
    const bool bcos = name != "ModifiedResNet";
    auto input = [&](const Tensor& images) { return bcos ? nn::add_inverse(images) : clip_normalized(images); };
    const Tensor before = (*tower)(input(x));
    std::vector<Tensor> positions;
    for (const auto& [key, value] : tower->state_dict())
      if (key.find("positional_embedding") != std::string::npos) positions.push_back(value.clone());
    REQUIRE(!positions.empty());
    {
      const ImageResolutionScope at_96(*tower, 96);
      CHECK((*tower)(input(rand({1, 3, 96, 96}))).shape() == Shape{1, 24});
      CHECK_THROWS_WITH_AS((*tower)(input(x)), doctest::Contains("96"), Error);
    }
    size_t i = 0;
    for (const auto& [key, value] : tower->state_dict())
      if (key.find("positional_embedding") != std::string::npos) {
        CAPTURE(key);
        REQUIRE(i < positions.size());
        CHECK(golden::equal(value, positions[i++]));
      }
    CHECK(i == positions.size());
    CHECK(golden::equal((*tower)(input(x)), before));
  }
  // A tower that is not CLIP's is refused before anything changes.
  nn::Linear linear(3, 4);
  CHECK_THROWS_WITH_AS(ImageResolutionScope(linear, 64), doctest::Contains("not a CLIP image tower"), Error);
}
