// BatchNorm2d, LayerNorm, GroupNorm (see norm.h).
#include "nn/norm.h"

#include <typeinfo>

#include "autograd/autograd.h"
#include "nn/bcos.h"
#include "nn/layers.h"

namespace bcos::nn {

RunningStatsStep running_stats_step(const std::optional<double>& momentum, const Tensor& num_batches_tracked) {
  if (momentum) return {*momentum, num_batches_tracked};
  if (!num_batches_tracked.defined()) return {0.0, Tensor()};  // nothing tracked: no running statistics to move
  NoGradGuard no_grad;
  Tensor(num_batches_tracked).add_(ones({}, TensorOptions(DType::i64, num_batches_tracked.device())));
  return {1.0 / double(num_batches_tracked.item<int64_t>()), Tensor()};
}

std::string momentum_repr(const std::optional<double>& momentum) { return momentum ? str(*momentum) : "None"; }

BatchNorm2d::BatchNorm2d(int64_t n, double eps_, std::optional<double> momentum_, bool affine, bool track)
    : Module("BatchNorm2d"), num_features(n), eps(eps_), momentum(momentum_) {
  BCOS_CHECK(n > 0, "BatchNorm2d: num_features must be positive, got ", n);
  if (affine) {
    register_parameter("weight", weight, ones({n}));
    register_parameter("bias", bias, zeros({n}));
  }
  if (track) {
    register_buffer("running_mean", running_mean, zeros({n}));
    register_buffer("running_var", running_var, ones({n}));
    register_buffer("num_batches_tracked", num_batches_tracked, zeros({}, DType::i64));
  }
}

Tensor BatchNorm2d::forward(const Tensor& x) { return run(x, false); }
Tensor BatchNorm2d::forward_relu(const Tensor& x) { return run(x, true); }

Tensor BatchNorm2d::run(const Tensor& x, bool relu) {
  BCOS_CHECK(x.dim() == 4 && x.size(1) == num_features, "BatchNorm2d(", num_features,
             "): expected input [N, ", num_features, ", H, W], got ", x.shape());
  const bool use_batch_stats = training_ || !running_mean.defined();
  const RunningStatsStep step = training_ ? running_stats_step(momentum, num_batches_tracked) : RunningStatsStep{};
  if (training_ && replica_sum)  // (as PyTorch's SyncBatchNorm: synchronised in training only)
    return batch_norm_synced(x, running_mean, running_var, weight, bias, step.factor, eps, relu, true, replica_sum,
                             step.count);
  return batch_norm(x, running_mean, running_var, weight, bias, use_batch_stats, step.factor, eps, relu, step.count);
}

std::string BatchNorm2d::describe() const {
  return str(num_features, ", eps=", eps, ", momentum=", momentum_repr(momentum), ", affine=", weight.defined() ? "True" : "False",
             ", track_running_stats=", running_mean.defined() ? "True" : "False");
}

Tensor batch_norm_relu(Module& bn, Module& relu, const Tensor& x) {
  if (typeid(relu) == typeid(ReLU)) {
    if (typeid(bn) == typeid(BatchNorm2d)) return static_cast<BatchNorm2d&>(bn).forward_relu(x);
    if (typeid(bn) == typeid(BatchNormUncentered2d)) return static_cast<BatchNormUncentered2d&>(bn).forward_relu(x);
  }
  return relu(bn(x));
}

LayerNorm::LayerNorm(Shape shape, double eps_, bool affine) : Module("LayerNorm"), normalized_shape(shape), eps(eps_) {
  BCOS_CHECK(shape.size() > 0 && shape.numel() > 0, "LayerNorm: normalized_shape ", shape, " must be non-empty");
  if (affine) {
    register_parameter("weight", weight, ones(shape));
    register_parameter("bias", bias, zeros(shape));
  }
}

Tensor LayerNorm::forward(const Tensor& x) { return layer_norm(x, normalized_shape, weight, bias, eps); }

std::string LayerNorm::describe() const {
  return str(normalized_shape, ", eps=", eps, ", elementwise_affine=", weight.defined() ? "True" : "False");
}

GroupNorm::GroupNorm(int64_t groups, int64_t channels, double eps_, bool affine)
    : Module("GroupNorm"), num_groups(groups), num_channels(channels), eps(eps_) {
  BCOS_CHECK(groups > 0 && channels > 0 && channels % groups == 0, "GroupNorm: ", channels,
             " channels do not split into ", groups, " groups");
  if (affine) {
    register_parameter("weight", weight, ones({channels}));
    register_parameter("bias", bias, zeros({channels}));
  }
}

Tensor GroupNorm::forward(const Tensor& x) { return group_norm(x, num_groups, weight, bias, eps); }

std::string GroupNorm::describe() const {
  return str(num_groups, ", ", num_channels, ", eps=", eps, ", affine=", weight.defined() ? "True" : "False");
}

}  // namespace bcos::nn
