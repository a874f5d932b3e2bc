// Pooling on the CPU: max (with PyTorch's flat per-plane indices h * W + w), average (padding
// counted or not, divisor override), adaptive average. Every (sample, channel) plane is
// independent, so planes run in parallel. x and outputs are contiguous [N, C, H, W].
#include <algorithm>
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

namespace {

// One tap (ki, kj) of max pooling applied to a whole output row: out[ow] / idx[ow] take
// plane[base + ow * stride] where it is larger (or NaN, as in PyTorch), for the columns ow in
// [lo, hi) whose tap lies inside the plane. Visiting taps in (ki, kj) order per row gives each
// output PyTorch's scan order (first maximum wins), and the loop over ow vectorises; kStride is
// the stride when known at compile time (0: read `stride`).
template <int kStride, class T>
void max_tap_row(const T* plane, int64_t base, int64_t stride, int64_t lo, int64_t hi, T* out, int64_t* idx) {
  const int64_t st = kStride ? kStride : stride;
  for (int64_t ow = lo; ow < hi; ++ow) {
    const int64_t i = base + ow * st;
    const T v = plane[i];
    const bool take = idx[ow] < 0 || v > out[ow] || v != v;
    out[ow] = take ? v : out[ow];
    idx[ow] = take ? i : idx[ow];
  }
}

}  // namespace

void max_pool2d_forward(const Tensor& x_in, const Tensor& out, const Tensor& indices,
                        const Pool2dParams& p) {
  Tensor x = raw_contiguous(x_in);
  Planes s = planes_of(x, out);
  dispatch_float(x.dtype(), "max_pool2d", [&]<class T>() {
    const T* px = x.data<T>();
    T* po = out.data<T>();
    int64_t* pi = indices.data<int64_t>();
    const int64_t st = p.stride[1];
    parallel_for(s.planes, s.ho * s.wo * p.kernel[0] * p.kernel[1], [&](int64_t b, int64_t e) {
      for (int64_t pl = b; pl < e; ++pl) {
        const T* plane = px + pl * s.h * s.w;
        for (int64_t oh = 0; oh < s.ho; ++oh) {
          T* orow = po + (pl * s.ho + oh) * s.wo;
          int64_t* irow = pi + (pl * s.ho + oh) * s.wo;
          std::fill(orow, orow + s.wo, -std::numeric_limits<T>::infinity());
          std::fill(irow, irow + s.wo, int64_t(-1));
          const int64_t h0 = oh * p.stride[0] - p.padding[0];
          const int64_t ki_lo = first_tap(h0, p.dilation[0]), ki_hi = end_tap(h0, p.dilation[0], p.kernel[0], s.h);
          for (int64_t ki = ki_lo; ki < ki_hi; ++ki)
            for (int64_t kj = 0; kj < p.kernel[1]; ++kj) {
              // Columns ow whose tap iw = iw0 + ow * st lies in [0, w).
              const int64_t iw0 = kj * p.dilation[1] - p.padding[1];
              const int64_t lo = iw0 >= 0 ? 0 : std::min<int64_t>((-iw0 + st - 1) / st, s.wo);
              const int64_t hi = iw0 > s.w - 1 ? lo : std::clamp<int64_t>((s.w - 1 - iw0) / st + 1, lo, s.wo);
              const int64_t base = (h0 + ki * p.dilation[0]) * s.w + iw0;
              if (st == 1) max_tap_row<1>(plane, base, st, lo, hi, orow, irow);
              else if (st == 2) max_tap_row<2>(plane, base, st, lo, hi, orow, irow);
              else max_tap_row<0>(plane, base, st, lo, hi, orow, irow);
            }
        }
      }
    });
  });
}

