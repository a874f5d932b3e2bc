// conv2d, pooling and constant padding with their backward passes.
//   conv2d:   grad_x = conv_transpose(g, W), grad_W = g ⋆ x, grad_b = Σ_{n,h,w} g
//   max pool: g routed to the argmax of each window;   avg pool: g spread over each window
//   pad:      the gradient is the un-padded slice of g
#include "autograd/dispatch.h"
#include "autograd/ops.h"

namespace bcos {

using namespace detail;

namespace {

void check_4d(const char* op, const Tensor& x) {
  BCOS_CHECK(x.dim() == 4, op, ": expected a 4-D input [N, C, H, W], got shape ", x.shape());
}

// Output sizes; 0 when the (padded) input is smaller than one (dilated) window, which the
// callers turn into an error.
int64_t conv_out_size(int64_t in, int64_t k, int64_t stride, int64_t pad, int64_t dil) {
  int64_t span = in + 2 * pad - dil * (k - 1) - 1;
  return span < 0 ? 0 : span / stride + 1;
}

int64_t pool_out_size(int64_t in, int64_t k, int64_t stride, int64_t pad, int64_t dil, bool ceil_mode) {
  int64_t span = in + 2 * pad - dil * (k - 1) - 1;
  if (span < 0) return 0;
  int64_t out = (ceil_mode ? (span + stride - 1) / stride : span / stride) + 1;
  if (ceil_mode && (out - 1) * stride >= in + pad) --out;  // the last window must start inside
  return out;
}

}  // namespace

Tensor conv2d(const Tensor& x, const Tensor& w, const Tensor& bias, IntPair stride,
              IntPair padding, IntPair dilation, int64_t groups) {
  check_defined("conv2d", x, "input");
  check_defined("conv2d", w, "weight");
  // Autocast: 16-bit copies in, a 16-bit result out (autograd.h).
  if (autocast_lowers(x) || autocast_lowers(w) || autocast_lowers(bias))
    return conv2d(autocast_to_lower(x), autocast_to_lower(w), autocast_to_lower(bias), stride, padding, dilation, groups);
  return detail::conv2d_rounding_operands(x, w, bias, stride, padding, dilation, groups);
}

detail::Conv2dSetup detail::conv2d_setup(const Tensor& x, const Tensor& w, const Tensor& bias, IntPair stride,
                                         IntPair padding, IntPair dilation, int64_t groups) {
  const char* op = "conv2d";
  check_defined(op, x, "input");
  check_defined(op, w, "weight");
  check_4d(op, x);
  BCOS_CHECK(w.dim() == 4, op, ": weight must be 4-D [O, C/groups, kh, kw], got ", w.shape());
  check_same_device(op, x, w);
  check_same_dtype(op, x, w);
  check_floating(op, x);
  BCOS_CHECK(groups >= 1 && x.size(1) % groups == 0 && w.size(0) % groups == 0, op,
             ": groups = ", groups, " must divide the input channels (", x.size(1),
             ") and the output channels (", w.size(0), ")");
  BCOS_CHECK(w.size(1) * groups == x.size(1), op, ": input ", x.shape(), " has ", x.size(1),
             " channels but weight ", w.shape(), " with groups = ", groups, " expects ",
             w.size(1) * groups);
  BCOS_CHECK(stride.h > 0 && stride.w > 0 && dilation.h > 0 && dilation.w > 0 &&
                 padding.h >= 0 && padding.w >= 0,
             op, ": stride and dilation must be positive and padding non-negative");
  if (bias.defined()) {
    check_same_device(op, x, bias);
    check_same_dtype(op, x, bias);
    BCOS_CHECK(bias.dim() == 1 && bias.size(0) == w.size(0), op, ": bias ", bias.shape(),
               " does not match the ", w.size(0), " output channels of weight ", w.shape());
  }
  Conv2dSetup s;
  Conv2dParams& p = s.params;
  p.stride[0] = stride.h, p.stride[1] = stride.w;
  p.padding[0] = padding.h, p.padding[1] = padding.w;
  p.dilation[0] = dilation.h, p.dilation[1] = dilation.w;
  p.groups = groups;
  p.operands = autocast_operands(x);  // autocast: the backward's products too (p is captured)
  int64_t ho = conv_out_size(x.size(2), w.size(2), stride.h, padding.h, dilation.h);
  int64_t wo = conv_out_size(x.size(3), w.size(3), stride.w, padding.w, dilation.w);
  BCOS_CHECK(ho > 0 && wo > 0, op, ": input ", x.shape(), " is too small for kernel ",
             w.shape(), " with this padding and dilation");
  s.out_shape = {x.size(0), w.size(0), ho, wo};
  return s;
}

Tensor detail::conv2d_rounding_operands(const Tensor& x, const Tensor& w, const Tensor& bias, IntPair stride,
                                        IntPair padding, IntPair dilation, int64_t groups) {
  const Conv2dSetup setup = conv2d_setup(x, w, bias, stride, padding, dilation, groups);
  const Conv2dParams p = setup.params;
  Tensor out = empty(setup.out_shape, {x.dtype(), x.device()});
  kernel::conv2d_forward(x, w, bias, out, p);
  if (needs_graph({x, w, bias})) {
    SavedTensor sx(needs_graph({w}) ? x : Tensor()), sw(needs_graph({x}) ? w : Tensor());  // each for the other's gradient
    const Shape x_shape = x.shape(), w_shape = w.shape();
    record("Conv2dBackward", out, {x, w, bias}, [=](const Tensor& g, const std::vector<bool>& need) {
      Tensor gx, gw, gb;
      if (need[0]) {
        gx = empty(x_shape, {g.dtype(), g.device()});
        kernel::conv2d_backward_input(g, sw.get(), gx, p);
      }
      if (need[1]) {
        gw = empty(w_shape, {g.dtype(), g.device()});
        kernel::conv2d_backward_weight(g, sx.get(), gw, p);
      }
      if (need[2]) gb = sum(g, {0, 2, 3});
      return Grads{gx, gw, gb};
    });
  }
  return out;
}

namespace {
Pool2dParams pool_params(const char* op, IntPair kernel, std::optional<IntPair> stride,
                              IntPair padding, IntPair dilation, bool ceil_mode) {
  IntPair s = stride ? *stride : kernel;
  BCOS_CHECK(kernel.h > 0 && kernel.w > 0 && s.h > 0 && s.w > 0 && dilation.h > 0 && dilation.w > 0,
             op, ": kernel, stride and dilation must be positive");
  BCOS_CHECK(padding.h >= 0 && padding.w >= 0 && 2 * padding.h <= kernel.h && 2 * padding.w <= kernel.w,
             op, ": padding (", padding.h, ", ", padding.w, ") must be at most half the kernel (",
             kernel.h, ", ", kernel.w, ")");
  Pool2dParams p;
  p.kernel[0] = kernel.h, p.kernel[1] = kernel.w;
  p.stride[0] = s.h, p.stride[1] = s.w;
  p.padding[0] = padding.h, p.padding[1] = padding.w;
  p.dilation[0] = dilation.h, p.dilation[1] = dilation.w;
  p.ceil_mode = ceil_mode;
  return p;
}

Shape pooled_shape(const char* op, const Tensor& x, const Pool2dParams& p) {
  int64_t ho = pool_out_size(x.size(2), p.kernel[0], p.stride[0], p.padding[0], p.dilation[0], p.ceil_mode);
  int64_t wo = pool_out_size(x.size(3), p.kernel[1], p.stride[1], p.padding[1], p.dilation[1], p.ceil_mode);
  BCOS_CHECK(ho > 0 && wo > 0, op, ": input ", x.shape(), " is too small for kernel (",
             p.kernel[0], ", ", p.kernel[1], ")");
  return {x.size(0), x.size(1), ho, wo};
}

void check_pool_input(const char* op, const Tensor& x) {
  check_defined(op, x, "input");
  check_4d(op, x);
  if (x.is_cuda())
    check_floating(op, x);  // 16-bit too: the CPU widens those before it comes here
  else
    check_float(op, x);
  BCOS_CHECK(x.size(2) > 0 && x.size(3) > 0, op, ": input ", x.shape(), " has an empty plane");
}
}  // namespace

ValuesIndices max_pool2d_with_indices(const Tensor& x, IntPair kernel, std::optional<IntPair> stride,
                                      IntPair padding, IntPair dilation, bool ceil_mode) {
  const char* op = "max_pool2d";
  // 16-bit on the CPU through float32 (the values are the input's own: rounding them back is
  // exact); CUDA's pooling kernels read and write 16-bit tensors as they are.
  if (is_half(x) && !x.is_cuda()) {
    Tensor idx;
    Tensor values = through_float32(x, [&] {
      ValuesIndices r = max_pool2d_with_indices(widened(x), kernel, stride, padding, dilation, ceil_mode);
      idx = r.indices;
      return r.values;
    });
    return {values, idx};
  }
  check_pool_input(op, x);
  Pool2dParams p = pool_params(op, kernel, stride, padding, dilation, ceil_mode);
  Shape os = pooled_shape(op, x, p);
  Tensor out = empty(os, {x.dtype(), x.device()});
  Tensor idx = empty(os, {DType::i64, x.device()});
  kernel::max_pool2d_forward(x, out, idx, p);
  if (needs_graph({x})) {
    Shape xs = x.shape();
    SavedTensor saved_idx(idx);  // returned to the caller: a change in place must be caught
    record("MaxPool2dBackward", out, {x}, [=](const Tensor& g, const std::vector<bool>&) {
      Tensor gx = empty(xs, {g.dtype(), g.device()});
      kernel::max_pool2d_backward(g, saved_idx.get(), gx, p);
      return Grads{gx};
    });
  }
  return {out, idx};
}

Tensor max_pool2d(const Tensor& x, IntPair kernel, std::optional<IntPair> stride, IntPair padding,
                  IntPair dilation, bool ceil_mode) {
  return max_pool2d_with_indices(x, kernel, stride, padding, dilation, ceil_mode).values;
}

Tensor avg_pool2d(const Tensor& x, IntPair kernel, std::optional<IntPair> stride, IntPair padding,
                  bool ceil_mode, bool count_include_pad, int64_t divisor_override) {
  const char* op = "avg_pool2d";
  if (is_half(x) && !x.is_cuda())
    return through_float32(x, [&] {
      return avg_pool2d(widened(x), kernel, stride, padding, ceil_mode, count_include_pad, divisor_override);
    });
  check_pool_input(op, x);
  BCOS_CHECK(divisor_override >= 0, op, ": divisor_override must be positive (0 for none)");
  Pool2dParams p = pool_params(op, kernel, stride, padding, 1, ceil_mode);
  p.count_include_pad = count_include_pad;
  p.divisor_override = divisor_override;
  Tensor out = empty(pooled_shape(op, x, p), {x.dtype(), x.device()});
  kernel::avg_pool2d_forward(x, out, p);
  if (needs_graph({x})) {
    Shape xs = x.shape();
    record("AvgPool2dBackward", out, {x}, [=](const Tensor& g, const std::vector<bool>&) {
      Tensor gx = empty(xs, {g.dtype(), g.device()});
      kernel::avg_pool2d_backward(g, gx, p);
      return Grads{gx};
    });
  }
  return out;
}

Tensor adaptive_avg_pool2d(const Tensor& x, IntPair output_size) {
  const char* op = "adaptive_avg_pool2d";
  if (is_half(x) && !x.is_cuda()) return through_float32(x, [&] { return adaptive_avg_pool2d(widened(x), output_size); });
  check_pool_input(op, x);
  BCOS_CHECK(output_size.h > 0 && output_size.w > 0, op, ": output size must be positive");
  Tensor out = empty({x.size(0), x.size(1), output_size.h, output_size.w}, {x.dtype(), x.device()});
  kernel::adaptive_avg_pool2d_forward(x, out);
  if (needs_graph({x})) {
    Shape xs = x.shape();
    record("AdaptiveAvgPool2dBackward", out, {x}, [=](const Tensor& g, const std::vector<bool>&) {
      Tensor gx = empty(xs, {g.dtype(), g.device()});
      kernel::adaptive_avg_pool2d_backward(g, gx);
      return Grads{gx};
    });
  }
  return out;
}

Tensor pad(const Tensor& x, const std::vector<int64_t>& pads, double value) {
  const char* op = "pad";
  check_defined(op, x, "input");
  BCOS_CHECK(pads.size() % 2 == 0 && int(pads.size() / 2) <= x.dim(), op, ": ", pads.size(),
             " padding values for a tensor of shape ", x.shape(),
             " (need pairs, at most two per dim)");
  Shape out_shape = x.shape();
  std::vector<int64_t> begin(static_cast<size_t>(x.dim()), 0);
  for (size_t i = 0; i < pads.size() / 2; ++i) {
    int d = x.dim() - 1 - int(i);
    BCOS_CHECK(pads[2 * i] >= 0 && pads[2 * i + 1] >= 0, op,
               ": negative padding is not supported, got ", pads[2 * i], ", ", pads[2 * i + 1]);
    out_shape[d] += pads[2 * i] + pads[2 * i + 1];
    begin[size_t(d)] = pads[2 * i];
  }
  Tensor out = full(out_shape, value, {x.dtype(), x.device()});
  // The interior of `out` as a view, where x goes.
  auto interior = [begin](const Tensor& t, const Shape& inner_shape) {
    int64_t off = t.offset();
    for (int d = 0; d < t.dim(); ++d) off += begin[size_t(d)] * t.strides()[d];
    return t.alias(inner_shape, t.strides(), off);
  };
  copy_into(interior(out, x.shape()), x);
  if (needs_graph({x})) {
    Shape xs = x.shape();
    record("PadBackward", out, {x}, [=](const Tensor& g, const std::vector<bool>&) {
      return Grads{interior(g, xs).contiguous()};
    });
  }
  return out;
}

}  // namespace bcos
