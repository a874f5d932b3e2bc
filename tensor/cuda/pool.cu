// Pooling on the GPU, as tensor/cpu/pool.cpp (window arithmetic shared in tensor/pool_math.h):
// max (PyTorch's flat per-plane indices h * W + w; NaN wins), average (padding counted or not,
// divisor override), adaptive average. The forwards take a thread per output element (its
// coordinates by multiply-and-shift, internal.h: PlaneCoords). Average pooling's backward takes a
// thread per input pixel, gathering the windows that hold it; the max and adaptive backwards
// scatter into the zeroed input gradient with atomicAdd (windows may overlap) -- under
// deterministic_algorithms() one thread per plane walks that plane's outputs in order, so every
// input's terms are added in the same order each run. x, outputs contiguous [N, C, H, W].
#include <cmath>

#include "tensor/kernel_views.h"
#include "tensor/copy.h"
#include "tensor/cuda/internal.h"
#include "tensor/pool_math.h"

namespace bcos::cuda {

namespace {

// Every output element o of planes s: spread over the grid, or (per_plane) one thread per plane
// walking its outputs in order.
#define BCOS_SCATTER_LOOP(o, s, per_plane)                                                                  \
  for (int64_t unit = int64_t(blockIdx.x) * blockDim.x + threadIdx.x,                                     \
               per = (per_plane) ? (s).ho * (s).wo : 1, units = (s).planes * (s).ho * (s).wo / per;        \
       unit < units; unit += int64_t(gridDim.x) * blockDim.x)                                              \
    for (int64_t o = unit * per; o < (unit + 1) * per; ++o)

// Threads to launch for a backward scatter over the outputs of s.
unsigned scatter_blocks(const Planes& s, bool per_plane) {
  return blocks_for(per_plane ? s.planes : s.planes * s.ho * s.wo);
}

template <class T, class I>
__global__ void max_pool_kernel(const T* x, T* out, int64_t* indices, Planes s, Pool2dParams p, PlaneCoords<I> coords) {
  const I count = I(s.planes * s.ho * s.wo);
  for (I o = I(blockIdx.x) * blockDim.x + threadIdx.x; o < count; o += I(gridDim.x) * blockDim.x) {
    const auto at = coords(o);
    const int64_t oh = at.row, ow = at.col, pl = at.plane;
    const T* plane = x + pl * s.h * s.w;
    const pool::Taps t = pool::window_taps(oh, ow, s.h, s.w, p);
    const int64_t h0 = t.h0, w0 = t.w0, ki_lo = t.ki_lo, ki_hi = t.ki_hi, kj_lo = t.kj_lo, kj_hi = t.kj_hi;
    T best = T(-INFINITY);
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
    out[o] = best;
    indices[o] = best_i;
  }
}

template <class T>
__global__ void max_pool_backward_kernel(const T* g, const int64_t* indices, T* gx, Planes s, bool per_plane) {
  BCOS_SCATTER_LOOP(o, s, per_plane) {
    const int64_t i = indices[o];
    if (i >= 0) atomicAdd(gx + (o / (s.ho * s.wo)) * s.h * s.w + i, g[o]);
  }
}

template <class T, class I>
__global__ void avg_pool_kernel(const T* x, T* out, Planes s, Pool2dParams p, PlaneCoords<I> coords) {
  const I count = I(s.planes * s.ho * s.wo);
  for (I o = I(blockIdx.x) * blockDim.x + threadIdx.x; o < count; o += I(gridDim.x) * blockDim.x) {
    const auto at = coords(o);
    const int64_t oh = at.row, ow = at.col, pl = at.plane;
    const T* plane = x + pl * s.h * s.w;
    const pool::AvgWindow win = pool::avg_window(oh, ow, s.h, s.w, p);
    T sum = 0;
    for (int64_t ih = win.h0; ih < win.h1; ++ih)
      for (int64_t iw = win.w0; iw < win.w1; ++iw) sum += plane[ih * s.w + iw];
    out[o] = sum / T(win.divisor);
  }
}

// grad_x[pl, ih, iw] = Σ g[o] / divisor(o) over the windows o that hold the pixel, in output
// order (as the CPU adds them): a gather, a thread per input pixel -- no atomics, the same sum on
// every run. Without dilation a window [oh·s − pad, oh·s − pad + k) holds ih for oh in
// [ceil((ih + pad − k + 1) / s), floor((ih + pad) / s)] (its clipping to the plane never drops a
// pixel of the plane).
template <class T, class I>
__global__ void avg_pool_backward_kernel(const T* g, T* gx, Planes s, Pool2dParams p, PlaneCoords<I> coords) {
  const I count = I(s.planes * s.h * s.w);
  for (I i = I(blockIdx.x) * blockDim.x + threadIdx.x; i < count; i += I(gridDim.x) * blockDim.x) {
    const auto at = coords(i);
    const int64_t ih = at.row, iw = at.col;
    const T* plane = g + int64_t(at.plane) * s.ho * s.wo;
    const int64_t top = ih + p.padding[0] - p.kernel[0] + 1, left = iw + p.padding[1] - p.kernel[1] + 1;
    const int64_t oh0 = top <= 0 ? 0 : (top + p.stride[0] - 1) / p.stride[0];
    const int64_t ow0 = left <= 0 ? 0 : (left + p.stride[1] - 1) / p.stride[1];
    const int64_t oh1 = min((ih + p.padding[0]) / p.stride[0] + 1, s.ho);
    const int64_t ow1 = min((iw + p.padding[1]) / p.stride[1] + 1, s.wo);
    T sum = 0;
    for (int64_t oh = oh0; oh < oh1; ++oh)
      for (int64_t ow = ow0; ow < ow1; ++ow)
        sum += plane[oh * s.wo + ow] / T(pool::avg_window(oh, ow, s.h, s.w, p).divisor);
    gx[i] = sum;
  }
}

template <class T, class I>
__global__ void adaptive_avg_pool_kernel(const T* x, T* out, Planes s, PlaneCoords<I> coords) {
  const I count = I(s.planes * s.ho * s.wo);
  for (I o = I(blockIdx.x) * blockDim.x + threadIdx.x; o < count; o += I(gridDim.x) * blockDim.x) {
    const auto at = coords(o);
    const int64_t oh = at.row, ow = at.col, pl = at.plane;
    const T* plane = x + pl * s.h * s.w;
    const int64_t h0 = pool::bin_start(oh, s.h, s.ho), h1 = pool::bin_end(oh, s.h, s.ho);
    const int64_t w0 = pool::bin_start(ow, s.w, s.wo), w1 = pool::bin_end(ow, s.w, s.wo);
    double sum = 0;
    for (int64_t ih = h0; ih < h1; ++ih)
      for (int64_t iw = w0; iw < w1; ++iw) sum += double(plane[ih * s.w + iw]);
    out[o] = T(sum / double((h1 - h0) * (w1 - w0)));
  }
}

template <class T>
__global__ void adaptive_avg_pool_backward_kernel(const T* g, T* gx, Planes s, bool per_plane) {
  BCOS_SCATTER_LOOP(o, s, per_plane) {
    const int64_t ow = o % s.wo, oh = (o / s.wo) % s.ho, pl = o / (s.wo * s.ho);
    T* plane = gx + pl * s.h * s.w;
    const int64_t h0 = pool::bin_start(oh, s.h, s.ho), h1 = pool::bin_end(oh, s.h, s.ho);
    const int64_t w0 = pool::bin_start(ow, s.w, s.wo), w1 = pool::bin_end(ow, s.w, s.wo);
    const T share = g[o] / T((h1 - h0) * (w1 - w0));
    for (int64_t ih = h0; ih < h1; ++ih)
      for (int64_t iw = w0; iw < w1; ++iw) atomicAdd(plane + ih * s.w + iw, share);
  }
}

#undef BCOS_SCATTER_LOOP

// Runs `launch` for T in {float, double} on x's device and stream, zeroing `zero` first.
template <class F>
void launch_float(const Tensor& on, const char* op, const Tensor& zero, F&& launch) {
  const int device = on.device().index;
  DeviceGuard guard(device);
  cudaStream_t stream = stream_of(device);
  if (zero.defined())
    BCOS_CUDA_CHECK(cudaMemsetAsync(zero.raw_data(), 0, size_t(zero.numel()) * zero.element_size(), stream));
  dispatch_float(on.dtype(), op, [&]<class T>() {
    launch.template operator()<T>(stream);
    BCOS_CUDA_CHECK_LAUNCH();
  });
}

}  // namespace

void max_pool2d_forward(const Tensor& x_in, const Tensor& out, const Tensor& indices, const Pool2dParams& p) {
  const Tensor x = raw_contiguous(x_in);
  const Planes s = planes_of(x, out);
  if (out.numel() == 0) return;
  launch_float(x, "cuda max_pool2d", Tensor(), [&]<class T>(cudaStream_t stream) {
    with_index(out.numel(), [&]<class I>() {
      max_pool_kernel<T, I><<<blocks_for(out.numel()), kThreads, 0, stream>>>(
          static_cast<const T*>(x.raw_data()), static_cast<T*>(out.raw_data()),
          static_cast<int64_t*>(indices.raw_data()), s, p, PlaneCoords<I>(s.ho, s.wo));
    });
  });
}

// The indices come from max_pool2d_forward on this device, so they lie inside their planes.
void max_pool2d_backward(const Tensor& grad_out_in, const Tensor& indices, const Tensor& grad_x) {
  const Tensor g = raw_contiguous(grad_out_in);
  const Planes s = planes_of(grad_x, g);
  launch_float(g, "cuda max_pool2d_backward", grad_x, [&]<class T>(cudaStream_t stream) {
    if (g.numel() == 0) return;
    const bool ordered = deterministic_algorithms();
    max_pool_backward_kernel<<<scatter_blocks(s, ordered), kThreads, 0, stream>>>(
        static_cast<const T*>(g.raw_data()), static_cast<const int64_t*>(indices.raw_data()),
        static_cast<T*>(grad_x.raw_data()), s, ordered);
  });
}

void avg_pool2d_forward(const Tensor& x_in, const Tensor& out, const Pool2dParams& p) {
  const Tensor x = raw_contiguous(x_in);
  const Planes s = planes_of(x, out);
  if (out.numel() == 0) return;
  launch_float(x, "cuda avg_pool2d", Tensor(), [&]<class T>(cudaStream_t stream) {
    with_index(out.numel(), [&]<class I>() {
      avg_pool_kernel<T, I><<<blocks_for(out.numel()), kThreads, 0, stream>>>(
          static_cast<const T*>(x.raw_data()), static_cast<T*>(out.raw_data()), s, p, PlaneCoords<I>(s.ho, s.wo));
    });
  });
}

void avg_pool2d_backward(const Tensor& grad_out_in, const Tensor& grad_x, const Pool2dParams& p) {
  const Tensor g = raw_contiguous(grad_out_in);
  const Planes s = planes_of(grad_x, g);
  if (g.numel() == 0 || grad_x.numel() == 0) {  // no window: zero gradients
    launch_float(g, "cuda avg_pool2d_backward", grad_x, [&]<class T>(cudaStream_t) {});
    return;
  }
  launch_float(g, "cuda avg_pool2d_backward", Tensor(), [&]<class T>(cudaStream_t stream) {
    with_index(grad_x.numel(), [&]<class I>() {
      avg_pool_backward_kernel<T, I><<<blocks_for(grad_x.numel()), kThreads, 0, stream>>>(
          static_cast<const T*>(g.raw_data()), static_cast<T*>(grad_x.raw_data()), s, p, PlaneCoords<I>(s.h, s.w));
    });
  });
}

void adaptive_avg_pool2d_forward(const Tensor& x_in, const Tensor& out) {
  const Tensor x = raw_contiguous(x_in);
  const Planes s = planes_of(x, out);
  if (out.numel() == 0) return;
  launch_float(x, "cuda adaptive_avg_pool2d", Tensor(), [&]<class T>(cudaStream_t stream) {
    with_index(out.numel(), [&]<class I>() {
      adaptive_avg_pool_kernel<T, I><<<blocks_for(out.numel()), kThreads, 0, stream>>>(
          static_cast<const T*>(x.raw_data()), static_cast<T*>(out.raw_data()), s, PlaneCoords<I>(s.ho, s.wo));
    });
  });
}

void adaptive_avg_pool2d_backward(const Tensor& grad_out_in, const Tensor& grad_x) {
  const Tensor g = raw_contiguous(grad_out_in);
  const Planes s = planes_of(grad_x, g);
  launch_float(g, "cuda adaptive_avg_pool2d_backward", grad_x, [&]<class T>(cudaStream_t stream) {
    if (g.numel() == 0) return;
    const bool ordered = deterministic_algorithms();
    adaptive_avg_pool_backward_kernel<<<scatter_blocks(s, ordered), kThreads, 0, stream>>>(
        static_cast<const T*>(g.raw_data()), static_cast<T*>(grad_x.raw_data()), s, ordered);
  });
}

}  // namespace bcos::cuda
