// CLIP (models/clip.h) against tools/golden/clip.py: files the real tools wrote (torch.jit.save
// of a traced model, an open_clip-style torch.save checkpoint, a Hugging Face safetensors file)
// load in C++ and give the reference's embeddings and logits; their errors.
#include <doctest/doctest.h>

#include "autograd/ops.h"
#include "models/clip.h"
#include "models/clip_load.h"
#include "nn/safetensors.h"
#include "nn/torch_checkpoint.h"
#include "tests/golden.h"
#include "tests/nn/helpers.h"
#include "tests/nn/pattern.h"

using namespace bcos;

namespace {

std::string golden_file(const std::string& name) { return golden::golden_dir() + "/" + name; }

// Embeddings of the reduced CLIPs are compared with the norm-wise relative error; 1e-4 leaves
// room for float32 reassociation through a dozen layers and nothing more.
void check_against_reference(models::Clip& model, const golden::Fixtures& f, const std::string& p) {
  NoGradGuard no_grad;
  const Tensor img = model.encode_image(f[p + ".images"]);
  const Tensor txt = model.encode_text(f[p + ".text"]);
  CHECK(golden::relative_error(img, f[p + ".image_features"]) <= 1e-4);
  CHECK(golden::relative_error(txt, f[p + ".text_features"]) <= 1e-4);
  CHECK(golden::relative_error(model.logits(img, txt), f[p + ".logits_per_image"]) <= 1e-4);
}

}  // namespace

TEST_CASE("clip: OpenAI's TorchScript release format loads (torch.jit.save of a traced ModifiedResNet CLIP)") {
  const golden::Fixtures f(golden_file("clip.safetensors"));
  const nn::StateDict state = nn::load_checkpoint(golden_file("clip_rn.pt"));
  // Every tensor attribute by its path; fp16 as stored; the size buffers beside the weights.
  const Tensor* conv = nn::find(state, "visual.layer2.0.downsample.0.weight");
  REQUIRE(conv);
  CHECK(conv->dtype() == DType::f16);
  REQUIRE(nn::find(state, "visual.bn1.running_var"));
  CHECK(nn::find(state, "visual.bn1.running_var")->dtype() == DType::f32);
  REQUIRE(nn::find(state, "input_resolution"));
  CHECK(nn::find(state, "input_resolution")->item() == 64);
  CHECK(nn::find(state, "transformer.resblocks.0.attn.in_proj_weight")->dtype() == DType::f16);

  auto model = models::load_clip(golden_file("clip_rn.pt"));
  CHECK(!model->config.vit());
  CHECK(model->config.vision_layers == std::vector<int64_t>{1, 1, 1, 1});
  CHECK(model->config.image_resolution == 64);
  CHECK(model->config.embed_dim == 128);
  CHECK(model->config.vocab_size == 500);
  CHECK(model->config.transformer_layers == 1);
  check_against_reference(*model, f, "rn");
}

TEST_CASE("clip: an open_clip torch.save checkpoint and a Hugging Face file load (ViT CLIP)") {
  const golden::Fixtures f(golden_file("clip.safetensors"));
  auto from_torch = models::load_clip(golden_file("clip_vit.pt"));  // {"state_dict": {"module.visual...": ...}}
  CHECK(from_torch->config.vit());
  CHECK(from_torch->config.vision_patch_size == 16);
  CHECK(from_torch->config.vision_layers == std::vector<int64_t>{2});
  CHECK(from_torch->config.image_resolution == 32);
  CHECK(from_torch->config.transformer_layers == 2);
  check_against_reference(*from_torch, f, "vit");

  auto from_hf = models::load_clip(golden_file("clip_vit_hf.safetensors"));
  check_against_reference(*from_hf, f, "vit");
  // Both give the same weights under OpenAI's names.
  const nn::StateDict a = from_torch->state_dict(), b = from_hf->state_dict();
  REQUIRE(a.size() == b.size());
  for (size_t i = 0; i < a.size(); ++i) {
    CAPTURE(a[i].first);
    CHECK(a[i].first == b[i].first);
    CHECK(golden::relative_error(a[i].second, b[i].second) == 0.0);
  }

  // bcos.cpp's own safetensors round trip, with the configuration in the metadata.
  testdata::TempDir dir;
  const auto meta = from_hf->config.metadata();
  nn::save_safetensors(dir / "clip.safetensors", from_hf->state_dict(), {meta.begin(), meta.end()});
  auto again = models::load_clip(dir / "clip.safetensors");
  check_against_reference(*again, f, "vit");
}

TEST_CASE("clip: configurations of OpenAI's released models") {
  const models::ClipConfig rn50 = models::ClipConfig::named("RN50");
  CHECK(rn50.embed_dim == 1024);
  CHECK(rn50.vision_heads == 32);
  CHECK(rn50.transformer_heads == 8);
  const models::ClipConfig l14 = models::ClipConfig::named("ViT-L/14@336px");
  CHECK(l14.image_resolution == 336);
  CHECK(l14.vision_heads == 16);
  CHECK(l14.transformer_width == 768);
  CHECK(testdata::error_of([] { models::ClipConfig::named("RN42"); }).find("unknown model 'RN42'") != std::string::npos);
  // A model built from a named configuration reports the same configuration from its weights.
  models::ClipConfig small = models::ClipConfig::named("RN50");
  small.vision_layers = {1, 1, 1, 1}, small.vision_width = 8, small.vision_heads = 4, small.embed_dim = 32;
  small.transformer_layers = 1, small.transformer_width = 64, small.transformer_heads = 1, small.vocab_size = 300;
  small.image_resolution = 64;
  models::Clip m(small);
  const models::ClipConfig back = models::ClipConfig::from_state_dict(m.state_dict(), small.metadata());
  CHECK(back.describe() == small.describe());
}

