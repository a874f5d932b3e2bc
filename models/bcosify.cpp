// B-cosification of ResNets (see bcosify.h).
#include "models/bcosify.h"

#include <algorithm>
#include <cmath>
#include <set>

#include "models/resnet.h"
#include "models/vit.h"
#include "nn/attention.h"
#include "nn/layers.h"
#include "nn/linear.h"
#include "nn/norm.h"

namespace bcos::models {

using nn::Module;

InverseNormalize::InverseNormalize(const std::vector<float>& mean, const std::vector<float>& std)
    : Module("InverseNormalize") {
  BCOS_CHECK(mean.size() == 3 && std.size() == 3, "InverseNormalize: need 3 means and 3 stds, got ", mean.size(),
             " and ", std.size());
  // Channel c:     (x − μ) / σ             = ((1 − μ) · x − μ · (1 − x)) / σ
  // Channel c + 3: ((1 − x) − (1 − μ)) / σ = (μ · (1 − x) − (1 − μ) · x) / σ
  std::vector<float> w(36, 0.0f);
  for (int c = 0; c < 3; ++c) {
    BCOS_CHECK(std[size_t(c)] > 0, "InverseNormalize: std must be positive, got ", std[size_t(c)]);
    const float mu = mean[size_t(c)], sigma = std[size_t(c)];
    w[size_t(c * 6 + c)] = (1 - mu) / sigma, w[size_t(c * 6 + c + 3)] = -mu / sigma;
    w[size_t((c + 3) * 6 + c)] = -(1 - mu) / sigma, w[size_t((c + 3) * 6 + c + 3)] = mu / sigma;
  }
  register_buffer("weight", weight, from_vector(w, {6, 6, 1, 1}));
}

Tensor InverseNormalize::forward(const Tensor& x6) {
  BCOS_CHECK(x6.dim() == 4 && x6.size(1) == 6, "InverseNormalize: expected (x, 1 − x) [N, 6, H, W], got ", x6.shape());
  return conv2d(x6, weight.to(x6.dtype()));
}

BcosClassifier::BcosClassifier(std::shared_ptr<Module> n, std::shared_ptr<Module> m, std::shared_ptr<Module> l)
    : Module("BcosClassifier") {
  register_module("normalize", normalize, std::move(n));
  register_module("model", model, std::move(m));
  register_module("logit", logit, std::move(l));
}

Tensor BcosClassifier::forward(const Tensor& x6) {
  BCOS_CHECK(x6.dim() == 4 && x6.size(1) == 6, "BcosClassifier: expected (x, 1 − x) [N, 6, H, W] (add_inverse of "
             "images in [0, 1]), got ", x6.shape());
  Tensor z = (*normalize)(x6);
  Tensor y;
  if (auto* r = dynamic_cast<ResNet*>(model.get())) {
    y = mean((*r->fc)(r->features(z)), {2, 3});  // the 1×1 B-cos head, then global average pooling
  } else if (auto* c = dynamic_cast<CifarResNet*>(model.get())) {
    y = mean((*c->linear)(c->features(z)), {2, 3});
  } else {
    y = (*model)(z);
  }
  return (*logit)(y);
}

nn::Module& BcosClassifier::head() const {
  if (auto* r = dynamic_cast<ResNet*>(model.get())) return *r->fc;
  if (auto* c = dynamic_cast<CifarResNet*>(model.get())) return *c->linear;
  if (auto* v = dynamic_cast<VisionTransformer*>(model.get())) return *v->heads;
  fail("BcosClassifier: no classifier head known for a ", model->type_name());
}

namespace {

void copy_param(Tensor dst, const Tensor& src) {  // dst: a handle to the parameter (shares storage)
  NoGradGuard no_grad;
  BCOS_CHECK(dst.shape() == src.shape(), "bcosify: internal shape mismatch ", dst.shape(), " vs ", src.shape());
  dst.copy_(src);
}

nn::BcosOptions bcos_options(const BcosifyOptions& o, bool had_bias) {
  nn::BcosOptions b;
  b.b = o.b;
  b.normalize_weights = false;  // B-cosification keeps the pretrained weights as they are
  b.bias = o.keep_bias && had_bias;
  return b;
}

// The classifier head: Linear(C, K) -> 1×1 BcosConv2d(C, K), applied before pooling.
std::shared_ptr<Module> convert_head(const nn::Linear& fc, const BcosifyOptions& o) {
  auto b = std::make_shared<nn::BcosConv2d>(fc.in_features, fc.out_features, 1,
                                            nn::BcosConv2dOptions{1, 0, 1, 1, bcos_options(o, fc.bias.defined())});
  b->to(fc.weight.dtype());
  copy_param(b->weight, fc.weight.detach().reshape({fc.out_features, fc.in_features, 1, 1}));
  if (b->bias.defined()) copy_param(b->bias, fc.bias.detach());
  return b;
}

int64_t head_classes(const Module& head) {
  auto* fc = dynamic_cast<const nn::Linear*>(&head);
  BCOS_CHECK(fc, "bcosify: the classifier head is a ", head.type_name(), ", expected a Linear");
  return fc->out_features;
}

}  // namespace

namespace bcosify_parts {

std::shared_ptr<Module> conv(const Module& m, const BcosifyOptions& o, bool stem) {
  const auto* c = dynamic_cast<const nn::Conv2d*>(&m);
  BCOS_CHECK(c, "bcosify: expected a Conv2d, got a ", m.type_name());
  const nn::Conv2d& conv = *c;
  nn::BcosConv2dOptions opt{conv.options.stride, conv.options.padding, conv.options.dilation, conv.options.groups,
                            bcos_options(o, conv.bias.defined())};
  BCOS_CHECK(!stem || conv.options.groups == 1, "bcosify: the first conv must not be grouped");
  auto b = std::make_shared<nn::BcosConv2d>(stem ? 2 * conv.in_channels : conv.in_channels, conv.out_channels,
                                            conv.kernel_size, opt);
  Tensor w = conv.weight.detach();
  b->to(w.dtype());  // built in float32; the copies below must not round a float64 model
  copy_param(b->weight, stem ? cat({w, -w}, 1) * 0.5 : w);
  if (b->bias.defined()) copy_param(b->bias, conv.bias.detach());
  return b;
}

std::shared_ptr<Module> batch_norm(const Module& m, const BcosifyOptions& o) {
  const auto* b = dynamic_cast<const nn::BatchNorm2d*>(&m);
  BCOS_CHECK(b, "bcosify: expected a BatchNorm2d, got a ", m.type_name());
  const nn::BatchNorm2d& bn = *b;
  BCOS_CHECK(bn.weight.defined() && bn.running_mean.defined(), "bcosify: BatchNorm2d without affine parameters or "
             "running statistics is not supported");
  auto u = std::make_shared<nn::BatchNormUncentered2d>(bn.num_features, bn.eps, bn.momentum, o.keep_bias);
  u->to(bn.weight.dtype());
  NoGradGuard no_grad;
  copy_param(u->weight, bn.weight.detach());
  copy_param(u->running_mean, bn.running_mean);
  copy_param(u->running_var, bn.running_var);
  copy_param(u->num_batches_tracked, bn.num_batches_tracked);
  if (u->bias.defined())  // β′ = β − γ μ / sqrt(var + eps): the centring folded into the shift
    copy_param(u->bias, bn.bias.detach() - bn.weight.detach() * bn.running_mean * rsqrt(bn.running_var + bn.eps));
  return u;
}

std::shared_ptr<Module> linear(const Module& m, const BcosifyOptions& o) {
  const auto* l = dynamic_cast<const nn::Linear*>(&m);
  BCOS_CHECK(l, "bcosify: expected a Linear, got a ", m.type_name());
  const nn::Linear& fc = *l;
  auto b = std::make_shared<nn::BcosLinear>(fc.in_features, fc.out_features, bcos_options(o, fc.bias.defined()));
  b->to(fc.weight.dtype());
  copy_param(b->weight, fc.weight.detach());
  if (b->bias.defined()) copy_param(b->bias, fc.bias.detach());
  return b;
}

std::shared_ptr<Module> layer_norm(const Module& m, const BcosifyOptions& o) {
  const auto* l = dynamic_cast<const nn::LayerNorm*>(&m);
  BCOS_CHECK(l, "bcosify: expected a LayerNorm, got a ", m.type_name());
  const nn::LayerNorm& ln = *l;
  BCOS_CHECK(ln.normalized_shape.size() == 1 && ln.weight.defined(), "bcosify: only LayerNorms over the last dim "
             "with affine parameters are supported, got normalized_shape ", ln.normalized_shape);
  auto d = std::make_shared<nn::DetachableLayerNorm>(ln.normalized_shape[0], ln.eps, o.keep_bias && ln.bias.defined());
  d->to(ln.weight.dtype());
  copy_param(d->weight, ln.weight.detach());
  if (d->bias.defined()) copy_param(d->bias, ln.bias.detach());
  return d;
}

// The packed q/k/v projection stays linear (q and k detached in explanation mode); the output
// projection becomes B-cos.
std::shared_ptr<Module> attention(const Module& layer, const BcosifyOptions& o) {
  const auto* p = dynamic_cast<const nn::MultiheadAttention*>(&layer);
  BCOS_CHECK(p, "bcosify: expected a MultiheadAttention, got a ", layer.type_name());
  const nn::MultiheadAttention& a = *p;
  const bool bias = o.keep_bias && a.in_proj_bias.defined();
  auto m = std::make_shared<nn::MultiheadAttention>(a.embed_dim, a.num_heads, a.dropout, bias);
  m->to(a.in_proj_weight.dtype());
  copy_param(m->in_proj_weight, a.in_proj_weight.detach());
  if (bias) copy_param(m->in_proj_bias, a.in_proj_bias.detach());
  m->detach_qk_when_explaining = true;
  m->replace_child("out_proj", linear(*a.out_proj, o));
  return m;
}

void convert_tree(Module& m, const BcosifyOptions& o, bool vit, const Hook& hook) {
  std::vector<std::string> names;
  for (const auto& [name, child] : m.children()) names.push_back(name);
  for (const std::string& name : names) {
    std::shared_ptr<Module> child = m.child(name);
    if (std::shared_ptr<Module> own = hook ? hook(*child) : nullptr) {
      m.replace_child(name, own);
    } else if (dynamic_cast<nn::Conv2d*>(child.get())) {
      m.replace_child(name, conv(*child, o, false));
    } else if (dynamic_cast<nn::BatchNorm2d*>(child.get())) {
      m.replace_child(name, batch_norm(*child, o));
    } else if (dynamic_cast<nn::MaxPool2d*>(child.get())) {
      if (!o.keep_maxpool) m.replace_child(name, std::make_shared<nn::AvgPool2d>(3, 2, 1));
    } else if (dynamic_cast<nn::Linear*>(child.get())) {
      BCOS_CHECK(vit, "bcosify: unexpected Linear '", name, "' inside a ResNet (only the classifier head is converted)");
      m.replace_child(name, linear(*child, o));
    } else if (dynamic_cast<nn::LayerNorm*>(child.get())) {
      m.replace_child(name, layer_norm(*child, o));
    } else if (auto* act = dynamic_cast<nn::GELU*>(child.get())) {
      BCOS_CHECK(act->approximate == "none", "bcosify: only the exact GELU is supported");
      m.replace_child(name, std::make_shared<nn::DetachableGELU>());
    } else if (dynamic_cast<nn::MultiheadAttention*>(child.get())) {
      m.replace_child(name, attention(*child, o));
    } else {
      convert_tree(*child, o, vit, hook);
    }
  }
}

}  // namespace bcosify_parts

using namespace bcosify_parts;

std::shared_ptr<BcosClassifier> bcosify(std::shared_ptr<Module> model, const BcosifyOptions& o) {
  BCOS_CHECK(model, "bcosify: the model is null");
  BCOS_CHECK(o.b >= 1, "bcosify: b must be at least 1, got ", o.b);
  BCOS_CHECK(o.mean.size() == 3 && o.std.size() == 3, "bcosify: the model's input normalisation (3 means and 3 "
             "stds) is needed to build the 6-channel input; got ", o.mean.size(), " and ", o.std.size());
  const bool training = model->is_training();
  const DType dtype = model->named_parameters().empty() ? DType::f32 : model->named_parameters()[0].second.dtype();
  int64_t classes = 0;
  const bool vit = dynamic_cast<VisionTransformer*>(model.get()) != nullptr;
  // The stem (first conv) and the head (last Linear) get their special conversions; the rest
  // is generic.
  if (auto* r = dynamic_cast<ResNet*>(model.get())) {
    classes = head_classes(*r->fc);
    r->replace_child("conv1", conv(*r->conv1, o, true));
    r->replace_child("fc", convert_head(dynamic_cast<nn::Linear&>(*r->fc), o));
  } else if (auto* c = dynamic_cast<CifarResNet*>(model.get())) {
    classes = head_classes(*c->linear);
    c->replace_child("conv1", conv(*c->conv1, o, true));
    c->replace_child("linear", convert_head(dynamic_cast<nn::Linear&>(*c->linear), o));
  } else if (auto* v = dynamic_cast<VisionTransformer*>(model.get())) {
    auto& heads = dynamic_cast<nn::Sequential&>(*v->heads);
    BCOS_CHECK(heads.size() == 1, "bcosify: ViTs with a pre-logits layer are not supported");
    classes = head_classes(heads[0]);
    v->replace_child("conv_proj", conv(*v->conv_proj, o, true));
  } else {
    fail("bcosify: ", model->type_name(), " is not supported (torchvision ResNets and ViTs, and the CIFAR ResNets are)");
  }
  convert_tree(*model, o, vit);
  const double logit_bias = o.logit_bias.value_or(o.keep_bias ? 0.0 : nn::default_logit_bias(classes));
  auto result = std::make_shared<BcosClassifier>(std::make_shared<InverseNormalize>(o.mean, o.std), model,
                                                 std::make_shared<nn::LogitLayer>(std::nullopt, logit_bias));
  result->to(dtype);
  result->train(training);
  return result;
}

// ---- fine-tuning a converted model ------------------------------------------------------------

double FinetuneSchedule::exponent(int64_t step) const {
  if (b_warmup <= 0) return b;
  return 1 + (b - 1) * std::min(1.0, double(step) / (b_warmup * double(total_steps)));
}

double FinetuneSchedule::bias_fraction(int64_t step, bool head) const {
  const double fraction = head ? head_bias_decay : bias_decay;
  if (step < 0 || keep_biases) return 1;  // as converted, or kept
  if (fraction <= 0) return 0;
  return std::max(0.0, 1 - double(step) / (fraction * double(total_steps)));
}

int64_t FinetuneSchedule::settled_step() const {
  // exponent(step) is b from step b_warmup · total_steps on; α(step) is 0 from fraction ·
  // total_steps on, and the factor α(step) / α(step − 1) is 0 from then (1 throughout when kept).
  double from = b_warmup > 0 ? b_warmup * double(total_steps) : 0;
  if (!keep_biases)
    for (const double fraction : {bias_decay, head_bias_decay}) from = std::max(from, fraction * double(total_steps));
  return int64_t(std::ceil(from));
}

namespace {
bool is_bias_name(const std::string& name) {
  return name == "bias" || (name.size() > 5 && name.compare(name.size() - 5, 5, "_bias") == 0);
}

std::vector<std::pair<std::string, Tensor>> own_biases(const Module& m) {  // not its children's
  std::vector<std::pair<std::string, Tensor>> biases;
  for (const auto& [name, p] : m.named_parameters())
    if (name.find('.') == std::string::npos && is_bias_name(name)) biases.emplace_back(name, p);
  return biases;
}
}  // namespace

void apply_finetune_schedule(BcosClassifier& model, const FinetuneSchedule& s, int64_t step) {
  BCOS_CHECK(s.total_steps > 0 && step >= 0, "apply_finetune_schedule: step ", step, " of ", s.total_steps);
  BCOS_CHECK(s.b >= 1 && s.b_warmup >= 0 && s.bias_decay >= 0 && s.head_bias_decay >= 0,
             "apply_finetune_schedule: b must be at least 1 and the fractions non-negative, got b ", s.b,
             ", b_warmup ", s.b_warmup, ", bias_decay ", s.bias_decay, ", head_bias_decay ", s.head_bias_decay);
  set_bcos_exponent(*model.model, s.exponent(step));
  std::set<const Module*> head;
  for (const auto& [path, m] : model.head().named_modules()) head.insert(m);
  NoGradGuard no_grad;
  for (const auto& [path, m] : model.named_modules()) {
    const bool is_head = head.count(m) > 0;
    const double before = s.bias_fraction(step - 1, is_head), now = s.bias_fraction(step, is_head);
    const double factor = before > 0 ? now / before : 0.0;  // zero stays zero (the optimizer moved it)
    if (factor == 1) continue;
    for (auto& [name, bias] : own_biases(*m)) bias.mul_(factor);  // the handle shares the parameter's storage
  }
}

void set_bcos_exponent(Module& model, double b) {
  BCOS_CHECK(b >= 1, "set_bcos_exponent: b must be at least 1, got ", b);
  for (const auto& [path, m] : model.named_modules()) {
    if (auto* conv = dynamic_cast<nn::BcosConv2d*>(m)) conv->options.bcos.b = b;
    if (auto* lin = dynamic_cast<nn::BcosLinear*>(m)) lin->options.b = b;
  }
}

void remove_biases(Module& model) {
  for (const auto& [path, m] : model.named_modules()) {
    for (const auto& [name, bias] : own_biases(*m)) m->remove_parameter(name);
    if (auto* conv = dynamic_cast<nn::BcosConv2d*>(m)) conv->options.bcos.bias = false;
    if (auto* lin = dynamic_cast<nn::BcosLinear*>(m)) lin->options.bias = false;
  }
}

void recalibrate_batch_norm(Module& model, const std::function<Tensor()>& next_batch, int64_t batches) {
  BCOS_CHECK(batches >= 0, "recalibrate_batch_norm: batches must be non-negative, got ", batches);
  if (batches == 0) return;
  // each norm's momentum and its value, restored after
  std::vector<std::pair<std::optional<double>*, std::optional<double>>> momenta;
  for (const auto& [path, m] : model.named_modules()) {
    if (auto* bn = dynamic_cast<nn::BatchNorm2d*>(m)) momenta.emplace_back(&bn->momentum, bn->momentum);
    if (auto* bn = dynamic_cast<nn::BatchNormUncentered2d*>(m)) momenta.emplace_back(&bn->momentum, bn->momentum);
  }
  const bool training = model.is_training();
  model.train();
  NoGradGuard no_grad;
  try {
    for (int64_t k = 1; k <= batches; ++k) {
      for (auto& [momentum, saved] : momenta) *momentum = 1.0 / double(k);  // the mean of batches 1..k
      model(next_batch());
    }
  } catch (...) {
    for (auto& [momentum, saved] : momenta) *momentum = saved;
    model.train(training);
    throw;
  }
  for (auto& [momentum, saved] : momenta) *momentum = saved;
  model.train(training);
}

}  // namespace bcos::models
