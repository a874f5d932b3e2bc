// Softmax and log-softmax along one dim, x viewed contiguous [outer, D, inner]; and the
// negative log-likelihood loss. Max-subtracted, accumulated in double.
//   softmax backward:      grad_x = y · (g − Σ g·y)
//   log_softmax backward:  grad_x = g − exp(y) · Σ g
#include <cmath>
#include <limits>

#include "tensor/kernel_views.h"
#include "tensor/copy.h"
#include "tensor/cpu/kernels.h"
#include "tensor/parallel.h"

namespace bcos::cpu {

void softmax(const Tensor& x_in, int dim, bool log, const Tensor& out) {
  Tensor x = raw_contiguous(x_in);
  DimView s = dim_view(x, dim);
  dispatch_float(x.dtype(), "softmax", [&]<class T>() {
    const T* px = x.data<T>();
    T* po = out.data<T>();
    parallel_for(s.outer * s.inner, s.d * 3, [&](int64_t b, int64_t e) {
      for (int64_t r = b; r < e; ++r) {
        int64_t base = (r / s.inner) * s.d * s.inner + r % s.inner;
        const T* p = px + base;
        T* o = po + base;
        T m = -std::numeric_limits<T>::infinity();
        for (int64_t j = 0; j < s.d; ++j) m = std::max(m, p[j * s.inner]);
        if (std::isinf(m) && m < 0) m = 0;  // all -inf: avoid inf - inf
        // exp in T (the max-subtracted arguments are <= 0, so it cannot overflow; float's expf
        // is within an ulp, as PyTorch's vectorised exp) and computed once: softmax keeps the
        // terms in `o` and scales them; the sum accumulates in double.
        double sum = 0;
        if (log) {
          for (int64_t j = 0; j < s.d; ++j) sum += double(std::exp(p[j * s.inner] - m));
          const double lse = double(m) + std::log(sum);
          for (int64_t j = 0; j < s.d; ++j) o[j * s.inner] = T(double(p[j * s.inner]) - lse);
        } else {
          for (int64_t j = 0; j < s.d; ++j) {
            const T e = std::exp(p[j * s.inner] - m);
            o[j * s.inner] = e;
            sum += double(e);
          }
          const T scale = T(1.0 / sum);
          for (int64_t j = 0; j < s.d; ++j) o[j * s.inner] *= scale;
        }
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
        int64_t base = (r / s.inner) * s.d * s.inner + r % s.inner;
        const T *gp = pg + base, *yp = py + base;
        T* o = po + base;
        double acc = 0;
        if (log) {
          for (int64_t j = 0; j < s.d; ++j) acc += double(gp[j * s.inner]);
          for (int64_t j = 0; j < s.d; ++j)
            o[j * s.inner] = T(double(gp[j * s.inner]) - std::exp(double(yp[j * s.inner])) * acc);
        } else {
          for (int64_t j = 0; j < s.d; ++j) acc += double(gp[j * s.inner]) * double(yp[j * s.inner]);
          for (int64_t j = 0; j < s.d; ++j)
            o[j * s.inner] = T(double(yp[j * s.inner]) * (double(gp[j * s.inner]) - acc));
        }
      }
    });
  });
}

}  // namespace bcos::cpu
