// Helpers shared by the op files: argument checks that raise bcos::Error naming the op and the
// shapes, and the device switch for the kernels both backends provide.
#pragma once

#include <vector>

#include "tensor/copy.h"
#include "tensor/cpu/kernels.h"
#include "tensor/op_kinds.h"
#include "tensor/tensor.h"
#ifdef BCOS_WITH_CUDA
#include "tensor/cuda/backend.h"
#endif

namespace bcos::detail {

inline void check_defined(const char* op, const Tensor& t, const char* what) {
  BCOS_CHECK(t.defined(), op, ": ", what, " is an undefined tensor");
}

inline void check_same_device(const char* op, const Tensor& a, const Tensor& b) {
  BCOS_CHECK(a.device() == b.device(), op, ": tensors on different devices: ", a.device(),
             " (shape ", a.shape(), ") and ", b.device(), " (shape ", b.shape(),
             "); move one with .to(device)");
}

inline void check_same_dtype(const char* op, const Tensor& a, const Tensor& b) {
  BCOS_CHECK(a.dtype() == b.dtype(), op, ": dtype mismatch: ", a.dtype(), " (shape ",
             a.shape(), ") and ", b.dtype(), " (shape ", b.shape(), ")");
}

inline void check_float(const char* op, const Tensor& t) {
  BCOS_CHECK(t.dtype() == DType::f32 || t.dtype() == DType::f64, op,
             ": expected a float32 or float64 tensor, got ", t.dtype(), " (shape ", t.shape(), ")");
}

inline void check_index(const char* op, const Tensor& t) {
  BCOS_CHECK(t.dtype() == DType::i64, op, ": indices must be int64, got ", t.dtype(),
             " (shape ", t.shape(), ")");
}

// For ops that only have a CPU kernel so far: a clear error instead of a wrong pointer.
inline void require_cpu(const char* op, const Tensor& t) {
  BCOS_CHECK(!t.defined() || t.is_cpu(), op, ": no CUDA kernel yet (input of shape ", t.shape(),
             " on ", t.device(), "); move it to the CPU with .to(\"cpu\")");
}

// A 0-dim tensor holding `value` with the dtype and device of `like`.
inline Tensor scalar_like(double value, const Tensor& like) {
  return full(Shape{}, value, {like.dtype(), like.device()});
}

inline void unary_into(UnaryOp op, const Tensor& x, const Tensor& out, double p0 = 0,
                       double p1 = 0) {
#ifdef BCOS_WITH_CUDA
  if (x.is_cuda()) return cuda::unary(op, x, out, p0, p1);
#endif
  cpu::unary(op, x, out, p0, p1);
}

inline void unary_backward_into(UnaryOp op, const Tensor& g, const Tensor& x, const Tensor& y,
                                const Tensor& gx, double p0 = 0, double p1 = 0) {
#ifdef BCOS_WITH_CUDA
  if (x.is_cuda()) return cuda::unary_backward(op, g, x, y, gx, p0, p1);
#endif
  cpu::unary_backward(op, g, x, y, gx, p0, p1);
}

// a and b must already be broadcast to out's shape.
inline void binary_into(BinaryOp op, const Tensor& a, const Tensor& b, const Tensor& out) {
#ifdef BCOS_WITH_CUDA
  if (a.is_cuda()) return cuda::binary(op, a, b, out);
#endif
  cpu::binary(op, a, b, out);
}

inline void reduce_into(ReduceOp op, const Tensor& x, const std::vector<bool>& dims,
                        const Tensor& out, const Tensor& indices = Tensor(),
                        int64_t correction = 0) {
#ifdef BCOS_WITH_CUDA
  if (x.is_cuda()) return cuda::reduce(op, x, dims, out, indices, correction);
#endif
  cpu::reduce(op, x, dims, out, indices, correction);
}

inline void bmm_into(const Tensor& a, const Tensor& b, const Tensor& out, bool accumulate) {
#ifdef BCOS_WITH_CUDA
  if (a.is_cuda()) return cuda::bmm(a, b, out, accumulate);
#endif
  cpu::bmm(a, b, out, accumulate);
}

// In-place ops refuse tensors whose change autograd could not track.
void check_inplace(const char* op, const Tensor& self);

}  // namespace bcos::detail
