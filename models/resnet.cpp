// torchvision's ResNets and the CIFAR ResNets (see resnet.h).
#include "models/resnet.h"

#include "nn/bcos.h"
#include "nn/init.h"

namespace bcos::models {

using nn::Conv2d;
using nn::Conv2dOptions;
using nn::ModulePtr;

namespace {

ModulePtr conv(int64_t in, int64_t out, int64_t k, int64_t stride = 1, int64_t groups = 1, int64_t dilation = 1) {
  // torchvision pads 3x3 convs by their dilation and 1x1 convs not at all; biases are off
  // because a BatchNorm follows.
  const int64_t padding = k == 1 ? 0 : (k == 3 ? dilation : k / 2);
  return std::make_shared<Conv2d>(in, out, k, Conv2dOptions{stride, padding, dilation, groups, false});
}

ModulePtr bn(int64_t c) { return std::make_shared<nn::BatchNorm2d>(c); }

}  // namespace

// ---- torchvision ---------------------------------------------------------------------------
BasicBlock::BasicBlock(int64_t inplanes, int64_t planes, int64_t stride, std::shared_ptr<nn::Sequential> down,
                       int64_t groups, int64_t base_width)
    : nn::Module("BasicBlock") {
  BCOS_CHECK(groups == 1 && base_width == 64, "BasicBlock only supports groups=1 and base_width=64 (as torchvision)");
  register_module("conv1", conv1, conv(inplanes, planes, 3, stride));
  register_module("bn1", bn1, bn(planes));
  register_module("relu", relu, std::make_shared<nn::ReLU>());
  register_module("conv2", conv2, conv(planes, planes, 3));
  register_module("bn2", bn2, bn(planes));
  if (down) register_module("downsample", downsample, down);
}

Tensor BasicBlock::forward(const Tensor& x) {
  Tensor out = nn::conv_bn(*conv1, *bn1, relu.get(), x);
  out = nn::conv_bn(*conv2, *bn2, nullptr, out);
  return nn::add_relu(*relu, out, downsample ? (*downsample)(x) : x);
}

Bottleneck::Bottleneck(int64_t inplanes, int64_t planes, int64_t stride, std::shared_ptr<nn::Sequential> down,
                       int64_t groups, int64_t base_width)
    : nn::Module("Bottleneck") {
  const int64_t width = planes * base_width / 64 * groups;
  register_module("conv1", conv1, conv(inplanes, width, 1));
  register_module("bn1", bn1, bn(width));
  register_module("conv2", conv2, conv(width, width, 3, stride, groups));
  register_module("bn2", bn2, bn(width));
  register_module("conv3", conv3, conv(width, planes * expansion, 1));
  register_module("bn3", bn3, bn(planes * expansion));
  register_module("relu", relu, std::make_shared<nn::ReLU>());
  if (down) register_module("downsample", downsample, down);
}

Tensor Bottleneck::forward(const Tensor& x) {
  Tensor out = nn::conv_bn(*conv1, *bn1, relu.get(), x);
  out = nn::conv_bn(*conv2, *bn2, relu.get(), out);
  out = nn::conv_bn(*conv3, *bn3, nullptr, out);
  return nn::add_relu(*relu, out, downsample ? (*downsample)(x) : x);
}

ResNet::ResNet(const std::string& block, std::vector<int64_t> layers, ResNetOptions options)
    : nn::Module("ResNet"), options_(options) {
  BCOS_CHECK(block == "basic" || block == "bottleneck", "ResNet: block must be basic or bottleneck, got ", block);
  BCOS_CHECK(layers.size() == 4, "ResNet: 4 stages expected, got ", layers.size());
  BCOS_CHECK(options.num_classes > 0 && options.groups > 0 && options.width_per_group > 0,
             "ResNet: num_classes, groups and width_per_group must be positive");
  const bool bottleneck = block == "bottleneck";
  register_module("conv1", conv1, std::make_shared<Conv2d>(3, 64, 7, Conv2dOptions{2, 3, 1, 1, false}));
  register_module("bn1", bn1, bn(64));
  register_module("relu", relu, std::make_shared<nn::ReLU>());
  register_module("maxpool", maxpool, std::make_shared<nn::MaxPool2d>(3, 2, 1));
  const int64_t planes[4] = {64, 128, 256, 512};
  for (int i = 0; i < 4; ++i)
    register_module("layer" + std::to_string(i + 1), stages[size_t(i)],
                    make_stage(bottleneck, planes[i], layers[size_t(i)], i == 0 ? 1 : 2));
  register_module("avgpool", avgpool, std::make_shared<nn::AdaptiveAvgPool2d>(1));
  const int64_t expansion = bottleneck ? Bottleneck::expansion : BasicBlock::expansion;
  register_module("fc", fc, std::make_shared<nn::Linear>(512 * expansion, options.num_classes));
  // torchvision's initialisation: He normal (fan_out) for convolutions; BatchNorm 1 and 0.
  for (auto& [name, m] : named_modules())
    if (auto* c = dynamic_cast<Conv2d*>(m)) nn::init::kaiming_normal_(c->weight, /*fan_in=*/false);
}

std::shared_ptr<nn::Sequential> ResNet::make_stage(bool bottleneck, int64_t planes, int64_t blocks, int64_t stride) {
  const int64_t expansion = bottleneck ? Bottleneck::expansion : BasicBlock::expansion;
  std::shared_ptr<nn::Sequential> down;
  if (stride != 1 || inplanes_ != planes * expansion)
    down = std::make_shared<nn::Sequential>(
        std::vector<ModulePtr>{conv(inplanes_, planes * expansion, 1, stride), bn(planes * expansion)});
  auto stage = std::make_shared<nn::Sequential>();
  auto block = [&](int64_t in, int64_t s, std::shared_ptr<nn::Sequential> d) -> ModulePtr {
    if (bottleneck) return std::make_shared<Bottleneck>(in, planes, s, d, options_.groups, options_.width_per_group);
    return std::make_shared<BasicBlock>(in, planes, s, d, options_.groups, options_.width_per_group);
  };
  stage->push_back(block(inplanes_, stride, down));
  inplanes_ = planes * expansion;
  for (int64_t i = 1; i < blocks; ++i) stage->push_back(block(inplanes_, 1, nullptr));
  return stage;
}

Tensor ResNet::features(const Tensor& x) {
  BCOS_CHECK(x.dim() == 4, "ResNet: expected images [N, C, H, W], got ", x.shape());
  Tensor y = (*maxpool)(nn::conv_bn(*conv1, *bn1, relu.get(), x));
  for (auto& stage : stages) y = stage->forward(y);
  return y;
}

Tensor ResNet::forward(const Tensor& x) { return (*fc)((*avgpool)(features(x)).flatten(1)); }

std::shared_ptr<ResNet> resnet18(ResNetOptions o) { return std::make_shared<ResNet>("basic", std::vector<int64_t>{2, 2, 2, 2}, o); }
std::shared_ptr<ResNet> resnet34(ResNetOptions o) { return std::make_shared<ResNet>("basic", std::vector<int64_t>{3, 4, 6, 3}, o); }
std::shared_ptr<ResNet> resnet50(ResNetOptions o) { return std::make_shared<ResNet>("bottleneck", std::vector<int64_t>{3, 4, 6, 3}, o); }
std::shared_ptr<ResNet> resnet101(ResNetOptions o) { return std::make_shared<ResNet>("bottleneck", std::vector<int64_t>{3, 4, 23, 3}, o); }
std::shared_ptr<ResNet> resnet152(ResNetOptions o) { return std::make_shared<ResNet>("bottleneck", std::vector<int64_t>{3, 8, 36, 3}, o); }

// ---- CIFAR ---------------------------------------------------------------------------------
Tensor ShortcutA::forward(const Tensor& x) {
  // x: [N, C, H, W] -> [N, C + 2 * pad, ceil(H/2), ceil(W/2)]
  Tensor sub = x.slice(2, 0, x.size(2), 2).slice(3, 0, x.size(3), 2);
  return pad(sub, {0, 0, 0, 0, pad_channels, pad_channels});
}

CifarBasicBlock::CifarBasicBlock(int64_t in_planes, int64_t planes, int64_t stride) : nn::Module("BasicBlock") {
  register_module("conv1", conv1, conv(in_planes, planes, 3, stride));
  register_module("bn1", bn1, bn(planes));
  register_module("conv2", conv2, conv(planes, planes, 3));
  register_module("bn2", bn2, bn(planes));
  if (stride != 1 || in_planes != planes) {
    BCOS_CHECK(planes == 2 * in_planes && stride == 2, "CIFAR ResNet: option A shortcuts double the channels "
               "while halving the resolution, not ", in_planes, " -> ", planes, " at stride ", stride);
    register_module("shortcut", shortcut, std::make_shared<ShortcutA>(planes));
  } else {
    register_module("shortcut", shortcut, std::make_shared<nn::Sequential>());  // as the reference: empty
  }
  register_module("relu1", relu1, std::make_shared<nn::ReLU>());
  register_module("relu2", relu2, std::make_shared<nn::ReLU>());
}

Tensor CifarBasicBlock::forward(const Tensor& x) {
  Tensor out = nn::conv_bn(*conv1, *bn1, relu1.get(), x);
  out = nn::conv_bn(*conv2, *bn2, nullptr, out);
  return nn::add_relu(*relu2, out, (*shortcut)(x));
}

CifarResNet::CifarResNet(int64_t depth, int64_t num_classes) : nn::Module("ResNet") {
  BCOS_CHECK(depth >= 8 && (depth - 2) % 6 == 0, "CIFAR ResNet: depth must be 6n + 2 (20, 32, 44, 56, 110), got ", depth);
  const int64_t n = (depth - 2) / 6;
  register_module("conv1", conv1, conv(3, 16, 3));
  register_module("bn1", bn1, bn(16));
  register_module("relu", relu, std::make_shared<nn::ReLU>());
  int64_t in_planes = 16;
  const int64_t planes[3] = {16, 32, 64};
  for (int s = 0; s < 3; ++s) {
    auto stage = std::make_shared<nn::Sequential>();
    for (int64_t b = 0; b < n; ++b) {
      stage->push_back(std::make_shared<CifarBasicBlock>(in_planes, planes[s], b == 0 && s > 0 ? 2 : 1));
      in_planes = planes[s];
    }
    register_module("layer" + std::to_string(s + 1), stages[size_t(s)], stage);
  }
  register_module("linear", linear, std::make_shared<nn::Linear>(64, num_classes));
  // The reference initialises every conv and linear weight with He normal (fan_in).
  for (auto& [name, m] : named_modules()) {
    if (auto* c = dynamic_cast<Conv2d*>(m)) nn::init::kaiming_normal_(c->weight);
    if (auto* l = dynamic_cast<nn::Linear*>(m)) nn::init::kaiming_normal_(l->weight);
  }
}

Tensor CifarResNet::features(const Tensor& x) {
  BCOS_CHECK(x.dim() == 4, "CIFAR ResNet: expected images [N, C, H, W], got ", x.shape());
  Tensor y = nn::conv_bn(*conv1, *bn1, relu.get(), x);
  for (auto& stage : stages) y = stage->forward(y);
  return y;
}

Tensor CifarResNet::forward(const Tensor& x) {
  // mean: the reference's avg_pool2d over the whole (square) map
  return (*linear)(mean(features(x), {2, 3}));
}

}  // namespace bcos::models
