// Helpers shared by the op files: argument checks that raise bcos::Error naming the op and the
// shapes. The kernels themselves are reached through tensor/dispatch.h (kernel::f).
#pragma once

#include <vector>

#include "autograd/ops.h"
#include "tensor/copy.h"
#include "tensor/dispatch.h"
#include "tensor/op_kinds.h"
#include "tensor/tensor.h"

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
             ": expected a float32 or float64 tensor, got ", t.dtype(), " (shape ", t.shape(), ")",
             is_half_float(t.dtype()) ? "; this op has no 16-bit kernel: convert with .to(kFloat32)" : "");
}

// Any floating type, float16 / bfloat16 included: for the ops whose kernels take 16-bit floats
// (elementwise maps and reductions, computed in float32 and rounded once).
inline void check_floating(const char* op, const Tensor& t) {
  BCOS_CHECK(is_floating(t.dtype()), op, ": expected a floating-point tensor, got ", t.dtype(),
             " (shape ", t.shape(), ")");
}

// ---- float16 / bfloat16 through float32 ---------------------------------------------------------
// An op without 16-bit kernels of its own takes float16 / bfloat16 tensors as PyTorch's opmath
// kernels do: the values widened to float32 (exactly), the op computed there, the result rounded
// once to the input's 16-bit type (a B-cos layer or attention as a whole: no 16-bit rounding
// inside). The casts record, so gradients come back in each input's own type. The cost is the
// float32 copies' memory traffic: native 16-bit kernels are the next step, where a GPU benchmark
// asks for them.
inline bool is_half(const Tensor& t) { return t.defined() && is_half_float(t.dtype()); }
inline Tensor widened(const Tensor& t) { return is_half(t) ? t.to(DType::f32) : t; }
// A running statistic (which may be undefined) detached and widened: stepped in place when float32.
inline Tensor widened_statistic(const Tensor& t) { return t.defined() ? widened(t.detach()) : t; }

template <class F>
Tensor through_float32(const Tensor& x, F&& op_on_float32) {
  return op_on_float32().to(x.dtype());
}

// An op on autocast's float32 list (autograd.h) given a 16-bit x: a float32 result under
// autocast (where the list holds for x's device), else rounded back to x's type.
template <class F>
Tensor float32_list_op(const Tensor& x, AutocastList list, F&& op_on_float32) {
  return autocast_widens(x, list) ? op_on_float32() : through_float32(x, op_on_float32);
}

inline void check_index(const char* op, const Tensor& t) {
  BCOS_CHECK(t.dtype() == DType::i64, op, ": indices must be int64, got ", t.dtype(),
             " (shape ", t.shape(), ")");
}

// A 0-dim tensor holding `value` with the dtype and device of `like`.
inline Tensor scalar_like(double value, const Tensor& like) {
  return full(Shape{}, value, {like.dtype(), like.device()});
}

// t itself when contiguous (or undefined), else a contiguous copy: for the kernels that read
// per-channel [C] tensors by raw pointer (a caller may pass strided views).
inline Tensor dense(const Tensor& t) { return t.defined() ? raw_contiguous(t) : t; }

// In-place ops refuse tensors whose change autograd could not track.
void check_inplace(const char* op, const Tensor& self);

// Batch norm's per-channel finish (kernel::batch_norm_finish): returns invstd = 1 / sqrt(var + eps),
// and steps the running statistics that are defined, r = (1 − m) r + m x (running_var's x: var ·
// unbias), and the batch count (an int64 scalar) when defined. No graph is recorded.
Tensor finish_batch_statistics(const Tensor& mean, const Tensor& var, double eps, double momentum, double unbias,
                               const Tensor& running_mean, const Tensor& running_var,
                               const Tensor& batches_tracked = Tensor());
// The batch count of a training step whose statistics a batch norm does not finish (an empty
// batch: nothing to move the running statistics towards, but PyTorch's module counts it).
void count_batch(const Tensor& batches_tracked);

// linear of float32 tensors under autocast in its rounding form (float32 result, as
// conv2d_rounding_operands below), with the choice of what it keeps of x: the rounded copy it multiplies
// (linear's own choice), or x itself, for a caller that keeps x anyway (bcos_linear: its norm's
// backward reads x) -- a second, rounded copy would only add memory.
Tensor linear_keeping(const Tensor& x, const Tensor& weight, const Tensor& bias, bool keep_rounded_input);

// conv2d of float32 tensors whose products, forward and backward, take autocast's rounding of
// their operands, with a float32 result: the B-cos convolution's own product under autocast (its
// scale reads the float32 sums); the public conv2d returns a 16-bit result there (autograd.h).
Tensor conv2d_rounding_operands(const Tensor& x, const Tensor& w, const Tensor& bias, IntPair stride,
                                IntPair padding, IntPair dilation, int64_t groups);

// conv2d's checks of its operands (errors name "conv2d") and the kernels' parameters (autocast's
// operand type included) with the output's shape: for ops that run conv2d's kernels in a node of
// their own (bcos_conv2d).
struct Conv2dSetup {
  Conv2dParams params;
  Shape out_shape;
};
Conv2dSetup conv2d_setup(const Tensor& x, const Tensor& w, const Tensor& bias, IntPair stride, IntPair padding,
                         IntPair dilation, int64_t groups);

}  // namespace bcos::detail
