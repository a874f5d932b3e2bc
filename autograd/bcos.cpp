// B-cos transforms: y = s · v, v = ŵ·x (max-out over M consecutive channels), scaled by
// s = |cos(x, ŵ)|^(b − 1) · ‖ŵ‖-ish — written out: s = |v| / ‖x‖ for b = 2, else
// (|v / ‖x‖| + 1e-6)^(b − 1). ‖x‖ is the norm of exactly what the output unit sees: the row for a
// linear map (+ 1e-12), the zero-padded k×k window over the group's channels for a conv
// (sqrt(Σ x² + 1e-6)). The linear part is the ordinary linear / conv2d op; the two B-cos passes
// (patch norm, scale) are one fused kernel each, with their backward written beside them:
//   patch norm:  ∂sumsq/∂x = 2x · Σ_{windows ∋ pixel} g
//   scale:       ∂y/∂v = s + (b − 1)(|u| + 1e-6)^(b−2) |u|,  ∂y/∂n = −(b − 1)(|u| + 1e-6)^(b−2) |u| v / n
//                (u = v / n; for b = 2: 2|v| / n and −|v| v / n²)
// In explanation mode s is a constant: ∂y/∂v = s, and no gradient reaches the norm.
// An epilogue (BcosEpilogue: y · a + c, + ReLU) multiplies the incoming gradient by a (zero where
// the ReLU was off) before the scale's backward, inside the same kernel pass.
#include <functional>
#include <optional>
#include <utility>

#include "autograd/dispatch.h"
#include "autograd/ops.h"

