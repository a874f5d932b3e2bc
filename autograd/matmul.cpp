// matmul (torch semantics: 1-D, 2-D, broadcast batches) and linear, built on one
// differentiable primitive, the batched product of 3-D tensors:
//   out [B, M, N] = a [B, M, K] · b [B, K, N]
//   grad_a = g · bᵀ,  grad_b = aᵀ · g       (transposes are free strided views)
// Batch broadcasting is an expand (whose backward sums), so the engine does the rest.
// Under autocast (autograd.h) matmul and linear take 16-bit copies of their float32 operands and
// return a 16-bit result; the B-cos linear layer's own product (detail::linear_keeping) keeps
// float32 tensors and gives every product of its forward and backward the forward's operand type.
#include "autograd/dispatch.h"
#include "autograd/ops.h"
#include "tensor/copy.h"

namespace bcos {

using namespace detail;

namespace {

Tensor bmm3(const Tensor& a, const Tensor& b, DType operands) {
  Tensor out = empty({a.size(0), a.size(1), b.size(2)}, {a.dtype(), a.device()});
  kernel::bmm(a, b, out, false, operands);
  if (needs_graph({a, b})) {
    SavedTensor sa(needs_graph({b}) ? a : Tensor()), sb(needs_graph({a}) ? b : Tensor());  // each for the other's gradient
    record("BmmBackward", out, {a, b}, [=](const Tensor& g, const std::vector<bool>& need) {
      Tensor ga, gb;
      if (need[0]) ga = bmm3(g, sb.get().transpose(1, 2), operands);
      if (need[1]) gb = bmm3(sa.get().transpose(1, 2), g, operands);
      return Grads{ga, gb};
    });
  }
  return out;
}

// out [R, N] = x [R, K] · wᵀ (+ b) for w [N, K]. The weight's gradient is formed as gᵀ · x,
// already [N, K] row-major, so the engine adopts it as .grad; through matmul(x, w.t()) it
// arrived as a transposed view and was copied element by element (12 % of a ViT-B/32 training
// step). The bias goes in with the product (kernel::linear_bias), not in a separate pass. Under
// autocast x is rounded to the operand type once, and that copy is both multiplied and kept for
// the weight's gradient, as torch.autocast keeps it:
// half the bytes of the float32 input (ViT-B/16's linear inputs are a fifth of its training
// memory), the same products -- they round x anyway.
Tensor linear_rows(const Tensor& x, const Tensor& w, const Tensor& b, bool keep_rounded_input) {
  const DType operands = autocast_operands(x);
  // Only when kept: without a weight gradient to form, the GEMM rounds x while packing it.
  const bool rounded = operands != DType::f32 && keep_rounded_input && needs_graph({w});
  const Tensor x_operand = rounded ? raw_to(x, operands, x.device()) : x;
  Tensor out = empty({x.size(0), w.size(0)}, {x.dtype(), x.device()});
  if (b.defined())
    kernel::linear_bias(x_operand, w.t(), b, out, operands);
  else
    kernel::bmm(x_operand.unsqueeze(0), w.t().unsqueeze(0), out.unsqueeze(0), false, operands);
  if (needs_graph({x, w, b})) {
    // Each is kept only for the other's gradient.
    SavedTensor sx(needs_graph({w}) ? x_operand : Tensor()), sw(needs_graph({x}) ? w : Tensor());
    record("LinearBackward", out, {x, w, b}, [=](const Tensor& g, const std::vector<bool>& need) {
      Tensor gx, gw, gb;
      if (need[0]) gx = bmm3(g.unsqueeze(0), sw.get().unsqueeze(0), operands).squeeze(0);
      if (need[1]) gw = bmm3(g.t().unsqueeze(0), sx.get().unsqueeze(0), operands).squeeze(0);
      if (need[2]) gb = sum(g, {0});
      return Grads{gx, gw, gb};
    });
  }
  return out;
}

}  // namespace

Tensor matmul(const Tensor& a, const Tensor& b) {
  const char* op = "matmul";
  check_defined(op, a, "first operand");
  check_defined(op, b, "second operand");
  if (autocast_lowers(a) || autocast_lowers(b)) return matmul(autocast_to_lower(a), autocast_to_lower(b));
  check_same_device(op, a, b);
  check_same_dtype(op, a, b);
  check_floating(op, a);
  BCOS_CHECK(a.dim() >= 1 && b.dim() >= 1, op, ": both operands need at least 1 dim, got ",
             a.shape(), " and ", b.shape());
  // Promote vectors to matrices: a [K] -> [1, K], b [K] -> [K, 1] (removed again at the end).
  Tensor x = a.dim() == 1 ? a.unsqueeze(0) : a;
  Tensor y = b.dim() == 1 ? b.unsqueeze(1) : b;
  const int64_t m = x.size(-2), k = x.size(-1), k2 = y.size(-2), n = y.size(-1);
  BCOS_CHECK(k == k2, op, ": shapes ", a.shape(), " and ", b.shape(), " cannot be multiplied (",
             k, " != ", k2, ")");

  Shape out_shape;
  Tensor out;
  if (y.dim() == 2 && x.dim() >= 2) {
    // [..., M, K] · [K, N]: fold the batch into the rows -- one large product.
    for (int i = 0; i < x.dim() - 1; ++i) out_shape.push_back(x.shape()[i]);
    out_shape.push_back(n);
    int64_t row_count = 1;
    for (int i = 0; i < x.dim() - 1; ++i) row_count *= x.shape()[i];
    Tensor rows = x.reshape({row_count, k});  // not -1: that is ambiguous when k == 0
    out = bmm3(rows.unsqueeze(0), y.unsqueeze(0), autocast_operands(a)).reshape(out_shape);
  } else {
    Shape xb(x.shape().begin(), x.shape().end() - 2), yb(y.shape().begin(), y.shape().end() - 2);
    Shape batch = broadcast_shapes(xb, yb, op);
    Shape xs = batch, ys = batch;
    xs.push_back(m), xs.push_back(k);
    ys.push_back(k), ys.push_back(n);
    int64_t bsz = batch.numel();
    Tensor x3 = x.expand(xs).reshape({bsz, m, k});
    Tensor y3 = y.expand(ys).reshape({bsz, k, n});
    out_shape = batch;
    out_shape.push_back(m), out_shape.push_back(n);
    out = bmm3(x3, y3, autocast_operands(a)).reshape(out_shape);
  }
  if (a.dim() == 1) out = out.squeeze(-2);
  if (b.dim() == 1) out = out.squeeze(-1);
  return out;
}

Tensor linear(const Tensor& x, const Tensor& weight, const Tensor& bias) {
  if (autocast_lowers(x) || autocast_lowers(weight) || autocast_lowers(bias))
    return linear(autocast_to_lower(x), autocast_to_lower(weight), autocast_to_lower(bias));
  return detail::linear_keeping(x, weight, bias, true);
}

Tensor detail::linear_keeping(const Tensor& x, const Tensor& weight, const Tensor& bias, bool keep_rounded_input) {
  const char* op = "linear";
  check_defined(op, x, "input");
  check_defined(op, weight, "weight");
  BCOS_CHECK(weight.dim() == 2, op, ": weight must be 2-D [out, in], got ", weight.shape());
  BCOS_CHECK(x.dim() >= 1 && x.size(-1) == weight.size(1), op, ": input ", x.shape(),
             " does not end in the weight's in-features ", weight.size(1), " (weight ",
             weight.shape(), ")");
  check_same_device(op, x, weight);
  check_same_dtype(op, x, weight);
  check_floating(op, x);
  // [..., K] -> rows [R, K] -> [..., N]
  Shape out_shape = x.shape();
  out_shape[x.dim() - 1] = weight.size(0);
  int64_t rows = 1;
  for (int i = 0; i < x.dim() - 1; ++i) rows *= x.size(i);
  if (bias.defined()) {
    BCOS_CHECK(bias.dim() == 1 && bias.size(0) == weight.size(0), op, ": bias ", bias.shape(),
               " does not match the weight's out-features ", weight.size(0));
    check_same_device(op, x, bias);
    check_same_dtype(op, x, bias);
  }
  return linear_rows(x.reshape({rows, weight.size(1)}), weight, bias, keep_rounded_input).reshape(out_shape);
}

}  // namespace bcos
