// Models by name, with what their pretrained weights expect of the input: the factory the
// examples use ("resnet50", "resnet20", ...).
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "nn/module.h"

namespace bcos::models {

struct ModelSpec {
  std::string arch;
  int64_t num_classes = 1000;
  int64_t input_size = 224;   // square crop the network sees
  int64_t resize_size = 256;  // evaluation: Resize(shorter side) before CenterCrop(input_size); 0: none
  std::vector<float> mean, std;
};

// The known architectures: resnet18/34/50/101/152 and vit_b_16/b_32/l_16 (torchvision, ImageNet:
// 224 px after resizing to 256), resnet20/32/44/56/110 (CIFAR-10: 32 px, no resize). All
// normalise with ImageNet's statistics (the shared CIFAR checkpoints were trained so).
std::vector<std::string> architectures();
ModelSpec model_spec(const std::string& arch);
// num_classes <= 0: the architecture's default.
std::shared_ptr<nn::Module> create_model(const std::string& arch, int64_t num_classes = 0);
// Loads a checkpoint as users have it (torchvision .pth, legacy .th, safetensors) into the model,
// strictly; a "module." (DataParallel) or "model." (Lightning) prefix on every key is removed.
void load_pretrained(nn::Module& model, const std::string& path);

}  // namespace bcos::models
