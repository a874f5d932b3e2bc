// OpenAI's CLIP (see clip.h), including their initialisation, so a CLIP trained from scratch
// here starts as theirs would.
#include "models/clip.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <set>

#include "autograd/ops.h"
#include "nn/bcos.h"
#include "nn/init.h"
#include "tensor/index_errors.h"

namespace bcos::models {

using nn::Conv2d;
using nn::Conv2dOptions;
using nn::ModulePtr;

const std::vector<float> kClipMean = {0.48145466f, 0.4578275f, 0.40821073f};
const std::vector<float> kClipStd = {0.26862954f, 0.26130258f, 0.27577711f};

Tensor QuickGELU::forward(const Tensor& x) { return quick_gelu(x); }

Tensor l2_normalize(const Tensor& x) { return x / norm(x, 2, {-1}, true); }

Tensor clip_contrastive_loss(const Tensor& logits) {
  BCOS_CHECK(logits.dim() == 2 && logits.size(0) == logits.size(1) && logits.size(0) > 0,
             "clip_contrastive_loss: expected square logits [N, N] (image i with text i), got ", logits.shape());
  const Tensor labels = arange(double(logits.size(0)), {DType::i64, logits.device()});  // (made on its device)
  return (cross_entropy(logits, labels) + cross_entropy(logits.transpose(0, 1), labels)) * 0.5;
}

Tensor zeroshot_classifier(Clip& model, const std::vector<Tensor>& class_prompt_ids) {
  BCOS_CHECK(!class_prompt_ids.empty(), "zeroshot_classifier: no classes");
  NoGradGuard no_grad;
  std::vector<Tensor> rows;
  for (const Tensor& ids : class_prompt_ids) {
    BCOS_CHECK(ids.dim() == 2 && ids.size(0) > 0, "zeroshot_classifier: each class needs token ids [T, context], got ",
               ids.shape());
    rows.push_back(l2_normalize(mean(l2_normalize(model.encode_text(ids.to(model.logit_scale.device()))), {0})));
  }
  return stack(rows, 0);
}

void clamp_logit_scale_(Clip& model, double max_scale) {
  NoGradGuard no_grad;
  model.logit_scale.copy_(clamp(model.logit_scale, 0.0, std::log(max_scale)));
}

namespace {

ModulePtr conv(int64_t in, int64_t out, int64_t k, int64_t stride = 1) {
  return std::make_shared<Conv2d>(in, out, k, Conv2dOptions{.stride = stride, .padding = k / 2, .bias = false});
}
ModulePtr bn(int64_t c) { return std::make_shared<nn::BatchNorm2d>(c); }
ModulePtr activation(bool quick) {
  return quick ? ModulePtr(std::make_shared<QuickGELU>()) : ModulePtr(std::make_shared<nn::GELU>());
}

// Causal mask of the text transformer: 0 on and below the diagonal, −inf above.
Tensor causal_mask(int64_t n) {
  std::vector<float> m(size_t(n * n), 0.0f);
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = i + 1; j < n; ++j) m[size_t(i * n + j)] = -std::numeric_limits<float>::infinity();
  return from_vector(m, {n, n});
}

}  // namespace

// ---- ModifiedResNet ----------------------------------------------------------------------------
ClipBottleneck::ClipBottleneck(int64_t inplanes, int64_t planes, int64_t stride) : nn::Module("Bottleneck") {
  // Every conv has stride 1; a stride > 1 is an average pool after the 3x3 conv.
  register_module("conv1", conv1, conv(inplanes, planes, 1));
  register_module("bn1", bn1, bn(planes));
  register_module("relu1", relu1, std::make_shared<nn::ReLU>());
  register_module("conv2", conv2, conv(planes, planes, 3));
  register_module("bn2", bn2, bn(planes));
  register_module("relu2", relu2, std::make_shared<nn::ReLU>());
  register_module("avgpool", avgpool, stride > 1 ? ModulePtr(std::make_shared<nn::AvgPool2d>(stride))
                                                 : ModulePtr(std::make_shared<nn::Identity>()));
  register_module("conv3", conv3, conv(planes, planes * expansion, 1));
  register_module("bn3", bn3, bn(planes * expansion));
  register_module("relu3", relu3, std::make_shared<nn::ReLU>());
  if (stride > 1 || inplanes != planes * expansion) {
    auto down = std::make_shared<nn::Sequential>();
    down->register_block("-1", std::make_shared<nn::AvgPool2d>(stride));
    down->register_block("0", conv(inplanes, planes * expansion, 1));
    down->register_block("1", bn(planes * expansion));
    register_module("downsample", downsample, down);
  }
}

