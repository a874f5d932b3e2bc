// The parameter-free layers: activations, dropout and pooling, as modules so that models read
// like their PyTorch definitions (and so bcosify can find and swap them).
#pragma once

#include <optional>
#include <typeinfo>

#include "autograd/ops.h"
#include "nn/module.h"

namespace bcos::nn {

class ReLU : public Module {
 public:
  ReLU() : Module("ReLU") {}
  Tensor forward(const Tensor& x) override { return relu(x); }
};

// relu(a + b) for a residual block's sum and activation: one fused op when relu is a plain ReLU
// (typeid: a subclass or a swapped-in module runs as itself), else the module after the sum.
inline Tensor add_relu(Module& relu, const Tensor& a, const Tensor& b) {
  if (typeid(relu) == typeid(ReLU)) return bcos::add_relu(a, b);
  return relu(a + b);
}

// approximate: "none" (exact, erf) or "tanh".
class GELU : public Module {
 public:
  explicit GELU(std::string approximate = "none") : Module("GELU"), approximate(std::move(approximate)) {}
  Tensor forward(const Tensor& x) override { return gelu(x, approximate); }
  std::string describe() const override { return approximate == "none" ? "" : "approximate='" + approximate + "'"; }
  std::string approximate;
};

class Dropout : public Module {
 public:
  explicit Dropout(double p = 0.5) : Module("Dropout"), p(p) {
    BCOS_CHECK(p >= 0 && p <= 1, "Dropout: p = ", p, " is not a probability");
  }
  Tensor forward(const Tensor& x) override { return dropout(x, p, training_); }
  std::string describe() const override { return str("p=", p); }
  double p;
};

class MaxPool2d : public Module {
 public:
  explicit MaxPool2d(IntPair kernel, std::optional<IntPair> stride = std::nullopt, IntPair padding = 0,
                     IntPair dilation = 1, bool ceil_mode = false)
      : Module("MaxPool2d"), kernel(kernel), stride(stride.value_or(kernel)), padding(padding), dilation(dilation),
        ceil_mode(ceil_mode) {}
  Tensor forward(const Tensor& x) override { return max_pool2d(x, kernel, stride, padding, dilation, ceil_mode); }
  std::string describe() const override {
    return str("kernel_size=", kernel.h, ", stride=", stride.h, ", padding=", padding.h);
  }
  IntPair kernel, stride, padding, dilation;
  bool ceil_mode;
};

class AvgPool2d : public Module {
 public:
  explicit AvgPool2d(IntPair kernel, std::optional<IntPair> stride = std::nullopt, IntPair padding = 0,
                     bool ceil_mode = false, bool count_include_pad = true)
      : Module("AvgPool2d"), kernel(kernel), stride(stride.value_or(kernel)), padding(padding), ceil_mode(ceil_mode),
        count_include_pad(count_include_pad) {}
  Tensor forward(const Tensor& x) override {
    return avg_pool2d(x, kernel, stride, padding, ceil_mode, count_include_pad);
  }
  std::string describe() const override {
    return str("kernel_size=", kernel.h, ", stride=", stride.h, ", padding=", padding.h);
  }
  IntPair kernel, stride, padding;
  bool ceil_mode, count_include_pad;
};

class AdaptiveAvgPool2d : public Module {
 public:
  explicit AdaptiveAvgPool2d(IntPair output_size) : Module("AdaptiveAvgPool2d"), output_size(output_size) {}
  Tensor forward(const Tensor& x) override { return adaptive_avg_pool2d(x, output_size); }
  std::string describe() const override { return str("output_size=(", output_size.h, ", ", output_size.w, ")"); }
  IntPair output_size;
};

}  // namespace bcos::nn