TEST_CASE("clip: bad files and inputs raise errors naming the file, key or shape") {
  testdata::TempDir dir;
  CHECK(testdata::error_of([&] { models::load_clip(dir / "missing.pt"); }).find("does not exist") != std::string::npos);
  // A ResNet-20 checkpoint is no CLIP.
  const std::string not_clip = golden_file("checkpoint_zip.pt");
  CHECK(testdata::error_of([&] { models::load_clip(not_clip); }).find("load_clip: " + not_clip) != std::string::npos);
  // A CLIP whose weights lack a key, or have a wrong shape.
  nn::StateDict state = models::read_clip_state_dict(golden_file("clip_vit.pt"));
  nn::StateDict missing;
  for (const auto& [k, t] : state)
    if (k != "ln_final.weight") missing.emplace_back(k, t);
  nn::save_safetensors(dir / "missing_key.safetensors", missing);
  CHECK(testdata::error_of([&] { models::load_clip(dir / "missing_key.safetensors"); }).find("ln_final.weight") !=
        std::string::npos);
  nn::StateDict wrong = state;
  for (auto& [k, t] : wrong)
    if (k == "visual.ln_pre.bias") t = zeros({63});
  nn::save_safetensors(dir / "wrong_shape.safetensors", wrong);
  CHECK(testdata::error_of([&] { models::load_clip(dir / "wrong_shape.safetensors"); }).find("visual.ln_pre.bias") !=
        std::string::npos);
  // A truncated TorchScript archive.
  const std::string bytes = testnn::read_bytes(golden_file("clip_rn.pt"));
  testnn::write_bytes(dir / "cut.pt", bytes.substr(0, bytes.size() / 2));
  CHECK(testdata::error_of([&] { models::load_clip(dir / "cut.pt"); }).find("cut.pt") != std::string::npos);

  auto model = models::load_clip(golden_file("clip_vit.pt"));
  NoGradGuard no_grad;
  CHECK(testdata::error_of([&] { model->encode_image(zeros({1, 3, 64, 64})); }).find("[N, 3, 32, 32]") != std::string::npos);
  CHECK(testdata::error_of([&] { model->encode_text(zeros({2, 76}, DType::i64)); }).find("[N, 77]") != std::string::npos);
  CHECK(testdata::error_of([&] { model->encode_text(zeros({2, 77})); }).find("i64") != std::string::npos);
  const int64_t vocab = model->config.vocab_size;
  std::vector<int64_t> ids(77, 1);
  ids[5] = vocab;
  CHECK(testdata::error_of([&] { model->encode_text(from_vector(ids, {1, 77})); })
            .find(str("CLIP encode_text: token id ", vocab, " is out of range for ", vocab,
                      " ids in the model's vocabulary")) != std::string::npos);
}

TEST_CASE("clip: full-size RN50 and ViT-B/32 image towers and the text tower match the reference (pattern weights)") {
  const golden::Fixtures f(golden_file("clip.safetensors"));
  const Tensor image = testnn::pattern("full.images", {1, 3, 224, 224}, -1.0, 1.0);
  NoGradGuard no_grad;
  {
    models::Clip rn50(models::ClipConfig::named("RN50"));
    testnn::fill_pattern(rn50);
    rn50.eval();
    CHECK(golden::relative_error(rn50.encode_image(image), f["full.rn50_features"]) <= 1e-4);
    CHECK(golden::relative_error(rn50.encode_text(f["full.text_ids"]), f["full.text_features"]) <= 1e-4);
  }
  models::Clip vit(models::ClipConfig::named("ViT-B/32"));
  testnn::fill_pattern(vit);
  vit.eval();
  CHECK(golden::relative_error(vit.encode_image(image), f["full.vitb32_features"]) <= 1e-4);
}

TEST_CASE("clip: the contrastive loss and its gradients in float64 match the reference (one training step)") {
  const golden::Fixtures f(golden_file("clip.safetensors"));
  models::ClipConfig c;
  c.embed_dim = 16, c.image_resolution = 16, c.vision_layers = {1, 1}, c.vision_width = 8, c.vision_heads = 2;
  c.vocab_size = 64, c.transformer_width = 32, c.transformer_heads = 2, c.transformer_layers = 1;
  models::Clip model(c);
  testnn::fill_pattern(model);
  model.to(DType::f64);
  model.train();
  const Tensor logits = model.logits(model.encode_image(f["train.images"]), model.encode_text(f["train.text"]));
  CHECK(golden::relative_error(logits, f["train.logits_per_image"]) <= 1e-12);
  const Tensor loss = models::clip_contrastive_loss(logits);
  CHECK(std::abs(loss.item() - f["train.loss"].item()) <= 1e-12 * std::abs(f["train.loss"].item()));
  loss.backward();
  int64_t checked = 0;
  for (const auto& [name, p] : model.named_parameters()) {
    CAPTURE(name);
    REQUIRE(f.has("train.grad." + name));
    REQUIRE(p.grad().defined());
    CHECK(golden::relative_error(p.grad(), f["train.grad." + name]) <= 1e-10);
    ++checked;
  }
  CHECK(checked == int64_t(model.named_parameters().size()));

  // The logit scale is clamped to ln 100 after a step, as OpenAI's training does.
  {
    NoGradGuard no_grad;
    model.logit_scale.fill_(5.0);
  }
  models::clamp_logit_scale_(model);
  CHECK(model.logit_scale.item() == doctest::Approx(std::log(100.0)).epsilon(1e-12));
  CHECK(testdata::error_of([] { models::clip_contrastive_loss(zeros({2, 3})); }).find("[N, N]") != std::string::npos);
}
