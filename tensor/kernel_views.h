// How kernels of both backends view their contiguous operands (host-side; the structs are plain
// data, passed to CUDA kernels by value):
//   DimView    x as [outer, d, inner] around one dim (softmax, index_select, index_add)
//   Planes     [N, C, H, W] in, [N, C, Ho, Wo] out: N·C independent planes (pooling)
//   Channels   [N, C, S]: per-channel statistics over N and S (batch norm)
#pragma once

#include <cstdint>

#include "tensor/tensor.h"

namespace bcos {

struct DimView {
  int64_t outer, d, inner;
};
inline DimView dim_view(const Tensor& x, int dim) {
  DimView v{1, x.dim() ? x.size(dim) : 1, 1};
  for (int i = 0; i < dim; ++i) v.outer *= x.size(i);
  for (int i = dim + 1; i < x.dim(); ++i) v.inner *= x.size(i);
  return v;
}

struct Planes {
  int64_t planes, h, w, ho, wo;
};
inline Planes planes_of(const Tensor& x, const Tensor& out) {
  return {x.size(0) * x.size(1), x.size(2), x.size(3), out.size(2), out.size(3)};
}

struct Channels {
  int64_t n, c, s;
};
inline Channels channels_of(const Tensor& x) {
  int64_t s = 1;
  for (int d = 2; d < x.dim(); ++d) s *= x.size(d);
  return {x.size(0), x.size(1), s};
}

}  // namespace bcos
