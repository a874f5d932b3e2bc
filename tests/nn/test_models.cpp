// Whole models against PyTorch (tests/golden/models.safetensors from tools/golden/models.py):
// state-dict keys and shapes, eval-mode logits, and one SGD step in train mode. The weights are
// a deterministic pattern both sides compute (fill_pattern), so the fixture stays small.
#include <doctest/doctest.h>

#include <map>
#include <sstream>

#include "autograd/ops.h"
#include "data/transforms.h"
#include "models/resnet.h"
#include "models/vit.h"
#include "nn/attention.h"
#include "nn/optim.h"
#include "tests/golden.h"
#include "tests/nn/pattern.h"

using namespace bcos;
using testnn::fill_pattern;

namespace {

const golden::Fixtures& fixtures() {
  static golden::Fixtures f(golden::golden_dir() + "/models.safetensors");
  return f;
}

std::string keys_and_shapes(const nn::Module& model) {
  std::ostringstream os;
  bool first = true;
  for (const auto& [key, t] : model.state_dict()) {
    os << (first ? "" : ";") << key << ":[";
    for (int d = 0; d < t.dim(); ++d) os << (d ? ", " : "") << t.size(d);
    os << "]";
    first = false;
  }
  return os.str();
}

double rel_error(const Tensor& a, const Tensor& b) { return golden::relative_error(a, b); }

Tensor normalized_input(const Tensor& u8) {  // [N, H, W, 3] u8 -> [N, 3, H, W] f32
  std::vector<Tensor> images;
  for (int64_t i = 0; i < u8.size(0); ++i)
    images.push_back(data::normalize(data::to_tensor(u8.select(0, i)), data::kImageNetMean, data::kImageNetStd));
  return stack(images);
}

void check_model(const std::string& name, nn::Module& model, const std::string& input) {
  const auto& f = fixtures();
  CHECK(keys_and_shapes(model) == f.metadata("keys." + name));
  fill_pattern(model);
  const Tensor x = normalized_input(f[input]);
  model.eval();
  {
    NoGradGuard no_grad;
    const double err = rel_error(model(x), f[name + ".logits"]);
    MESSAGE(name << " eval logits: relative error " << err);
    CHECK(err <= 1e-5);  // measured: 3.4e-7 at most (float32, summation order)
  }
  // One SGD step (lr 0.1) in train mode, in float64 as the fixture (tools/golden/models.py says
  // why), compared as the change it makes to each watched parameter.
  model.to(DType::f64);
  model.train();
  nn::SGD sgd(model.parameters(), {.lr = 0.1});
  std::map<std::string, Tensor> before;
  for (const auto& [key, t] : model.named_parameters()) before[key] = t.detach().clone();
  const Tensor loss = cross_entropy(model(x.to(DType::f64)), f[name + ".labels"]);
  CHECK(rel_error(loss.detach(), f[name + ".loss"]) <= 1e-10);
  loss.backward();
  sgd.step();
  const nn::StateDict params = model.named_parameters(), buffers = model.named_buffers();
  int checked = 0;
  for (const std::string& key : f.keys()) {
    const std::string delta = name + ".delta.", running = name + ".running_mean.";
    if (key.rfind(delta, 0) == 0) {
      const std::string p = key.substr(delta.size());
      const Tensor* t = nn::find(params, p);
      REQUIRE(t != nullptr);
      const double err = rel_error(t->detach() - before.at(p), f[key]);
      CAPTURE(p);
      CHECK(err <= 1e-8);
      ++checked;
    } else if (key.rfind(running, 0) == 0) {
      const Tensor* t = nn::find(buffers, key.substr(running.size()));
      REQUIRE(t != nullptr);
      CHECK(rel_error(*t, f[key]) <= 1e-10);
    }
  }
  CHECK(checked >= 4);  // the fixture's parameter changes were found and compared
}

}  // namespace

TEST_CASE("models: ResNet-18 matches torchvision (keys, eval logits, one SGD step)") {
  auto model = models::resnet18();
  check_model("resnet18", *model, "input224");
}

TEST_CASE("models: ResNet-50 matches torchvision (keys, eval logits, one SGD step)") {
  auto model = models::resnet50();
  check_model("resnet50", *model, "input224");
}

TEST_CASE("models: CIFAR ResNet-20 matches the reference (keys, eval logits, one SGD step)") {
  models::CifarResNet model(20);
  check_model("resnet20", model, "input32");
}

TEST_CASE("models: ViT-B/16 structure at reduced width matches torchvision (keys, eval logits, one SGD step)") {
  models::VisionTransformer model({.patch_size = 16, .num_layers = 12, .num_heads = 12, .hidden_dim = 192, .mlp_dim = 768});
  check_model("vit", model, "input224");
}

TEST_CASE("models: MultiheadAttention with float and boolean masks matches PyTorch") {
  const auto& f = fixtures();
  nn::MultiheadAttention attn(16, 4);
  fill_pattern(attn);
  NoGradGuard no_grad;
  const Tensor q = f["mha.query"], kv = f["mha.kv"];
  CHECK(rel_error(attn.forward(q, kv, kv, f["mha.float_mask"]), f["mha.out_float"]) <= 1e-5);
  CHECK(rel_error(attn.forward(q, kv, kv, f["mha.bool_mask"]), f["mha.out_bool"]) <= 1e-5);
  CHECK(rel_error(attn(q), f["mha.out_self"]) <= 1e-5);
  CHECK_THROWS_AS(attn.forward(q, kv, kv, zeros({5, 6})), Error);
  CHECK_THROWS_AS(attn.forward(q, kv.narrow(2, 0, 8), kv), Error);
}
