// Elementwise CPU kernels: unary maps with their fused derivatives, binary ops over broadcast
// (stride-0) operands, comparisons and where: the loops, around the per-element formulas that
// tensor/elementwise_math.h writes once for both backends.
#include <algorithm>
#include <cmath>
#include <type_traits>

#include "tensor/elementwise_math.h"

#include "tensor/cpu/kernels.h"
#include "tensor/cpu/loops.h"
#include "tensor/cpu/vec_math.h"

// 512-bit vectors where the CPU has them (GCC's default tuning stops at 256): GELU 1.6 -> 1.0 ns
// per element on one core.
#pragma GCC target("prefer-vector-width=512")

namespace bcos::cpu {

namespace {

// out = f(x) over any strides; the contiguous case is a plain loop the compiler vectorises.
template <class T, class Out, class F>
void map1(const Tensor& x, const Tensor& out, F f) {
  const T* px = static_cast<const T*>(x.raw_data());
  Out* po = static_cast<Out*>(out.raw_data());
  for_each_row<2>(out.shape(), {&out, &x}, 4, [&](const int64_t* off, int64_t n, const int64_t* st) {
    Out* o = po + off[0];
    const T* a = px + off[1];
    if (st[0] == 1 && st[1] == 1) {
      for (int64_t i = 0; i < n; ++i) o[i] = f(a[i]);
    } else {
      for (int64_t i = 0; i < n; ++i) o[i * st[0]] = f(a[i * st[1]]);
    }
  });
}

// out = f(a, b, c) for three same-shaped operands (any strides, b and c may be undefined).
template <class T, class Out, class F>
void map3(const Tensor& a, const Tensor& b, const Tensor& c, const Tensor& out, F f) {
  const Tensor& bb = b.defined() ? b : a;
  const Tensor& cc = c.defined() ? c : a;
  const T* pa = static_cast<const T*>(a.raw_data());
  const T* pb = static_cast<const T*>(bb.raw_data());
  const T* pc = static_cast<const T*>(cc.raw_data());
  Out* po = static_cast<Out*>(out.raw_data());
  for_each_row<4>(out.shape(), {&out, &a, &bb, &cc}, 4,
                  [&](const int64_t* off, int64_t n, const int64_t* st) {
                    Out* o = po + off[0];
                    const T *x = pa + off[1], *y = pb + off[2], *z = pc + off[3];
                    if (st[0] == 1 && st[1] == 1 && st[2] == 1 && st[3] == 1) {
                      for (int64_t i = 0; i < n; ++i) o[i] = f(x[i], y[i], z[i]);
                    } else {
                      for (int64_t i = 0; i < n; ++i)
                        o[i * st[0]] = f(x[i * st[1]], y[i * st[2]], z[i * st[3]]);
                    }
                  });
}

// out = f(a, b) with a fast path for a broadcast scalar b (x + 2, x * w[c] rows). A and B differ
// only for a 16-bit tensor with a float32 scalar, which keeps its float32 value (as PyTorch's).
template <class A, class Out, class B = A, class F>
void map2(const Tensor& a, const Tensor& b, const Tensor& out, F f) {
  const A* pa = static_cast<const A*>(a.raw_data());
  const B* pb = static_cast<const B*>(b.raw_data());
  Out* po = static_cast<Out*>(out.raw_data());
  for_each_row<3>(out.shape(), {&out, &a, &b}, 2,
                  [&](const int64_t* off, int64_t n, const int64_t* st) {
                    Out* o = po + off[0];
                    const A* x = pa + off[1];
                    const B* y = pb + off[2];
                    if (st[0] == 1 && st[1] == 1 && st[2] == 1) {
                      for (int64_t i = 0; i < n; ++i) o[i] = f(x[i], y[i]);
                    } else if (st[0] == 1 && st[1] == 1 && st[2] == 0) {
                      const B s = *y;
                      for (int64_t i = 0; i < n; ++i) o[i] = f(x[i], s);
                    } else if (st[0] == 1 && st[1] == 0 && st[2] == 1) {
                      const A s = *x;
                      for (int64_t i = 0; i < n; ++i) o[i] = f(s, y[i]);
                    } else {
                      for (int64_t i = 0; i < n; ++i) o[i * st[0]] = f(x[i * st[1]], y[i * st[2]]);
                    }
                  });
}

// σ as the CPU's float sigmoid computes it (vectorised exp): sigmoid's and QuickGELU's gate.
struct VecSigmoid {
  BCOS_VEC_INLINE float operator()(float v) const { return 1.0f / (1.0f + vec::exp(-v)); }
};
// Rounds a float to the 16-bit type S and back: QuickGELU's intermediates on S tensors.
template <class S>
struct RoundThrough {
  static constexpr bool kKeeps = false;
  BCOS_VEC_INLINE float operator()(float v) const { return float(S(v)); }
};

// float exp, sigmoid, SiLU and GELU through tensor/cpu/vec_math.h, whose loops vectorise (libm's
// erff / expf kept them scalar: GELU was 7.6 % of a ViT-B/16 forward); every other op and dtype
// through the formulas shared with CUDA.
template <UnaryOp OP, class T>
BCOS_VEC_INLINE T forward_on_cpu(T v, const math::UnaryParams<T>& p) {
  if constexpr (std::is_same_v<T, float>) {
    if constexpr (OP == UnaryOp::exp) return vec::exp(v);
    else if constexpr (OP == UnaryOp::sigmoid) return VecSigmoid{}(v);
    else if constexpr (OP == UnaryOp::silu) return v / (1.0f + vec::exp(-v));
    else if constexpr (OP == UnaryOp::gelu_erf) return v * vec::normal_cdf(v);
    else if constexpr (OP == UnaryOp::quick_gelu) return math::quick_gelu_forward(v, math::KeepValue{}, VecSigmoid{});
  }
  return math::unary_forward<OP>(v, p);
}

// g · op'(s) (s is x, or y where the derivative is cheaper in it), as forward_on_cpu.
template <UnaryOp OP, class T>
BCOS_VEC_INLINE T backward_on_cpu(T g, T s, const math::UnaryParams<T>& p) {
  if constexpr (std::is_same_v<T, float>) {
    if constexpr (OP == UnaryOp::gelu_erf) return g * (vec::normal_cdf(s) + s * vec::normal_pdf(s));
    else if constexpr (OP == UnaryOp::quick_gelu) return math::quick_gelu_backward(g, s, math::KeepValue{}, VecSigmoid{});
    else if constexpr (OP == UnaryOp::silu) {
      const float sig = 1.0f / (1.0f + vec::exp(-s));
      return g * sig * (1.0f + s * (1.0f - sig));
    }
  }
  return math::unary_backward<OP>(g, s, p);
}

template <class T>
void unary_typed(UnaryOp op, const Tensor& x, const Tensor& out, double p0, double p1) {
  const math::UnaryParams<T> p = math::make_unary_params<T>(p0, p1);
  // Decided once, not per element, so these loops vectorise: x^2 as a square, clamp's bounds.
  if (op == UnaryOp::pow_scalar && p.p0 == T(2)) op = UnaryOp::square;
  if (op == UnaryOp::clamp) {
    const T lo = p.p0, hi = p.p1;
    auto run = [&]<bool LO, bool HI>() {
      map1<T, T>(x, out, [lo, hi](T v) { return math::clamp_value<LO, HI>(v, lo, hi); });
    };
    if (p.has_lo && p.has_hi) return run.template operator()<true, true>();
    if (p.has_lo) return run.template operator()<true, false>();
    if (p.has_hi) return run.template operator()<false, true>();
    return run.template operator()<false, false>();
  }
  math::with_unary_op(op, [&]<UnaryOp OP>() {
    map1<T, T>(x, out, [p](T v) BCOS_VEC_INLINE_LAMBDA { return forward_on_cpu<OP>(v, p); });
  });
}

// grad_x = g · op'(x), on x or on y = op(x), whichever the derivative is cheaper in.
template <class T>
void unary_backward_typed(UnaryOp op, const Tensor& g, const Tensor& x, const Tensor& y,
                          const Tensor& gx, double p0, double p1) {
  const math::UnaryParams<T> p = math::make_unary_params<T>(p0, p1);
  if (op == UnaryOp::pow_scalar && p.p0 == T(2)) op = UnaryOp::square;  // 2·g·x, exactly g·2·x¹, vectorised
  const Tensor& s = math::derivative_uses_output(op) ? y : x;
  math::with_unary_op(op, [&]<UnaryOp OP>() {
    map3<T, T>(g, s, Tensor(), gx, [p](T gv, T sv, T) BCOS_VEC_INLINE_LAMBDA { return backward_on_cpu<OP>(gv, sv, p); });
  });
}

// float16 / bfloat16 (S): each element widened to float, computed by the float formulas, and the
// result rounded once -- PyTorch's "opmath" scheme, so results agree with its bit for bit
// wherever the float formulas do. The maps go through float buffers of a few hundred elements:
// widening, the float formula and rounding each as a loop of its own vectorise, where one loop
// doing all three stayed scalar (bf16 ReLU 25x slower than float32's).
constexpr int64_t kHalfChunk = 256;

// out = f(x) for S tensors, f on float.
template <class S, class F>
void map1_half(const Tensor& x, const Tensor& out, F f) {
  const S* px = static_cast<const S*>(x.raw_data());
  S* po = static_cast<S*>(out.raw_data());
  for_each_row<2>(out.shape(), {&out, &x}, 4, [&](const int64_t* off, int64_t n, const int64_t* st) {
    float buf[kHalfChunk];
    for (int64_t i0 = 0; i0 < n; i0 += kHalfChunk) {
      const int64_t m = std::min(kHalfChunk, n - i0);
      const S* a = px + off[1] + i0 * st[1];
      S* o = po + off[0] + i0 * st[0];
      if (st[1] == 1) for (int64_t j = 0; j < m; ++j) buf[j] = float(a[j]);
      else for (int64_t j = 0; j < m; ++j) buf[j] = float(a[j * st[1]]);
      for (int64_t j = 0; j < m; ++j) buf[j] = f(buf[j]);
      if (st[0] == 1) for (int64_t j = 0; j < m; ++j) o[j] = S(buf[j]);
      else for (int64_t j = 0; j < m; ++j) o[j * st[0]] = S(buf[j]);
    }
  });
}

// out = f(a, b) for operands of types A and B (each 16-bit or float) into Out, f on float: each
// operand widened into a float buffer, f, the result converted (rounded, for a 16-bit Out).
template <class A, class B, class Out, class F>
void map2_buffered(const Tensor& a, const Tensor& b, const Tensor& out, F f) {
  const A* pa = static_cast<const A*>(a.raw_data());
  const B* pb = static_cast<const B*>(b.raw_data());
  Out* po = static_cast<Out*>(out.raw_data());
  for_each_row<3>(out.shape(), {&out, &a, &b}, 4, [&](const int64_t* off, int64_t n, const int64_t* st) {
    float ba[kHalfChunk], bb[kHalfChunk];
    for (int64_t i0 = 0; i0 < n; i0 += kHalfChunk) {
      const int64_t m = std::min(kHalfChunk, n - i0);
      const A* x = pa + off[1] + i0 * st[1];
      const B* y = pb + off[2] + i0 * st[2];
      Out* o = po + off[0] + i0 * st[0];
      if (st[1] == 1) for (int64_t j = 0; j < m; ++j) ba[j] = float(x[j]);
      else for (int64_t j = 0; j < m; ++j) ba[j] = float(x[j * st[1]]);
      if (st[2] == 1) for (int64_t j = 0; j < m; ++j) bb[j] = float(y[j]);
      else for (int64_t j = 0; j < m; ++j) bb[j] = float(y[j * st[2]]);
      for (int64_t j = 0; j < m; ++j) ba[j] = f(ba[j], bb[j]);
      if (st[0] == 1) for (int64_t j = 0; j < m; ++j) o[j] = Out(ba[j]);
      else for (int64_t j = 0; j < m; ++j) o[j * st[0]] = Out(ba[j]);
    }
  });
}

// out = f(a, b) for S tensors of one shape, f on float.
template <class S, class F>
void map2_half(const Tensor& a, const Tensor& b, const Tensor& out, F f) {
  map2_buffered<S, S, S>(a, b, out, f);
}

template <class S>
void unary_half(UnaryOp op, const Tensor& x, const Tensor& out, double p0, double p1) {
  BCOS_CHECK(out.dtype() == x.dtype(), "unary ", op_name(op), ": output is ", out.dtype(), ", input is ", x.dtype());
  const math::UnaryParams<float> p = math::make_unary_params<float>(p0, p1);
  if (op == UnaryOp::pow_scalar && p.p0 == 2.0f) op = UnaryOp::square;
  math::with_unary_op(op, [&]<UnaryOp OP>() {
    if constexpr (OP == UnaryOp::quick_gelu)  // its composed ops' roundings to S
      map1_half<S>(x, out, [](float v) BCOS_VEC_INLINE_LAMBDA {
        return math::quick_gelu_forward(v, RoundThrough<S>{}, VecSigmoid{});
      });
    else
      map1_half<S>(x, out, [p](float v) BCOS_VEC_INLINE_LAMBDA { return forward_on_cpu<OP>(v, p); });
  });
}

template <class S>
void unary_backward_half(UnaryOp op, const Tensor& g, const Tensor& x, const Tensor& y, const Tensor& gx,
                         double p0, double p1) {
  const math::UnaryParams<float> p = math::make_unary_params<float>(p0, p1);
  if (op == UnaryOp::pow_scalar && p.p0 == 2.0f) op = UnaryOp::square;
  const Tensor& s = math::derivative_uses_output(op) ? y : x;
  BCOS_CHECK(g.dtype() == s.dtype() && gx.dtype() == s.dtype(), "unary_backward ", op_name(op), ": grad ", g.dtype(),
             ", grad_x ", gx.dtype(), " and input ", s.dtype(), " must agree");
  math::with_unary_op(op, [&]<UnaryOp OP>() {
    if constexpr (OP == UnaryOp::quick_gelu)
      map2_half<S>(g, s, gx, [](float gv, float sv) BCOS_VEC_INLINE_LAMBDA {
        return math::quick_gelu_backward(gv, sv, RoundThrough<S>{}, VecSigmoid{});
      });
    else
      map2_half<S>(g, s, gx, [p](float gv, float sv) BCOS_VEC_INLINE_LAMBDA { return backward_on_cpu<OP>(gv, sv, p); });
  });
}

// Operands of type A and B, each S or float (a float32 scalar), into S (a comparison: bool).
template <class S, class A, class B>
void binary_half_typed(BinaryOp op, const Tensor& a, const Tensor& b, const Tensor& out) {
  math::with_binary_op(op, [&]<BinaryOp OP>() {
    using Out = std::conditional_t<is_comparison(OP), bool, S>;
    map2<A, Out, B>(a, b, out, [](A x, B y) {
      if constexpr (is_comparison(OP)) return math::binary<OP>(float(x), float(y));
      else return S(math::binary<OP>(float(x), float(y)));
    });
  });
}

template <class S>
void binary_half(BinaryOp op, const Tensor& a, const Tensor& b, const Tensor& out) {
  const DType s = dtype_of<S>::value;
  const bool a_wide = a.dtype() == DType::f32, b_wide = b.dtype() == DType::f32;
  BCOS_CHECK((a.dtype() == s || a_wide) && (b.dtype() == s || b_wide) && !(a_wide && b_wide) &&
                 (is_comparison(op) ? out.dtype() == DType::boolean : out.dtype() == s),
             "binary ", op_name(op), ": operands ", a.dtype(), " and ", b.dtype(), " into ", out.dtype(),
             " (a 16-bit op takes its own type or a float32 scalar)");
  if (a_wide) return binary_half_typed<S, float, S>(op, a, b, out);
  if (b_wide) return binary_half_typed<S, S, float>(op, a, b, out);
  return binary_half_typed<S, S, S>(op, a, b, out);
}

// A float32 op with one 16-bit operand (S): widened exactly as map2_buffered reads it.
template <class S>
void binary_widening(BinaryOp op, const Tensor& a, const Tensor& b, const Tensor& out) {
  math::with_binary_op(op, [&]<BinaryOp OP>() {
    if constexpr (!is_comparison(OP)) {
      auto f = [](float x, float y) { return math::binary<OP>(x, y); };
      if (a.dtype() == DType::f32) map2_buffered<float, S, float>(a, b, out, f);
      else map2_buffered<S, float, float>(a, b, out, f);
    }
  });
}

template <class T>
void binary_typed(BinaryOp op, const Tensor& a, const Tensor& b, const Tensor& out) {
  math::with_binary_op(op, [&]<BinaryOp OP>() {
    // uint8 / bool reach here only for comparisons: instantiate nothing else for them.
    if constexpr (is_comparison(OP) || !(std::is_same_v<T, uint8_t> || std::is_same_v<T, bool>)) {
      using Out = std::conditional_t<is_comparison(OP), bool, T>;
      map2<T, Out>(a, b, out, [](T x, T y) { return math::binary<OP>(x, y); });
    }
  });
}

}  // namespace

void unary(UnaryOp op, const Tensor& x, const Tensor& out, double p0, double p1) {
  if (x.dtype() == DType::bf16) return unary_half<BFloat16>(op, x, out, p0, p1);
  if (x.dtype() == DType::f16) return unary_half<Half>(op, x, out, p0, p1);
  dispatch_float(x.dtype(), "unary", [&]<class T>() { unary_typed<T>(op, x, out, p0, p1); });
}

void unary_backward(UnaryOp op, const Tensor& grad, const Tensor& x, const Tensor& y,
                    const Tensor& grad_x, double p0, double p1) {
  const Tensor& s = math::derivative_uses_output(op) ? y : x;
  BCOS_CHECK(s.defined(), "unary_backward ", op_name(op), ": needs ",
             math::derivative_uses_output(op) ? "the forward output y" : "the input x");
  if (s.dtype() == DType::bf16) return unary_backward_half<BFloat16>(op, grad, x, y, grad_x, p0, p1);
  if (s.dtype() == DType::f16) return unary_backward_half<Half>(op, grad, x, y, grad_x, p0, p1);
  dispatch_float(s.dtype(), "unary_backward", [&]<class T>() {
    unary_backward_typed<T>(op, grad, x, y, grad_x, p0, p1);
  });
}

void binary(BinaryOp op, const Tensor& a, const Tensor& b, const Tensor& out) {
  if (is_comparison(op) && (a.dtype() == DType::u8 || a.dtype() == DType::boolean)) {
    if (a.dtype() == DType::u8) return binary_typed<uint8_t>(op, a, b, out);
    return binary_typed<bool>(op, a, b, out);
  }
  // A float32 result of a float32 and a 16-bit operand: widened as it is read.
  if (!is_comparison(op) && out.dtype() == DType::f32 && is_half_float(a.dtype()) != is_half_float(b.dtype())) {
    const DType half = is_half_float(a.dtype()) ? a.dtype() : b.dtype(), wide = is_half_float(a.dtype()) ? b.dtype() : a.dtype();
    BCOS_CHECK(wide == DType::f32, "binary ", op_name(op), ": operands ", a.dtype(), " and ", b.dtype(), " into ",
               out.dtype(), " (a float32 op takes float32 and at most one 16-bit operand)");
    if (half == DType::bf16) return binary_widening<BFloat16>(op, a, b, out);
    return binary_widening<Half>(op, a, b, out);
  }
  // 16-bit floats: out's type, or a comparison's operand type that is not a float32 scalar.
  const DType half = is_comparison(op) ? (a.dtype() == DType::f32 ? b.dtype() : a.dtype()) : out.dtype();
  if (half == DType::bf16) return binary_half<BFloat16>(op, a, b, out);
  if (half == DType::f16) return binary_half<Half>(op, a, b, out);
  dispatch_arith(a.dtype(), "binary", [&]<class T>() { binary_typed<T>(op, a, b, out); });
}

void where(const Tensor& cond, const Tensor& a, const Tensor& b, const Tensor& out) {
  dispatch_all(out.dtype(), [&]<class T>() {
    const bool* pc = static_cast<const bool*>(cond.raw_data());
    const T* pa = static_cast<const T*>(a.raw_data());
    const T* pb = static_cast<const T*>(b.raw_data());
    T* po = static_cast<T*>(out.raw_data());
    for_each_row<4>(out.shape(), {&out, &cond, &a, &b}, 2,
                    [&](const int64_t* off, int64_t n, const int64_t* st) {
                      for (int64_t i = 0; i < n; ++i)
                        po[off[0] + i * st[0]] = pc[off[1] + i * st[1]] ? pa[off[2] + i * st[2]]
                                                                         : pb[off[3] + i * st[3]];
                    });
  });
}

}  // namespace bcos::cpu
