// Weight initialisation as torch.nn.init, drawing from bcos's seeded global generator
// (manual_seed). The distributions and bounds are PyTorch's; the random streams are not.
#pragma once

#include "tensor/tensor.h"

namespace bcos::nn::init {

// fan_in / fan_out of a weight: dim 1 / dim 0 times the receptive field (the dims after 1).
std::pair<int64_t, int64_t> fans(const Tensor& weight);

void uniform_(Tensor& t, double low, double high);
void normal_(Tensor& t, double mean = 0.0, double std = 1.0);
// Normal, redrawn outside [a, b] (in absolute units, as torch.nn.init.trunc_normal_).
void trunc_normal_(Tensor& t, double mean = 0.0, double std = 1.0, double a = -2.0, double b = 2.0);
void constant_(Tensor& t, double value);
// U(-bound, bound), bound = gain * sqrt(3 / fan) with gain for leaky_relu(a); what Linear and
// Conv2d use by default with a = sqrt(5), giving bound = 1 / sqrt(fan_in).
void kaiming_uniform_(Tensor& t, double a = 0.0, bool fan_in = true);
// N(0, std), std = sqrt(2) / sqrt(fan): torchvision's ResNet conv init (mode fan_out, relu).
void kaiming_normal_(Tensor& t, bool fan_in = true);
void xavier_uniform_(Tensor& t, double gain = 1.0);

}  // namespace bcos::nn::init
