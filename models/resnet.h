// ResNets with the structure and state-dict names of their reference implementations:
//   torchvision's ResNet-18/34/50/101/152 (BasicBlock / Bottleneck, stride on the bottleneck's
//   3x3 conv, "downsample.0/1" projection shortcuts), and
//   the CIFAR ResNets of He et al. 2016 as in Yerlan Idelbayev's pytorch_resnet_cifar10
//   (ResNet-20/32/44/56/110: 3 stages of 16/32/64 channels, option A shortcuts that subsample
//   and zero-pad channels, no parameters of their own).
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "nn/layers.h"
#include "nn/linear.h"
#include "nn/module.h"
#include "nn/norm.h"

namespace bcos::models {

// ---- torchvision ---------------------------------------------------------------------------
class BasicBlock : public nn::Module {
 public:
  static constexpr int64_t expansion = 1;
  BasicBlock(int64_t inplanes, int64_t planes, int64_t stride, std::shared_ptr<nn::Sequential> downsample,
             int64_t groups = 1, int64_t base_width = 64);
  Tensor forward(const Tensor& x) override;
  std::shared_ptr<nn::Module> conv1, bn1, relu, conv2, bn2;
  std::shared_ptr<nn::Module> downsample;  // null: identity shortcut
};

class Bottleneck : public nn::Module {
 public:
  static constexpr int64_t expansion = 4;
  Bottleneck(int64_t inplanes, int64_t planes, int64_t stride, std::shared_ptr<nn::Sequential> downsample,
             int64_t groups = 1, int64_t base_width = 64);
  Tensor forward(const Tensor& x) override;
  std::shared_ptr<nn::Module> conv1, bn1, conv2, bn2, conv3, bn3, relu;
  std::shared_ptr<nn::Module> downsample;
};

struct ResNetOptions {
  int64_t num_classes = 1000;
  int64_t groups = 1;
  int64_t width_per_group = 64;  // the bottleneck's inner width per group (torchvision's argument)
};

class ResNet : public nn::Module {
 public:
  // block: "basic" or "bottleneck"; layers: blocks per stage, e.g. {3, 4, 6, 3} for ResNet-50.
  ResNet(const std::string& block, std::vector<int64_t> layers, ResNetOptions options = {});
  Tensor forward(const Tensor& x) override;
  // The trunk without the pooling and classifier: [N, 3, H, W] -> [N, C, H/32, W/32].
  Tensor features(const Tensor& x);
  std::shared_ptr<nn::Module> conv1, bn1, relu, maxpool, avgpool, fc;
  // layer1..layer4, registered by slot (sized once, so replace_child keeps them current)
  std::vector<std::shared_ptr<nn::Module>> stages = std::vector<std::shared_ptr<nn::Module>>(4);

 private:
  std::shared_ptr<nn::Sequential> make_stage(bool bottleneck, int64_t planes, int64_t blocks, int64_t stride);
  int64_t inplanes_ = 64;
  ResNetOptions options_;
};

std::shared_ptr<ResNet> resnet18(ResNetOptions options = {});
std::shared_ptr<ResNet> resnet34(ResNetOptions options = {});
std::shared_ptr<ResNet> resnet50(ResNetOptions options = {});
std::shared_ptr<ResNet> resnet101(ResNetOptions options = {});
std::shared_ptr<ResNet> resnet152(ResNetOptions options = {});

// ---- CIFAR ---------------------------------------------------------------------------------
// x[:, :, ::2, ::2] with planes/4 zero channels on each side: the parameter-free option A
// shortcut for blocks that halve the resolution and double the channels.
class ShortcutA : public nn::Module {
 public:
  explicit ShortcutA(int64_t planes) : nn::Module("LambdaLayer"), pad_channels(planes / 4) {}
  Tensor forward(const Tensor& x) override;
  int64_t pad_channels;
};

class CifarBasicBlock : public nn::Module {
 public:
  CifarBasicBlock(int64_t in_planes, int64_t planes, int64_t stride);
  Tensor forward(const Tensor& x) override;
  std::shared_ptr<nn::Module> conv1, bn1, conv2, bn2, shortcut;  // shortcut: Identity or ShortcutA
  std::shared_ptr<nn::Module> relu1, relu2;
};

class CifarResNet : public nn::Module {
 public:
  // depth = 6n + 2: 20, 32, 44, 56, 110.
  explicit CifarResNet(int64_t depth, int64_t num_classes = 10);
  Tensor forward(const Tensor& x) override;
  Tensor features(const Tensor& x);  // the trunk: [N, 3, H, W] -> [N, 64, H/4, W/4]
  std::shared_ptr<nn::Module> conv1, bn1, relu, linear;
  std::vector<std::shared_ptr<nn::Module>> stages = std::vector<std::shared_ptr<nn::Module>>(3);  // layer1..3
};

}  // namespace bcos::models