void max_pool2d_backward(const Tensor& grad_out_in, const Tensor& indices, const Tensor& grad_x, const Pool2dParams&) {
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

namespace {

// Windows that tile the plane: stride = kernel, no padding, every window whole (CLIP's
// ModifiedResNet downsamples with AvgPool2d(2)). Their rows run as loops over the output columns
// that vectorise, 2 x 2 windows spelled out, each sum taken in the general loops' order from 0
// (so -0 sums to +0 as there): the same bits. Scalar, they were 7 % of a B-cos CLIP
// distillation step.
bool windows_tile(const Planes& s, const Pool2dParams& p) {
  return p.padding[0] == 0 && p.padding[1] == 0 && p.stride[0] == p.kernel[0] && p.stride[1] == p.kernel[1] &&
         s.ho * p.kernel[0] <= s.h && s.wo * p.kernel[1] <= s.w;
}

template <class T>
void avg_pool_tiled_row(const T* top, int64_t w, int64_t wo, const Pool2dParams& p, T divisor, T* o) {
  const int64_t kh = p.kernel[0], kw = p.kernel[1];
  if (kh == 2 && kw == 2) {
    const T* bottom = top + w;
#pragma omp simd
    for (int64_t ow = 0; ow < wo; ++ow)
      o[ow] = ((((T(0) + top[2 * ow]) + top[2 * ow + 1]) + bottom[2 * ow]) + bottom[2 * ow + 1]) / divisor;
    return;
  }
  for (int64_t ow = 0; ow < wo; ++ow) {
    T sum = 0;
    for (int64_t ih = 0; ih < kh; ++ih)
      for (int64_t iw = 0; iw < kw; ++iw) sum += top[ih * w + ow * kw + iw];
    o[ow] = sum / divisor;
  }
}

template <class T>
void avg_pool_tiled_backward_row(const T* g, int64_t w, int64_t wo, const Pool2dParams& p, T divisor, T* top) {
  const int64_t kh = p.kernel[0], kw = p.kernel[1];
  for (int64_t ih = 0; ih < kh; ++ih) {
    T* row = top + ih * w;
    if (kw == 2) {
#pragma omp simd
      for (int64_t ow = 0; ow < wo; ++ow) row[2 * ow] = row[2 * ow + 1] = T(0) + g[ow] / divisor;
    } else {
      for (int64_t ow = 0; ow < wo; ++ow)
        for (int64_t iw = 0; iw < kw; ++iw) row[ow * kw + iw] = T(0) + g[ow] / divisor;
    }
  }
}

}  // namespace

void avg_pool2d_forward(const Tensor& x_in, const Tensor& out, const Pool2dParams& p) {
  Tensor x = raw_contiguous(x_in);
  Planes s = planes_of(x, out);
  const bool tiled = windows_tile(s, p);
  dispatch_float(x.dtype(), "avg_pool2d", [&]<class T>() {
    const T* px = x.data<T>();
    T* po = out.data<T>();
    parallel_for(s.planes, s.ho * s.wo * p.kernel[0] * p.kernel[1], [&](int64_t b, int64_t e) {
      for (int64_t pl = b; pl < e; ++pl) {
        const T* plane = px + pl * s.h * s.w;
        if (tiled) {
          const T divisor = T(avg_window(0, 0, s.h, s.w, p).divisor);
          for (int64_t oh = 0; oh < s.ho; ++oh)
            avg_pool_tiled_row(plane + oh * p.kernel[0] * s.w, s.w, s.wo, p, divisor, po + (pl * s.ho + oh) * s.wo);
          continue;
        }
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
    const bool tiled = windows_tile(s, p), covered = tiled && s.ho * p.kernel[0] == s.h && s.wo * p.kernel[1] == s.w;
    if (!covered) std::fill(px, px + grad_x.numel(), T(0));
    parallel_for(s.planes, s.ho * s.wo * p.kernel[0] * p.kernel[1], [&](int64_t b, int64_t e) {
      for (int64_t pl = b; pl < e; ++pl) {
        T* plane = px + pl * s.h * s.w;
        if (tiled) {
          const T divisor = T(avg_window(0, 0, s.h, s.w, p).divisor);
          for (int64_t oh = 0; oh < s.ho; ++oh)
            avg_pool_tiled_backward_row(pg + (pl * s.ho + oh) * s.wo, s.w, s.wo, p, divisor,
                                        plane + oh * p.kernel[0] * s.w);
          continue;
        }
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
