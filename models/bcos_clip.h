// B-cos CLIP: CLIP's image tower B-cosified (the B-cosification paper's CLIP experiment), so an
// image embedding is a dynamic linear map of the image, s = W(x) · x₆, and its cosine with any
// text embedding t is explained exactly by W(x)ᵀ t̂ / ‖s‖.
//   ModifiedResNet: x₆ = (x, 1 − x) through CLIP's mean / std as a 6-channel linear map, the first
//     conv with [W, −W] / 2, every conv a BcosConv2d with the pretrained weights, BN -> uncentred
//     BN, biases removed; the stem's three convs and the average-pool downsampling kept (ReLUs
//     too). The attention pool becomes a B-cos attention pool: no positional embedding, no
//     q/k/v/c biases, the mean token queries all HW + 1 tokens; the value and output projections
//     stay linear and the attention weights, detached in explanation mode, are the dynamic weights.
//   VisionTransformer: the ViT recipe of models/bcosify.h (Linear -> BcosLinear except the packed
//     q/k/v projection, LayerNorm / GELU / QuickGELU with their scales detachable), the class
//     token's output, and `proj` as a BcosLinear.
// With b = 1, keep_bias and keep_position the converted tower computes the original embeddings.
// Distillation (the authors' recipe): the student on (x, 1 − x) learns the frozen teacher's
// embeddings of the same images through a sigmoid loss.
#pragma once

#include <memory>
#include <optional>
#include <utility>
#include <vector>

#include "models/clip.h"
#include "nn/module.h"

namespace bcos::models {

struct BcosClipOptions {
  double b = 2;
  bool keep_bias = false;  // conv / linear / attention biases and BN shifts (for the b = 1 check)
  // The positional embeddings: ResNet: the attention pool's (default off, as the paper); ViT: the
  // class and positional embeddings (default on -- without them the tokens carry no position).
  // Both are constants added to the input of a layer, so they take a share of the output that
  // no pixel explains: completeness holds only without them.
  std::optional<bool> keep_position;
};

// The attention pool of a B-cos ModifiedResNet. x: [N, C, H, W] -> [N, output_dim]
class BcosAttentionPool2d : public nn::Module {
 public:
  BcosAttentionPool2d(const AttentionPool2d& original, bool keep_bias, bool keep_position);
  Tensor forward(const Tensor& x) override;
  std::string describe() const override;
  Tensor positional_embedding;                         // [HW + 1, C], only when kept
  std::shared_ptr<nn::Module> q_proj, k_proj, v_proj, c_proj;  // Linear, biases only when kept
  int64_t spacial_dim, embed_dim, num_heads;
};

// x₆: [N, 6, R, R] (add_inverse of images in [0, 1]) -> embeddings [N, embed_dim].
// Children: "normalize" (InverseNormalize with CLIP's mean and std), "visual" (the converted
// tower, parameter names as CLIP's: visual.conv1.weight, ...), "proj" (ViT only).
class BcosClipVisual : public nn::Module {
 public:
  BcosClipVisual(std::shared_ptr<nn::Module> normalize, std::shared_ptr<nn::Module> visual,
                 std::shared_ptr<nn::Module> proj, bool keep_position);
  Tensor forward(const Tensor& x6) override;
  std::shared_ptr<nn::Module> normalize, visual, proj;
  bool vit = false, keep_position = false;
  int64_t input_resolution = 0;
};

// Converts CLIP's image tower (a ModifiedResNet or VisionTransformer; its modules move into the
// result, so don't use `visual` afterwards).
std::shared_ptr<BcosClipVisual> bcosify_clip_visual(std::shared_ptr<nn::Module> visual, const BcosClipOptions& options);

// Makes a CLIP image tower (ModifiedResNet, VisionTransformer or their BcosClipVisual) take
// images of `resolution` px: its positional embeddings' grids are resampled (bicubic, as is
// usual for CLIP at other resolutions); a B-cos ResNet tower without them only changes its size
// check. GridPG uses it to explain 3 x 3 grids of test images at three times the resolution.
void set_image_resolution(nn::Module& tower, int64_t resolution);

// set_image_resolution for a while: on destruction the tower gets back its own resolution and
// positional embeddings, bit for bit. (Setting the old resolution again would resample the
// resampled grid: bicubic up, then an antialiased bicubic down, a smoothing -- not the
// embeddings it was trained with.) The tower must outlive the scope.
class ImageResolutionScope {
 public:
  ImageResolutionScope(nn::Module& tower, int64_t resolution);
  ~ImageResolutionScope();
  ImageResolutionScope(const ImageResolutionScope&) = delete;
  ImageResolutionScope& operator=(const ImageResolutionScope&) = delete;

 private:
  std::vector<std::pair<int64_t*, int64_t>> sizes_;
  std::vector<std::pair<Tensor*, Tensor>> positions_;
};

// Cosine similarities of an image tower's embeddings with fixed text embeddings: images -> [N, K]
// = scale · ŝ · t̂ᵀ. ‖s‖ is detached in explanation mode, so for a B-cos tower the similarity is a
// dynamic linear map of the input and the contributions of each target sum to its value.
class TextSimilarity : public nn::Module {
 public:
  // texts: [K, E] (normalised here); tower: any module producing [N, E].
  TextSimilarity(std::shared_ptr<nn::Module> tower, const Tensor& texts, double scale = 1.0);
  Tensor forward(const Tensor& images) override;
  std::shared_ptr<nn::Module> tower;
  Tensor texts;  // buffer, unit rows
  double scale;
};

// The authors' distillation loss between student and teacher embeddings [B, E]: both L2-
// normalised, logits = 10 · s tᵀ − 10, label +1 on the diagonal and −1 elsewhere,
// loss = −Σ log σ(label · logit) / B.
Tensor sigmoid_distillation_loss(const Tensor& student, const Tensor& teacher);
// 1 − mean cos(sᵢ, tᵢ): the simpler alternative.
Tensor cosine_distillation_loss(const Tensor& student, const Tensor& teacher);

}  // namespace bcos::models
