// The evaluation transform of an architecture, shared by the examples: resize the shorter side
// (ImageNet models: 256 unless --resize says otherwise; CIFAR models: to the input size, which
// leaves CIFAR's own 32 x 32 images alone), center-crop, to_tensor, normalise.
#pragma once

#include "data/transforms.h"
#include "models/factory.h"

namespace examples {

inline bcos::data::Transform eval_transform(const bcos::models::ModelSpec& spec, int64_t resize = 0) {
  using namespace bcos::data;
  const int64_t shorter = resize > 0 ? resize : (spec.resize_size > 0 ? spec.resize_size : spec.input_size);
  return Compose({Resize(shorter), CenterCrop(spec.input_size), ToTensor(), Normalize(spec.mean, spec.std)});
}

}  // namespace examples
