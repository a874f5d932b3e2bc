// CPU kernels: no autograd, no argument checking beyond what keeps memory safe (the public ops
// in autograd/ check shapes, dtypes and devices first). Outputs are allocated by the caller
// unless a function returns a Tensor. Inputs may be strided; outputs are contiguous unless noted.
#pragma once

#include <vector>

#include "tensor/op_kinds.h"
#include "tensor/tensor.h"

namespace bcos::cpu {

// ---- copy / fill (cpu/copy.cpp) -----------------------------------------------------------
void copy(const Tensor& dst, const Tensor& src);  // same shape, any strides and dtypes
void fill(const Tensor& dst, double value);       // any strides

// ---- elementwise (cpu/elementwise.cpp) -----------------------------------------------------
// x, out: the same shape (x may be strided). p0, p1: the op's scalar parameters.
void unary(UnaryOp op, const Tensor& x, const Tensor& out, double p0 = 0, double p1 = 0);
// grad_x = grad * d op(x) / dx, fused in one pass; y = op(x) when the derivative uses it.
void unary_backward(UnaryOp op, const Tensor& grad, const Tensor& x, const Tensor& y,
                    const Tensor& grad_x, double p0 = 0, double p1 = 0);
// a, b already broadcast to out's shape (stride-0 views).
void binary(BinaryOp op, const Tensor& a, const Tensor& b, const Tensor& out);
void where(const Tensor& cond, const Tensor& a, const Tensor& b, const Tensor& out);

// ---- reductions (cpu/reduce.cpp) -----------------------------------------------------------
// Reduces x over the dims flagged in `reduce`; out has x's shape with reduced dims set to 1.
// indices (max / min only, may be undefined): the position along the single reduced dim, or the
// flat position when several dims are reduced. correction: for var.
void reduce(ReduceOp op, const Tensor& x, const std::vector<bool>& reduce, const Tensor& out,
            const Tensor& indices = Tensor(), int64_t correction = 0);

// ---- matmul (cpu/matmul.cpp) ---------------------------------------------------------------
// out[b] = a[b] @ b[b] (+ out[b] when accumulate) for 3-D a [B, M, K], b [B, K, N], out
// [B, M, N]; a and b may have any strides (transposed operands are read without a copy).
void bmm(const Tensor& a, const Tensor& b, const Tensor& out, bool accumulate = false);

// ---- convolution (cpu/conv.cpp) ------------------------------------------------------------
struct Conv2dParams {
  int64_t stride[2] = {1, 1}, padding[2] = {0, 0}, dilation[2] = {1, 1}, groups = 1;
};
// x [N, C, H, W], w [O, C/g, kh, kw], bias [O] or undefined -> out [N, O, Ho, Wo]
void conv2d_forward(const Tensor& x, const Tensor& w, const Tensor& bias, const Tensor& out,
                    const Conv2dParams& p);
void conv2d_backward_input(const Tensor& grad_out, const Tensor& w, const Tensor& grad_x,
                           const Conv2dParams& p);
void conv2d_backward_weight(const Tensor& grad_out, const Tensor& x, const Tensor& grad_w,
                            const Conv2dParams& p);

// ---- pooling and padding (cpu/pool.cpp) ---------------------------------------------------
struct Pool2dParams {
  int64_t kernel[2] = {1, 1}, stride[2] = {1, 1}, padding[2] = {0, 0}, dilation[2] = {1, 1};
  bool ceil_mode = false, count_include_pad = true;
  int64_t divisor_override = 0;  // 0: none
};
void max_pool2d_forward(const Tensor& x, const Tensor& out, const Tensor& indices,
                        const Pool2dParams& p);
void max_pool2d_backward(const Tensor& grad_out, const Tensor& indices, const Tensor& grad_x);
void avg_pool2d_forward(const Tensor& x, const Tensor& out, const Pool2dParams& p);
void avg_pool2d_backward(const Tensor& grad_out, const Tensor& grad_x, const Pool2dParams& p);
void adaptive_avg_pool2d_forward(const Tensor& x, const Tensor& out);
void adaptive_avg_pool2d_backward(const Tensor& grad_out, const Tensor& grad_x);

// ---- B-cos (cpu/bcos.cpp) -------------------------------------------------------------------
// out [N, G, Ho, Wo] = Σ over each group's channels and the window's taps (p: the conv's kernel,
// stride, padding, dilation) of x², x [N, C, H, W].
void bcos_patch_sumsq(const Tensor& x, int64_t groups, const Pool2dParams& p, const Tensor& out);
void bcos_patch_sumsq_backward(const Tensor& grad, const Tensor& x, int64_t groups,
                               const Pool2dParams& p, const Tensor& grad_x);
struct BcosScaleParams {
  double b = 2;
  int64_t max_out = 1;
  double eps_in = 0, eps_out = 0;  // n = sqrt(sumsq + eps_in) + eps_out
};
// lin [N, O·M, S], sumsq [N, G, S] (undefined: b = 1, no scaling) -> out [N, O, S]; for M > 1
// also value (the max-out result, before scaling) and argmax (u8) [N, O, S].
void bcos_scale_forward(const Tensor& lin, const Tensor& sumsq, const BcosScaleParams& p,
                        const Tensor& out, const Tensor& value, const Tensor& argmax);
// grad [N, O, S] -> grad_lin [N, O·M, S] and (unless explain or undefined) grad_sumsq [N, G, S].
// value: the max-out result (lin itself when M = 1). explain: s taken as a constant.
void bcos_scale_backward(const Tensor& grad, const Tensor& value, const Tensor& sumsq,
                         const Tensor& argmax, const BcosScaleParams& p, bool explain,
                         const Tensor& grad_lin, const Tensor& grad_sumsq);
// Uncentred batch norm y = γ x r (+ β), r = 1 / sqrt(var + eps): grad_w = r Σ g x, grad_b = Σ g,
// grad_x = γ r g − (through_variance: γ r³ (Σ g x / M)(x − mean)). x [N, C, *]; outputs may be
// undefined.
void batch_norm_uncentered_backward(const Tensor& grad, const Tensor& x, const Tensor& weight,
                                    const Tensor& mean, const Tensor& invstd, bool through_variance,
                                    const Tensor& grad_x, const Tensor& grad_w, const Tensor& grad_b);

// ---- normalisation (cpu/norm.cpp) ---------------------------------------------------------
// Per-channel statistics over (N, H, W) for x [N, C, *]: mean and 1/sqrt(var + eps), where var
// is the biased batch variance (training) or the running variance (eval).
void batch_norm_forward(const Tensor& x, const Tensor& weight, const Tensor& bias,
                        const Tensor& mean, const Tensor& invstd, const Tensor& out);
void batch_norm_stats(const Tensor& x, const Tensor& mean, const Tensor& var_biased);
void batch_norm_backward(const Tensor& grad_out, const Tensor& x, const Tensor& weight,
                         const Tensor& mean, const Tensor& invstd, bool training,
                         const Tensor& grad_x, const Tensor& grad_w, const Tensor& grad_b);
// Normalises over the trailing `inner` elements of each of `outer` rows: x viewed [outer, inner].
// Saves mean and invstd [outer]. Affine weight / bias are applied per element of `inner`
// (layer_norm) or per channel (group_norm: channels_per_group * spatial inner layout).
void row_norm_forward(const Tensor& x, int64_t outer, int64_t inner, double eps,
                      const Tensor& out, const Tensor& mean, const Tensor& invstd);
void row_norm_backward(const Tensor& grad_xhat, const Tensor& x, int64_t outer, int64_t inner,
                       const Tensor& mean, const Tensor& invstd, const Tensor& grad_x);

// ---- softmax and losses (cpu/softmax.cpp) --------------------------------------------------
void softmax(const Tensor& x, int dim, bool log, const Tensor& out);
void softmax_backward(const Tensor& grad, const Tensor& y, int dim, bool log,
                      const Tensor& grad_x);

// ---- indexing (cpu/indexing.cpp) ----------------------------------------------------------
void index_select(const Tensor& x, int dim, const Tensor& index, const Tensor& out);
// out (zeroed by the caller) [dim] += src along index: the backward of index_select.
void index_add(const Tensor& out, int dim, const Tensor& index, const Tensor& src);
void gather(const Tensor& x, int dim, const Tensor& index, const Tensor& out);
void scatter_add(const Tensor& out, int dim, const Tensor& index, const Tensor& src);
// values and indices of the k largest (or smallest) along the last dim of a contiguous x.
void topk(const Tensor& x, int64_t k, bool largest, bool sorted, const Tensor& values,
          const Tensor& indices);

}  // namespace bcos::cpu
