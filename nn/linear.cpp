// Linear, Conv2d and Embedding (see linear.h).
#include "nn/linear.h"

#include <cmath>

#include "nn/init.h"

namespace bcos::nn {

Linear::Linear(int64_t in, int64_t out, bool with_bias) : Module("Linear"), in_features(in), out_features(out) {
  BCOS_CHECK(in > 0 && out > 0, "Linear: features must be positive, got ", in, " -> ", out);
  register_parameter("weight", weight, empty({out, in}));
  init::kaiming_uniform_(weight, std::sqrt(5.0));  // = U(+-1/sqrt(in))
  if (with_bias) {
    register_parameter("bias", bias, empty({out}));
    const double bound = 1.0 / std::sqrt(double(in));
    init::uniform_(bias, -bound, bound);
  }
}

Tensor Linear::forward(const Tensor& x) { return linear(x, weight, bias); }

std::string Linear::describe() const {
  return str("in_features=", in_features, ", out_features=", out_features, ", bias=", bias.defined() ? "True" : "False");
}

Conv2d::Conv2d(int64_t in, int64_t out, IntPair k, Conv2dOptions o)
    : Module("Conv2d"), in_channels(in), out_channels(out), kernel_size(k), options(o) {
  BCOS_CHECK(in > 0 && out > 0 && k.h > 0 && k.w > 0 && o.groups > 0 && in % o.groups == 0 && out % o.groups == 0,
             "Conv2d: in ", in, ", out ", out, ", kernel ", k.h, "x", k.w, ", groups ", o.groups,
             ": channels must be positive and divisible by groups");
  register_parameter("weight", weight, empty({out, in / o.groups, k.h, k.w}));
  init::kaiming_uniform_(weight, std::sqrt(5.0));
  if (o.bias) {
    register_parameter("bias", bias, empty({out}));
    const double bound = 1.0 / std::sqrt(double(in / o.groups * k.h * k.w));
    init::uniform_(bias, -bound, bound);
  }
}

Tensor Conv2d::forward(const Tensor& x) {
  return conv2d(x, weight, bias, options.stride, options.padding, options.dilation, options.groups);
}

std::string Conv2d::describe() const {
  std::string s = str(in_channels, ", ", out_channels, ", kernel_size=(", kernel_size.h, ", ", kernel_size.w,
                      "), stride=(", options.stride.h, ", ", options.stride.w, ")");
  if (options.padding.h || options.padding.w) s += str(", padding=(", options.padding.h, ", ", options.padding.w, ")");
  if (options.dilation.h != 1 || options.dilation.w != 1)
    s += str(", dilation=(", options.dilation.h, ", ", options.dilation.w, ")");
  if (options.groups != 1) s += str(", groups=", options.groups);
  if (!bias.defined()) s += ", bias=False";
  return s;
}

Embedding::Embedding(int64_t n, int64_t dim) : Module("Embedding"), num_embeddings(n), embedding_dim(dim) {
  BCOS_CHECK(n > 0 && dim > 0, "Embedding: sizes must be positive, got ", n, " x ", dim);
  register_parameter("weight", weight, empty({n, dim}));
  init::normal_(weight);
}

Tensor Embedding::forward(const Tensor& indices) { return embedding(indices, weight); }

std::string Embedding::describe() const { return str(num_embeddings, ", ", embedding_dim); }

}  // namespace bcos::nn
