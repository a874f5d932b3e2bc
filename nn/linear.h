// The linear maps: Linear, Conv2d, Embedding, with PyTorch's parameter names, shapes and
// default initialisation (so training from scratch starts from the same distributions).
#pragma once

#include "autograd/ops.h"
#include "nn/module.h"

namespace bcos::nn {

// y = x W^T + b.  x: [..., in], W: [out, in], b: [out]
class Linear : public Module {
 public:
  Linear(int64_t in_features, int64_t out_features, bool bias = true);
  Tensor forward(const Tensor& x) override;
  std::string describe() const override;
  Tensor weight, bias;
  int64_t in_features, out_features;
};

struct Conv2dOptions {
  IntPair stride = 1, padding = 0, dilation = 1;
  int64_t groups = 1;
  bool bias = true;
};

// x: [N, in, H, W], W: [out, in / groups, kh, kw], b: [out]
class Conv2d : public Module {
 public:
  Conv2d(int64_t in_channels, int64_t out_channels, IntPair kernel_size, Conv2dOptions options = {});
  Tensor forward(const Tensor& x) override;
  std::string describe() const override;
  Tensor weight, bias;
  int64_t in_channels, out_channels;
  IntPair kernel_size;
  Conv2dOptions options;
};

// Rows of W picked by index: [...] int64 -> [..., dim]
class Embedding : public Module {
 public:
  Embedding(int64_t num_embeddings, int64_t embedding_dim);
  Tensor forward(const Tensor& indices) override;
  std::string describe() const override;
  Tensor weight;
  int64_t num_embeddings, embedding_dim;
};

}  // namespace bcos::nn
