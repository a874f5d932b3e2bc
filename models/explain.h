// Explanations. A B-cos network is a dynamic linear map, logits = W(x) · x; in explanation mode
// (autograd.h) its input gradient is W(x) itself, so one batched backward pass gives, for each
// image and the class asked for, the weights W(x) [6, H, W] and the contribution map
// Σ_c x · W(x) [H, W], whose sum is the logit (minus the logit layer's bias). For a standard
// model the same call gives the plain gradient and input × gradient, so both are compared on
// one metric. Visualisations follow B-cos v2's gradient_to_image.
#pragma once

#include "nn/module.h"

namespace bcos::models {

struct Explanation {
  Tensor targets;        // the explained classes [N]
  Tensor logits;         // [N, C]
  Tensor weights;        // W(x) (or the gradient): like the input, [N, C_in, H, W]
  Tensor contributions;  // Σ over input channels of input · weights: [N, H, W]
};

// inputs: what the model takes ([N, 6, H, W] for a B-cos model); targets: int64 [N], or undefined
// to explain each image's predicted class. The model runs in eval mode and explanation mode, its
// parameters not requiring grad (only the input gradient is computed); all restored afterwards.
Explanation explain(nn::Module& model, const Tensor& inputs, const Tensor& targets);

// Contribution maps for several targets per input from one forward pass (the map of each target
// is one more backward pass through the same graph): targets int64 [N, K] -> [N, K, H, W].
// GridPG uses it for the n² cells of a grid.
Tensor contribution_maps(nn::Module& model, const Tensor& inputs, const Tensor& targets);

// The p-th percentile of all values (linear interpolation between order statistics, as numpy).
double percentile(const Tensor& values, double p);

// B-cos v2's colour coding of one explanation: weights [6, H, W], contributions [H, W] ->
// f32 RGBA [H, W, 4] in [0, 1]. w′ = W / (max_c |W| + 1e-12) clamped at 0; rgb = w′[0:3] /
// (w′[0:3] + w′[3:6] + 1e-12); alpha = ‖W‖₂ over channels, 1e-12 where the contribution is
// negative, averaged over smooth × smooth windows (stride 1), divided by its alpha_percentile-th
// percentile and clipped to [0, 1]. smooth must be odd (0 or 1: no smoothing).
Tensor explanation_rgba(const Tensor& weights, const Tensor& contributions, int64_t smooth = 15,
                        double alpha_percentile = 99.5);

// A contribution map [H, W] as blue (negative) – white – red (positive) f32 RGB [H, W, 3],
// symmetric, clipped at the percentile-th percentile of |map|.
Tensor contribution_heatmap(const Tensor& map, double percentile_clip = 99.5);

// f32 [H, W, C] in [0, 1] -> u8 [H, W, C], rounded; `scale` > 1 enlarges it (nearest neighbour)
// so small (CIFAR) images stay legible.
Tensor to_u8_image(const Tensor& image, int64_t scale = 1);

}  // namespace bcos::models
