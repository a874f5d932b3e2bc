// The device switch of every kernel in tensor/kernels.inc: kernel::f(args) runs cpu::f or
// cuda::f on the device of its first tensor argument. The op files in autograd/ call kernels only
// through here, so adding a kernel means: declare it in tensor/kernels.inc, define it in
// tensor/cpu/ and tensor/cuda/ (a backend that lacks it fails to link), add its line below.
#pragma once

#include <vector>

#include "tensor/cpu/kernels.h"
#include "tensor/op_kinds.h"
#include "tensor/profile.h"
#include "tensor/tensor.h"
// Each call is also a profile::Scope: timed by its name while a profile runs (tensor/profile.h).
// BCOS_DISPATCH_OP names the op too, for the kernels that run several (binary: add, mul, ...).
#ifdef BCOS_WITH_CUDA
#include "tensor/cuda/backend.h"
#define BCOS_DISPATCH_OP(on, op, call)                       \
  do {                                                       \
    const profile::Scope bcos_profile_scope(#call, on, op);  \
    if ((on).is_cuda()) {                                    \
      cuda::call;                                            \
      return;                                                \
    }                                                        \
    cpu::call;                                               \
  } while (0)
#else
#define BCOS_DISPATCH_OP(on, op, call)                       \
  do {                                                       \
    const profile::Scope bcos_profile_scope(#call, on, op);  \
    cpu::call;                                               \
  } while (0)
#endif
#define BCOS_DISPATCH(on, call) BCOS_DISPATCH_OP(on, nullptr, call)

namespace bcos::kernel {

inline void copy(const Tensor& dst, const Tensor& src) {
  BCOS_DISPATCH(dst, copy(dst, src));
}
inline void fill(const Tensor& dst, double value) {
  BCOS_DISPATCH(dst, fill(dst, value));
}
inline void arange_fill(const Tensor& dst, double start, double step) {
  BCOS_DISPATCH(dst, arange_fill(dst, start, step));
}
inline void random_fill(const Tensor& dst, RandomDist dist, uint64_t seed, uint64_t start, double p0, double p1) {
  BCOS_DISPATCH(dst, random_fill(dst, dist, seed, start, p0, p1));
}
inline void unary(UnaryOp op, const Tensor& x, const Tensor& out, double p0 = 0, double p1 = 0) {
  BCOS_DISPATCH_OP(x, op_name(op), unary(op, x, out, p0, p1));
}
inline void unary_backward(UnaryOp op, const Tensor& grad, const Tensor& x, const Tensor& y, const Tensor& grad_x,
                           double p0 = 0, double p1 = 0) {
  BCOS_DISPATCH_OP(grad, op_name(op), unary_backward(op, grad, x, y, grad_x, p0, p1));
}
inline void binary(BinaryOp op, const Tensor& a, const Tensor& b, const Tensor& out) {
  BCOS_DISPATCH_OP(a, op_name(op), binary(op, a, b, out));
}
inline void where(const Tensor& cond, const Tensor& a, const Tensor& b, const Tensor& out) {
  BCOS_DISPATCH(cond, where(cond, a, b, out));
}
inline void reduce(ReduceOp op, const Tensor& x, const std::vector<bool>& reduce, const Tensor& out,
                   const Tensor& indices = Tensor(), int64_t correction = 0) {
  BCOS_DISPATCH_OP(x, op_name(op), reduce(op, x, reduce, out, indices, correction));
}
inline void bmm(const Tensor& a, const Tensor& b, const Tensor& out, bool accumulate = false,
                DType operands = DType::f32) {
  BCOS_DISPATCH(a, bmm(a, b, out, accumulate, operands));
}
inline void linear_bias(const Tensor& a, const Tensor& b, const Tensor& bias, const Tensor& out,
                        DType operands = DType::f32) {
  BCOS_DISPATCH(a, linear_bias(a, b, bias, out, operands));
}
inline void conv2d_forward(const Tensor& x, const Tensor& w, const Tensor& bias, const Tensor& out,
                           const Conv2dParams& p) {
  BCOS_DISPATCH(x, conv2d_forward(x, w, bias, out, p));
}
inline void conv2d_backward_input(const Tensor& grad_out, const Tensor& w, const Tensor& grad_x,
                                  const Conv2dParams& p) {
  BCOS_DISPATCH(grad_out, conv2d_backward_input(grad_out, w, grad_x, p));
}
inline void conv2d_backward_weight(const Tensor& grad_out, const Tensor& x, const Tensor& grad_w,
                                   const Conv2dParams& p) {
  BCOS_DISPATCH(grad_out, conv2d_backward_weight(grad_out, x, grad_w, p));
}
inline void max_pool2d_forward(const Tensor& x, const Tensor& out, const Tensor& indices, const Pool2dParams& p) {
  BCOS_DISPATCH(x, max_pool2d_forward(x, out, indices, p));
}
inline void max_pool2d_backward(const Tensor& grad_out, const Tensor& indices, const Tensor& grad_x,
                                const Pool2dParams& p) {
  BCOS_DISPATCH(grad_out, max_pool2d_backward(grad_out, indices, grad_x, p));
}
inline void avg_pool2d_forward(const Tensor& x, const Tensor& out, const Pool2dParams& p) {
  BCOS_DISPATCH(x, avg_pool2d_forward(x, out, p));
}
inline void avg_pool2d_backward(const Tensor& grad_out, const Tensor& grad_x, const Pool2dParams& p) {
  BCOS_DISPATCH(grad_out, avg_pool2d_backward(grad_out, grad_x, p));
}
inline void adaptive_avg_pool2d_forward(const Tensor& x, const Tensor& out) {
  BCOS_DISPATCH(x, adaptive_avg_pool2d_forward(x, out));
}
inline void adaptive_avg_pool2d_backward(const Tensor& grad_out, const Tensor& grad_x) {
  BCOS_DISPATCH(grad_out, adaptive_avg_pool2d_backward(grad_out, grad_x));
}
inline void bcos_patch_sumsq(const Tensor& x, int64_t groups, const Pool2dParams& p, const Tensor& out) {
  BCOS_DISPATCH(x, bcos_patch_sumsq(x, groups, p, out));
}
inline void bcos_patch_sumsq_backward(const Tensor& grad, const Tensor& x, int64_t groups, const Pool2dParams& p,
                                      const Tensor& grad_x, bool accumulate) {
  BCOS_DISPATCH(grad, bcos_patch_sumsq_backward(grad, x, groups, p, grad_x, accumulate));
}
inline void bcos_scale_forward(const Tensor& lin, const Tensor& sumsq, const BcosScaleParams& p,
                               const Tensor& post_scale, const Tensor& post_shift, const Tensor& out,
                               const Tensor& value, const Tensor& argmax) {
  BCOS_DISPATCH(lin, bcos_scale_forward(lin, sumsq, p, post_scale, post_shift, out, value, argmax));
}
inline void bcos_scale_backward(const Tensor& grad, const Tensor& value, const Tensor& sumsq, const Tensor& argmax,
                                const BcosScaleParams& p, const Tensor& post_scale, const Tensor& post_shift,
                                bool explain, const Tensor& grad_lin, const Tensor& grad_sumsq) {
  BCOS_DISPATCH(grad, bcos_scale_backward(grad, value, sumsq, argmax, p, post_scale, post_shift, explain, grad_lin,
                                          grad_sumsq));
}
inline void batch_norm_uncentered_backward(const Tensor& grad, const Tensor& x, const Tensor& weight,
                                           const Tensor& bias, const Tensor& mean, const Tensor& invstd,
                                           bool through_variance, bool relu, const Tensor& grad_x,
                                           const Tensor& grad_w, const Tensor& grad_b,
                                           const Tensor& replica_sums = Tensor()) {
  BCOS_DISPATCH(grad, batch_norm_uncentered_backward(grad, x, weight, bias, mean, invstd, through_variance, relu,
                                                     grad_x, grad_w, grad_b, replica_sums));
}
inline void batch_norm_forward(const Tensor& x, const Tensor& weight, const Tensor& bias, const Tensor& mean,
                               const Tensor& invstd, bool relu, const Tensor& out) {
  BCOS_DISPATCH(x, batch_norm_forward(x, weight, bias, mean, invstd, relu, out));
}
inline void batch_norm_eval_forward(const Tensor& x, const Tensor& weight, const Tensor& bias,
                                    const Tensor& running_mean, const Tensor& running_var, double eps, bool relu,
                                    const Tensor& out) {
  BCOS_DISPATCH(x, batch_norm_eval_forward(x, weight, bias, running_mean, running_var, eps, relu, out));
}
inline void batch_norm_stats(const Tensor& x, const Tensor& mean, const Tensor& var_biased) {
  BCOS_DISPATCH(x, batch_norm_stats(x, mean, var_biased));
}
inline void batch_norm_finish(const Tensor& mean, const Tensor& var, double eps, double momentum, double unbias,
                              const Tensor& invstd, const Tensor& running_mean, const Tensor& running_var,
                              const Tensor& batches_tracked) {
  BCOS_DISPATCH(var, batch_norm_finish(mean, var, eps, momentum, unbias, invstd, running_mean, running_var,
                                       batches_tracked));
}
inline void batch_norm_eval_scale(const Tensor& var, const Tensor& weight, double eps, const Tensor& scale) {
  BCOS_DISPATCH(var, batch_norm_eval_scale(var, weight, eps, scale));
}
inline void batch_norm_backward(const Tensor& grad_out, const Tensor& x, const Tensor& weight, const Tensor& bias,
                                const Tensor& mean, const Tensor& invstd, bool training, bool relu,
                                const Tensor& grad_x, const Tensor& grad_w, const Tensor& grad_b,
                                const Tensor& replica_sums = Tensor()) {
  BCOS_DISPATCH(grad_out, batch_norm_backward(grad_out, x, weight, bias, mean, invstd, training, relu, grad_x, grad_w,
                                              grad_b, replica_sums));
}
inline void row_norm_forward(const Tensor& x, int64_t outer, int64_t inner, double eps, const Tensor& weight,
                             const Tensor& bias, const Tensor& out, const Tensor& mean, const Tensor& invstd) {
  BCOS_DISPATCH(x, row_norm_forward(x, outer, inner, eps, weight, bias, out, mean, invstd));
}
inline void row_norm_backward(const Tensor& grad_out, const Tensor& x, int64_t outer, int64_t inner,
                              const Tensor& mean, const Tensor& invstd, const Tensor& weight, const Tensor& grad_x,
                              const Tensor& grad_weight = Tensor(), const Tensor& grad_bias = Tensor()) {
  BCOS_DISPATCH(grad_out, row_norm_backward(grad_out, x, outer, inner, mean, invstd, weight, grad_x, grad_weight,
                                            grad_bias));
}
inline void unit_rows_forward(const Tensor& w, int64_t outer, int64_t inner, const Tensor& out, const Tensor& norms) {
  BCOS_DISPATCH(w, unit_rows_forward(w, outer, inner, out, norms));
}
inline void unit_rows_backward(const Tensor& grad, const Tensor& w, int64_t outer, int64_t inner, const Tensor& norms,
                               const Tensor& grad_w) {
  BCOS_DISPATCH(grad, unit_rows_backward(grad, w, outer, inner, norms, grad_w));
}
inline void softmax(const Tensor& x, int dim, bool log, const Tensor& out) {
  BCOS_DISPATCH(x, softmax(x, dim, log, out));
}
inline void softmax_backward(const Tensor& grad, const Tensor& y, int dim, bool log, const Tensor& grad_x) {
  BCOS_DISPATCH(grad, softmax_backward(grad, y, dim, log, grad_x));
}
inline void attention_forward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& bias,
                              const AttentionParams& p, const Tensor& out, const Tensor& lse) {
  BCOS_DISPATCH(q, attention_forward(q, k, v, bias, p, out, lse));
}
inline void attention_backward(const Tensor& grad_out, const Tensor& q, const Tensor& k, const Tensor& v,
                               const Tensor& bias, const Tensor& out, const Tensor& lse, const AttentionParams& p,
                               const Tensor& grad_q, const Tensor& grad_k, const Tensor& grad_v) {
  BCOS_DISPATCH(q, attention_backward(grad_out, q, k, v, bias, out, lse, p, grad_q, grad_k, grad_v));
}
inline void index_select(const Tensor& x, int dim, const Tensor& index, const Tensor& out) {
  BCOS_DISPATCH(x, index_select(x, dim, index, out));
}
inline void index_add(const Tensor& out, int dim, const Tensor& index, const Tensor& src) {
  BCOS_DISPATCH(out, index_add(out, dim, index, src));
}
inline void gather(const Tensor& x, int dim, const Tensor& index, const Tensor& out) {
  BCOS_DISPATCH(x, gather(x, dim, index, out));
}
inline void scatter_add(const Tensor& out, int dim, const Tensor& index, const Tensor& src) {
  BCOS_DISPATCH(out, scatter_add(out, dim, index, src));
}
inline void topk(const Tensor& x, int64_t k, bool largest, bool sorted, const Tensor& values, const Tensor& indices) {
  BCOS_DISPATCH(x, topk(x, k, largest, sorted, values, indices));
}
// (The optimizer steps and the clipping run on the device of their first parameter: the lists
// are never empty.)
inline void sgd_step(const std::vector<Tensor>& params, const std::vector<Tensor>& grads,
                     const std::vector<Tensor>& momenta, const SgdStepParams& p) {
  BCOS_DISPATCH(params.front(), sgd_step(params, grads, momenta, p));
}
inline void adam_step(const std::vector<Tensor>& params, const std::vector<Tensor>& grads,
                      const std::vector<Tensor>& exp_avgs, const std::vector<Tensor>& exp_avg_sqs,
                      const std::vector<Tensor>& max_exp_avg_sqs, const AdamStepParams& p) {
  BCOS_DISPATCH(params.front(), adam_step(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, p));
}
inline void adaptive_clip(const std::vector<Tensor>& params, const std::vector<Tensor>& grads,
                          const std::vector<int64_t>& units, double clip, double eps) {
  BCOS_DISPATCH(params.front(), adaptive_clip(params, grads, units, clip, eps));
}

}  // namespace bcos::kernel

#undef BCOS_DISPATCH
#undef BCOS_DISPATCH_OP
