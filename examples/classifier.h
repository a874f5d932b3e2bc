// What the examples that run a pretrained classifier share: the --arch / --weights / --resize
// options, and the architecture's evaluation transform -- resize the shorter side (ImageNet
// models: 256 unless --resize says otherwise; CIFAR models: to the input size, which leaves
// CIFAR's own 32 x 32 images alone), center-crop, to_tensor, normalise.
#pragma once

#include "data/transforms.h"
#include "examples/args.h"
#include "models/factory.h"

namespace examples {

inline void model_options(Args& args) {
  args.option("arch", "", "architecture: resnet18/34/50/101/152, resnet20/32/44/56/110, vit_b_16/b_32/l_16", true)
      .option("weights", "", "checkpoint: PyTorch (.pth/.pt/.th, zip or legacy) or .safetensors", true)
      .option("resize", "0", "resize the shorter side to this before the center crop (0: the architecture's "
              "default, 256 for ImageNet models; torchvision's *_V2 ResNet weights expect 232)");
}

inline bcos::data::Transform eval_transform(const bcos::models::ModelSpec& spec, int64_t resize = 0) {
  using namespace bcos::data;
  const int64_t shorter = resize > 0 ? resize : (spec.resize_size > 0 ? spec.resize_size : spec.input_size);
  return Compose({Resize(shorter), CenterCrop(spec.input_size), ToTensor(), Normalize(spec.mean, spec.std)});
}

}  // namespace examples
