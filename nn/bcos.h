// B-cos layers: the linear maps whose output is scaled by |cos(x, w)|^(b − 1), and the layers a
// B-cos network needs around them so that the whole network stays a dynamic linear map
// y = W(x) · x. Each layer whose scale depends on the input detaches that scale inside an
// ExplanationModeGuard (autograd.h), so that the input gradient of an output is exactly W(x).
// Formulas: B-cos v2 and the B-cosification paper (see autograd/bcos.cpp for the transform).
#pragma once

#include <optional>
#include <vector>

#include "autograd/ops.h"
#include "nn/module.h"
#include "nn/norm.h"

namespace bcos::nn {

struct BcosOptions {
  double b = 2;
  int64_t max_out = 1;
  // B-cos v2 layers divide each output unit's weights by their norm; layers converted from a
  // pretrained network (B-cosification) use the raw weights.
  bool normalize_weights = true;
  bool bias = false;  // only for the b = 1 equivalence check: B-cos layers have no bias
};

// x: [..., in] -> [..., out].  weight: [out · max_out, in], bias: [out · max_out]
class BcosLinear : public Module {
 public:
  BcosLinear(int64_t in_features, int64_t out_features, BcosOptions options = {});
  Tensor forward(const Tensor& x) override;
  std::string describe() const override;
  Tensor effective_weight() const;  // ŵ: normalised or raw, as the forward uses it
  Tensor weight, bias;
  int64_t in_features, out_features;
  BcosOptions options;
};

struct BcosConv2dOptions {
  IntPair stride = 1, padding = 0, dilation = 1;
  int64_t groups = 1;
  BcosOptions bcos;
};

// x: [N, in, H, W] -> [N, out, Ho, Wo].  weight: [out · max_out, in / groups, kh, kw]
class BcosConv2d : public Module {
 public:
  BcosConv2d(int64_t in_channels, int64_t out_channels, IntPair kernel_size, BcosConv2dOptions options = {});
  Tensor forward(const Tensor& x) override;
  // forward(x) with an epilogue folded into its scale pass (see bcos_conv2d).
  Tensor forward_with(const Tensor& x, const BcosEpilogue& post);
  std::string describe() const override;
  Tensor effective_weight() const;
  Tensor weight, bias;
  int64_t in_channels, out_channels;
  IntPair kernel_size;
  BcosConv2dOptions options;
};

// y = γ · x / sqrt(var + eps) (+ β): batch norm without subtracting the mean, so it is linear in
// x. var is the batch variance in training (the running one in eval), and is detached in
// explanation mode. The buffers are BatchNorm2d's, so the state_dict keys match; as in the
// B-cosification authors' layer, training updates running_var with the biased batch variance and
// leaves running_mean as it was converted (nothing reads it).
class BatchNormUncentered2d : public Module {
 public:
  // momentum = std::nullopt: a cumulative average, as BatchNorm2d.
  explicit BatchNormUncentered2d(int64_t num_features, double eps = 1e-5, std::optional<double> momentum = 0.1,
                                 bool bias = true);
  Tensor forward(const Tensor& x) override;
  Tensor forward_relu(const Tensor& x);  // relu(forward(x)), fused
  // In evaluation mode, with no gradient wanted for weight or bias, the layer is a fixed
  // per-channel map: returned as an epilogue (scale γ / sqrt(running_var + eps), formed as the
  // forward forms it, shift β) for a B-cos layer to apply in its scale pass; nullopt otherwise.
  std::optional<BcosEpilogue> eval_epilogue(bool relu) const;
  std::string describe() const override;
  Tensor weight, bias, running_mean, running_var, num_batches_tracked;
  int64_t num_features;
  double eps;
  std::optional<double> momentum;
  ReplicaSum replica_sum;  // as BatchNorm2d's (dist::use_sync_batch_norm)

 private:
  Tensor run(const Tensor& x, bool relu);
};

// bn(conv(x)), or relu(bn(conv(x))) when relu is given: the B-cos ResNet's conv → batch norm
// (→ ReLU). A BcosConv2d followed by an evaluation-mode BatchNormUncentered2d (and a plain ReLU)
// runs as one B-cos conv with the batch norm folded into its scale pass (explanations and
// inference: one pass fewer over the activation each way, the same output bits); anything else
// runs the modules one after the other (nn::batch_norm_relu for bn → relu).
Tensor conv_bn(Module& conv, Module& bn, Module* relu, const Tensor& x);

// LayerNorm over the last dim whose 1 / sqrt(var + eps) is detached in explanation mode (the
// mean is still subtracted: that part is linear).
class DetachableLayerNorm : public Module {
 public:
  explicit DetachableLayerNorm(int64_t normalized_size, double eps = 1e-5, bool bias = true);
  Tensor forward(const Tensor& x) override;
  std::string describe() const override;
  Tensor weight, bias;
  int64_t normalized_size;
  double eps;
};

// x · Φ(x) with the gate Φ detached in explanation mode.
class DetachableGELU : public Module {
 public:
  DetachableGELU() : Module("DetachableGELU") {}
  Tensor forward(const Tensor& x) override;
};

// CLIP's QuickGELU x · σ(1.702 x) with the gate σ(1.702 x) detached in explanation mode.
class DetachableQuickGELU : public Module {
 public:
  DetachableQuickGELU() : Module("DetachableQuickGELU") {}
  Tensor forward(const Tensor& x) override;
};

// [N, C, ...] -> [N, 2C, ...]: (x, 1 − x), so that a dark pixel still has a norm.
class AddInverse : public Module {
 public:
  AddInverse() : Module("AddInverse") {}
  Tensor forward(const Tensor& x) override { return cat({x, 1.0 - x}, 1); }
};
Tensor add_inverse(const Tensor& x);

// y = x / T + b. T (off by default) and b are constants, not parameters; a B-cos classifier uses
// b = −ln(C − 1), so that an all-zero logit vector means "one in C" under a sigmoid.
class LogitLayer : public Module {
 public:
  explicit LogitLayer(std::optional<double> temperature = std::nullopt, double bias = 0.0);
  Tensor forward(const Tensor& x) override;
  std::string describe() const override;
  std::optional<double> temperature;
  double logit_bias;
};
double default_logit_bias(int64_t num_classes);  // −ln(C − 1)

// Binary cross-entropy with logits against one-hot targets whose off-labels are raised to 1 / C
// (mean over all N · C terms). logits [N, C], target int64 [N].
Tensor uniform_off_labels_bce(const Tensor& logits, const Tensor& target);

class UniformOffLabelsBCE : public Module {
 public:
  UniformOffLabelsBCE() : Module("UniformOffLabelsBCE") {}
  Tensor operator()(const Tensor& logits, const Tensor& target) const { return uniform_off_labels_bce(logits, target); }
};

// Adaptive gradient clipping (NFNets): each unit's gradient is scaled down to at most
// clip · max(‖unit weight‖, eps). Units: output rows of a matrix, output channels of a conv
// weight (norm over dims 1..3), the whole tensor for vectors. Parameters without a gradient
// are skipped.
void adaptive_clip_grad_(const std::vector<Tensor>& params, double clip = 0.01, double eps = 1e-3);

}  // namespace bcos::nn
