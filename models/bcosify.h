// B-cosification: rewrite a pretrained standard classifier into a B-cos network that computes
// the same kind of function but is a dynamic linear map of its input, logits = W(x) · x, so
// W(x) explains it (the B-cosification paper's recipe, for torchvision / CIFAR ResNets):
//   - the input becomes x₆ = (x, 1 − x) for x in [0, 1]; the model's normalisation becomes a
//     6-channel one (mean (μ, 1 − μ), std (σ, σ)), folded into an exactly *linear* per-pixel map of
//     x₆ (using 1 = x_c + (1 − x_c)), and the first conv takes 6 channels: W₆ = [W, −W] / 2;
//   - every Conv2d becomes a BcosConv2d with the pretrained (not unit-normalised) weights;
//   - BatchNorm2d becomes BatchNormUncentered2d: γ and the running statistics copied, the shift
//     β′ = β − γ · μ_run / sqrt(var_run + eps) (dropped with the other biases);
//   - the max-pool becomes AvgPool2d(3, 2, 1); ReLUs stay;
//   - the final Linear becomes a 1×1 B-cos conv applied before global average pooling, and a
//     LogitLayer adds b = −ln(C − 1).
// ViTs (torchvision layout): every Linear becomes a BcosLinear except the attention's packed
// q/k/v projection, which stays linear with q and k detached in explanation mode; LayerNorm →
// DetachableLayerNorm, GELU → DetachableGELU, biases removed, the patch embedding takes x₆ like
// the first conv, and the head still reads the class token.
// With keep_bias, keep_maxpool and b = 1 the converted model computes the original logits
// exactly (the test that the conversion is right).
#pragma once

#include <functional>
#include <memory>
#include <optional>
#include <vector>

#include "nn/bcos.h"
#include "nn/module.h"

namespace bcos::models {

struct BcosifyOptions {
  double b = 2;
  bool keep_bias = false;     // keep conv / linear biases and the BN shifts β′
  bool keep_maxpool = false;  // keep the stem's max-pool (not linear: breaks completeness)
  // The input normalisation the model was trained with (3 values each; model_spec has them).
  std::vector<float> mean, std;
  // Added to the logits; default −ln(C − 1), or 0 when keep_bias (the original bias is kept).
  std::optional<double> logit_bias;
};

// The 6-channel input normalisation as a bias-free 1×1 map: for x₆ = (x, 1 − x) it gives exactly
// ((x − μ) / σ, ((1 − x) − (1 − μ)) / σ).  x₆: [N, 6, H, W] -> [N, 6, H, W]
class InverseNormalize : public nn::Module {
 public:
  InverseNormalize(const std::vector<float>& mean, const std::vector<float>& std);
  Tensor forward(const Tensor& x6) override;
  Tensor weight;  // buffer [6, 6, 1, 1]
};

// A B-cosified classifier: x₆ [N, 6, H, W] (AddInverse of images in [0, 1]) -> logits [N, C].
// Children: "normalize" (InverseNormalize), "model" (the converted network, its own parameter
// names kept: model.conv1.weight, ...), "logit" (LogitLayer).
class BcosClassifier : public nn::Module {
 public:
  BcosClassifier(std::shared_ptr<nn::Module> normalize, std::shared_ptr<nn::Module> model,
                 std::shared_ptr<nn::Module> logit);
  Tensor forward(const Tensor& x6) override;
  nn::Module& head() const;  // the classifier head inside `model` (fc, linear or heads)
  std::shared_ptr<nn::Module> normalize, model, logit;
};

// Converts `model` (ResNet, CifarResNet or VisionTransformer; its modules are moved into the
// result, so don't use `model` afterwards). Raises for other architectures.
std::shared_ptr<BcosClassifier> bcosify(std::shared_ptr<nn::Module> model, const BcosifyOptions& options);

// ---- building blocks for other models' conversions (models/bcos_clip.cpp) ----------------------
// Each returns the B-cos counterpart of one layer with the pretrained weights copied (biases
// only with keep_bias), in the layer's dtype.
namespace bcosify_parts {
// stem: the layer reads the image, so it takes x₆ with W₆ = [W, −W] / 2.
std::shared_ptr<nn::Module> conv(const nn::Module& conv2d, const BcosifyOptions& o, bool stem);
std::shared_ptr<nn::Module> batch_norm(const nn::Module& batch_norm2d, const BcosifyOptions& o);
std::shared_ptr<nn::Module> linear(const nn::Module& linear, const BcosifyOptions& o);
std::shared_ptr<nn::Module> layer_norm(const nn::Module& layer_norm, const BcosifyOptions& o);
std::shared_ptr<nn::Module> attention(const nn::Module& multihead_attention, const BcosifyOptions& o);
// Another model's own layers: returns the replacement of `child`, or null to use the generic rules.
using Hook = std::function<std::shared_ptr<nn::Module>(nn::Module& child)>;
// Replaces every Conv2d, BatchNorm2d, MaxPool2d (-> AvgPool2d(3, 2, 1) unless keep_maxpool) below
// `m`, and, with `linears`, every Linear, LayerNorm, GELU and MultiheadAttention; `hook` first.
void convert_tree(nn::Module& m, const BcosifyOptions& o, bool linears, const Hook& hook = nullptr);
}  // namespace bcosify_parts

// ---- fine-tuning a converted model ------------------------------------------------------------
// Removing the biases at conversion destroys most of a pretrained network's function (a CIFAR
// ResNet-20 falls to chance), and so does jumping from b = 1 to b = 2. The schedule below lets
// fine-tuning get there gradually; it is a pure function of the step, so resuming needs no state.
//   - bias decay: the biases and BN shifts kept at conversion (keep_bias) fade linearly to zero over
//     the first `bias_decay` of the steps (0: zero from the first step), the classifier head's bias
//     over its own `head_bias_decay`; once zero they stay zero, and remove_biases() drops them at
//     the end, so the final model is bias-free and its explanations complete.
//     With `keep_biases` they stay as the optimizer leaves them (α = 1: an ablation, not complete).
//   - b warm-up: every B-cos layer's b rises linearly from 1 to `b` over the first `b_warmup` of
//     the steps (0: b from the start; convert with b = 1 when warming up).
struct FinetuneSchedule {
  int64_t total_steps = 1;
  double b = 2, b_warmup = 0;
  double bias_decay = 0, head_bias_decay = 0;
  bool keep_biases = false;
  double exponent(int64_t step) const;
  double bias_fraction(int64_t step, bool head) const;  // α(step) in [0, 1]
  // The first step from which apply_finetune_schedule does the same at every step (b reached,
  // every bias fraction settled at 0, or 1 when kept): a CUDA graph may capture it from there.
  int64_t settled_step() const;
};
// Before the forward of step `step` (0, 1, ...): sets b and scales the biases from α(step − 1) to
// α(step) (the optimizer moves them in between, so they are rescaled, not overwritten).
void apply_finetune_schedule(BcosClassifier& model, const FinetuneSchedule& schedule, int64_t step);
void set_bcos_exponent(nn::Module& model, double b);  // every BcosConv2d / BcosLinear below
// Drops every parameter named "bias" or "*_bias" below `model` (the B-cos layers, uncentred BNs,
// layer norms, attention projections), as the authors' `module.bias = None`.
void remove_biases(nn::Module& model);
// Re-estimates the running variances (and means) of every batch norm below `model` on `batches`
// batches from next_batch(), weights frozen: a cumulative average, as PyTorch's momentum=None.
void recalibrate_batch_norm(nn::Module& model, const std::function<Tensor()>& next_batch, int64_t batches);

}  // namespace bcos::models
