// The per-element formulas of the elementwise ops and their derivatives, written once for both
// backends: tensor/cpu/elementwise.cpp runs them in its loops, tensor/cuda/elementwise.cu in its
// kernels (BCOS_HD marks them __host__ __device__ under nvcc). Each op is a template parameter,
// so one op's loop or kernel is straight-line code; with_unary_op / with_binary_op turn the
// runtime op into that parameter with one switch.
#pragma once

#include <cmath>
#include <type_traits>

#include "tensor/error.h"
#include "tensor/op_kinds.h"

#if defined(__CUDACC__)
#define BCOS_HD __host__ __device__ __forceinline__
#define BCOS_HD_ALWAYS __host__ __device__ __forceinline__
#else
#define BCOS_HD inline
// Inlined into the CPU's loops whatever the compiler's inlining budget, so that they vectorise.
#define BCOS_HD_ALWAYS inline __attribute__((always_inline))
#endif

namespace bcos::math {

constexpr double kSqrt1_2 = 0.70710678118654752440;
constexpr double kInvSqrt2Pi = 0.39894228040143267794;
constexpr double kSqrt2OverPi = 0.79788456080286535588;
constexpr double kGeluTanhC = 0.044715;
constexpr double kQuickGeluScale = 1.702;  // OpenAI CLIP's QuickGELU: x · σ(1.702 x)

// The C math library in the precision of T: the same functions on the host and on the device.
template <class T> struct Math;
template <> struct Math<float> {
  static BCOS_HD float exp(float x) { return ::expf(x); }
  static BCOS_HD float log(float x) { return ::logf(x); }
  static BCOS_HD float log1p(float x) { return ::log1pf(x); }
  static BCOS_HD float sqrt(float x) { return ::sqrtf(x); }
  static BCOS_HD float sin(float x) { return ::sinf(x); }
  static BCOS_HD float cos(float x) { return ::cosf(x); }
  static BCOS_HD float tanh(float x) { return ::tanhf(x); }
  static BCOS_HD float erf(float x) { return ::erff(x); }
  static BCOS_HD float pow(float x, float y) { return ::powf(x, y); }
  static BCOS_HD float abs(float x) { return ::fabsf(x); }
  static BCOS_HD float fma(float x, float y, float z) { return ::fmaf(x, y, z); }
};
template <> struct Math<double> {
  static BCOS_HD double exp(double x) { return ::exp(x); }
  static BCOS_HD double log(double x) { return ::log(x); }
  static BCOS_HD double log1p(double x) { return ::log1p(x); }
  static BCOS_HD double sqrt(double x) { return ::sqrt(x); }
  static BCOS_HD double sin(double x) { return ::sin(x); }
  static BCOS_HD double cos(double x) { return ::cos(x); }
  static BCOS_HD double tanh(double x) { return ::tanh(x); }
  static BCOS_HD double erf(double x) { return ::erf(x); }
  static BCOS_HD double pow(double x, double y) { return ::pow(x, y); }
  static BCOS_HD double abs(double x) { return ::fabs(x); }
  static BCOS_HD double fma(double x, double y, double z) { return ::fma(x, y, z); }
};

// Batch norm's per-channel map y = x · scale + shift, scale = invstd · w, shift = b − mean · scale,
// with explicit fmas: the fused batch norm + ReLU backward recomputes y from x for its mask and
// must get the forward's bits on either backend (a compiler may contract a·b + c or not).
template <class T>
struct BatchNormAffine {
  T scale, shift;
  BCOS_HD BatchNormAffine(T mean, T invstd, T w, T b) : scale(invstd * w), shift(Math<T>::fma(-mean, scale, b)) {}
  BCOS_HD T operator()(T x) const { return Math<T>::fma(x, scale, shift); }
};

template <class T>
BCOS_HD bool is_nan(T v) {
  return v != v;
}

// Scalar parameters of a unary op, in T. A NaN clamp bound means "no bound".
template <class T>
struct UnaryParams {
  T p0 = 0, p1 = 0;
  bool has_lo = false, has_hi = false;
};

template <class T>
UnaryParams<T> make_unary_params(double p0, double p1) {
  return {T(p0), T(p1), !(p0 != p0), !(p1 != p1)};
}

// clamp with the bounds that exist known at compile time (a loop over it vectorises); NaN stays NaN.
template <bool LO, bool HI, class T>
BCOS_HD T clamp_value(T v, T lo, T hi) {
  if constexpr (LO) v = is_nan(v) ? v : (v < lo ? lo : v);
  if constexpr (HI) v = is_nan(v) ? v : (v > hi ? hi : v);
  return v;
}

// CLIP's QuickGELU, x · σ(1.702 x), as the three ops OpenAI's code composes it of compute it
// (t = x * 1.702, s = sigmoid(t), x * s), each intermediate rounded by `round` to the tensor's type
// (KeepValue for float32 / float64; bfloat16 / float16 for a 16-bit tensor, computed in float);
// the caller rounds the result. `sigmoid`: the backend's σ (the CPU's vectorised one). The
// backward follows autograd through the same ops: g·s from the product, and (g·x)·s(1 − s)·1.702
// through the gate, each rounded, summed. So a 16-bit tensor gets the composed ops' bits; in
// float32 / float64 the last step is an explicit fma (a compiler could contract it or not: this
// way every backend and optimisation level rounds it the same), a last bit the composed ops'
// separate product and sum may differ in.
template <class T, class Round, class SigmoidFn>
BCOS_HD_ALWAYS T quick_gelu_forward(T x, Round round, SigmoidFn sigmoid) {
  const T t = round(x * T(kQuickGeluScale));
  const T s = round(sigmoid(t));
  return x * s;
}
template <class T, class Round, class SigmoidFn>
BCOS_HD_ALWAYS T quick_gelu_backward(T g, T x, Round round, SigmoidFn sigmoid) {
  const T t = round(x * T(kQuickGeluScale));
  const T s = round(sigmoid(t));
  const T from_product = round(g * s), through_gate = round(g * x);
  const T through_sigmoid = round(through_gate * s * (T(1) - s));
  if constexpr (Round::kKeeps) return Math<T>::fma(through_sigmoid, T(kQuickGeluScale), from_product);
  else return from_product + round(through_sigmoid * T(kQuickGeluScale));
}
// The identity rounding, and σ as the sigmoid op computes it (QuickGELU's gate the same bits).
struct KeepValue {
  static constexpr bool kKeeps = true;
  template <class T>
  BCOS_HD_ALWAYS T operator()(T v) const { return v; }
};
struct PlainSigmoid {
  template <class T>
  BCOS_HD_ALWAYS T operator()(T v) const { return T(1) / (T(1) + Math<T>::exp(-v)); }
};

// y = op(x)
template <UnaryOp OP, class T>
BCOS_HD T unary_forward(T v, const UnaryParams<T>& p) {
  using M = Math<T>;
  if constexpr (OP == UnaryOp::neg) return -v;
  else if constexpr (OP == UnaryOp::abs) return M::abs(v);
  else if constexpr (OP == UnaryOp::sign) return T((v > 0) - (v < 0));
  else if constexpr (OP == UnaryOp::exp) return M::exp(v);
  else if constexpr (OP == UnaryOp::log) return M::log(v);
  else if constexpr (OP == UnaryOp::log1p) return M::log1p(v);
  else if constexpr (OP == UnaryOp::sqrt) return M::sqrt(v);
  else if constexpr (OP == UnaryOp::rsqrt) return T(1) / M::sqrt(v);
  else if constexpr (OP == UnaryOp::square) return v * v;
  else if constexpr (OP == UnaryOp::reciprocal) return T(1) / v;
  else if constexpr (OP == UnaryOp::sin) return M::sin(v);
  else if constexpr (OP == UnaryOp::cos) return M::cos(v);
  else if constexpr (OP == UnaryOp::tanh) return M::tanh(v);
  else if constexpr (OP == UnaryOp::sigmoid) return PlainSigmoid{}(v);
  else if constexpr (OP == UnaryOp::relu) return v < T(0) ? T(0) : v;  // NaN stays NaN
  else if constexpr (OP == UnaryOp::gelu_erf) return T(0.5) * v * (T(1) + M::erf(v * T(kSqrt1_2)));
  else if constexpr (OP == UnaryOp::gelu_tanh) {
    const T inner = T(kSqrt2OverPi) * (v + T(kGeluTanhC) * v * v * v);
    return T(0.5) * v * (T(1) + M::tanh(inner));
  } else if constexpr (OP == UnaryOp::silu) return v / (T(1) + M::exp(-v));
  else if constexpr (OP == UnaryOp::quick_gelu) return quick_gelu_forward(v, KeepValue{}, PlainSigmoid{});
  else if constexpr (OP == UnaryOp::pow_scalar) return p.p0 == T(2) ? v * v : M::pow(v, p.p0);
  else if constexpr (OP == UnaryOp::clamp) {
    if (p.has_lo) v = clamp_value<true, false>(v, p.p0, p.p1);
    if (p.has_hi) v = clamp_value<false, true>(v, p.p0, p.p1);
    return v;
  }
}

// Ops whose derivative is cheaper in terms of the output y = op(x) than of x.
constexpr bool derivative_uses_output(UnaryOp op) {
  return op == UnaryOp::exp || op == UnaryOp::sqrt || op == UnaryOp::rsqrt || op == UnaryOp::reciprocal ||
         op == UnaryOp::tanh || op == UnaryOp::sigmoid;
}

// g · op'(x), where s is x, or y for the ops flagged by derivative_uses_output.
template <UnaryOp OP, class T>
BCOS_HD T unary_backward(T g, T s, const UnaryParams<T>& p) {
  using M = Math<T>;
  if constexpr (OP == UnaryOp::neg) return -g;
  else if constexpr (OP == UnaryOp::abs) return g * T((s > 0) - (s < 0));
  else if constexpr (OP == UnaryOp::sign) return T(0);
  else if constexpr (OP == UnaryOp::exp) return g * s;
  else if constexpr (OP == UnaryOp::log) return g / s;
  else if constexpr (OP == UnaryOp::log1p) return g / (T(1) + s);
  else if constexpr (OP == UnaryOp::sqrt) return g / (T(2) * s);
  else if constexpr (OP == UnaryOp::rsqrt) return T(-0.5) * g * s * s * s;
  else if constexpr (OP == UnaryOp::square) return T(2) * g * s;
  else if constexpr (OP == UnaryOp::reciprocal) return -g * s * s;
  else if constexpr (OP == UnaryOp::sin) return g * M::cos(s);
  else if constexpr (OP == UnaryOp::cos) return -g * M::sin(s);
  else if constexpr (OP == UnaryOp::tanh) return g * (T(1) - s * s);
  else if constexpr (OP == UnaryOp::sigmoid) return g * s * (T(1) - s);
  else if constexpr (OP == UnaryOp::relu) return s > T(0) ? g : T(0);
  else if constexpr (OP == UnaryOp::gelu_erf) {
    const T cdf = T(0.5) * (T(1) + M::erf(s * T(kSqrt1_2)));
    const T pdf = T(kInvSqrt2Pi) * M::exp(T(-0.5) * s * s);
    return g * (cdf + s * pdf);
  } else if constexpr (OP == UnaryOp::gelu_tanh) {
    const T inner = T(kSqrt2OverPi) * (s + T(kGeluTanhC) * s * s * s);
    const T t = M::tanh(inner);
    const T dinner = T(kSqrt2OverPi) * (T(1) + T(3 * kGeluTanhC) * s * s);
    return g * (T(0.5) * (T(1) + t) + T(0.5) * s * (T(1) - t * t) * dinner);
  } else if constexpr (OP == UnaryOp::silu) {
    const T sig = T(1) / (T(1) + M::exp(-s));
    return g * sig * (T(1) + s * (T(1) - sig));
  } else if constexpr (OP == UnaryOp::quick_gelu) {
    return quick_gelu_backward(g, s, KeepValue{}, PlainSigmoid{});
  } else if constexpr (OP == UnaryOp::pow_scalar) {
    return p.p0 == T(0) ? T(0) : g * p.p0 * M::pow(s, p.p0 - T(1));
  } else if constexpr (OP == UnaryOp::clamp) {
    const bool inside = (!p.has_lo || s >= p.p0) && (!p.has_hi || s <= p.p1);
    return inside ? g : T(0);
  }
}

template <class T>
BCOS_HD T nan_propagating_min(T a, T b) {
  if constexpr (std::is_floating_point_v<T>) {
    if (is_nan(a) || is_nan(b)) return a + b;  // NaN
  }
  return a < b ? a : b;
}
template <class T>
BCOS_HD T nan_propagating_max(T a, T b) {
  if constexpr (std::is_floating_point_v<T>) {
    if (is_nan(a) || is_nan(b)) return a + b;
  }
  return a > b ? a : b;
}

// op(x, y); comparisons give bool.
template <BinaryOp OP, class T>
BCOS_HD auto binary(T x, T y) {
  if constexpr (OP == BinaryOp::add) return T(x + y);
  else if constexpr (OP == BinaryOp::sub) return T(x - y);
  else if constexpr (OP == BinaryOp::mul) return T(x * y);
  else if constexpr (OP == BinaryOp::div) return T(x / y);
  else if constexpr (OP == BinaryOp::pow) {
    if constexpr (std::is_floating_point_v<T>) return Math<T>::pow(x, y);
    else return T(::pow(double(x), double(y)));  // integer powers through double
  } else if constexpr (OP == BinaryOp::minimum) return nan_propagating_min(x, y);
  else if constexpr (OP == BinaryOp::maximum) return nan_propagating_max(x, y);
  else if constexpr (OP == BinaryOp::add_relu) {
    const T s = T(x + y);
    return s < T(0) ? T(0) : s;  // as relu: NaN stays NaN
  } else if constexpr (OP == BinaryOp::eq) return bool(x == y);
  else if constexpr (OP == BinaryOp::ne) return bool(x != y);
  else if constexpr (OP == BinaryOp::lt) return bool(x < y);
  else if constexpr (OP == BinaryOp::le) return bool(x <= y);
  else if constexpr (OP == BinaryOp::gt) return bool(x > y);
  else if constexpr (OP == BinaryOp::ge) return bool(x >= y);
}

// ---- runtime op -> template parameter (host code) ---------------------------------------------

template <class F>
void with_unary_op(UnaryOp op, F&& f) {
  switch (op) {
    case UnaryOp::neg: return f.template operator()<UnaryOp::neg>();
    case UnaryOp::abs: return f.template operator()<UnaryOp::abs>();
    case UnaryOp::sign: return f.template operator()<UnaryOp::sign>();
    case UnaryOp::exp: return f.template operator()<UnaryOp::exp>();
    case UnaryOp::log: return f.template operator()<UnaryOp::log>();
    case UnaryOp::log1p: return f.template operator()<UnaryOp::log1p>();
    case UnaryOp::sqrt: return f.template operator()<UnaryOp::sqrt>();
    case UnaryOp::rsqrt: return f.template operator()<UnaryOp::rsqrt>();
    case UnaryOp::square: return f.template operator()<UnaryOp::square>();
    case UnaryOp::reciprocal: return f.template operator()<UnaryOp::reciprocal>();
    case UnaryOp::sin: return f.template operator()<UnaryOp::sin>();
    case UnaryOp::cos: return f.template operator()<UnaryOp::cos>();
    case UnaryOp::tanh: return f.template operator()<UnaryOp::tanh>();
    case UnaryOp::sigmoid: return f.template operator()<UnaryOp::sigmoid>();
    case UnaryOp::relu: return f.template operator()<UnaryOp::relu>();
    case UnaryOp::gelu_erf: return f.template operator()<UnaryOp::gelu_erf>();
    case UnaryOp::gelu_tanh: return f.template operator()<UnaryOp::gelu_tanh>();
    case UnaryOp::silu: return f.template operator()<UnaryOp::silu>();
    case UnaryOp::quick_gelu: return f.template operator()<UnaryOp::quick_gelu>();
    case UnaryOp::pow_scalar: return f.template operator()<UnaryOp::pow_scalar>();
    case UnaryOp::clamp: return f.template operator()<UnaryOp::clamp>();
  }
  fail("unary: unknown op ", int(op));
}

template <class F>
void with_binary_op(BinaryOp op, F&& f) {
  switch (op) {
    case BinaryOp::add: return f.template operator()<BinaryOp::add>();
    case BinaryOp::sub: return f.template operator()<BinaryOp::sub>();
    case BinaryOp::mul: return f.template operator()<BinaryOp::mul>();
    case BinaryOp::div: return f.template operator()<BinaryOp::div>();
    case BinaryOp::pow: return f.template operator()<BinaryOp::pow>();
    case BinaryOp::minimum: return f.template operator()<BinaryOp::minimum>();
    case BinaryOp::maximum: return f.template operator()<BinaryOp::maximum>();
    case BinaryOp::add_relu: return f.template operator()<BinaryOp::add_relu>();
    case BinaryOp::eq: return f.template operator()<BinaryOp::eq>();
    case BinaryOp::ne: return f.template operator()<BinaryOp::ne>();
    case BinaryOp::lt: return f.template operator()<BinaryOp::lt>();
    case BinaryOp::le: return f.template operator()<BinaryOp::le>();
    case BinaryOp::gt: return f.template operator()<BinaryOp::gt>();
    case BinaryOp::ge: return f.template operator()<BinaryOp::ge>();
  }
  fail("binary: unknown op ", int(op));
}

}  // namespace bcos::math
