// CLIP's variants: OpenAI's released ones by name, and any variant from a state dict's shapes
// (their build_model's rules), with bcos.cpp's own metadata for what shapes cannot tell.
#include <cmath>
#include <set>

#include "autograd/ops.h"
#include "models/clip.h"

namespace bcos::models {

namespace {

const Tensor& need(const nn::StateDict& state, const std::string& key) {
  const Tensor* t = nn::find(state, key);
  BCOS_CHECK(t, "CLIP: the state dict has no '", key, "', which every CLIP has (", state.size(), " keys)");
  return *t;
}

// How many distinct block indices follow `prefix` ("visual.layer1." -> 0, 1, 2).
int64_t count_blocks(const nn::StateDict& state, const std::string& prefix) {
  std::set<std::string> ids;
  for (const auto& [key, t] : state)
    if (key.rfind(prefix, 0) == 0) ids.insert(key.substr(prefix.size(), key.find('.', prefix.size()) - prefix.size()));
  return int64_t(ids.size());
}

int64_t square_side(int64_t n, const std::string& key) {  // n = side² + 1
  const auto side = int64_t(std::llround(std::sqrt(double(n - 1))));
  BCOS_CHECK(side > 0 && side * side + 1 == n, "CLIP: ", key, " has ", n, " rows, not a square grid plus one");
  return side;
}

}  // namespace

ClipConfig ClipConfig::named(const std::string& name) {
  auto resnet = [](int64_t embed, int64_t res, std::vector<int64_t> layers, int64_t width, int64_t text_width) {
    ClipConfig c;
    c.embed_dim = embed, c.image_resolution = res, c.vision_layers = std::move(layers), c.vision_width = width;
    c.vision_heads = width * 32 / 64, c.transformer_width = text_width, c.transformer_heads = text_width / 64;
    return c;
  };
  auto vit = [](int64_t embed, int64_t res, int64_t layers, int64_t width, int64_t patch, int64_t text_width) {
    ClipConfig c;
    c.embed_dim = embed, c.image_resolution = res, c.vision_layers = {layers}, c.vision_width = width;
    c.vision_patch_size = patch, c.vision_heads = width / 64, c.transformer_width = text_width;
    c.transformer_heads = text_width / 64;
    return c;
  };
  if (name == "RN50") return resnet(1024, 224, {3, 4, 6, 3}, 64, 512);
  if (name == "RN101") return resnet(512, 224, {3, 4, 23, 3}, 64, 512);
  if (name == "RN50x4") return resnet(640, 288, {4, 6, 10, 6}, 80, 640);
  if (name == "RN50x16") return resnet(768, 384, {6, 8, 18, 8}, 96, 768);
  if (name == "RN50x64") return resnet(1024, 448, {3, 15, 36, 10}, 128, 1024);
  if (name == "ViT-B/32") return vit(512, 224, 12, 768, 32, 512);
  if (name == "ViT-B/16") return vit(512, 224, 12, 768, 16, 512);
  if (name == "ViT-L/14") return vit(768, 224, 24, 1024, 14, 768);
  if (name == "ViT-L/14@336px") return vit(768, 336, 24, 1024, 14, 768);
  BCOS_CHECK(false, "CLIP: unknown model '", name, "' (RN50, RN101, RN50x4, RN50x16, RN50x64, ViT-B/32, ViT-B/16, "
             "ViT-L/14, ViT-L/14@336px)");
  return {};
}

ClipConfig ClipConfig::from_state_dict(const nn::StateDict& state,
                                       const std::vector<std::pair<std::string, std::string>>& metadata) {
  ClipConfig c;
  if (nn::find(state, "visual.proj")) {  // a ViT tower
    const Tensor patchify = need(state, "visual.conv1.weight");  // [width, 3, p, p]
    c.vision_width = patchify.size(0);
    c.vision_patch_size = patchify.size(3);
    c.vision_layers = {count_blocks(state, "visual.transformer.resblocks.")};
    const int64_t grid = square_side(need(state, "visual.positional_embedding").size(0), "visual.positional_embedding");
    c.image_resolution = grid * c.vision_patch_size;
    c.vision_heads = std::max<int64_t>(1, c.vision_width / 64);
  } else {
    c.vision_layers.clear();
    for (int s = 1; s <= 4 && count_blocks(state, "visual.layer" + std::to_string(s) + ".") > 0; ++s)
      c.vision_layers.push_back(count_blocks(state, "visual.layer" + std::to_string(s) + "."));
    BCOS_CHECK(!c.vision_layers.empty(), "CLIP: the state dict has neither visual.proj (ViT) nor visual.layer1.* "
               "(ModifiedResNet)");
    c.vision_width = need(state, "visual.layer1.0.conv1.weight").size(0);
    const int64_t side = square_side(need(state, "visual.attnpool.positional_embedding").size(0),
                                     "visual.attnpool.positional_embedding");
    c.image_resolution = side * (int64_t(4) << (c.vision_layers.size() - 1));
    c.vision_heads = std::max<int64_t>(1, c.vision_width * 32 / 64);
  }
  c.embed_dim = need(state, "text_projection").size(1);
  c.context_length = need(state, "positional_embedding").size(0);
  c.vocab_size = need(state, "token_embedding.weight").size(0);
  c.transformer_width = need(state, "ln_final.weight").size(0);
  c.transformer_heads = std::max<int64_t>(1, c.transformer_width / 64);
  c.transformer_layers = count_blocks(state, "transformer.resblocks.");
  for (const auto& entry : metadata) {
    const std::string &key = entry.first, &value = entry.second;  // (clang 14 cannot capture structured bindings)
    auto number = [&] {
      try {
        return std::stoll(value);
      } catch (const std::exception&) {
        BCOS_CHECK(false, "CLIP: metadata ", key, " = '", value, "' is not a number");
        return 0LL;
      }
    };
    if (key == "clip.vision_heads") c.vision_heads = number();
    if (key == "clip.transformer_heads") c.transformer_heads = number();
    if (key == "clip.quick_gelu") c.quick_gelu = value == "1" || value == "true";
  }
  return c;
}

// "3,4,6,3": the ResNet's blocks per stage, or the ViT's depth.
static std::string joined_layers(const std::vector<int64_t>& layers) {
  std::string out;
  for (size_t i = 0; i < layers.size(); ++i) {
    if (i) out += ',';
    out += std::to_string(layers[i]);
  }
  return out;
}

std::vector<std::pair<std::string, std::string>> ClipConfig::metadata() const {
  const std::string layers = joined_layers(vision_layers);
  return {{"clip.embed_dim", std::to_string(embed_dim)},
          {"clip.image_resolution", std::to_string(image_resolution)},
          {"clip.vision_layers", layers},
          {"clip.vision_width", std::to_string(vision_width)},
          {"clip.vision_patch_size", std::to_string(vision_patch_size)},
          {"clip.vision_heads", std::to_string(vision_heads)},
          {"clip.context_length", std::to_string(context_length)},
          {"clip.vocab_size", std::to_string(vocab_size)},
          {"clip.transformer_width", std::to_string(transformer_width)},
          {"clip.transformer_heads", std::to_string(transformer_heads)},
          {"clip.transformer_layers", std::to_string(transformer_layers)},
          {"clip.quick_gelu", quick_gelu ? "1" : "0"}};
}

std::string ClipConfig::describe() const {
  const std::string layers = joined_layers(vision_layers);
  return str(vit() ? str("ViT/", vision_patch_size, " depth ", layers) : str("ModifiedResNet [", layers, "]"),
             " width ", vision_width, " heads ", vision_heads, " at ", image_resolution, " px; text ",
             transformer_layers, " x ", transformer_width, " heads ", transformer_heads, ", context ", context_length,
             ", vocabulary ", vocab_size, "; embedding ", embed_dim, quick_gelu ? "; QuickGELU" : "; GELU");
}

std::shared_ptr<Clip> clip_from_state_dict(const nn::StateDict& state,
                                           const std::vector<std::pair<std::string, std::string>>& metadata,
                                           bool quick_gelu) {
  ClipConfig config = ClipConfig::from_state_dict(state, metadata);
  bool gelu_in_metadata = false;
  for (const auto& [k, v] : metadata) gelu_in_metadata |= k == "clip.quick_gelu";
  if (!gelu_in_metadata) config.quick_gelu = quick_gelu;
  auto model = std::make_shared<Clip>(config);
  nn::StateDict weights;
  for (const auto& [key, t] : state) {
    if (key == "input_resolution" || key == "context_length" || key == "vocab_size") continue;  // OpenAI's extras
    const bool half = t.dtype() == DType::f16 || t.dtype() == DType::bf16 || t.dtype() == DType::f64;
    weights.emplace_back(key, half ? t.to(DType::f32) : t);  // OpenAI stores most weights as fp16
  }
  model->load_state_dict(weights);
  model->eval();
  return model;
}

}  // namespace bcos::models
