// torchvision's VisionTransformer (see vit.h), including its initialisation.
#include "models/vit.h"

#include <cmath>

#include "autograd/ops.h"
#include "nn/init.h"

namespace bcos::models {

EncoderBlock::EncoderBlock(const ViTOptions& o) : nn::Module("EncoderBlock") {
  register_module("ln_1", ln_1, std::make_shared<nn::LayerNorm>(Shape{o.hidden_dim}, 1e-6));
  register_module("self_attention", self_attention,
                  std::make_shared<nn::MultiheadAttention>(o.hidden_dim, o.num_heads, o.attention_dropout));
  register_module("dropout", dropout, std::make_shared<nn::Dropout>(o.dropout));
  register_module("ln_2", ln_2, std::make_shared<nn::LayerNorm>(Shape{o.hidden_dim}, 1e-6));
  auto fc1 = std::make_shared<nn::Linear>(o.hidden_dim, o.mlp_dim), fc2 = std::make_shared<nn::Linear>(o.mlp_dim, o.hidden_dim);
  for (auto* l : {fc1.get(), fc2.get()}) {  // torchvision's MLPBlock initialisation
    nn::init::xavier_uniform_(l->weight);
    nn::init::normal_(l->bias, 0.0, 1e-6);
  }
  register_module("mlp", mlp, std::make_shared<nn::Sequential>(std::vector<nn::ModulePtr>{
                                  fc1, std::make_shared<nn::GELU>(), std::make_shared<nn::Dropout>(o.dropout), fc2,
                                  std::make_shared<nn::Dropout>(o.dropout)}));
}

Tensor EncoderBlock::forward(const Tensor& input) {
  Tensor x = (*ln_1)(input);
  x = (*dropout)((*self_attention)(x)) + input;
  return x + (*mlp)((*ln_2)(x));
}

Encoder::Encoder(int64_t seq_length, const ViTOptions& o) : nn::Module("Encoder") {
  register_parameter("pos_embedding", pos_embedding, empty({1, seq_length, o.hidden_dim}));
  nn::init::normal_(pos_embedding, 0.0, 0.02);
  register_module("dropout", dropout, std::make_shared<nn::Dropout>(o.dropout));
  auto blocks = std::make_shared<nn::Sequential>();
  for (int64_t i = 0; i < o.num_layers; ++i) blocks->register_block("encoder_layer_" + std::to_string(i), std::make_shared<EncoderBlock>(o));
  register_module("layers", layers, blocks);
  register_module("ln", ln, std::make_shared<nn::LayerNorm>(Shape{o.hidden_dim}, 1e-6));
}

Tensor Encoder::forward(const Tensor& x) {
  BCOS_CHECK(x.dim() == 3 && x.size(1) == pos_embedding.size(1) && x.size(2) == pos_embedding.size(2),
             "ViT encoder: expected tokens [N, ", pos_embedding.size(1), ", ", pos_embedding.size(2), "], got ", x.shape());
  return (*ln)((*layers)((*dropout)(x + pos_embedding)));
}

VisionTransformer::VisionTransformer(ViTOptions o) : nn::Module("VisionTransformer"), options(o) {
  BCOS_CHECK(o.image_size > 0 && o.patch_size > 0 && o.image_size % o.patch_size == 0,
             "VisionTransformer: image_size ", o.image_size, " must be a multiple of patch_size ", o.patch_size);
  auto proj = std::make_shared<nn::Conv2d>(3, o.hidden_dim, o.patch_size, nn::Conv2dOptions{.stride = o.patch_size});
  const double fan_in = 3.0 * double(o.patch_size * o.patch_size);
  nn::init::trunc_normal_(proj->weight, 0.0, std::sqrt(1.0 / fan_in), -2.0, 2.0);
  nn::init::constant_(proj->bias, 0.0);
  register_module("conv_proj", conv_proj, proj);
  register_parameter("class_token", class_token, zeros({1, 1, o.hidden_dim}));
  const int64_t side = o.image_size / o.patch_size;
  register_module("encoder", encoder, std::make_shared<Encoder>(side * side + 1, o));
  auto head = std::make_shared<nn::Linear>(o.hidden_dim, o.num_classes);
  nn::init::constant_(head->weight, 0.0);  // torchvision zeroes the classifier
  nn::init::constant_(head->bias, 0.0);
  auto heads_seq = std::make_shared<nn::Sequential>();
  heads_seq->register_block("head", head);
  register_module("heads", heads, heads_seq);
}

Tensor VisionTransformer::embed(const Tensor& x) {
  // (The channel count is the patch embedding's to check: 3, or 6 once B-cosified.)
  BCOS_CHECK(x.dim() == 4 && x.size(2) == options.image_size && x.size(3) == options.image_size,
             "VisionTransformer: expected images [N, C, ", options.image_size, ", ", options.image_size, "], got ",
             x.shape());
  const int64_t n = x.size(0);
  const Tensor patches = (*conv_proj)(x).reshape({n, options.hidden_dim, -1}).transpose(1, 2);  // [N, P, hidden]
  return cat({class_token.expand({n, 1, options.hidden_dim}), patches}, 1);
}

Tensor VisionTransformer::forward(const Tensor& x) {
  const Tensor tokens = (*encoder)(embed(x));
  return (*heads)(tokens.select(1, 0));  // the class token
}

std::shared_ptr<VisionTransformer> vit_b_16(int64_t classes) {
  return std::make_shared<VisionTransformer>(ViTOptions{.patch_size = 16, .num_classes = classes});
}
std::shared_ptr<VisionTransformer> vit_b_32(int64_t classes) {
  return std::make_shared<VisionTransformer>(ViTOptions{.patch_size = 32, .num_classes = classes});
}
std::shared_ptr<VisionTransformer> vit_l_16(int64_t classes) {
  return std::make_shared<VisionTransformer>(
      ViTOptions{.patch_size = 16, .num_layers = 24, .num_heads = 16, .hidden_dim = 1024, .mlp_dim = 4096, .num_classes = classes});
}

}  // namespace bcos::models
