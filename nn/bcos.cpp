// B-cos layers (see bcos.h).
#include "nn/bcos.h"

#include <cmath>
#include <typeinfo>

#include "nn/init.h"
#include "nn/layers.h"
#include "nn/norm.h"

namespace bcos::nn {

namespace {
std::string bcos_describe(const BcosOptions& o, const Tensor& bias) {
  std::string s = str("b=", o.b);
  if (o.max_out != 1) s += str(", max_out=", o.max_out);
  if (!o.normalize_weights) s += ", normalize_weights=False";
  if (bias.defined()) s += ", bias=True";
  return s;
}

void check_bcos_options(const char* layer, const BcosOptions& o) {
  BCOS_CHECK(o.b >= 1, layer, ": b must be at least 1, got ", o.b);
  BCOS_CHECK(o.max_out >= 1 && o.max_out <= 255, layer, ": max_out must be in [1, 255], got ", o.max_out);
}

}  // namespace

BcosLinear::BcosLinear(int64_t in, int64_t out, BcosOptions o)
    : Module("BcosLinear"), in_features(in), out_features(out), options(o) {
  BCOS_CHECK(in > 0 && out > 0, "BcosLinear: features must be positive, got ", in, " -> ", out);
  check_bcos_options("BcosLinear", o);
  register_parameter("weight", weight, empty({out * o.max_out, in}));
  init::kaiming_uniform_(weight, std::sqrt(5.0));
  if (o.bias) {
    register_parameter("bias", bias, empty({out * o.max_out}));
    const double bound = 1.0 / std::sqrt(double(in));
    init::uniform_(bias, -bound, bound);
  }
}

Tensor BcosLinear::effective_weight() const { return options.normalize_weights ? unit_rows(weight) : weight; }

Tensor BcosLinear::forward(const Tensor& x) {
  BCOS_CHECK(x.dim() >= 1 && x.size(-1) == in_features, "BcosLinear(", in_features, " -> ", out_features,
             "): expected input [..., ", in_features, "], got ", x.shape());
  return bcos_linear(x, effective_weight(), bias, options.b, options.max_out);
}

std::string BcosLinear::describe() const {
  return str("in_features=", in_features, ", out_features=", out_features, ", ", bcos_describe(options, bias));
}

BcosConv2d::BcosConv2d(int64_t in, int64_t out, IntPair k, BcosConv2dOptions o)
    : Module("BcosConv2d"), in_channels(in), out_channels(out), kernel_size(k), options(o) {
  BCOS_CHECK(in > 0 && out > 0 && k.h > 0 && k.w > 0 && o.groups > 0 && in % o.groups == 0 && out % o.groups == 0,
             "BcosConv2d: in ", in, ", out ", out, ", kernel ", k.h, "x", k.w, ", groups ", o.groups,
             ": channels must be positive and divisible by groups");
  check_bcos_options("BcosConv2d", o.bcos);
  const int64_t rows = out * o.bcos.max_out;
  register_parameter("weight", weight, empty({rows, in / o.groups, k.h, k.w}));
  init::kaiming_uniform_(weight, std::sqrt(5.0));
  if (o.bcos.bias) {
    register_parameter("bias", bias, empty({rows}));
    const double bound = 1.0 / std::sqrt(double(in / o.groups * k.h * k.w));
    init::uniform_(bias, -bound, bound);
  }
}

Tensor BcosConv2d::effective_weight() const { return options.bcos.normalize_weights ? unit_rows(weight) : weight; }

Tensor BcosConv2d::forward(const Tensor& x) {
  BCOS_CHECK(x.dim() == 4 && x.size(1) == in_channels, "BcosConv2d(", in_channels, " -> ", out_channels,
             "): expected input [N, ", in_channels, ", H, W], got ", x.shape());
  return bcos_conv2d(x, effective_weight(), bias, options.stride, options.padding, options.dilation,
                     options.groups, options.bcos.b, options.bcos.max_out);
}

Tensor BcosConv2d::forward_with(const Tensor& x, const BcosEpilogue& post) {
  BCOS_CHECK(x.dim() == 4 && x.size(1) == in_channels, "BcosConv2d(", in_channels, " -> ", out_channels,
             "): expected input [N, ", in_channels, ", H, W], got ", x.shape());
  return bcos_conv2d(x, effective_weight(), bias, options.stride, options.padding, options.dilation,
                     options.groups, options.bcos.b, options.bcos.max_out, post);
}

std::string BcosConv2d::describe() const {
  std::string s = str(in_channels, ", ", out_channels, ", kernel_size=(", kernel_size.h, ", ", kernel_size.w,
                      "), stride=(", options.stride.h, ", ", options.stride.w, ")");
  if (options.padding.h || options.padding.w) s += str(", padding=(", options.padding.h, ", ", options.padding.w, ")");
  if (options.dilation.h != 1 || options.dilation.w != 1)
    s += str(", dilation=(", options.dilation.h, ", ", options.dilation.w, ")");
  if (options.groups != 1) s += str(", groups=", options.groups);
  return s + ", " + bcos_describe(options.bcos, bias);
}

BatchNormUncentered2d::BatchNormUncentered2d(int64_t n, double eps_, std::optional<double> momentum_, bool with_bias)
    : Module("BatchNormUncentered2d"), num_features(n), eps(eps_), momentum(momentum_) {
  BCOS_CHECK(n > 0, "BatchNormUncentered2d: num_features must be positive, got ", n);
  register_parameter("weight", weight, ones({n}));
  if (with_bias) register_parameter("bias", bias, zeros({n}));
  register_buffer("running_mean", running_mean, zeros({n}));
  register_buffer("running_var", running_var, ones({n}));
  register_buffer("num_batches_tracked", num_batches_tracked, zeros({}, DType::i64));
}

Tensor BatchNormUncentered2d::forward(const Tensor& x) { return run(x, false); }
Tensor BatchNormUncentered2d::forward_relu(const Tensor& x) { return run(x, true); }

Tensor BatchNormUncentered2d::run(const Tensor& x, bool relu) {
  BCOS_CHECK(x.dim() == 4 && x.size(1) == num_features, "BatchNormUncentered2d(", num_features,
             "): expected input [N, ", num_features, ", H, W], got ", x.shape());
  const RunningStatsStep step = training_ ? running_stats_step(momentum, num_batches_tracked) : RunningStatsStep{};
  if (training_ && replica_sum)
    return batch_norm_synced(x, Tensor(), running_var, weight, bias, step.factor, eps, relu, false, replica_sum,
                             step.count);
  return batch_norm_uncentered(x, running_var, weight, bias, training_, step.factor, eps, relu, step.count);
}

std::optional<BcosEpilogue> BatchNormUncentered2d::eval_epilogue(bool relu) const {
  auto wants_grad = [](const Tensor& t) { return t.defined() && t.requires_grad() && grad_enabled(); };
  if (training_ || wants_grad(weight) || wants_grad(bias)) return std::nullopt;
  NoGradGuard no_grad;
  // As batch_norm_uncentered in evaluation: scale = invstd · γ, shift = β (its mean is 0).
  BcosEpilogue post;
  post.scale = batch_norm_eval_scale(running_var.detach(), weight.defined() ? weight.detach() : Tensor(), eps);
  post.shift = bias.defined() ? bias.detach() : zeros({num_features}, {post.scale.dtype(), post.scale.device()});
  post.relu = relu;
  return post;
}

Tensor conv_bn(Module& conv, Module& bn, Module* relu, const Tensor& x) {
  const bool plain_relu = relu == nullptr || typeid(*relu) == typeid(ReLU);
  if (plain_relu && typeid(conv) == typeid(BcosConv2d) && typeid(bn) == typeid(BatchNormUncentered2d)) {
    if (auto post = static_cast<BatchNormUncentered2d&>(bn).eval_epilogue(relu != nullptr))
      return static_cast<BcosConv2d&>(conv).forward_with(x, *post);
  }
  return relu ? batch_norm_relu(bn, *relu, conv(x)) : bn(conv(x));
}

std::string BatchNormUncentered2d::describe() const {
  return str(num_features, ", eps=", eps, ", momentum=", momentum_repr(momentum), ", bias=", bias.defined() ? "True" : "False");
}

DetachableLayerNorm::DetachableLayerNorm(int64_t n, double eps_, bool with_bias)
    : Module("DetachableLayerNorm"), normalized_size(n), eps(eps_) {
  BCOS_CHECK(n > 0, "DetachableLayerNorm: normalized size must be positive, got ", n);
  register_parameter("weight", weight, ones({n}));
  if (with_bias) register_parameter("bias", bias, zeros({n}));
}

Tensor DetachableLayerNorm::forward(const Tensor& x) {
  BCOS_CHECK(x.dim() >= 1 && x.size(-1) == normalized_size, "DetachableLayerNorm(", normalized_size,
             "): expected input [..., ", normalized_size, "], got ", x.shape());
  // Outside explanation mode it is layer_norm: its fused kernels instead of these nine ops and
  // their backwards took a B-cos ViT-B/16 training step (bf16 autocast, batch 8) from 2,647 to
  // 2,428 MB peak and made it 0-8 % faster.
  if (!explanation_mode()) return layer_norm(x, {normalized_size}, weight, bias, eps);
  Tensor centred = x - mean(x, {-1}, true);
  Tensor inv = rsqrt(mean(square(centred), {-1}, true) + eps).detach();
  Tensor y = centred * inv * weight;
  return bias.defined() ? y + bias : y;
}

std::string DetachableLayerNorm::describe() const {
  return str("(", normalized_size, ",), eps=", eps, ", bias=", bias.defined() ? "True" : "False");
}

Tensor DetachableQuickGELU::forward(const Tensor& x) {
  if (!explanation_mode()) return quick_gelu(x);  // one pass each way, the composed ops' roundings
  return x * sigmoid(x * 1.702).detach();
}

Tensor DetachableGELU::forward(const Tensor& x) {
  if (!explanation_mode()) return gelu(x);
  // The gate Φ(x) = gelu(x) / x as a constant (Φ(0) = 1/2).
  Tensor gate;
  {
    NoGradGuard no_grad;
    Tensor xd = x.detach();
    Tensor zero = eq(xd, 0.0);
    gate = where(zero, full(Shape{}, 0.5, {x.dtype(), x.device()}), gelu(xd) / where(zero, 1.0 - xd, xd));
  }
  return x * gate;
}

Tensor add_inverse(const Tensor& x) {
  BCOS_CHECK(x.dim() >= 2, "add_inverse: expected [N, C, ...], got ", x.shape());
  return cat({x, 1.0 - x}, 1);
}

LogitLayer::LogitLayer(std::optional<double> t, double b) : Module("LogitLayer"), temperature(t), logit_bias(b) {
  BCOS_CHECK(!t || *t > 0, "LogitLayer: the temperature must be positive, got ", t.value_or(0));
}

Tensor LogitLayer::forward(const Tensor& x) {
  Tensor y = temperature ? x / *temperature : x;
  return logit_bias != 0 ? y + logit_bias : y;
}

std::string LogitLayer::describe() const {
  return str("temperature=", temperature ? str(*temperature) : std::string("None"), ", bias=", logit_bias);
}

double default_logit_bias(int64_t classes) {
  BCOS_CHECK(classes >= 2, "default_logit_bias: need at least 2 classes, got ", classes);
  return -std::log(double(classes - 1));
}

Tensor uniform_off_labels_bce(const Tensor& logits, const Tensor& target) {
  BCOS_CHECK(logits.dim() == 2 && target.dim() == 1 && target.size(0) == logits.size(0),
             "uniform_off_labels_bce: expected logits [N, C] and target [N], got ", logits.shape(), " and ",
             target.shape());
  const int64_t classes = logits.size(1);
  Tensor t = clamp_min(one_hot(target, classes).to(logits.dtype()), 1.0 / double(classes));
  return binary_cross_entropy_with_logits(logits, t);
}

void adaptive_clip_grad_(const std::vector<Tensor>& params, double clip, double eps) {
  std::vector<Tensor> with_grad, grads;
  for (const Tensor& p : params)
    if (p.grad().defined()) with_grad.push_back(p.detach()), grads.push_back(p.grad());
  adaptive_clip_(with_grad, grads, clip, eps);
}

}  // namespace bcos::nn
