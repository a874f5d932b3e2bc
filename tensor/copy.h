// Raw (autograd-free) copies between any geometries, dtypes and devices. The autograd-aware
// copy_, contiguous, clone and to() are built on these.
#pragma once

#include "tensor/tensor.h"

namespace bcos {

// dst[...] = src[...] converted to dst's dtype; src is broadcast to dst's shape. Devices may
// differ (host <-> device copies); the shapes must agree after broadcasting.
void copy_into(const Tensor& dst, const Tensor& src);

// Sets every element of dst (any strides, any device) to value.
void fill_into(const Tensor& dst, double value);

// `t` itself when already contiguous, else a contiguous copy on the same device.
Tensor raw_contiguous(const Tensor& t);
// A contiguous copy of `t` in `dtype` on `device` (t itself when nothing changes).
Tensor raw_to(const Tensor& t, DType dtype, Device device);
Tensor to_cpu_contiguous(const Tensor& t);

// A broadcast view of `t` to `shape` (stride 0 on expanded dims), no autograd.
Tensor raw_expand(const Tensor& t, const Shape& shape, const char* op);

}  // namespace bcos