Tensor ClipBottleneck::forward(const Tensor& x) {
  Tensor out = nn::conv_bn(*conv1, *bn1, relu1.get(), x);
  out = nn::conv_bn(*conv2, *bn2, relu2.get(), out);
  out = nn::conv_bn(*conv3, *bn3, nullptr, (*avgpool)(out));
  return nn::add_relu(*relu3, out, downsample ? (*downsample)(x) : x);
}

AttentionPool2d::AttentionPool2d(int64_t spacial, int64_t embed, int64_t heads, int64_t output_dim)
    : nn::Module("AttentionPool2d"), spacial_dim(spacial), embed_dim(embed), num_heads(heads) {
  BCOS_CHECK(spacial > 0 && heads > 0 && embed % heads == 0, "AttentionPool2d: embed_dim ", embed,
             " must be a positive multiple of num_heads ", heads, " (spacial_dim ", spacial, ")");
  register_parameter("positional_embedding", positional_embedding, empty({spacial * spacial + 1, embed}));
  nn::init::normal_(positional_embedding, 0.0, 1.0 / std::sqrt(double(embed)));
  register_module("k_proj", k_proj, std::make_shared<nn::Linear>(embed, embed));
  register_module("q_proj", q_proj, std::make_shared<nn::Linear>(embed, embed));
  register_module("v_proj", v_proj, std::make_shared<nn::Linear>(embed, embed));
  register_module("c_proj", c_proj, std::make_shared<nn::Linear>(embed, output_dim > 0 ? output_dim : embed));
}

Tensor AttentionPool2d::forward(const Tensor& x) {
  BCOS_CHECK(x.dim() == 4 && x.size(1) == embed_dim && x.size(2) * x.size(3) == spacial_dim * spacial_dim,
             "AttentionPool2d: expected features [N, ", embed_dim, ", ", spacial_dim, ", ", spacial_dim, "], got ",
             x.shape(), " (is the image the model's input resolution?)");
  const int64_t n = x.size(0), d = embed_dim / num_heads;
  Tensor tokens = x.flatten(2).transpose(1, 2);                                  // [N, HW, C]
  tokens = cat({mean(tokens, {1}, true), tokens}, 1) + positional_embedding;    // [N, 1 + HW, C]
  auto split = [&](const ModulePtr& proj, const Tensor& t) {  // [N, L, C] -> [N, heads, L, d]
    return (*proj)(t).reshape({n, t.size(1), num_heads, d}).transpose(1, 2);
  };
  const Tensor q = split(q_proj, tokens.slice(1, 0, 1)), k = split(k_proj, tokens), v = split(v_proj, tokens);
  const Tensor attn = softmax(matmul(q * (1.0 / std::sqrt(double(d))), k.transpose(2, 3)), -1);  // [N, heads, 1, L]
  const Tensor out = matmul(attn, v).transpose(1, 2).reshape({n, embed_dim});  // the first token's output
  return (*c_proj)(out);
}

