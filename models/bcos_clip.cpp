// B-cos CLIP image towers (see bcos_clip.h): the conversion hooks of CLIP's own layers beside
// the generic ones of models/bcosify.cpp, the B-cos attention pool, text-conditioned
// similarities and the distillation losses.
#include "models/bcos_clip.h"

#include <cmath>

#include "autograd/ops.h"
#include "data/transforms.h"
#include "models/bcosify.h"
#include "nn/bcos.h"

namespace bcos::models {

using nn::Module;
using nn::ModulePtr;

namespace {

void copy_param(Tensor dst, const Tensor& src) {  // dst: a handle sharing the parameter's storage
  NoGradGuard no_grad;
  BCOS_CHECK(dst.shape() == src.shape(), "bcosify_clip_visual: internal shape mismatch ", dst.shape(), " vs ",
             src.shape());
  dst.copy_(src);
}

// A plain copy of a Linear, its bias only when kept.
ModulePtr copy_linear(const Module& m, bool keep_bias) {
  const auto& l = dynamic_cast<const nn::Linear&>(m);
  auto out = std::make_shared<nn::Linear>(l.in_features, l.out_features, keep_bias && l.bias.defined());
  out->to(l.weight.dtype());
  copy_param(out->weight, l.weight.detach());
  if (out->bias.defined()) copy_param(out->bias, l.bias.detach());
  return out;
}

}  // namespace

// ---- the B-cos attention pool ------------------------------------------------------------------
BcosAttentionPool2d::BcosAttentionPool2d(const AttentionPool2d& o, bool keep_bias, bool keep_position)
    : Module("BcosAttentionPool2d"), spacial_dim(o.spacial_dim), embed_dim(o.embed_dim), num_heads(o.num_heads) {
  if (keep_position) {
    register_parameter("positional_embedding", positional_embedding, o.positional_embedding.detach().clone());
  }
  register_module("k_proj", k_proj, copy_linear(*o.k_proj, keep_bias));
  register_module("q_proj", q_proj, copy_linear(*o.q_proj, keep_bias));
  register_module("v_proj", v_proj, copy_linear(*o.v_proj, keep_bias));
  register_module("c_proj", c_proj, copy_linear(*o.c_proj, keep_bias));
}

Tensor BcosAttentionPool2d::forward(const Tensor& x) {
  BCOS_CHECK(x.dim() == 4 && x.size(1) == embed_dim && x.size(2) * x.size(3) == spacial_dim * spacial_dim,
             "BcosAttentionPool2d: expected features [N, ", embed_dim, ", ", spacial_dim, ", ", spacial_dim, "], got ",
             x.shape());
  const int64_t n = x.size(0), d = embed_dim / num_heads;
  Tensor tokens = x.flatten(2).transpose(1, 2);                // [N, HW, C]
  tokens = cat({mean(tokens, {1}, true), tokens}, 1);          // [N, 1 + HW, C]: the mean token first
  if (positional_embedding.defined()) tokens = tokens + positional_embedding;
  auto split = [&](const ModulePtr& proj, const Tensor& t) {  // [N, L, C] -> [N, heads, L, d]
    return (*proj)(t).reshape({n, t.size(1), num_heads, d}).transpose(1, 2);
  };
  Tensor q = split(q_proj, tokens.slice(1, 0, 1)), k = split(k_proj, tokens);
  const Tensor v = split(v_proj, tokens);
  if (explanation_mode()) q = q.detach(), k = k.detach();  // the attention weights: W(x), not a path
  const Tensor attn = softmax(matmul(q * (1.0 / std::sqrt(double(d))), k.transpose(2, 3)), -1);  // [N, heads, 1, L]
  return (*c_proj)(matmul(attn, v).transpose(1, 2).reshape({n, embed_dim}));
}

std::string BcosAttentionPool2d::describe() const {
  return str("embed_dim=", embed_dim, ", num_heads=", num_heads, ", positional_embedding=",
             positional_embedding.defined() ? "kept" : "none");
}

// ---- the converted tower ------------------------------------------------------------------------
BcosClipVisual::BcosClipVisual(ModulePtr n, ModulePtr v, ModulePtr p, bool keep_pos)
    : Module("BcosClipVisual"), keep_position(keep_pos) {
  register_module("normalize", normalize, std::move(n));
  register_module("visual", visual, std::move(v));
  if (p) register_module("proj", proj, std::move(p));
  if (auto* t = dynamic_cast<ClipVisionTransformer*>(visual.get())) {
    vit = true;
    input_resolution = t->input_resolution;
  } else {
    input_resolution = dynamic_cast<ModifiedResNet&>(*visual).input_resolution;
  }
}

Tensor BcosClipVisual::forward(const Tensor& x6) {
  BCOS_CHECK(x6.dim() == 4 && x6.size(1) == 6 && x6.size(2) == input_resolution && x6.size(3) == input_resolution,
             "BcosClipVisual: expected (x, 1 − x) [N, 6, ", input_resolution, ", ", input_resolution,
             "] (add_inverse of images in [0, 1]), got ", x6.shape());
  const Tensor z = (*normalize)(x6);
  if (!vit) {
    auto& r = static_cast<ModifiedResNet&>(*visual);
    return (*r.attnpool)(r.features(z));
  }
  auto& v = static_cast<ClipVisionTransformer&>(*visual);
  const int64_t n = z.size(0), w = v.width;
  const Tensor patches = (*v.conv1)(z).reshape({n, w, -1}).transpose(1, 2);  // [N, grid², width]
  Tensor t;
  if (keep_position) {
    t = cat({v.class_embedding.reshape({1, 1, w}).expand({n, 1, w}), patches}, 1) + v.positional_embedding;
  } else {  // the class token starts empty and gathers its content through attention
    t = cat({zeros({n, 1, w}, {patches.dtype(), patches.device()}), patches}, 1);
  }
  const Tensor h = (*v.transformer)((*v.ln_pre)(t));
  return (*proj)((*v.ln_post)(h.select(1, 0)));
}

std::shared_ptr<BcosClipVisual> bcosify_clip_visual(ModulePtr visual, const BcosClipOptions& options) {
  BCOS_CHECK(visual, "bcosify_clip_visual: the tower is null");
  BCOS_CHECK(options.b >= 1, "bcosify_clip_visual: b must be at least 1, got ", options.b);
  BcosifyOptions o;
  o.b = options.b, o.keep_bias = options.keep_bias;
  o.mean = kClipMean, o.std = kClipStd;
  const bool training = visual->is_training();
  const DType dtype = visual->named_parameters().empty() ? DType::f32 : visual->named_parameters()[0].second.dtype();
  // CLIP's own layers: QuickGELU gets a detachable gate; the B-cos pool is converted already.
  ModulePtr pool;
  const bcosify_parts::Hook hook = [&pool](Module& child) -> ModulePtr {
    if (dynamic_cast<QuickGELU*>(&child)) return std::make_shared<nn::DetachableQuickGELU>();
    if (pool && &child == pool.get()) return pool;
    return nullptr;
  };
  ModulePtr proj;
  bool keep_position = false;
  if (auto* r = dynamic_cast<ModifiedResNet*>(visual.get())) {
    keep_position = options.keep_position.value_or(false);
    r->replace_child("conv1", bcosify_parts::conv(*r->conv1, o, true));
    r->in_channels = 6;
    pool = std::make_shared<BcosAttentionPool2d>(dynamic_cast<AttentionPool2d&>(*r->attnpool), options.keep_bias,
                                                 keep_position);
    r->replace_child("attnpool", pool);
    bcosify_parts::convert_tree(*r, o, false, hook);
  } else if (auto* v = dynamic_cast<ClipVisionTransformer*>(visual.get())) {
    keep_position = options.keep_position.value_or(true);
    v->replace_child("conv1", bcosify_parts::conv(*v->conv1, o, true));
    bcosify_parts::convert_tree(*v, o, true, hook);
    // proj [width, out] as a bias-free B-cos linear map.
    auto p = std::make_shared<nn::BcosLinear>(v->proj.size(0), v->proj.size(1),
                                              nn::BcosOptions{.b = o.b, .normalize_weights = false});
    p->to(v->proj.dtype());
    copy_param(p->weight, v->proj.detach().transpose(0, 1));
    proj = p;
    v->remove_parameter("proj");
    if (!keep_position) {
      v->remove_parameter("class_embedding");
      v->remove_parameter("positional_embedding");
    }
  } else {
    fail("bcosify_clip_visual: ", visual->type_name(), " is not a CLIP image tower (ModifiedResNet or "
         "VisionTransformer)");
  }
  auto result = std::make_shared<BcosClipVisual>(std::make_shared<InverseNormalize>(o.mean, o.std), visual, proj,
                                                 keep_position);
  result->to(dtype);
  result->train(training);
  return result;
}

// ---- other resolutions ------------------------------------------------------------------------
namespace {
// pos [1 + g², C] (the first row: the class / mean token) -> [1 + G², C], the grid resampled (on
// the CPU, where the image resize runs; the result on pos's device).
Tensor resample_positions(const Tensor& pos, int64_t grid) {
  const int64_t old = std::llround(std::sqrt(double(pos.size(0) - 1))), c = pos.size(1);
  BCOS_CHECK(old * old + 1 == pos.size(0), "set_image_resolution: ", pos.size(0), " positions are not 1 + a square");
  if (old == grid) return pos;
  NoGradGuard no_grad;
  const Tensor spatial =
      pos.slice(0, 1, pos.size(0)).to(Device()).to(DType::f32).transpose(0, 1).reshape({c, old, old}).contiguous();
  const Tensor resized = data::resize(spatial, grid, grid, data::Interpolation::bicubic);  // [C, G, G]
  const Tensor rows = resized.reshape({c, grid * grid}).transpose(0, 1).to(pos.dtype()).to(pos.device());
  return cat({pos.slice(0, 0, 1), rows}, 0).contiguous();
}

// Where a CLIP image tower keeps its resolution: the sizes its shape checks read (px), the
// positional embeddings' grids (cells per side) and the embeddings themselves ([1 + grid², C]);
// `stride` px make one grid cell. set_image_resolution and ImageResolutionScope both go through
// this one list.
struct ResolutionFields {
  std::vector<int64_t*> resolutions, grids;
  std::vector<Tensor*> positions;  // (only those the tower has: a B-cos ResNet may drop them)
  int64_t stride = 0;
  const char* stride_name = "";
};

ResolutionFields resolution_fields(Module& tower) {
  ResolutionFields f;
  Module* inner = &tower;
  if (auto* b = dynamic_cast<BcosClipVisual*>(&tower)) {
    f.resolutions.push_back(&b->input_resolution);
    inner = b->visual.get();
  }
  if (auto* r = dynamic_cast<ModifiedResNet*>(inner)) {
    f.resolutions.push_back(&r->input_resolution);
    f.stride = int64_t(4) << (r->stages.size() - 1), f.stride_name = "the ResNet tower's stride";
    if (auto* pool = dynamic_cast<AttentionPool2d*>(r->attnpool.get())) {
      f.grids.push_back(&pool->spacial_dim);
      f.positions.push_back(&pool->positional_embedding);
    } else if (auto* bpool = dynamic_cast<BcosAttentionPool2d*>(r->attnpool.get())) {
      f.grids.push_back(&bpool->spacial_dim);
      if (bpool->positional_embedding.defined()) f.positions.push_back(&bpool->positional_embedding);
    }
  } else if (auto* v = dynamic_cast<ClipVisionTransformer*>(inner)) {
    f.resolutions.push_back(&v->input_resolution);
    f.stride = v->patch_size, f.stride_name = "the ViT's patch size";
    if (v->positional_embedding.defined()) f.positions.push_back(&v->positional_embedding);
  } else {
    fail("set_image_resolution: ", tower.type_name(), " is not a CLIP image tower");
  }
  return f;
}
}  // namespace

void set_image_resolution(Module& tower, int64_t resolution) {
  BCOS_CHECK(resolution > 0, "set_image_resolution: resolution must be positive, got ", resolution);
  const ResolutionFields f = resolution_fields(tower);
  BCOS_CHECK(resolution % f.stride == 0, "set_image_resolution: ", resolution, " px is not a multiple of ",
             f.stride_name, " ", f.stride);
  const int64_t grid = resolution / f.stride;
  for (Tensor* p : f.positions) *p = resample_positions(p->detach(), grid);
  for (int64_t* g : f.grids) *g = grid;
  for (int64_t* r : f.resolutions) *r = resolution;
}

ImageResolutionScope::ImageResolutionScope(Module& tower, int64_t resolution) {
  const ResolutionFields f = resolution_fields(tower);
  for (int64_t* r : f.resolutions) sizes_.emplace_back(r, *r);
  for (int64_t* g : f.grids) sizes_.emplace_back(g, *g);
  for (Tensor* p : f.positions) positions_.emplace_back(p, *p);
  set_image_resolution(tower, resolution);
}

ImageResolutionScope::~ImageResolutionScope() {
  for (auto& [field, value] : sizes_) *field = value;
  for (auto& [field, value] : positions_) *field = value;
}

// ---- text-conditioned similarities -----------------------------------------------------------
TextSimilarity::TextSimilarity(ModulePtr t, const Tensor& text_embeddings, double s) : Module("TextSimilarity"), scale(s) {
  BCOS_CHECK(t, "TextSimilarity: the tower is null");
  BCOS_CHECK(text_embeddings.dim() == 2 && text_embeddings.size(0) > 0, "TextSimilarity: expected text embeddings "
             "[K, E], got ", text_embeddings.shape());
  register_module("tower", tower, std::move(t));
  register_buffer("texts", texts, l2_normalize(text_embeddings.detach()));
}

Tensor TextSimilarity::forward(const Tensor& images) {
  const Tensor s = (*tower)(images);
  BCOS_CHECK(s.dim() == 2 && s.size(1) == texts.size(1), "TextSimilarity: the tower gave ", s.shape(),
             ", the texts are ", texts.shape());
  Tensor length = norm(s, 2, {-1}, true);
  if (explanation_mode()) length = length.detach();  // 1 / ‖s‖ is part of W(x)
  return matmul(s / length, texts.to(s.dtype()).transpose(0, 1)) * scale;
}

// ---- distillation -----------------------------------------------------------------------------
namespace {
// The losses are computed in float32 whatever autocast is on, as the losses on autocast's float32
// list (a bf16 teacher embedding under autocast is widened; their matmul is not rounded to bf16).
struct LossInFloat32 {
  AutocastGuard cpu{DeviceType::cpu, DType::bf16, false}, cuda{DeviceType::cuda, DType::bf16, false};
};
Tensor widened(const Tensor& t) { return is_half_float(t.dtype()) ? t.to(DType::f32) : t; }
}  // namespace

Tensor sigmoid_distillation_loss(const Tensor& student_in, const Tensor& teacher_in) {
  const LossInFloat32 in_float32;
  const Tensor student = widened(student_in), teacher = widened(teacher_in);
  BCOS_CHECK(student.dim() == 2 && student.shape() == teacher.shape() && student.size(0) > 0,
             "sigmoid_distillation_loss: expected student and teacher embeddings of one shape [B, E], got ",
             student.shape(), " and ", teacher.shape());
  const int64_t b = student.size(0);
  const Tensor logits = matmul(l2_normalize(student), l2_normalize(teacher).transpose(0, 1)) * 10.0 - 10.0;
  const Tensor labels = eye(b, b, {logits.dtype(), logits.device()}) * 2.0 - 1.0;  // +1 diagonal, −1 elsewhere
  // −log σ(z) = softplus(−z), written stably as max(−z, 0) + log1p(exp(−|z|)).
  const Tensor z = labels * logits;
  const Tensor loss = relu(neg(z)) + log1p(exp(neg(abs(z))));
  return sum(loss) / double(b);
}

Tensor cosine_distillation_loss(const Tensor& student_in, const Tensor& teacher_in) {
  const LossInFloat32 in_float32;
  const Tensor student = widened(student_in), teacher = widened(teacher_in);
  BCOS_CHECK(student.dim() == 2 && student.shape() == teacher.shape() && student.size(0) > 0,
             "cosine_distillation_loss: expected student and teacher embeddings of one shape [B, E], got ",
             student.shape(), " and ", teacher.shape());
  return 1.0 - mean(sum(l2_normalize(student) * l2_normalize(teacher), {1}));
}

}  // namespace bcos::models
