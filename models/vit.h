// Vision Transformers with torchvision's structure and state-dict names: conv_proj (patch
// embedding), class_token, encoder.pos_embedding, encoder.layers.encoder_layer_{i} (ln_1,
// self_attention, ln_2, mlp.0 / mlp.3), encoder.ln, heads.head; LayerNorm eps 1e-6, exact GELU.
#pragma once

#include <memory>
#include <string>

#include "nn/attention.h"
#include "nn/layers.h"
#include "nn/linear.h"
#include "nn/module.h"
#include "nn/norm.h"

namespace bcos::models {

struct ViTOptions {
  int64_t image_size = 224, patch_size = 16, num_layers = 12, num_heads = 12, hidden_dim = 768, mlp_dim = 3072;
  double dropout = 0.0, attention_dropout = 0.0;
  int64_t num_classes = 1000;
};

class EncoderBlock : public nn::Module {
 public:
  EncoderBlock(const ViTOptions& o);
  Tensor forward(const Tensor& x) override;  // x: [N, L, hidden]
  std::shared_ptr<nn::Module> ln_1, self_attention, dropout, ln_2, mlp;
};

class Encoder : public nn::Module {
 public:
  Encoder(int64_t seq_length, const ViTOptions& o);
  Tensor forward(const Tensor& x) override;
  Tensor pos_embedding;  // [1, L, hidden]
  std::shared_ptr<nn::Module> dropout, layers, ln;
};

class VisionTransformer : public nn::Module {
 public:
  explicit VisionTransformer(ViTOptions options = {});
  Tensor forward(const Tensor& x) override;  // [N, 3, H, W] -> [N, classes]
  // The patch tokens with the class token in front: [N, 1 + (H / p) * (W / p), hidden].
  Tensor embed(const Tensor& x);
  Tensor class_token;  // [1, 1, hidden]
  std::shared_ptr<nn::Module> conv_proj, encoder, heads;
  ViTOptions options;
};

std::shared_ptr<VisionTransformer> vit_b_16(int64_t num_classes = 1000);
std::shared_ptr<VisionTransformer> vit_b_32(int64_t num_classes = 1000);
std::shared_ptr<VisionTransformer> vit_l_16(int64_t num_classes = 1000);

}  // namespace bcos::models