ModifiedResNet::ModifiedResNet(std::vector<int64_t> layers, int64_t output_dim, int64_t heads, int64_t resolution,
                               int64_t width)
    : nn::Module("ModifiedResNet"), input_resolution(resolution) {
  BCOS_CHECK(!layers.empty() && layers.size() <= 4 && width > 1 && width % 2 == 0, "ModifiedResNet: 1 to 4 stages "
             "and an even width expected, got ", layers.size(), " stages, width ", width);
  const int64_t stride = int64_t(4) << (layers.size() - 1);  // stem / 4, then / 2 per later stage
  BCOS_CHECK(resolution % stride == 0, "ModifiedResNet: input resolution ", resolution, " must be a multiple of ",
             stride, " for ", layers.size(), " stages");
  register_module("conv1", conv1, std::make_shared<Conv2d>(3, width / 2, 3, Conv2dOptions{.stride = 2, .padding = 1, .bias = false}));
  register_module("bn1", bn1, bn(width / 2));
  register_module("relu1", relu1, std::make_shared<nn::ReLU>());
  register_module("conv2", conv2, conv(width / 2, width / 2, 3));
  register_module("bn2", bn2, bn(width / 2));
  register_module("relu2", relu2, std::make_shared<nn::ReLU>());
  register_module("conv3", conv3, conv(width / 2, width, 3));
  register_module("bn3", bn3, bn(width));
  register_module("relu3", relu3, std::make_shared<nn::ReLU>());
  register_module("avgpool", avgpool, std::make_shared<nn::AvgPool2d>(2));
  stages.resize(layers.size());
  int64_t inplanes = width;
  for (size_t s = 0; s < layers.size(); ++s) {
    BCOS_CHECK(layers[s] > 0, "ModifiedResNet: stage ", s + 1, " needs at least one block");
    const int64_t planes = width << s;
    auto stage = std::make_shared<nn::Sequential>();
    stage->push_back(std::make_shared<ClipBottleneck>(inplanes, planes, s == 0 ? 1 : 2));
    inplanes = planes * ClipBottleneck::expansion;
    for (int64_t b = 1; b < layers[s]; ++b) stage->push_back(std::make_shared<ClipBottleneck>(inplanes, planes, 1));
    register_module("layer" + std::to_string(s + 1), stages[s], stage);
  }
  auto pool = std::make_shared<AttentionPool2d>(resolution / stride, inplanes, heads, output_dim);
  register_module("attnpool", attnpool, pool);
  // OpenAI's initialize_parameters: the pool's projections N(0, C^-1/2), each block's last BN
  // scale zero (a block starts as its shortcut).
  const double std_ = 1.0 / std::sqrt(double(inplanes));
  for (const ModulePtr& p : {pool->q_proj, pool->k_proj, pool->v_proj, pool->c_proj})
    nn::init::normal_(std::static_pointer_cast<nn::Linear>(p)->weight, 0.0, std_);
  for (auto& [name, m] : named_modules())
    if (auto* block = dynamic_cast<ClipBottleneck*>(m)) nn::init::constant_(std::static_pointer_cast<nn::BatchNorm2d>(block->bn3)->weight, 0.0);
}

Tensor ModifiedResNet::features(const Tensor& x) {
  BCOS_CHECK(x.dim() == 4 && x.size(1) == in_channels && x.size(2) == input_resolution && x.size(3) == input_resolution,
             "ModifiedResNet: expected images [N, ", in_channels, ", ", input_resolution, ", ", input_resolution,
             "], got ", x.shape());
  Tensor h = nn::conv_bn(*conv1, *bn1, relu1.get(), x);
  h = nn::conv_bn(*conv2, *bn2, relu2.get(), h);
  h = (*avgpool)(nn::conv_bn(*conv3, *bn3, relu3.get(), h));
  for (const auto& stage : stages) h = (*stage)(h);
  return h;
}

Tensor ModifiedResNet::forward(const Tensor& x) { return (*attnpool)(features(x)); }

// ---- transformer -------------------------------------------------------------------------------
ResidualAttentionBlock::ResidualAttentionBlock(int64_t width, int64_t heads, bool quick_gelu, Tensor mask)
    : nn::Module("ResidualAttentionBlock"), attn_mask(std::move(mask)) {
  register_module("attn", attn, std::make_shared<nn::MultiheadAttention>(width, heads));
  register_module("ln_1", ln_1, std::make_shared<nn::LayerNorm>(Shape{width}));
  auto seq = std::make_shared<nn::Sequential>();
  seq->register_block("c_fc", std::make_shared<nn::Linear>(width, width * 4));
  seq->register_block("gelu", activation(quick_gelu));
  seq->register_block("c_proj", std::make_shared<nn::Linear>(width * 4, width));
  register_module("mlp", mlp, seq);
  register_module("ln_2", ln_2, std::make_shared<nn::LayerNorm>(Shape{width}));
}

