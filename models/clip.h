// CLIP with OpenAI's architecture and state-dict names (their model.py), so released weights
// load one to one:
//   visual      ModifiedResNet (RN50, RN101, RN50x4/x16/x64: a 3-conv stem + 2x2 average pool,
//               bottlenecks that stride by average pooling, AttentionPool2d) or
//               VisionTransformer (ViT-B/32, B/16, L/14, L/14@336px: patchify conv without bias,
//               class embedding, positional embedding, ln_pre, blocks, ln_post, proj)
//   text        token_embedding + positional_embedding, transformer.resblocks.N (ln_1, attn with
//               a packed in_proj, ln_2, mlp.c_fc / QuickGELU / mlp.c_proj), a causal mask,
//               ln_final, the features at the end-of-text token (the largest id) @ text_projection
//   logits      exp(logit_scale) · normalised image features · normalised text featuresᵀ
// ClipConfig::from_state_dict infers the variant from a state dict's shapes as OpenAI's
// build_model does. Small variants (fewer ResNet stages, narrow towers) are the same code.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "nn/attention.h"
#include "nn/layers.h"
#include "nn/linear.h"
#include "nn/module.h"
#include "nn/norm.h"

namespace bcos::models {

struct ClipConfig {
  int64_t embed_dim = 1024;
  int64_t image_resolution = 224;
  // Vision: a ModifiedResNet with these blocks per stage (1 to 4 stages; OpenAI's have 4), or,
  // when vision_patch_size > 0, a ViT of vision_layers[0] blocks.
  std::vector<int64_t> vision_layers = {3, 4, 6, 3};
  int64_t vision_width = 64;
  int64_t vision_patch_size = 0;
  int64_t vision_heads = 32;  // OpenAI: ResNet width · 32 / 64, ViT width / 64
  int64_t context_length = 77, vocab_size = 49408;
  int64_t transformer_width = 512, transformer_heads = 8, transformer_layers = 12;
  bool quick_gelu = true;  // x · σ(1.702 x), as OpenAI's; false: exact GELU (open_clip's non-quickgelu models)

