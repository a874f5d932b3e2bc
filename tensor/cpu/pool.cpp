// Pooling on the CPU: max (with PyTorch's flat per-plane indices h * W + w), average (padding
// counted or not, divisor override), adaptive average. Every (sample, channel) plane is
// independent, so planes run in parallel. x and outputs are contiguous [N, C, H, W].
#include <cmath>
#include <limits>

#include "tensor/kernel_views.h"
#include "tensor/copy.h"
#include "tensor/cpu/kernels.h"
#include "tensor/parallel.h"
#include "tensor/pool_math.h"

namespace bcos::cpu {

using pool::avg_window;
using pool::AvgWindow;
using pool::bin_end;
using pool::bin_start;
using pool::end_tap;
using pool::first_tap;

void max_pool2d_forward(const Tensor& x_in, const Tensor& out, const Tensor& indices,
                        const Pool2dParams& p) {
  Tensor x = raw_contiguous(x_in);
  Planes s = planes_of(x, out);
  dispatch_float(x.dtype(), "max_pool2d", [&]<class T>() {
    const T* px = x.data<T>();
    T* po = out.data<T>();
    int64_t* pi = indices.data<int64_t>();
    parallel_for(s.planes, s.ho * s.wo * p.kernel[0] * p.kernel[1], [&](int64_t b, int64_t e) {
      for (int64_t pl = b; pl < e; ++pl) {
        const T* plane = px + pl * s.h * s.w;
        for (int64_t oh = 0; oh < s.ho; ++oh) {
          // The taps inside the plane, found once per row / column instead of tested per tap.
          const int64_t h0 = oh * p.stride[0] - p.padding[0];
          const int64_t ki_lo = first_tap(h0, p.dilation[0]), ki_hi = end_tap(h0, p.dilation[0], p.kernel[0], s.h);
          for (int64_t ow = 0; ow < s.wo; ++ow) {
            const int64_t w0 = ow * p.stride[1] - p.padding[1];
            const int64_t kj_lo = first_tap(w0, p.dilation[1]), kj_hi = end_tap(w0, p.dilation[1], p.kernel[1], s.w);
            T best = -std::numeric_limits<T>::infinity();
            int64_t best_i = -1;
            for (int64_t ki = ki_lo; ki < ki_hi; ++ki) {
              const int64_t row = (h0 + ki * p.dilation[0]) * s.w;
              for (int64_t kj = kj_lo; kj < kj_hi; ++kj) {
                const int64_t i = row + w0 + kj * p.dilation[1];
                const T v = plane[i];
                if (best_i < 0 || v > best || v != v) {  // as PyTorch: NaN wins
                  best = v;
                  best_i = i;
                }
              }
            }
            po[(pl * s.ho + oh) * s.wo + ow] = best;
            pi[(pl * s.ho + oh) * s.wo + ow] = best_i;
          }
        }
      }
    });
  });
}

void max_pool2d_backward(const Tensor& grad_out_in, const Tensor& indices, const Tensor& grad_x) {
  Tensor g = raw_contiguous(grad_out_in);
  Planes s = planes_of(grad_x, g);
  const int64_t* idx = indices.data<int64_t>();
  for (int64_t i = 0; i < indices.numel(); ++i)
    BCOS_CHECK(idx[i] >= -1 && idx[i] < s.h * s.w, "max_pool2d backward: index ", idx[i],
               " is outside the ", s.h, " x ", s.w, " input plane");
  dispatch_float(g.dtype(), "max_pool2d_backward", [&]<class T>() {
    const T* pg = g.data<T>();
    const int64_t* pi = indices.data<int64_t>();
    T* px = grad_x.data<T>();
    std::fill(px, px + grad_x.numel(), T(0));
    parallel_for(s.planes, s.ho * s.wo, [&](int64_t b, int64_t e) {
      for (int64_t pl = b; pl < e; ++pl)
        for (int64_t j = 0; j < s.ho * s.wo; ++j) {
          int64_t i = pi[pl * s.ho * s.wo + j];
          if (i >= 0) px[pl * s.h * s.w + i] += pg[pl * s.ho * s.wo + j];
        }
    });
  });
}

void avg_pool2d_forward(const Tensor& x_in, const Tensor& out, const Pool2dParams& p) {
  Tensor x = raw_contiguous(x_in);
  Planes s = planes_of(x, out);
  dispatch_float(x.dtype(), "avg_pool2d", [&]<class T>() {
    const T* px = x.data<T>();
    T* po = out.data<T>();
    parallel_for(s.planes, s.ho * s.wo * p.kernel[0] * p.kernel[1], [&](int64_t b, int64_t e) {
      for (int64_t pl = b; pl < e; ++pl) {
        const T* plane = px + pl * s.h * s.w;
        for (int64_t oh = 0; oh < s.ho; ++oh)
          for (int64_t ow = 0; ow < s.wo; ++ow) {
            AvgWindow win = avg_window(oh, ow, s.h, s.w, p);
            T sum = 0;
            for (int64_t ih = win.h0; ih < win.h1; ++ih)
              for (int64_t iw = win.w0; iw < win.w1; ++iw) sum += plane[ih * s.w + iw];
            po[(pl * s.ho + oh) * s.wo + ow] = sum / T(win.divisor);
          }
      }
    });
  });
}

void avg_pool2d_backward(const Tensor& grad_out_in, const Tensor& grad_x, const Pool2dParams& p) {
  Tensor g = raw_contiguous(grad_out_in);
  Planes s = planes_of(grad_x, g);
  dispatch_float(g.dtype(), "avg_pool2d_backward", [&]<class T>() {
    const T* pg = g.data<T>();
    T* px = grad_x.data<T>();
    std::fill(px, px + grad_x.numel(), T(0));
    parallel_for(s.planes, s.ho * s.wo * p.kernel[0] * p.kernel[1], [&](int64_t b, int64_t e) {
      for (int64_t pl = b; pl < e; ++pl) {
        T* plane = px + pl * s.h * s.w;
        for (int64_t oh = 0; oh < s.ho; ++oh)
          for (int64_t ow = 0; ow < s.wo; ++ow) {
            AvgWindow win = avg_window(oh, ow, s.h, s.w, p);
            T share = pg[(pl * s.ho + oh) * s.wo + ow] / T(win.divisor);
            for (int64_t ih = win.h0; ih < win.h1; ++ih)
              for (int64_t iw = win.w0; iw < win.w1; ++iw) plane[ih * s.w + iw] += share;
          }
      }
    });
  });
}

void adaptive_avg_pool2d_forward(const Tensor& x_in, const Tensor& out) {
  Tensor x = raw_contiguous(x_in);
  Planes s = planes_of(x, out);
  dispatch_float(x.dtype(), "adaptive_avg_pool2d", [&]<class T>() {
    const T* px = x.data<T>();
    T* po = out.data<T>();
    parallel_for(s.planes, s.h * s.w, [&](int64_t b, int64_t e) {
      for (int64_t pl = b; pl < e; ++pl) {
        const T* plane = px + pl * s.h * s.w;
        for (int64_t oh = 0; oh < s.ho; ++oh)
          for (int64_t ow = 0; ow < s.wo; ++ow) {
            int64_t h0 = bin_start(oh, s.h, s.ho), h1 = bin_end(oh, s.h, s.ho);
            int64_t w0 = bin_start(ow, s.w, s.wo), w1 = bin_end(ow, s.w, s.wo);
            double sum = 0;
            for (int64_t ih = h0; ih < h1; ++ih)
              for (int64_t iw = w0; iw < w1; ++iw) sum += double(plane[ih * s.w + iw]);
            po[(pl * s.ho + oh) * s.wo + ow] = T(sum / double((h1 - h0) * (w1 - w0)));
          }
      }
    });
  });
}

void adaptive_avg_pool2d_backward(const Tensor& grad_out_in, const Tensor& grad_x) {
  Tensor g = raw_contiguous(grad_out_in);
  Planes s = planes_of(grad_x, g);
  dispatch_float(g.dtype(), "adaptive_avg_pool2d_backward", [&]<class T>() {
    const T* pg = g.data<T>();
    T* px = grad_x.data<T>();
    std::fill(px, px + grad_x.numel(), T(0));
    parallel_for(s.planes, s.h * s.w, [&](int64_t b, int64_t e) {
      for (int64_t pl = b; pl < e; ++pl) {
        T* plane = px + pl * s.h * s.w;
        for (int64_t oh = 0; oh < s.ho; ++oh)
          for (int64_t ow = 0; ow < s.wo; ++ow) {
            int64_t h0 = bin_start(oh, s.h, s.ho), h1 = bin_end(oh, s.h, s.ho);
            int64_t w0 = bin_start(ow, s.w, s.wo), w1 = bin_end(ow, s.w, s.wo);
            T share = pg[(pl * s.ho + oh) * s.wo + ow] / T((h1 - h0) * (w1 - w0));
            for (int64_t ih = h0; ih < h1; ++ih)
              for (int64_t iw = w0; iw < w1; ++iw) plane[ih * s.w + iw] += share;
          }
      }
    });
  });
}

}  // namespace bcos::cpu
