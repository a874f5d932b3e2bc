// Pooling on the GPU, as tensor/cpu/pool.cpp (window arithmetic shared in tensor/pool_math.h):
// max (PyTorch's flat per-plane indices h * W + w; NaN wins), average (padding counted or not,
// divisor override), adaptive average. The forwards take a thread per output element (its
// coordinates by multiply-and-shift, internal.h: PlaneCoords); the backwards a thread per input
// pixel, gathering the outputs whose windows hold it in output order (as the CPU's loops add
// them): no atomics, no zeroed gradient first, the same bits on every run. float32 / float64, and
// float16 / bfloat16 read and written as they are with float32 sums rounded once (as the CPU's
// float32 kernels on widened copies give them). x, outputs contiguous [N, C, H, W].
#include <cmath>

#include "tensor/kernel_views.h"
#include "tensor/copy.h"
#include "tensor/cuda/internal.h"
#include "tensor/pool_math.h"

namespace bcos::cuda {

namespace {

// T: the stored type; A: the arithmetic's (T, or float for the 16-bit types).
template <class T, class A, class I>
__global__ void max_pool_kernel(const T* x, T* out, int64_t* indices, Planes s, Pool2dParams p, PlaneCoords<I> coords) {
  const I count = I(s.planes * s.ho * s.wo);
  for (I o = I(blockIdx.x) * blockDim.x + threadIdx.x; o < count; o += I(gridDim.x) * blockDim.x) {
    const auto at = coords(o);
    const int64_t oh = at.row, ow = at.col, pl = at.plane;
    const T* plane = x + pl * s.h * s.w;
    const pool::Taps t = pool::window_taps(oh, ow, s.h, s.w, p);
    const int64_t h0 = t.h0, w0 = t.w0, ki_lo = t.ki_lo, ki_hi = t.ki_hi, kj_lo = t.kj_lo, kj_hi = t.kj_hi;
    A best = A(-INFINITY);
    int64_t best_i = -1;
    for (int64_t ki = ki_lo; ki < ki_hi; ++ki) {
      const int64_t row = (h0 + ki * p.dilation[0]) * s.w;
      for (int64_t kj = kj_lo; kj < kj_hi; ++kj) {
        const int64_t i = row + w0 + kj * p.dilation[1];
        const A v = convert_value<A>(plane[i]);
        if (best_i < 0 || v > best || v != v) {  // as PyTorch: NaN wins
          best = v;
          best_i = i;
        }
      }
    }
    out[o] = best_i < 0 ? convert_value<T>(best) : plane[best_i];  // the input's own value
    indices[o] = best_i;
  }
}

// grad_x[pl, ih, iw] = Σ g[o] over the outputs o whose maximum was this pixel (only those whose
// windows hold it can have picked it: pool::windows_holding).
template <class T, class A, class I>
__global__ void max_pool_backward_kernel(const T* g, const int64_t* indices, T* gx, Planes s, Pool2dParams p,
                                         PlaneCoords<I> coords) {
  const I count = I(s.planes * s.h * s.w);
  for (I i = I(blockIdx.x) * blockDim.x + threadIdx.x; i < count; i += I(gridDim.x) * blockDim.x) {
    const auto at = coords(i);
    const int64_t ih = at.row, iw = at.col, base = int64_t(at.plane) * s.ho * s.wo, flat = ih * s.w + iw;
    const pool::OutputRange r = pool::windows_holding(ih, iw, s.ho, s.wo, p);
    A sum = 0;
    for (int64_t oh = r.oh0; oh < r.oh1; ++oh)
      for (int64_t ow = r.ow0; ow < r.ow1; ++ow) {
        const int64_t o = base + oh * s.wo + ow;
        if (indices[o] == flat) sum += convert_value<A>(g[o]);
      }
    gx[i] = convert_value<T>(sum);
  }
}

template <class T, class A, class I>
__global__ void avg_pool_kernel(const T* x, T* out, Planes s, Pool2dParams p, PlaneCoords<I> coords) {
  const I count = I(s.planes * s.ho * s.wo);
  for (I o = I(blockIdx.x) * blockDim.x + threadIdx.x; o < count; o += I(gridDim.x) * blockDim.x) {
    const auto at = coords(o);
    const int64_t oh = at.row, ow = at.col, pl = at.plane;
    const T* plane = x + pl * s.h * s.w;
    const pool::AvgWindow win = pool::avg_window(oh, ow, s.h, s.w, p);
    A sum = 0;
    for (int64_t ih = win.h0; ih < win.h1; ++ih)
      for (int64_t iw = win.w0; iw < win.w1; ++iw) sum += convert_value<A>(plane[ih * s.w + iw]);
    out[o] = convert_value<T>(sum / A(win.divisor));
  }
}

// grad_x[pl, ih, iw] = Σ g[o] / divisor(o) over the windows o that hold the pixel
// (pool::windows_holding), in output order, as the CPU adds them.
template <class T, class A, class I>
__global__ void avg_pool_backward_kernel(const T* g, T* gx, Planes s, Pool2dParams p, PlaneCoords<I> coords) {
  const I count = I(s.planes * s.h * s.w);
  for (I i = I(blockIdx.x) * blockDim.x + threadIdx.x; i < count; i += I(gridDim.x) * blockDim.x) {
    const auto at = coords(i);
    const int64_t ih = at.row, iw = at.col;
    const T* plane = g + int64_t(at.plane) * s.ho * s.wo;
    const pool::OutputRange r = pool::windows_holding(ih, iw, s.ho, s.wo, p);  // (no dilation here)
    A sum = 0;
    for (int64_t oh = r.oh0; oh < r.oh1; ++oh)
      for (int64_t ow = r.ow0; ow < r.ow1; ++ow)
        sum += convert_value<A>(plane[oh * s.wo + ow]) / A(pool::avg_window(oh, ow, s.h, s.w, p).divisor);
    gx[i] = convert_value<T>(sum);
  }
}

template <class T, class A, class I>
__global__ void adaptive_avg_pool_kernel(const T* x, T* out, Planes s, PlaneCoords<I> coords) {
  const I count = I(s.planes * s.ho * s.wo);
  for (I o = I(blockIdx.x) * blockDim.x + threadIdx.x; o < count; o += I(gridDim.x) * blockDim.x) {
    const auto at = coords(o);
    const int64_t oh = at.row, ow = at.col, pl = at.plane;
    const T* plane = x + pl * s.h * s.w;
    const int64_t h0 = pool::bin_start(oh, s.h, s.ho), h1 = pool::bin_end(oh, s.h, s.ho);
    const int64_t w0 = pool::bin_start(ow, s.w, s.wo), w1 = pool::bin_end(ow, s.w, s.wo);
    double sum = 0;  // as the CPU (16-bit: its float32 result, then rounded)
    for (int64_t ih = h0; ih < h1; ++ih)
      for (int64_t iw = w0; iw < w1; ++iw) sum += double(convert_value<A>(plane[ih * s.w + iw]));
    out[o] = convert_value<T>(A(sum / double((h1 - h0) * (w1 - w0))));
  }
}

// grad_x[pl, ih, iw] = Σ g[o] / area(o) over the bins o that hold the pixel, in output order:
// bin oh = [floor(oh·H / Ho), ceil((oh + 1)·H / Ho)) holds ih for oh in
// [floor(ih·Ho / H), ceil((ih + 1)·Ho / H)).
template <class T, class A, class I>
__global__ void adaptive_avg_pool_backward_kernel(const T* g, T* gx, Planes s, PlaneCoords<I> coords) {
  const I count = I(s.planes * s.h * s.w);
  for (I i = I(blockIdx.x) * blockDim.x + threadIdx.x; i < count; i += I(gridDim.x) * blockDim.x) {
    const auto at = coords(i);
    const int64_t ih = at.row, iw = at.col;
    const T* plane = g + int64_t(at.plane) * s.ho * s.wo;
    const int64_t oh0 = ih * s.ho / s.h, oh1 = min(((ih + 1) * s.ho + s.h - 1) / s.h, s.ho);
    const int64_t ow0 = iw * s.wo / s.w, ow1 = min(((iw + 1) * s.wo + s.w - 1) / s.w, s.wo);
    A sum = 0;
    for (int64_t oh = oh0; oh < oh1; ++oh) {
      const int64_t h0 = pool::bin_start(oh, s.h, s.ho), h1 = pool::bin_end(oh, s.h, s.ho);
      if (ih < h0 || ih >= h1) continue;
      for (int64_t ow = ow0; ow < ow1; ++ow) {
        const int64_t w0 = pool::bin_start(ow, s.w, s.wo), w1 = pool::bin_end(ow, s.w, s.wo);
        if (iw < w0 || iw >= w1) continue;
        sum += convert_value<A>(plane[oh * s.wo + ow]) / A((h1 - h0) * (w1 - w0));
      }
    }
    gx[i] = convert_value<T>(sum);
  }
}

// Runs `launch` for <T, A> -- (float, float), (double, double), (__half, float),
// (__nv_bfloat16, float) by `on`'s dtype -- on its device and stream.
template <class F>
void launch_pool(const Tensor& on, const char* op, F&& launch) {
  const int device = on.device().index;
  DeviceGuard guard(device);
  cudaStream_t stream = stream_of(device);
  auto run = [&]<class T, class A>() {
    launch.template operator()<T, A>(stream);
    BCOS_CUDA_CHECK_LAUNCH();
  };
  if (is_half_float(on.dtype())) return dispatch_half(on.dtype(), [&]<class S>() { run.template operator()<S, float>(); });
  dispatch_float(on.dtype(), op, [&]<class T>() { run.template operator()<T, T>(); });
}

}  // namespace

void max_pool2d_forward(const Tensor& x_in, const Tensor& out, const Tensor& indices, const Pool2dParams& p) {
  const Tensor x = raw_contiguous(x_in);
  const Planes s = planes_of(x, out);
  if (out.numel() == 0) return;
  launch_pool(x, "cuda max_pool2d", [&]<class T, class A>(cudaStream_t stream) {
    with_index(out.numel(), [&]<class I>() {
      max_pool_kernel<T, A, I><<<blocks_for(out.numel()), kThreads, 0, stream>>>(
          static_cast<const T*>(x.raw_data()), static_cast<T*>(out.raw_data()),
          static_cast<int64_t*>(indices.raw_data()), s, p, PlaneCoords<I>(s.ho, s.wo));
    });
  });
}

// The indices come from max_pool2d_forward on this device with these parameters, so they lie
// inside their planes and each names a pixel its window holds.
void max_pool2d_backward(const Tensor& grad_out_in, const Tensor& indices, const Tensor& grad_x,
                         const Pool2dParams& p) {
  const Tensor g = raw_contiguous(grad_out_in);
  const Planes s = planes_of(grad_x, g);
  if (grad_x.numel() == 0) return;
  launch_pool(g, "cuda max_pool2d_backward", [&]<class T, class A>(cudaStream_t stream) {
    with_index(grad_x.numel(), [&]<class I>() {
      max_pool_backward_kernel<T, A, I><<<blocks_for(grad_x.numel()), kThreads, 0, stream>>>(
          static_cast<const T*>(g.raw_data()), static_cast<const int64_t*>(indices.raw_data()),
          static_cast<T*>(grad_x.raw_data()), s, p, PlaneCoords<I>(s.h, s.w));
    });
  });
}

void avg_pool2d_forward(const Tensor& x_in, const Tensor& out, const Pool2dParams& p) {
  const Tensor x = raw_contiguous(x_in);
  const Planes s = planes_of(x, out);
  if (out.numel() == 0) return;
  launch_pool(x, "cuda avg_pool2d", [&]<class T, class A>(cudaStream_t stream) {
    with_index(out.numel(), [&]<class I>() {
      avg_pool_kernel<T, A, I><<<blocks_for(out.numel()), kThreads, 0, stream>>>(
          static_cast<const T*>(x.raw_data()), static_cast<T*>(out.raw_data()), s, p, PlaneCoords<I>(s.ho, s.wo));
    });
  });
}

// (An empty g -- no window -- leaves every pixel in none: the gathers write zeros.)
void avg_pool2d_backward(const Tensor& grad_out_in, const Tensor& grad_x, const Pool2dParams& p) {
  const Tensor g = raw_contiguous(grad_out_in);
  const Planes s = planes_of(grad_x, g);
  if (grad_x.numel() == 0) return;
  launch_pool(g, "cuda avg_pool2d_backward", [&]<class T, class A>(cudaStream_t stream) {
    with_index(grad_x.numel(), [&]<class I>() {
      avg_pool_backward_kernel<T, A, I><<<blocks_for(grad_x.numel()), kThreads, 0, stream>>>(
          static_cast<const T*>(g.raw_data()), static_cast<T*>(grad_x.raw_data()), s, p, PlaneCoords<I>(s.h, s.w));
    });
  });
}

void adaptive_avg_pool2d_forward(const Tensor& x_in, const Tensor& out) {
  const Tensor x = raw_contiguous(x_in);
  const Planes s = planes_of(x, out);
  if (out.numel() == 0) return;
  launch_pool(x, "cuda adaptive_avg_pool2d", [&]<class T, class A>(cudaStream_t stream) {
    with_index(out.numel(), [&]<class I>() {
      adaptive_avg_pool_kernel<T, A, I><<<blocks_for(out.numel()), kThreads, 0, stream>>>(
          static_cast<const T*>(x.raw_data()), static_cast<T*>(out.raw_data()), s, PlaneCoords<I>(s.ho, s.wo));
    });
  });
}

void adaptive_avg_pool2d_backward(const Tensor& grad_out_in, const Tensor& grad_x) {
  const Tensor g = raw_contiguous(grad_out_in);
  const Planes s = planes_of(grad_x, g);
  if (grad_x.numel() == 0) return;
  launch_pool(g, "cuda adaptive_avg_pool2d_backward", [&]<class T, class A>(cudaStream_t stream) {
    with_index(grad_x.numel(), [&]<class I>() {
      adaptive_avg_pool_backward_kernel<T, A, I><<<blocks_for(grad_x.numel()), kThreads, 0, stream>>>(
          static_cast<const T*>(g.raw_data()), static_cast<T*>(grad_x.raw_data()), s, PlaneCoords<I>(s.h, s.w));
    });
  });
}

}  // namespace bcos::cuda
