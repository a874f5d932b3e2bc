// Elementwise CPU kernels: unary maps with their fused derivatives, binary ops over broadcast
// (stride-0) operands, comparisons and where. Each op's forward formula and derivative sit
// together below; the CUDA kernels mirror them.
#include <cmath>

#include "tensor/cpu/kernels.h"
#include "tensor/cpu/loops.h"

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

// out = f(a, b) with a fast path for a broadcast scalar b (x + 2, x * w[c] rows).
template <class T, class Out, class F>
void map2(const Tensor& a, const Tensor& b, const Tensor& out, F f) {
  const T* pa = static_cast<const T*>(a.raw_data());
  const T* pb = static_cast<const T*>(b.raw_data());
  Out* po = static_cast<Out*>(out.raw_data());
  for_each_row<3>(out.shape(), {&out, &a, &b}, 2,
                  [&](const int64_t* off, int64_t n, const int64_t* st) {
                    Out* o = po + off[0];
                    const T *x = pa + off[1], *y = pb + off[2];
                    if (st[0] == 1 && st[1] == 1 && st[2] == 1) {
                      for (int64_t i = 0; i < n; ++i) o[i] = f(x[i], y[i]);
                    } else if (st[0] == 1 && st[1] == 1 && st[2] == 0) {
                      const T s = *y;
                      for (int64_t i = 0; i < n; ++i) o[i] = f(x[i], s);
                    } else if (st[0] == 1 && st[1] == 0 && st[2] == 1) {
                      const T s = *x;
                      for (int64_t i = 0; i < n; ++i) o[i] = f(s, y[i]);
                    } else {
                      for (int64_t i = 0; i < n; ++i) o[i * st[0]] = f(x[i * st[1]], y[i * st[2]]);
                    }
                  });
}

constexpr double kSqrt1_2 = 0.70710678118654752440;
constexpr double kInvSqrt2Pi = 0.39894228040143267794;
constexpr double kSqrt2OverPi = 0.79788456080286535588;
constexpr double kGeluTanhC = 0.044715;

template <class T>
void unary_typed(UnaryOp op, const Tensor& x, const Tensor& out, T p0, T p1) {
  switch (op) {
    case UnaryOp::neg: return map1<T, T>(x, out, [](T v) { return -v; });
    case UnaryOp::abs: return map1<T, T>(x, out, [](T v) { return std::abs(v); });
    case UnaryOp::sign: return map1<T, T>(x, out, [](T v) { return T((v > 0) - (v < 0)); });
    case UnaryOp::exp: return map1<T, T>(x, out, [](T v) { return std::exp(v); });
    case UnaryOp::log: return map1<T, T>(x, out, [](T v) { return std::log(v); });
    case UnaryOp::log1p: return map1<T, T>(x, out, [](T v) { return std::log1p(v); });
    case UnaryOp::sqrt: return map1<T, T>(x, out, [](T v) { return std::sqrt(v); });
    case UnaryOp::rsqrt: return map1<T, T>(x, out, [](T v) { return T(1) / std::sqrt(v); });
    case UnaryOp::square: return map1<T, T>(x, out, [](T v) { return v * v; });
    case UnaryOp::reciprocal: return map1<T, T>(x, out, [](T v) { return T(1) / v; });
    case UnaryOp::sin: return map1<T, T>(x, out, [](T v) { return std::sin(v); });
    case UnaryOp::cos: return map1<T, T>(x, out, [](T v) { return std::cos(v); });
    case UnaryOp::tanh: return map1<T, T>(x, out, [](T v) { return std::tanh(v); });
    case UnaryOp::sigmoid:
      return map1<T, T>(x, out, [](T v) { return T(1) / (T(1) + std::exp(-v)); });
    case UnaryOp::relu: return map1<T, T>(x, out, [](T v) { return v < T(0) ? T(0) : v; });
    case UnaryOp::gelu_erf:
      return map1<T, T>(x, out, [](T v) { return T(0.5) * v * (T(1) + std::erf(v * T(kSqrt1_2))); });
    case UnaryOp::gelu_tanh:
      return map1<T, T>(x, out, [](T v) {
        T inner = T(kSqrt2OverPi) * (v + T(kGeluTanhC) * v * v * v);
        return T(0.5) * v * (T(1) + std::tanh(inner));
      });
    case UnaryOp::silu: return map1<T, T>(x, out, [](T v) { return v / (T(1) + std::exp(-v)); });
    case UnaryOp::pow_scalar:
      if (p0 == T(2)) return map1<T, T>(x, out, [](T v) { return v * v; });
      return map1<T, T>(x, out, [p0](T v) { return std::pow(v, p0); });
    case UnaryOp::clamp: {
      bool has_lo = !std::isnan(p0), has_hi = !std::isnan(p1);
      return map1<T, T>(x, out, [=](T v) {
        if (has_lo) v = std::isnan(v) ? v : std::max(v, p0);
        if (has_hi) v = std::isnan(v) ? v : std::min(v, p1);
        return v;
      });
    }
  }
}

