// Softmax and log-softmax along one dim, x viewed contiguous [outer, D, inner]; and the
// negative log-likelihood loss. Max-subtracted, accumulated in double.
//   softmax backward:      grad_x = y · (g − Σ g·y)
//   log_softmax backward:  grad_x = g − exp(y) · Σ g
#include <cmath>
#include <limits>
#include <type_traits>

#include "tensor/kernel_views.h"
#include "tensor/copy.h"
#include "tensor/cpu/kernels.h"
#include "tensor/cpu/vec_math.h"
#include "tensor/parallel.h"

#pragma GCC target("prefer-vector-width=512")  // as tensor/cpu/elementwise.cpp

namespace bcos::cpu {

namespace {

// float's exp vectorised (tensor/cpu/vec_math.h, within an ulp, as PyTorch's vectorised exp),
// double's from libm.
template <class T>
inline T exp_of(T v) {
  if constexpr (std::is_same_v<T, float>) return vec::exp(v);
  else return std::exp(v);
}

// One softmax row of d elements `stride` apart. Max-subtracted; each exp computed once, in T
// (the arguments are <= 0, so it cannot overflow); the sum accumulates in double. Softmax keeps
// the terms in `o` and scales them. A contiguous row (stride 1, the usual last dim) runs the
// same loops with a constant stride, which the compiler vectorises.
template <class T>
inline void softmax_row(const T* p, T* o, int64_t d, int64_t stride, bool log) {
  T m = -std::numeric_limits<T>::infinity();
#pragma omp simd reduction(max : m)
  for (int64_t j = 0; j < d; ++j) m = p[j * stride] > m ? p[j * stride] : m;
  if (std::isinf(m) && m < 0) m = 0;  // all -inf: avoid inf - inf
  double sum = 0;
  if (log) {
#pragma omp simd reduction(+ : sum)
    for (int64_t j = 0; j < d; ++j) sum += double(exp_of<T>(p[j * stride] - m));
    const double lse = double(m) + std::log(sum);
#pragma omp simd
    for (int64_t j = 0; j < d; ++j) o[j * stride] = T(double(p[j * stride]) - lse);
  } else {
#pragma omp simd reduction(+ : sum)
    for (int64_t j = 0; j < d; ++j) {
      const T e = exp_of<T>(p[j * stride] - m);
      o[j * stride] = e;
      sum += double(e);
    }
    const T scale = T(1.0 / sum);
#pragma omp simd
    for (int64_t j = 0; j < d; ++j) o[j * stride] *= scale;
  }
}

template <class T>
inline void softmax_backward_row(const T* gp, const T* yp, T* o, int64_t d, int64_t stride, bool log) {
  double acc = 0;
  if (log) {
#pragma omp simd reduction(+ : acc)
    for (int64_t j = 0; j < d; ++j) acc += double(gp[j * stride]);
    for (int64_t j = 0; j < d; ++j)
      o[j * stride] = T(double(gp[j * stride]) - std::exp(double(yp[j * stride])) * acc);
  } else {
#pragma omp simd reduction(+ : acc)
    for (int64_t j = 0; j < d; ++j) acc += double(gp[j * stride]) * double(yp[j * stride]);
#pragma omp simd
    for (int64_t j = 0; j < d; ++j) o[j * stride] = T(double(yp[j * stride]) * (double(gp[j * stride]) - acc));
  }
}

}  // namespace

void softmax(const Tensor& x_in, int dim, bool log, const Tensor& out) {
  Tensor x = raw_contiguous(x_in);
  DimView s = dim_view(x, dim);
  dispatch_float(x.dtype(), "softmax", [&]<class T>() {
    const T* px = x.data<T>();
    T* po = out.data<T>();
    parallel_for(s.outer * s.inner, s.d * 3, [&](int64_t b, int64_t e) {
      for (int64_t r = b; r < e; ++r) {
        const int64_t base = (r / s.inner) * s.d * s.inner + r % s.inner;
        if (s.inner == 1) softmax_row<T>(px + base, po + base, s.d, 1, log);
        else softmax_row<T>(px + base, po + base, s.d, s.inner, log);
      }
    });
  });
}

void softmax_backward(const Tensor& grad_in, const Tensor& y_in, int dim, bool log,
                      const Tensor& grad_x) {
  Tensor g = raw_contiguous(grad_in), y = raw_contiguous(y_in);
  DimView s = dim_view(y, dim);
  dispatch_float(y.dtype(), "softmax_backward", [&]<class T>() {
    const T *pg = g.data<T>(), *py = y.data<T>();
    T* po = grad_x.data<T>();
    parallel_for(s.outer * s.inner, s.d * 3, [&](int64_t b, int64_t e) {
      for (int64_t r = b; r < e; ++r) {
        const int64_t base = (r / s.inner) * s.d * s.inner + r % s.inner;
        if (s.inner == 1) softmax_backward_row<T>(pg + base, py + base, po + base, s.d, 1, log);
        else softmax_backward_row<T>(pg + base, py + base, po + base, s.d, s.inner, log);
      }
    });
  });
}

}  // namespace bcos::cpu