Tensor ResidualAttentionBlock::forward(const Tensor& x) {
  const Tensor h = (*ln_1)(x);
  // The mask is not a parameter or buffer (nothing of it is in CLIP's checkpoints), so
  // Module::to does not move it: it follows x here, once, as OpenAI's block does at each call.
  if (attn_mask.defined() && (attn_mask.device() != x.device() || attn_mask.dtype() != x.dtype()))
    attn_mask = attn_mask.to(x.device()).to(x.dtype());
  Tensor mask = attn_mask;
  if (mask.defined()) {
    BCOS_CHECK(x.dim() == 3 && x.size(1) <= mask.size(0), "ResidualAttentionBlock: ", x.size(1),
               " tokens, more than the mask's ", mask.size(0));
    mask = mask.slice(0, 0, x.size(1)).slice(1, 0, x.size(1));
  }
  const Tensor y = x + std::static_pointer_cast<nn::MultiheadAttention>(attn)->forward(h, h, h, mask);
  return y + (*mlp)((*ln_2)(y));
}

ClipTransformer::ClipTransformer(int64_t w, int64_t layers, int64_t heads, bool quick_gelu, Tensor mask)
    : nn::Module("Transformer"), width(w) {
  auto blocks = std::make_shared<nn::Sequential>();
  for (int64_t i = 0; i < layers; ++i) blocks->push_back(std::make_shared<ResidualAttentionBlock>(w, heads, quick_gelu, mask));
  register_module("resblocks", resblocks, blocks);
}

Tensor ClipTransformer::forward(const Tensor& x) {
  BCOS_CHECK(x.dim() == 3 && x.size(2) == width, "Transformer(", width, "): expected [N, L, ", width, "], got ", x.shape());
  return (*resblocks)(x);
}

ClipVisionTransformer::ClipVisionTransformer(int64_t resolution, int64_t patch, int64_t w, int64_t layers, int64_t heads,
                                             int64_t output_dim, bool quick_gelu)
    : nn::Module("VisionTransformer"), input_resolution(resolution), patch_size(patch), width(w) {
  BCOS_CHECK(patch > 0 && resolution % patch == 0, "VisionTransformer: input resolution ", resolution,
             " must be a multiple of the patch size ", patch);
  register_module("conv1", conv1, std::make_shared<Conv2d>(3, w, patch, Conv2dOptions{.stride = patch, .bias = false}));
  const double scale = 1.0 / std::sqrt(double(w));
  const int64_t grid = resolution / patch;
  register_parameter("class_embedding", class_embedding, empty({w}));
  register_parameter("positional_embedding", positional_embedding, empty({grid * grid + 1, w}));
  nn::init::normal_(class_embedding, 0.0, scale);
  nn::init::normal_(positional_embedding, 0.0, scale);
  register_module("ln_pre", ln_pre, std::make_shared<nn::LayerNorm>(Shape{w}));
  register_module("transformer", transformer, std::make_shared<ClipTransformer>(w, layers, heads, quick_gelu));
  register_module("ln_post", ln_post, std::make_shared<nn::LayerNorm>(Shape{w}));
  register_parameter("proj", proj, empty({w, output_dim}));
  nn::init::normal_(proj, 0.0, scale);
}

Tensor ClipVisionTransformer::tokens(const Tensor& x) {
  BCOS_CHECK(x.dim() == 4 && x.size(1) == 3 && x.size(2) == input_resolution && x.size(3) == input_resolution,
             "VisionTransformer: expected images [N, 3, ", input_resolution, ", ", input_resolution, "], got ", x.shape());
  const int64_t n = x.size(0);
  const Tensor patches = (*conv1)(x).reshape({n, width, -1}).transpose(1, 2);  // [N, grid², width]
  const Tensor t = cat({class_embedding.reshape({1, 1, width}).expand({n, 1, width}), patches}, 1);
  return (*ln_pre)(t + positional_embedding);
}

Tensor ClipVisionTransformer::forward(const Tensor& x) {
  const Tensor h = (*transformer)(tokens(x));
  return matmul((*ln_post)(h.select(1, 0)), proj);
}