  bool vit() const { return vision_patch_size > 0; }
  // OpenAI's released variants by name: RN50, RN101, RN50x4, RN50x16, RN50x64, ViT-B/32,
  // ViT-B/16, ViT-L/14, ViT-L/14@336px.
  static ClipConfig named(const std::string& name);
  // OpenAI's build_model: every size from the tensors' shapes and the keys present; the heads
  // by OpenAI's rule unless `metadata` (as bcos.cpp saves it) says otherwise.
  static ClipConfig from_state_dict(const nn::StateDict& state,
                                    const std::vector<std::pair<std::string, std::string>>& metadata = {});
  // The sizes as safetensors metadata ("clip.embed_dim", ...), read back by from_state_dict.
  std::vector<std::pair<std::string, std::string>> metadata() const;
  std::string describe() const;
};

// CLIP's input: shorter side to `resolution` (bicubic), centre crop, CLIP's mean and std.
extern const std::vector<float> kClipMean, kClipStd;

class QuickGELU : public nn::Module {
 public:
  QuickGELU() : nn::Module("QuickGELU") {}
  Tensor forward(const Tensor& x) override;  // x · σ(1.702 x)
};

// ---- ModifiedResNet ----------------------------------------------------------------------------
class ClipBottleneck : public nn::Module {
 public:
  static constexpr int64_t expansion = 4;
  ClipBottleneck(int64_t inplanes, int64_t planes, int64_t stride);
  Tensor forward(const Tensor& x) override;  // x: [N, inplanes, H, W] -> [N, 4 planes, H / stride, W / stride]
  std::shared_ptr<nn::Module> conv1, bn1, relu1, conv2, bn2, relu2, avgpool, conv3, bn3, relu3;
  std::shared_ptr<nn::Module> downsample;  // "-1" average pool, "0" 1x1 conv, "1" BN; null: identity
};

// The spatial mean prepended as a token, a positional embedding, one multi-head attention
// query from that token (q/k/v/c projections with biases).
class AttentionPool2d : public nn::Module {
 public:
  AttentionPool2d(int64_t spacial_dim, int64_t embed_dim, int64_t num_heads, int64_t output_dim);
  Tensor forward(const Tensor& x) override;  // x: [N, C, H, W] with H·W = spacial_dim² -> [N, output_dim]
  Tensor positional_embedding;               // [spacial_dim² + 1, C]
  std::shared_ptr<nn::Module> k_proj, q_proj, v_proj, c_proj;
  int64_t spacial_dim, embed_dim, num_heads;
};

class ModifiedResNet : public nn::Module {
 public:
  ModifiedResNet(std::vector<int64_t> layers, int64_t output_dim, int64_t heads, int64_t input_resolution, int64_t width);
  Tensor forward(const Tensor& x) override;   // [N, 3, R, R] -> [N, output_dim]
  Tensor features(const Tensor& x);           // before the attention pool: [N, C, R / s, R / s]
  std::shared_ptr<nn::Module> conv1, bn1, relu1, conv2, bn2, relu2, conv3, bn3, relu3, avgpool, attnpool;
  std::vector<std::shared_ptr<nn::Module>> stages;  // layer1.. (registered by slot)
  int64_t input_resolution;
  int64_t in_channels = 3;  // 6 once B-cosified (models/bcos_clip.h)
};

// ---- transformer -------------------------------------------------------------------------------
class ResidualAttentionBlock : public nn::Module {
 public:
  ResidualAttentionBlock(int64_t width, int64_t heads, bool quick_gelu, Tensor attn_mask = Tensor());
  Tensor forward(const Tensor& x) override;  // x: [N, L, width]
  std::shared_ptr<nn::Module> attn, ln_1, mlp, ln_2;
  Tensor attn_mask;  // [L, L] float (-inf above the diagonal for the text), or undefined
};

class ClipTransformer : public nn::Module {
 public:
  ClipTransformer(int64_t width, int64_t layers, int64_t heads, bool quick_gelu, Tensor attn_mask = Tensor());
  Tensor forward(const Tensor& x) override;  // [N, L, width]
  std::shared_ptr<nn::Module> resblocks;
  int64_t width;
};

class ClipVisionTransformer : public nn::Module {
 public:
  ClipVisionTransformer(int64_t input_resolution, int64_t patch_size, int64_t width, int64_t layers, int64_t heads,
                        int64_t output_dim, bool quick_gelu);
  Tensor forward(const Tensor& x) override;  // [N, 3, R, R] -> [N, output_dim]
  Tensor tokens(const Tensor& x);            // after ln_pre: [N, 1 + (R / p)², width]
  Tensor class_embedding, positional_embedding, proj;  // [width], [1 + (R / p)², width], [width, output_dim]
  std::shared_ptr<nn::Module> conv1, ln_pre, transformer, ln_post;
  int64_t input_resolution, patch_size, width;
};

// ---- CLIP -------------------------------------------------------------------------------------
class Clip : public nn::Module {
 public:
  explicit Clip(ClipConfig config);
  Tensor encode_image(const Tensor& images);  // [N, 3, R, R] -> [N, embed_dim]
  Tensor encode_text(const Tensor& ids);      // i64 [N, context_length] -> [N, embed_dim]
  // logits_per_image [Ni, Nt] = exp(logit_scale) · normalised image · normalised textᵀ
  // (logits_per_text is its transpose).
  Tensor logits(const Tensor& image_features, const Tensor& text_features);
  Tensor forward(const Tensor& images) override { return encode_image(images); }
  std::string describe() const override { return config.describe(); }

  ClipConfig config;
  std::shared_ptr<nn::Module> visual, transformer, token_embedding, ln_final;
  Tensor positional_embedding, text_projection, logit_scale;  // [ctx, width], [width, embed], []
};

// Unit-length rows: x / ‖x‖ along the last dim.
Tensor l2_normalize(const Tensor& x);

// OpenAI's zero-shot classifier: for each class, the text embeddings of its prompts (token ids
// i64 [T, context], one row per template) normalised, averaged and renormalised -> [classes, embed].
// Image logits are then 100 · normalised image features · classifierᵀ.
Tensor zeroshot_classifier(Clip& model, const std::vector<Tensor>& class_prompt_ids);

// CLIP's training loss: image i belongs with text i. The mean of the cross-entropies of the
// rows (each image over the texts) and of the columns (each text over the images).
// logits_per_image: [N, N] -> a scalar.
Tensor clip_contrastive_loss(const Tensor& logits_per_image);

// After each optimizer step, as OpenAI and open_clip do: logit_scale stays in [0, ln max_scale],
// so exp(logit_scale) never exceeds max_scale (100).
void clamp_logit_scale_(Clip& model, double max_scale = 100.0);

// A CLIP from a state dict with OpenAI's names (the variant inferred from it); the buffers
// OpenAI's files carry beside the weights (input_resolution, context_length, vocab_size) are
// dropped; fp16 weights become f32.
std::shared_ptr<Clip> clip_from_state_dict(const nn::StateDict& state,
                                           const std::vector<std::pair<std::string, std::string>>& metadata = {},
                                           bool quick_gelu = true);

}  // namespace bcos::models
