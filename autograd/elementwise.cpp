// Elementwise ops with their backward passes. Broadcasting happens here (inputs are expanded
// to the output shape as stride-0 views); the engine sums gradients back to each input's shape.
#include <cmath>

#include "autograd/dispatch.h"
#include "autograd/ops.h"
#include "tensor/elementwise_math.h"

namespace bcos {

using namespace detail;

namespace {

// torch's CUDA autocast float32 list among the unary maps (autograd.h).
bool on_float32_list(UnaryOp op) {
  return op == UnaryOp::exp || op == UnaryOp::log || op == UnaryOp::log1p || op == UnaryOp::rsqrt ||
         op == UnaryOp::reciprocal || op == UnaryOp::pow_scalar;
}

Tensor unary_op(const char* name, const char* node, UnaryOp op, const Tensor& x, double p0 = 0,
                double p1 = 0) {
  check_defined(name, x, "input");
  check_floating(name, x);
  if (on_float32_list(op) && autocast_widens(x, AutocastList::float32_on_cuda))
    return unary_op(name, node, op, widened(x), p0, p1);
  Tensor out = empty(x.shape(), {x.dtype(), x.device()});
  kernel::unary(op, x, out, p0, p1);
  if (needs_graph({x})) {
    // Only what the derivative reads: GELU's output, say, is often kept by the next op as a
    // float32 tensor, and by nobody else (a linear layer under autocast keeps a bf16 copy).
    const bool uses_output = math::derivative_uses_output(op);
    SavedTensor sx(uses_output ? Tensor() : x), sy(uses_output ? out : Tensor());
    record(node, out, {x}, [=](const Tensor& g, const std::vector<bool>&) {
      Tensor gx = empty(g.shape(), {g.dtype(), g.device()});
      kernel::unary_backward(op, g, sx.get(), sy.get(), gx, p0, p1);
      return Grads{gx};
    });
  }
  return out;
}

// The result type of two floating operands of which one is 16-bit, as PyTorch's: a number
// (scalar_for's wrapped float32) never widens the other operand's type, even a 0-dim one (a bf16
// loss / 4 stays bf16); a 0-dim tensor does not widen a tensor with dims (bf16 x * t0 stays bf16);
// otherwise the wider type wins. (float32 with float64 stays an error: in a gradcheck the mix is a
// bug, not a wish.)
DType result_type(const Tensor& a, const Tensor& b) {
  if (a.dtype() == b.dtype()) return a.dtype();
  if (a.is_wrapped_number() != b.is_wrapped_number()) return a.is_wrapped_number() ? b.dtype() : a.dtype();
  const bool a_scalar = a.dim() == 0, b_scalar = b.dim() == 0;
  if (a_scalar != b_scalar) return a_scalar ? b.dtype() : a.dtype();
  return promote_floats(a.dtype(), b.dtype());
}

// An operand in the type the kernel takes for result type r: r itself, except that in arithmetic
// a 0-dim operand beside a 16-bit result keeps float32 (its value is not rounded to 16 bits:
// PyTorch computes such ops in float32 with the scalar as given, and rounds only the result). A
// comparison rounds it to r first, as PyTorch's (bf16 x == 0.1 compares with bf16(0.1)).
Tensor kernel_operand(const Tensor& t, DType r, bool comparison) {
  if (t.dtype() == r) return t;
  if (is_half_float(r) && t.dim() == 0 && !comparison)
    return t.dtype() == DType::f32 ? t : raw_to(t, DType::f32, t.device());
  return raw_to(t, r, t.device());
}

// Forward of a binary op: checks, type promotion of floating operands, broadcast, kernel.
Tensor binary_forward(const char* name, BinaryOp op, const Tensor& a, const Tensor& b) {
  check_defined(name, a, "first operand");
  check_defined(name, b, "second operand");
  check_same_device(name, a, b);
  if (!(is_half_float(a.dtype()) || is_half_float(b.dtype())) || !(a.is_floating_point() && b.is_floating_point()))
    check_same_dtype(name, a, b);
  const DType r = a.is_floating_point() ? result_type(a, b) : a.dtype();
  if (!is_comparison(op)) {
    if (op == BinaryOp::div || op == BinaryOp::pow)
      BCOS_CHECK(is_floating(r), name, ": expected floating-point tensors, got ", a.dtype());
    else
      BCOS_CHECK(is_floating(r) || r == DType::i64, name, ": expected floating-point or int64 tensors, got ", a.dtype());
  }
  Shape shape = broadcast_shapes(a.shape(), b.shape(), name);
  Tensor out = empty(shape, {is_comparison(op) ? DType::boolean : r, a.device()});
  // A float32 result of a float32 and a 16-bit operand (a bf16 linear's output added to a float32
  // residual stream under autocast): the kernel widens the 16-bit one as it reads it -- exact, so
  // the same bits as a widened copy, without that copy's pass.
  const bool widen_in_kernel =
      !is_comparison(op) && r == DType::f32 && is_half_float(a.dtype()) != is_half_float(b.dtype());
  auto operand = [&](const Tensor& t) {
    return widen_in_kernel && is_half_float(t.dtype()) ? t : kernel_operand(t, r, is_comparison(op));
  };
  kernel::binary(op, raw_expand(operand(a), shape, name), raw_expand(operand(b), shape, name), out);
  return out;
}

// The scalar operand as a 0-dim tensor of the tensor's dtype. An integer tensor takes only
// integral scalars: PyTorch would promote the result to float, we ask for an explicit .to().
Tensor scalar_for(const char* op, double v, const Tensor& like) {
  check_defined(op, like, "tensor operand");
  BCOS_CHECK(like.is_floating_point() || v == std::trunc(v), op, ": a ", like.dtype(),
             " tensor (shape ", like.shape(), ") with the non-integer scalar ", v,
             "; convert the tensor with .to(kFloat32) first");
  // A 16-bit tensor's scalar stays float32 (binary_forward: only the result is rounded), marked
  // as a number so that it does not widen the result, whatever like's dims.
  return is_half_float(like.dtype()) ? full(Shape{}, v, {DType::f32, like.device()}).as_wrapped_number()
                                     : scalar_like(v, like);
}

}  // namespace

// a ± alpha · b with a 16-bit operand: in float32, rounded once (as PyTorch), not b · alpha rounded first.
bool alpha_in_float32(const Tensor& a, const Tensor& b, double alpha) {
  return alpha != 1.0 && a.defined() && b.defined() && (is_half(a) || is_half(b)) && a.is_floating_point() &&
         b.is_floating_point();
}

Tensor add(const Tensor& a, const Tensor& b, double alpha) {
  if (alpha_in_float32(a, b, alpha)) return add(widened(a), mul(widened(b), alpha)).to(result_type(a, b));
  Tensor bb = alpha == 1.0 ? b : mul(b, alpha);
  Tensor out = binary_forward("add", BinaryOp::add, a, bb);
  if (needs_graph({a, bb}))
    record("AddBackward", out, {a, bb}, [](const Tensor& g, const std::vector<bool>&) {
      return Grads{g, g};
    });
  return out;
}

Tensor add_relu(const Tensor& a, const Tensor& b) {
  Tensor out = binary_forward("add_relu", BinaryOp::add_relu, a, b);
  if (needs_graph({a, b})) {
    check_floating("add_relu", a);
    SavedTensor sy(out);
    // relu's backward with the output for its input: out > 0 exactly where a + b > 0.
    record("AddReluBackward", out, {a, b}, [=](const Tensor& g, const std::vector<bool>&) {
      Tensor gs = empty(g.shape(), {g.dtype(), g.device()});
      kernel::unary_backward(UnaryOp::relu, g, sy.get(), sy.get(), gs);
      return Grads{gs, gs};
    });
  }
  return out;
}

Tensor sub(const Tensor& a, const Tensor& b, double alpha) {
  if (alpha_in_float32(a, b, alpha)) return sub(widened(a), mul(widened(b), alpha)).to(result_type(a, b));
  Tensor bb = alpha == 1.0 ? b : mul(b, alpha);
  Tensor out = binary_forward("sub", BinaryOp::sub, a, bb);
  if (needs_graph({a, bb}))
    record("SubBackward", out, {a, bb}, [](const Tensor& g, const std::vector<bool>& need) {
      return Grads{g, need[1] ? neg(g) : Tensor()};
    });
  return out;
}

Tensor mul(const Tensor& a, const Tensor& b) {
  Tensor out = binary_forward("mul", BinaryOp::mul, a, b);
  if (needs_graph({a, b})) {
    SavedTensor sa(needs_graph({b}) ? a : Tensor()), sb(needs_graph({a}) ? b : Tensor());  // each for the other's gradient
    record("MulBackward", out, {a, b}, [=](const Tensor& g, const std::vector<bool>& need) {
      return Grads{need[0] ? mul(g, sb.get()) : Tensor(), need[1] ? mul(g, sa.get()) : Tensor()};
    });
  }
  return out;
}

Tensor div(const Tensor& a, const Tensor& b) {
  Tensor out = binary_forward("div", BinaryOp::div, a, b);
  if (needs_graph({a, b})) {
    SavedTensor sa(a), sb(b);
    record("DivBackward", out, {a, b}, [=](const Tensor& g, const std::vector<bool>& need) {
      Tensor ga, gb;
      if (need[0]) ga = div(g, sb.get());
      if (need[1]) gb = neg(div(mul(g, sa.get()), square(sb.get())));  // -g a / b^2
      return Grads{ga, gb};
    });
  }
  return out;
}

Tensor pow(const Tensor& a, const Tensor& b) {
  if (autocast_widens(a, AutocastList::float32_on_cuda) || autocast_widens(b, AutocastList::float32_on_cuda))
    return pow(widened(a), widened(b));
  Tensor out = binary_forward("pow", BinaryOp::pow, a, b);
  if (needs_graph({a, b})) {
    SavedTensor sa(a), sb(b), sy(out);
    record("PowBackward", out, {a, b}, [=](const Tensor& g, const std::vector<bool>& need) {
      Tensor ga, gb;
      const Tensor &x = sa.get(), &e = sb.get();
      // d/da a^b = b a^(b-1) (0 where b == 0); d/db a^b = a^b log a (0 where a == 0 and b >= 0)
      if (need[0]) ga = where(eq(e, 0.0), zeros_like(g), mul(g, mul(e, pow(x, sub(e, 1.0)))));
      if (need[1]) {
        Tensor d = mul(sy.get(), log(x));
        Tensor no_false = zeros(Shape{}, {DType::boolean, x.device()});
        Tensor zero_base = where(eq(x, 0.0), ge(e, 0.0), no_false);
        gb = mul(g, where(zero_base, zeros_like(d), d));
      }
      return Grads{ga, gb};
    });
  }
  return out;
}

Tensor minimum(const Tensor& a, const Tensor& b) {
  Tensor out = binary_forward("minimum", BinaryOp::minimum, a, b);
  if (needs_graph({a, b})) {
    SavedTensor sa(a), sb(b);
    record("MinimumBackward", out, {a, b}, [=](const Tensor& g, const std::vector<bool>&) {
      // Ties split the gradient evenly, as PyTorch does.
      Tensor half = mul(g, 0.5);
      Tensor a_wins = lt(sa.get(), sb.get()), tie = eq(sa.get(), sb.get());
      Tensor ga = where(a_wins, g, where(tie, half, zeros_like(g)));
      Tensor gb = where(a_wins, zeros_like(g), where(tie, half, g));
      return Grads{ga, gb};
    });
  }
  return out;
}

Tensor maximum(const Tensor& a, const Tensor& b) {
  Tensor out = binary_forward("maximum", BinaryOp::maximum, a, b);
  if (needs_graph({a, b})) {
    SavedTensor sa(a), sb(b);
    record("MaximumBackward", out, {a, b}, [=](const Tensor& g, const std::vector<bool>&) {
      Tensor half = mul(g, 0.5);
      Tensor a_wins = gt(sa.get(), sb.get()), tie = eq(sa.get(), sb.get());
      Tensor ga = where(a_wins, g, where(tie, half, zeros_like(g)));
      Tensor gb = where(a_wins, zeros_like(g), where(tie, half, g));
      return Grads{ga, gb};
    });
  }
  return out;
}

// Scalar forms: the scalar becomes a 0-dim tensor of the same dtype and device.
Tensor add(const Tensor& a, double b) { return add(a, scalar_for("add", b, a)); }
Tensor sub(const Tensor& a, double b) { return sub(a, scalar_for("sub", b, a)); }
Tensor sub(double a, const Tensor& b) { return sub(scalar_for("sub", a, b), b); }
Tensor mul(const Tensor& a, double b) { return mul(a, scalar_for("mul", b, a)); }
Tensor div(const Tensor& a, double b) { return div(a, scalar_for("div", b, a)); }
Tensor div(double a, const Tensor& b) { return div(scalar_for("div", a, b), b); }
Tensor pow(const Tensor& x, double exponent) {
  return unary_op("pow", "PowBackward", UnaryOp::pow_scalar, x, exponent);
}

#define BCOS_COMPARISON(fn, kind)                                                          \
  Tensor fn(const Tensor& a, const Tensor& b) { return binary_forward(#fn, kind, a, b); } \
  Tensor fn(const Tensor& a, double b) { return binary_forward(#fn, kind, a, scalar_for(#fn, b, a)); }
BCOS_COMPARISON(eq, BinaryOp::eq)
BCOS_COMPARISON(ne, BinaryOp::ne)
BCOS_COMPARISON(lt, BinaryOp::lt)
BCOS_COMPARISON(le, BinaryOp::le)
BCOS_COMPARISON(gt, BinaryOp::gt)
BCOS_COMPARISON(ge, BinaryOp::ge)
#undef BCOS_COMPARISON

Tensor neg(const Tensor& x) { return unary_op("neg", "NegBackward", UnaryOp::neg, x); }
Tensor abs(const Tensor& x) { return unary_op("abs", "AbsBackward", UnaryOp::abs, x); }
Tensor sign(const Tensor& x) { return unary_op("sign", "SignBackward", UnaryOp::sign, x); }
Tensor exp(const Tensor& x) { return unary_op("exp", "ExpBackward", UnaryOp::exp, x); }
Tensor log(const Tensor& x) { return unary_op("log", "LogBackward", UnaryOp::log, x); }
Tensor log1p(const Tensor& x) { return unary_op("log1p", "Log1pBackward", UnaryOp::log1p, x); }
Tensor sqrt(const Tensor& x) { return unary_op("sqrt", "SqrtBackward", UnaryOp::sqrt, x); }
Tensor rsqrt(const Tensor& x) { return unary_op("rsqrt", "RsqrtBackward", UnaryOp::rsqrt, x); }
Tensor square(const Tensor& x) { return unary_op("square", "SquareBackward", UnaryOp::square, x); }
Tensor reciprocal(const Tensor& x) {
  return unary_op("reciprocal", "ReciprocalBackward", UnaryOp::reciprocal, x);
}
Tensor sin(const Tensor& x) { return unary_op("sin", "SinBackward", UnaryOp::sin, x); }
Tensor cos(const Tensor& x) { return unary_op("cos", "CosBackward", UnaryOp::cos, x); }
Tensor tanh(const Tensor& x) { return unary_op("tanh", "TanhBackward", UnaryOp::tanh, x); }
Tensor sigmoid(const Tensor& x) {
  return unary_op("sigmoid", "SigmoidBackward", UnaryOp::sigmoid, x);
}
Tensor relu(const Tensor& x) { return unary_op("relu", "ReluBackward", UnaryOp::relu, x); }
Tensor silu(const Tensor& x) { return unary_op("silu", "SiluBackward", UnaryOp::silu, x); }
Tensor quick_gelu(const Tensor& x) {
  // A 16-bit tensor on the CPU takes the composed ops (the same bits): there the one-pass
  // backward's second σ costs more than the passes it saves (the vectorised exp dominates a
  // bf16 pass that fits in cache: [616, 2048] forward + backward 1.47 vs 0.94 ms), while in
  // float32, and on a GPU in any type, one pass each way wins (float32 on this CPU: 0.76 vs 1.46 ms).
  if (x.defined() && is_half(x) && x.device().is_cpu()) return x * sigmoid(x * 1.702);
  return unary_op("quick_gelu", "QuickGeluBackward", UnaryOp::quick_gelu, x);
}

Tensor gelu(const Tensor& x, const std::string& approximate) {
  BCOS_CHECK(approximate == "none" || approximate == "tanh",
             "gelu: approximate must be \"none\" or \"tanh\", got \"", approximate, "\"");
  return unary_op("gelu", "GeluBackward",
                  approximate == "tanh" ? UnaryOp::gelu_tanh : UnaryOp::gelu_erf, x);
}

Tensor clamp(const Tensor& x, std::optional<double> lo, std::optional<double> hi) {
  BCOS_CHECK(lo || hi, "clamp: at least one of min and max must be given");
  return unary_op("clamp", "ClampBackward", UnaryOp::clamp, x, lo ? *lo : NAN, hi ? *hi : NAN);
}
Tensor clamp_min(const Tensor& x, double lo) { return clamp(x, lo, std::nullopt); }
Tensor clamp_max(const Tensor& x, double hi) { return clamp(x, std::nullopt, hi); }

Tensor where(const Tensor& cond, const Tensor& a, const Tensor& b) {
  const char* op = "where";
  check_defined(op, cond, "condition");
  check_defined(op, a, "first value");
  check_defined(op, b, "second value");
  BCOS_CHECK(cond.dtype() == DType::boolean, op, ": condition must be bool, got ", cond.dtype());
  check_same_device(op, cond, a);
  check_same_device(op, a, b);
  const bool promote = (is_half_float(a.dtype()) || is_half_float(b.dtype())) && a.is_floating_point() &&
                       b.is_floating_point();
  if (!promote) check_same_dtype(op, a, b);
  const DType r = promote ? result_type(a, b) : a.dtype();  // a selection: its values rounded first or after, the same
  Shape shape = broadcast_shapes(broadcast_shapes(cond.shape(), a.shape(), op), b.shape(), op);
  Tensor out = empty(shape, {r, a.device()});
  kernel::where(raw_expand(cond, shape, op), raw_expand(a.dtype() == r ? a : raw_to(a, r, a.device()), shape, op),
                raw_expand(b.dtype() == r ? b : raw_to(b, r, b.device()), shape, op), out);
  if (needs_graph({a, b})) {
    SavedTensor sc(cond);
    record("WhereBackward", out, {a, b}, [=](const Tensor& g, const std::vector<bool>& need) {
      Tensor z = zeros(Shape{}, {g.dtype(), g.device()});
      return Grads{need[0] ? where(sc.get(), g, z) : Tensor(),
                   need[1] ? where(sc.get(), z, g) : Tensor()};
    });
  }
  return out;
}

Tensor where(const Tensor& cond, const Tensor& a, double b) {
  return where(cond, a, scalar_for("where", b, a));
}

Tensor operator+(const Tensor& a, const Tensor& b) { return add(a, b); }
Tensor operator-(const Tensor& a, const Tensor& b) { return sub(a, b); }
Tensor operator*(const Tensor& a, const Tensor& b) { return mul(a, b); }
Tensor operator/(const Tensor& a, const Tensor& b) { return div(a, b); }
Tensor operator+(const Tensor& a, double b) { return add(a, b); }
Tensor operator-(const Tensor& a, double b) { return sub(a, b); }
Tensor operator*(const Tensor& a, double b) { return mul(a, b); }
Tensor operator/(const Tensor& a, double b) { return div(a, b); }
Tensor operator+(double a, const Tensor& b) { return add(b, a); }
Tensor operator-(double a, const Tensor& b) { return sub(a, b); }
Tensor operator*(double a, const Tensor& b) { return mul(b, a); }
Tensor operator/(double a, const Tensor& b) { return div(a, b); }
Tensor operator-(const Tensor& x) { return neg(x); }

}  // namespace bcos