// ---- CLIP -------------------------------------------------------------------------------------
Clip::Clip(ClipConfig c) : nn::Module("CLIP"), config(std::move(c)) {
  const ClipConfig& o = config;
  BCOS_CHECK(o.embed_dim > 0 && o.context_length > 0 && o.vocab_size > 0 && o.transformer_width > 0 &&
                 o.transformer_heads > 0 && o.transformer_width % o.transformer_heads == 0 && o.vision_heads > 0,
             "CLIP: invalid configuration ", o.describe());
  if (o.vit()) {
    BCOS_CHECK(o.vision_layers.size() == 1, "CLIP: a ViT tower takes one depth, got ", o.vision_layers.size());
    register_module("visual", visual, std::make_shared<ClipVisionTransformer>(o.image_resolution, o.vision_patch_size,
                                                                              o.vision_width, o.vision_layers[0],
                                                                              o.vision_heads, o.embed_dim, o.quick_gelu));
  } else {
    register_module("visual", visual, std::make_shared<ModifiedResNet>(o.vision_layers, o.embed_dim, o.vision_heads,
                                                                       o.image_resolution, o.vision_width));
  }
  auto text = std::make_shared<ClipTransformer>(o.transformer_width, o.transformer_layers, o.transformer_heads,
                                                o.quick_gelu, causal_mask(o.context_length));
  register_module("transformer", transformer, text);
  auto embedding = std::make_shared<nn::Embedding>(o.vocab_size, o.transformer_width);
  register_module("token_embedding", token_embedding, embedding);
  register_parameter("positional_embedding", positional_embedding, empty({o.context_length, o.transformer_width}));
  register_module("ln_final", ln_final, std::make_shared<nn::LayerNorm>(Shape{o.transformer_width}));
  register_parameter("text_projection", text_projection, empty({o.transformer_width, o.embed_dim}));
  register_parameter("logit_scale", logit_scale, full({}, std::log(1.0 / 0.07)));

  // OpenAI's initialize_parameters for the text side.
  const double w = double(o.transformer_width);
  nn::init::normal_(embedding->weight, 0.0, 0.02);
  nn::init::normal_(positional_embedding, 0.0, 0.01);
  const double proj_std = std::pow(w, -0.5) * std::pow(2.0 * double(o.transformer_layers), -0.5);
  const double attn_std = std::pow(w, -0.5), fc_std = std::pow(2.0 * w, -0.5);
  for (auto& [name, m] : text->named_modules())
    if (auto* block = dynamic_cast<ResidualAttentionBlock*>(m)) {
      auto* attn = static_cast<nn::MultiheadAttention*>(block->attn.get());
      nn::init::normal_(attn->in_proj_weight, 0.0, attn_std);
      nn::init::normal_(std::static_pointer_cast<nn::Linear>(attn->out_proj)->weight, 0.0, proj_std);
      auto& mlp = static_cast<nn::Sequential&>(*block->mlp);
      nn::init::normal_(static_cast<nn::Linear&>(mlp[0]).weight, 0.0, fc_std);
      nn::init::normal_(static_cast<nn::Linear&>(mlp[2]).weight, 0.0, proj_std);
    }
  nn::init::normal_(text_projection, 0.0, attn_std);
}

Tensor Clip::encode_image(const Tensor& images) { return (*visual)(images); }

Tensor Clip::encode_text(const Tensor& ids) {
  BCOS_CHECK(ids.dim() == 2 && ids.dtype() == DType::i64 && ids.size(1) == config.context_length,
             "CLIP encode_text: expected token ids i64 [N, ", config.context_length, "], got ", ids.dtype(), " ",
             ids.shape());
  const int64_t n = ids.size(0);
  Tensor x;
  {
    // The embedding checks the ids (on a GPU in its kernel, raised at the next synchronisation)
    // and words an error as ours.
    const IndexRole role("CLIP encode_text: token id", "ids in the model's vocabulary");
    x = (*token_embedding)(ids) + positional_embedding;  // [N, ctx, width]
  }
  x = (*ln_final)((*transformer)(x));
  // The end-of-text token has the largest id: its features represent the text.
  const Tensor eot = argmax(ids, 1);                                                        // [N]
  const Tensor index = eot.reshape({n, 1, 1}).expand({n, 1, config.transformer_width});
  return matmul(gather(x, 1, index).reshape({n, config.transformer_width}), text_projection);
}

Tensor Clip::logits(const Tensor& image_features, const Tensor& text_features) {
  return exp(logit_scale) * matmul(l2_normalize(image_features), l2_normalize(text_features).transpose(0, 1));
}

}  // namespace bcos::models