// grad_x = g * f'(x); y = f(x) where the derivative is cheaper in terms of the output.
template <class T>
void unary_backward_typed(UnaryOp op, const Tensor& g, const Tensor& x, const Tensor& y,
                          const Tensor& gx, T p0, T p1) {
  auto run = [&](const Tensor& second, auto f) { map3<T, T>(g, second, Tensor(), gx, f); };
  auto on_x = [&](auto f) { run(x, [f](T gv, T xv, T) { return f(gv, xv); }); };
  auto on_y = [&](auto f) { run(y, [f](T gv, T yv, T) { return f(gv, yv); }); };
  switch (op) {
    case UnaryOp::neg: return on_x([](T gv, T) { return -gv; });
    case UnaryOp::abs: return on_x([](T gv, T v) { return gv * T((v > 0) - (v < 0)); });
    case UnaryOp::sign: return on_x([](T, T) { return T(0); });
    case UnaryOp::exp: return on_y([](T gv, T yv) { return gv * yv; });
    case UnaryOp::log: return on_x([](T gv, T v) { return gv / v; });
    case UnaryOp::log1p: return on_x([](T gv, T v) { return gv / (T(1) + v); });
    case UnaryOp::sqrt: return on_y([](T gv, T yv) { return gv / (T(2) * yv); });
    case UnaryOp::rsqrt: return on_y([](T gv, T yv) { return T(-0.5) * gv * yv * yv * yv; });
    case UnaryOp::square: return on_x([](T gv, T v) { return T(2) * gv * v; });
    case UnaryOp::reciprocal: return on_y([](T gv, T yv) { return -gv * yv * yv; });
    case UnaryOp::sin: return on_x([](T gv, T v) { return gv * std::cos(v); });
    case UnaryOp::cos: return on_x([](T gv, T v) { return -gv * std::sin(v); });
    case UnaryOp::tanh: return on_y([](T gv, T yv) { return gv * (T(1) - yv * yv); });
    case UnaryOp::sigmoid: return on_y([](T gv, T yv) { return gv * yv * (T(1) - yv); });
    case UnaryOp::relu: return on_x([](T gv, T v) { return v > T(0) ? gv : T(0); });
    case UnaryOp::gelu_erf:
      return on_x([](T gv, T v) {
        T cdf = T(0.5) * (T(1) + std::erf(v * T(kSqrt1_2)));
        T pdf = T(kInvSqrt2Pi) * std::exp(T(-0.5) * v * v);
        return gv * (cdf + v * pdf);
      });
    case UnaryOp::gelu_tanh:
      return on_x([](T gv, T v) {
        T inner = T(kSqrt2OverPi) * (v + T(kGeluTanhC) * v * v * v);
        T t = std::tanh(inner);
        T dinner = T(kSqrt2OverPi) * (T(1) + T(3 * kGeluTanhC) * v * v);
        return gv * (T(0.5) * (T(1) + t) + T(0.5) * v * (T(1) - t * t) * dinner);
      });
    case UnaryOp::silu:
      return on_x([](T gv, T v) {
        T s = T(1) / (T(1) + std::exp(-v));
        return gv * s * (T(1) + v * (T(1) - s));
      });
    case UnaryOp::pow_scalar:
      if (p0 == T(0)) return on_x([](T, T) { return T(0); });
      return on_x([p0](T gv, T v) { return gv * p0 * std::pow(v, p0 - T(1)); });
    case UnaryOp::clamp: {
      bool has_lo = !std::isnan(p0), has_hi = !std::isnan(p1);
      return on_x([=](T gv, T v) {
        bool inside = (!has_lo || v >= p0) && (!has_hi || v <= p1);
        return inside ? gv : T(0);
      });
    }
  }
}

