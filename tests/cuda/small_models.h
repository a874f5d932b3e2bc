// The small models the GPU cases train: a CIFAR ResNet-20 or its B-cos form, and a CLIP small
// enough for the CUDA emulator to run a step in seconds.
#pragma once

#include <memory>
#include <vector>

#include "models/bcosify.h"
#include "models/clip.h"
#include "models/factory.h"

namespace bcos::small_models {

// ResNet-20 (CIFAR), B-cosified with its input normalisation when `bcos`; on the CPU.
inline std::shared_ptr<nn::Module> resnet20(bool bcos) {
  std::shared_ptr<nn::Module> m = models::create_model("resnet20");
  if (!bcos) return m;
  const models::ModelSpec spec = models::model_spec("resnet20");
  models::BcosifyOptions o;
  o.mean = spec.mean, o.std = spec.std;
  return models::bcosify(m, o);
}

// 32-px images through a ViT tower of 8-px patches (or, with patch 0, a ModifiedResNet), and a
// causal text tower of 9 tokens from a vocabulary of 64.
inline models::ClipConfig clip_config(int64_t patch = 8) {
  models::ClipConfig c;
  c.embed_dim = 16, c.image_resolution = 32, c.vision_heads = 2, c.vision_patch_size = patch;
  c.vision_layers = patch ? std::vector<int64_t>{2} : std::vector<int64_t>{1, 1};
  c.vision_width = patch ? 32 : 8;
  c.context_length = 9, c.vocab_size = 64, c.transformer_width = 32, c.transformer_heads = 2, c.transformer_layers = 2;
  return c;
}

}  // namespace bcos::small_models
