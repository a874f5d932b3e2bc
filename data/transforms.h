// Image transforms, as torchvision's, on the two layouts an image has in the pipeline:
//   u8  [H, W, C]  as decoded (data/image.h), cheap to crop and flip;
//   f32 [C, H, W]  after to_tensor, what the network reads.
// The geometric ones (resize, crops, flips) take either layout (the dtype tells which) and
// return the same; normalize and add_inverse need f32 [C, H, W].
// Random transforms draw from the Rng they are given, never from a global generator, so a
// seeded pipeline is reproducible (see data/rng.h).
#pragma once

#include <array>
#include <functional>
#include <vector>

#include "data/rng.h"
#include "tensor/tensor.h"

namespace bcos::data {

enum class Interpolation { bilinear, bicubic };

// ---- deterministic building blocks ---------------------------------------------------------
Tensor to_tensor(const Tensor& image);  // u8 [H, W, C] -> f32 [C, H, W] / 255
Tensor normalize(const Tensor& image, const std::vector<float>& mean, const std::vector<float>& std);
// Antialiased resampling (PIL's filters, as torchvision's Resize(antialias=True) on tensors):
// the filter support widens with the downscale factor. u8 images are resampled in float and
// rounded back (bicubic clamps first).
Tensor resize(const Tensor& image, int64_t height, int64_t width,
              Interpolation mode = Interpolation::bilinear);
// The shorter side becomes `size`, the longer one size * long / short (truncated), as
// torchvision's Resize(int). With max_size > 0 the longer side is capped at max_size.
Tensor resize_shorter(const Tensor& image, int64_t size, Interpolation mode = Interpolation::bilinear,
                      int64_t max_size = 0);
// The window [top, top + height) x [left, left + width); parts outside the image are zeros
// (torchvision's crop pads the same way), so pad(p) is crop(-p, -p, H + 2p, W + 2p).
Tensor crop(const Tensor& image, int64_t top, int64_t left, int64_t height, int64_t width);
Tensor pad(const Tensor& image, int64_t padding);
Tensor center_crop(const Tensor& image, int64_t height, int64_t width);
Tensor horizontal_flip(const Tensor& image);
Tensor add_inverse(const Tensor& image);  // f32 [C, H, W] -> [2C, H, W] = [x, 1 - x]

int64_t image_height(const Tensor& image);
int64_t image_width(const Tensor& image);

struct CropBox {
  int64_t top, left, height, width;
};
// torchvision's RandomResizedCrop.get_params: 10 tries of an area fraction in `scale` and a
// log-uniform aspect ratio in `ratio`; then the central crop clamped to `ratio`.
CropBox random_resized_crop_box(int64_t height, int64_t width, Rng& rng,
                                std::array<double, 2> scale = {0.08, 1.0},
                                std::array<double, 2> ratio = {3.0 / 4.0, 4.0 / 3.0});

// ---- composable transforms (the names and defaults of torchvision.transforms) --------------
using Transform = std::function<Tensor(const Tensor& image, Rng& rng)>;

Transform Compose(std::vector<Transform> transforms);
Transform ToTensor();
Transform Normalize(std::vector<float> mean, std::vector<float> std);
Transform Resize(int64_t shorter_side, Interpolation mode = Interpolation::bilinear);
Transform Resize(int64_t height, int64_t width, Interpolation mode = Interpolation::bilinear);
Transform CenterCrop(int64_t size);
Transform CenterCrop(int64_t height, int64_t width);
Transform RandomResizedCrop(int64_t size, std::array<double, 2> scale = {0.08, 1.0},
                            std::array<double, 2> ratio = {3.0 / 4.0, 4.0 / 3.0},
                            Interpolation mode = Interpolation::bilinear);
Transform RandomCrop(int64_t size, int64_t padding = 0);
Transform RandomHorizontalFlip(double p = 0.5);
Transform AddInverse();

// ImageNet's channel statistics, which torchvision's pretrained models expect.
inline const std::vector<float> kImageNetMean = {0.485f, 0.456f, 0.406f};
inline const std::vector<float> kImageNetStd = {0.229f, 0.224f, 0.225f};

}  // namespace bcos::data