template <class T>
inline T nan_propagating_min(T a, T b) {
  if constexpr (std::is_floating_point_v<T>) {
    if (std::isnan(a) || std::isnan(b)) return std::numeric_limits<T>::quiet_NaN();
  }
  return a < b ? a : b;
}
template <class T>
inline T nan_propagating_max(T a, T b) {
  if constexpr (std::is_floating_point_v<T>) {
    if (std::isnan(a) || std::isnan(b)) return std::numeric_limits<T>::quiet_NaN();
  }
  return a > b ? a : b;
}

template <class T>
void binary_typed(BinaryOp op, const Tensor& a, const Tensor& b, const Tensor& out) {
  switch (op) {
    case BinaryOp::add: return map2<T, T>(a, b, out, [](T x, T y) { return x + y; });
    case BinaryOp::sub: return map2<T, T>(a, b, out, [](T x, T y) { return x - y; });
    case BinaryOp::mul: return map2<T, T>(a, b, out, [](T x, T y) { return x * y; });
    case BinaryOp::div: return map2<T, T>(a, b, out, [](T x, T y) { return x / y; });
    case BinaryOp::pow:
      return map2<T, T>(a, b, out, [](T x, T y) { return T(std::pow(x, y)); });
    case BinaryOp::minimum: return map2<T, T>(a, b, out, nan_propagating_min<T>);
    case BinaryOp::maximum: return map2<T, T>(a, b, out, nan_propagating_max<T>);
    case BinaryOp::eq: return map2<T, bool>(a, b, out, [](T x, T y) { return x == y; });
    case BinaryOp::ne: return map2<T, bool>(a, b, out, [](T x, T y) { return x != y; });
    case BinaryOp::lt: return map2<T, bool>(a, b, out, [](T x, T y) { return x < y; });
    case BinaryOp::le: return map2<T, bool>(a, b, out, [](T x, T y) { return x <= y; });
    case BinaryOp::gt: return map2<T, bool>(a, b, out, [](T x, T y) { return x > y; });
    case BinaryOp::ge: return map2<T, bool>(a, b, out, [](T x, T y) { return x >= y; });
  }
}

}  // namespace

void unary(UnaryOp op, const Tensor& x, const Tensor& out, double p0, double p1) {
  dispatch_float(x.dtype(), "unary", [&]<class T>() { unary_typed<T>(op, x, out, T(p0), T(p1)); });
}

void unary_backward(UnaryOp op, const Tensor& grad, const Tensor& x, const Tensor& y,
                    const Tensor& grad_x, double p0, double p1) {
  dispatch_float(x.dtype(), "unary_backward", [&]<class T>() {
    unary_backward_typed<T>(op, grad, x, y, grad_x, T(p0), T(p1));
  });
}

void binary(BinaryOp op, const Tensor& a, const Tensor& b, const Tensor& out) {
  if (is_comparison(op) && (a.dtype() == DType::u8 || a.dtype() == DType::boolean)) {
    if (a.dtype() == DType::u8) return binary_typed<uint8_t>(op, a, b, out);
    return binary_typed<bool>(op, a, b, out);
  }
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