namespace bcos {

using namespace detail;

namespace {
// The patch norms' window: their convolution's kernel, stride, padding and dilation.
Pool2dParams patch_window(IntPair kernel, IntPair stride, IntPair padding, IntPair dilation) {
  Pool2dParams p;
  p.kernel[0] = kernel.h, p.kernel[1] = kernel.w;
  p.stride[0] = stride.h, p.stride[1] = stride.w;
  p.padding[0] = padding.h, p.padding[1] = padding.w;
  p.dilation[0] = dilation.h, p.dilation[1] = dilation.w;
  return p;
}
}  // namespace

Tensor bcos_patch_sumsq(const Tensor& x, IntPair kernel, IntPair stride, IntPair padding,
                        IntPair dilation, int64_t groups) {
  const char* op = "bcos_patch_sumsq";
  check_defined(op, x, "input");
  if (is_half(x))
    return through_float32(x, [&] { return bcos_patch_sumsq(widened(x), kernel, stride, padding, dilation, groups); });
  check_float(op, x);
  BCOS_CHECK(x.dim() == 4, op, ": expected a 4-D input [N, C, H, W], got shape ", x.shape());
  BCOS_CHECK(groups >= 1 && x.size(1) % groups == 0, op, ": groups = ", groups,
             " must divide the ", x.size(1), " channels of input ", x.shape());
  BCOS_CHECK(kernel.h > 0 && kernel.w > 0 && stride.h > 0 && stride.w > 0 && dilation.h > 0 &&
                 dilation.w > 0 && padding.h >= 0 && padding.w >= 0,
             op, ": kernel, stride and dilation must be positive and padding non-negative");
  const Pool2dParams p = patch_window(kernel, stride, padding, dilation);
  auto out_size = [](int64_t in, int64_t k, int64_t s, int64_t pad, int64_t d) {
    int64_t span = in + 2 * pad - d * (k - 1) - 1;
    return span < 0 ? 0 : span / s + 1;
  };
  const int64_t ho = out_size(x.size(2), kernel.h, stride.h, padding.h, dilation.h);
  const int64_t wo = out_size(x.size(3), kernel.w, stride.w, padding.w, dilation.w);
  BCOS_CHECK(ho > 0 && wo > 0, op, ": input ", x.shape(), " is too small for kernel (", kernel.h,
             ", ", kernel.w, ") with this padding and dilation");
  // x: [N, C, H, W] -> [N, G, Ho, Wo]
  Tensor out = empty({x.size(0), groups, ho, wo}, {x.dtype(), x.device()});
  kernel::bcos_patch_sumsq(x, groups, p, out);
  if (needs_graph({x})) {
    SavedTensor sx(x);
    record("BcosPatchSumsqBackward", out, {x}, [=](const Tensor& g, const std::vector<bool>&) {
      Tensor gx = empty(sx.get().shape(), {g.dtype(), g.device()});
      kernel::bcos_patch_sumsq_backward(g, sx.get(), groups, p, gx, /*accumulate=*/false);
      return Grads{gx};
    });
  }
  return out;
}

namespace {
// The scale pass of bcos_scale (below), checked and run, and its backward: what bcos_scale records,
// and what bcos_conv2d's single node calls inside its own backward.
struct ScalePass {
  Tensor out;
  // g [N, O, *] -> the gradients of lin and (when wanted, scaled and not in explanation mode)
  // of sumsq, in their shapes.
  std::function<std::pair<Tensor, Tensor>(const Tensor& g, bool want_sumsq)> backward;
};

ScalePass scale_pass(const Tensor& lin, const Tensor& sumsq, double b, int64_t max_out, double eps_in, double eps_out,
                     const BcosEpilogue& post, bool keep_for_backward) {
  const char* op = "bcos_scale";
  check_float(op, lin);
  BCOS_CHECK(lin.dim() >= 2, op, ": expected the linear output [N, O·M, *], got ", lin.shape());
  BCOS_CHECK(b >= 1, op, ": b must be at least 1, got ", b);
  BCOS_CHECK(max_out >= 1 && max_out <= 255 && lin.size(1) % max_out == 0, op, ": max_out = ",
             max_out, " must be in [1, 255] and divide the ", lin.size(1),
             " channels of the linear output ", lin.shape());
  const int64_t outputs = lin.size(1) / max_out;
  const bool scaled = b != 1;
  if (scaled) {
    check_defined(op, sumsq, "squared input norm");
    check_same_dtype(op, lin, sumsq);
    check_same_device(op, lin, sumsq);
    Shape expect = lin.shape();
    expect[1] = sumsq.dim() >= 2 ? sumsq.size(1) : -1;
    BCOS_CHECK(sumsq.shape() == expect && outputs % sumsq.size(1) == 0, op,
               ": squared norms ", sumsq.shape(), " do not fit the linear output ", lin.shape(),
               " (need [N, G, *] with G dividing the ", outputs, " output channels)");
  }
  const bool has_post = post.scale.defined() || post.shift.defined();
  if (has_post) {
    for (const Tensor* t : {&post.scale, &post.shift}) {
      BCOS_CHECK(t->defined() && t->dim() == 1 && t->size(0) == outputs, op, ": the epilogue's scale and shift must both be [",
                 outputs, "] (one per output channel), got ", t->defined() ? str(t->shape()) : std::string("undefined"));
      check_same_dtype(op, lin, *t);
      check_same_device(op, lin, *t);
      BCOS_CHECK(!(t->requires_grad() && grad_enabled()), op,
                 ": the epilogue's scale and shift are constants; they cannot require grad");
    }
  }
  if (!scaled && max_out == 1 && !has_post)
    return {lin, [](const Tensor& g, bool) { return std::pair{g, Tensor()}; }};
  Shape out_shape = lin.shape();
  out_shape[1] = outputs;
  // Kernels see [N, O·M, S]: all trailing dims flattened.
  const int64_t n = lin.size(0), spatial = lin.numel() / std::max<int64_t>(n * lin.size(1), 1);
  Tensor l = lin.contiguous(), q = scaled ? sumsq.contiguous() : Tensor();
  Tensor out = empty(out_shape, {lin.dtype(), lin.device()});
  Tensor value = l, argmax;
  if (max_out > 1) {
    value = empty(out_shape, {lin.dtype(), lin.device()});
    argmax = empty(out_shape, {DType::u8, lin.device()});
  }
  auto as3 = [n, spatial](const Tensor& t, int64_t c) { return t.alias({n, c, spatial}, {c * spatial, spatial, 1}, t.offset()); };
  BcosScaleParams p;
  p.b = b, p.max_out = max_out, p.eps_in = eps_in, p.eps_out = eps_out, p.relu = has_post && post.relu;
  const Tensor post_scale = has_post ? post.scale.contiguous() : Tensor();
  const Tensor post_shift = has_post ? post.shift.contiguous() : Tensor();
  kernel::bcos_scale_forward(as3(l, lin.size(1)), scaled ? as3(q, q.size(1)) : Tensor(), p, post_scale, post_shift,
                          as3(out, outputs), max_out > 1 ? as3(value, outputs) : Tensor(),
                          max_out > 1 ? as3(argmax, outputs) : Tensor());
  if (!keep_for_backward) return {out, nullptr};
  const bool explain = explanation_mode();
  SavedTensor sv(value), sq(q), sa(argmax), s_post_scale(post_scale), s_post_shift(post_shift);
  const Shape lin_shape = lin.shape();
  const int64_t groups = scaled ? q.size(1) : 1, channels = lin.size(1);
  auto backward = [=](const Tensor& g, bool want_sumsq) {
    Tensor gl = empty(lin_shape, {g.dtype(), g.device()});
    Tensor gq;
    if (scaled && want_sumsq && !explain) gq = empty({n, groups, spatial}, {g.dtype(), g.device()});
    Tensor gc = g.contiguous();
    kernel::bcos_scale_backward(gc.alias({n, outputs, spatial}, {outputs * spatial, spatial, 1}, gc.offset()),
                             as3(sv.get(), max_out > 1 ? outputs : channels),
                             scaled ? sq.get().alias({n, groups, spatial}, {groups * spatial, spatial, 1}, sq.get().offset()) : Tensor(),
                             max_out > 1 ? sa.get().alias({n, outputs, spatial}, {outputs * spatial, spatial, 1}, sa.get().offset()) : Tensor(),
                             p, s_post_scale.get(), s_post_shift.get(), explain,
                             gl.alias({n, channels, spatial}, {channels * spatial, spatial, 1}, 0), gq);
    if (gq.defined()) {
      Shape qs = lin_shape;
      qs[1] = groups;
      gq = gq.alias(qs, contiguous_strides(qs), 0);
    }
    return std::pair{gl, gq};
  };
  return {out, backward};
}
}  // namespace

Tensor bcos_scale(const Tensor& lin, const Tensor& sumsq, double b, int64_t max_out,
                  double eps_in, double eps_out, const BcosEpilogue& post) {
  check_defined("bcos_scale", lin, "linear output");
  if (is_half(lin))
    return through_float32(lin, [&] {
      const BcosEpilogue wide{widened(post.scale), widened(post.shift), post.relu};
      return bcos_scale(widened(lin), widened(sumsq), b, max_out, eps_in, eps_out, wide);
    });
  const bool keep = needs_graph({lin, sumsq});
  ScalePass pass = scale_pass(lin, sumsq, b, max_out, eps_in, eps_out, post, keep);
  if (keep && pass.out.storage() != lin.storage())
    record("BcosScaleBackward", pass.out, {lin, sumsq}, [backward = pass.backward](const Tensor& g, const std::vector<bool>& need) {
      auto [gl, gq] = backward(g, need[1]);
      return Grads{gl, gq};
    });
  return pass.out;
}

Tensor bcos_conv2d(const Tensor& x, const Tensor& weight, const Tensor& bias, IntPair stride,
                   IntPair padding, IntPair dilation, int64_t groups, double b, int64_t max_out,
                   const BcosEpilogue& post) {
  // A 16-bit layer rounds once, at its output; under autocast it gives the float32 result its
  // float32 input would (autograd.h).
  if (is_half(x)) {
    const auto wide_layer = [&] {
      const BcosEpilogue wide{widened(post.scale), widened(post.shift), post.relu};
      return bcos_conv2d(widened(x), widened(weight), widened(bias), stride, padding, dilation, groups, b, max_out, wide);
    };
    if (autocasting(x)) return wide_layer();
    check_same_dtype("bcos_conv2d", x, weight);
    return through_float32(x, wide_layer);
  }
  BCOS_CHECK(!weight.defined() || weight.dim() != 4 || weight.size(0) % (max_out * groups) == 0,
             "bcos_conv2d: weight ", weight.shape(), " has ", weight.size(0),
             " output channels, which must be a multiple of max_out (", max_out,
             ") times groups (", groups, ")");
  if (b == 1) return bcos_scale(detail::conv2d_rounding_operands(x, weight, bias, stride, padding, dilation, groups),
                                Tensor(), b, max_out, 0, 0, post);
  const IntPair kernel_size{weight.defined() && weight.dim() == 4 ? weight.size(2) : 1,
                            weight.defined() && weight.dim() == 4 ? weight.size(3) : 1};
  if (!needs_graph({x})) {  // the ops one after the other: nothing of x's gradient to add up
    Tensor lin = detail::conv2d_rounding_operands(x, weight, bias, stride, padding, dilation, groups);
    Tensor sumsq = bcos_patch_sumsq(x, kernel_size, stride, padding, dilation, groups);
    return bcos_scale(lin, sumsq, b, max_out, 1e-6, 0, post);
  }
  // x wants its gradient from two places, the product and the norm: one node, whose backward adds
  // the norm's share into the product's input gradient as it computes it -- recorded separately,
  // each would make an x-sized gradient and the engine a third, their sum (a pass over three
  // x-sized tensors per layer per training step).
  const detail::Conv2dSetup conv = detail::conv2d_setup(x, weight, bias, stride, padding, dilation, groups);
  Tensor lin = empty(conv.out_shape, {x.dtype(), x.device()}), sumsq;
  kernel::conv2d_forward(x, weight, bias, lin, conv.params);
  {
    NoGradGuard no_grad;  // the norm alone; the one node below records the whole layer
    sumsq = bcos_patch_sumsq(x, kernel_size, stride, padding, dilation, groups);
  }
  const ScalePass scale = scale_pass(lin, sumsq, b, max_out, 1e-6, 0, post, /*keep_for_backward=*/true);
  const Pool2dParams window = patch_window(kernel_size, stride, padding, dilation);
  SavedTensor sx(x), sw(weight);
  const Shape x_shape = x.shape(), w_shape = weight.shape();
  const Conv2dParams p = conv.params;
  record("BcosConv2dBackward", scale.out, {x, weight, bias},
         [=, backward = scale.backward](const Tensor& g, const std::vector<bool>& need) {
           auto [gl, gq] = backward(g, need[0]);
           Tensor gx, gw, gb;
           if (need[0]) {
             gx = empty(x_shape, {gl.dtype(), gl.device()});
             kernel::conv2d_backward_input(gl, sw.get(), gx, p);
             if (gq.defined()) kernel::bcos_patch_sumsq_backward(gq, sx.get(), groups, window, gx, /*accumulate=*/true);
           }
           if (need[1]) {
             gw = empty(w_shape, {gl.dtype(), gl.device()});
             kernel::conv2d_backward_weight(gl, sx.get(), gw, p);
           }
           if (need[2]) gb = sum(gl, {0, 2, 3});
           return Grads{gx, gw, gb};
         });
  return scale.out;
}

Tensor bcos_linear(const Tensor& x, const Tensor& weight, const Tensor& bias, double b,
                   int64_t max_out) {
  if (is_half(x)) {  // rounded once, at the layer's output; float32 under autocast (as bcos_conv2d)
    const auto wide_layer = [&] { return bcos_linear(widened(x), widened(weight), widened(bias), b, max_out); };
    if (autocasting(x)) return wide_layer();
    check_same_dtype("bcos_linear", x, weight);
    return through_float32(x, wide_layer);
  }
  // x: [..., K] -> [..., O·M]; the norm below keeps x for its backward, so linear keeps x too
  // (under autocast it would otherwise keep a rounded copy beside it).
  const bool one_node = b != 1 && needs_graph({x});
  Tensor lin;
  {
    std::optional<NoGradGuard> no_grad;  // one node: the product is recorded below, with the rest
    if (one_node) no_grad.emplace();
    lin = detail::linear_keeping(x, weight, bias, b == 1);
  }
  const int64_t k = x.size(-1), om = lin.size(-1), rows = lin.numel() / std::max<int64_t>(om, 1);
  Shape out_shape = x.shape();
  out_shape[out_shape.size() - 1] = om / max_out;
  if (!one_node) {  // the ops one after the other: nothing of x's gradient to add up
    Tensor sumsq;
    if (b != 1) sumsq = bcos_patch_sumsq(x.reshape({rows, k, 1, 1}), 1, 1, 0, 1, 1).reshape({rows, 1, 1});
    return bcos_scale(lin.reshape({rows, om, 1}), sumsq, b, max_out, 0, 1e-12).reshape(out_shape);
  }
  // As bcos_conv2d: one node, x's gradient formed once. Here the norm's share goes in first and
  // the product's is accumulated onto it by the GEMM itself (bmm's accumulate: cuBLAS's beta = 1).
  Tensor x_rows, sumsq;
  {
    NoGradGuard no_grad;
    x_rows = x.reshape({rows, k});
    sumsq = bcos_patch_sumsq(x_rows.reshape({rows, k, 1, 1}), 1, 1, 0, 1, 1).reshape({rows, 1, 1});
  }
  const ScalePass scale = scale_pass(lin.reshape({rows, om, 1}), sumsq, b, max_out, 0, 1e-12, {}, /*keep_for_backward=*/true);
  Tensor y = scale.out.reshape(out_shape);
  const DType operands = autocast_operands(x);  // the products' operand type, forward and backward
  SavedTensor sx(x_rows), sw(weight);
  const Shape x_shape = x.shape();
  const int64_t outputs = om / max_out;
  record("BcosLinearBackward", y, {x, weight, bias},
         [=, backward = scale.backward](const Tensor& g, const std::vector<bool>& need) {
           auto [gl, gq] = backward(g.reshape({rows, outputs, 1}), need[0]);
           const Tensor g_rows = gl.reshape({rows, om});  // [R, O·M]
           Tensor gx, gw, gb;
           if (need[0]) {
             gx = empty({rows, k}, {gl.dtype(), gl.device()});
             if (gq.defined())
               kernel::bcos_patch_sumsq_backward(gq.reshape({rows, 1, 1, 1}), sx.get().reshape({rows, k, 1, 1}), 1,
                                                 Pool2dParams{}, gx.reshape({rows, k, 1, 1}), /*accumulate=*/false);
             kernel::bmm(g_rows.unsqueeze(0), sw.get().unsqueeze(0), gx.unsqueeze(0), /*accumulate=*/gq.defined(), operands);
             gx = gx.reshape(x_shape);
           }
           if (need[1]) {
             gw = empty(sw.get().shape(), {gl.dtype(), gl.device()});
             kernel::bmm(g_rows.t().unsqueeze(0), sx.get().unsqueeze(0), gw.unsqueeze(0), false, operands);
           }
           if (need[2]) gb = sum(g_rows, {0});
           return Grads{gx, gw, gb};
         });
  return y;
}

Tensor batch_norm_uncentered(const Tensor& x, const Tensor& running_var, const Tensor& weight,
                             const Tensor& bias, bool training, double momentum, double eps, bool relu,
                             const Tensor& num_batches_tracked) {
  const char* op = relu ? "batch_norm_uncentered_relu" : "batch_norm_uncentered";
  check_defined(op, x, "input");
  if (is_half(x)) {
    const Tensor rv = widened_statistic(running_var);
    Tensor out = through_float32(x, [&] {
      return batch_norm_uncentered(widened(x), rv, widened(weight), widened(bias), training, momentum, eps, relu,
                                   num_batches_tracked);
    });
    if (training && is_half(running_var)) {
      NoGradGuard no_grad;
      Tensor(running_var).copy_(rv);
    }
    return out;
  }
  check_float(op, x);
  BCOS_CHECK(x.dim() >= 2, op, ": expected input [N, C, *], got shape ", x.shape());
  const int64_t c = x.size(1);
  for (const Tensor* t : {&running_var, &weight, &bias}) {
    if (!t->defined()) continue;
    BCOS_CHECK(t->dim() == 1 && t->size(0) == c, op, ": per-channel tensor of shape ", t->shape(),
               " does not match the ", c, " channels of input ", x.shape());
    check_same_dtype(op, x, *t);
    check_same_device(op, x, *t);
  }
  BCOS_CHECK(training || running_var.defined(), op, ": evaluation mode needs running_var");
  const int64_t per_channel = x.numel() / std::max<int64_t>(c, 1);
  if (!training && !needs_graph({x, weight, bias})) {  // inference: invstd made in the pass, one launch
    Tensor out = empty(x.shape(), {x.dtype(), x.device()});
    kernel::batch_norm_eval_forward(x, dense(weight), dense(bias), Tensor(), dense(running_var.detach()), eps, relu,
                                    out);
    return out;
  }
  Tensor mean = zeros({c}, {x.dtype(), x.device()}), invstd;
  if (training) {
    BCOS_CHECK(per_channel > 1, op, ": expected more than 1 value per channel when training, got input of shape ",
               x.shape());
    Tensor var_biased = empty({c}, {x.dtype(), x.device()});
    kernel::batch_norm_stats(x, mean, var_biased);  // the usual, centred batch variance
    // As the B-cosification authors' layer: the *biased* variance, the one the forward divides by.
    invstd = detail::finish_batch_statistics(Tensor(), var_biased, eps, momentum, 1, Tensor(), running_var,
                                             num_batches_tracked);
  } else {
    invstd = detail::finish_batch_statistics(Tensor(), running_var.detach(), eps, 0, 1, Tensor(), Tensor());
  }
  Tensor out = empty(x.shape(), {x.dtype(), x.device()});
  // x not centred (in evaluation `mean` is still the zeros the forward wants)
  kernel::batch_norm_forward(x, dense(weight), dense(bias), training ? zeros({c}, {x.dtype(), x.device()}) : mean, invstd,
                             relu, out);
  if (needs_graph({x, weight, bias})) {
    const bool through_variance = training && !explanation_mode();
    SavedTensor sx(x), sw(dense(weight)), sb(relu ? dense(bias) : Tensor());
    record(relu ? "BatchNormUncenteredReluBackward" : "BatchNormUncenteredBackward", out, {x, weight, bias},
           [=](const Tensor& g, const std::vector<bool>& need) {
             Tensor gx, gw, gb;
             const Tensor& xv = sx.get();
             if (need[0]) gx = empty(xv.shape(), {g.dtype(), g.device()});
             if (need[1]) gw = empty({c}, {g.dtype(), g.device()});
             if (need[2]) gb = empty({c}, {g.dtype(), g.device()});
             kernel::batch_norm_uncentered_backward(g, xv, sw.get(), sb.get(), mean, invstd, through_variance, relu, gx, gw,
                                                     gb);
             return Grads{gx, gw, gb};
           });
  }
  return out;
}

}  // namespace bcos
