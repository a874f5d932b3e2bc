// Softmax and log-softmax along one dim on the GPU, as tensor/cpu/softmax.cpp computes them:
// x viewed contiguous [outer, D, inner], max-subtracted, accumulated in double. Along the last
// dim (inner = 1: attention's logits, a classifier's) one warp per row, its lanes reading the
// row coalesced; otherwise one thread per (outer, inner) row, neighbouring threads reading
// neighbouring elements.
//   softmax backward:      grad_x = y · (g − Σ g·y)
//   log_softmax backward:  grad_x = g − exp(y) · Σ g
#include <cmath>

#include "tensor/kernel_views.h"
#include "tensor/copy.h"
#include "tensor/cuda/internal.h"

namespace bcos::cuda {

namespace {

template <class T>
__global__ void softmax_kernel(const T* x, T* out, DimView s, bool log) {
  const int64_t rows = s.outer * s.inner, step = int64_t(gridDim.x) * blockDim.x;
  for (int64_t r = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; r < rows; r += step) {
    const int64_t base = (r / s.inner) * s.d * s.inner + r % s.inner;
    const T* p = x + base;
    T* o = out + base;
    double m = -INFINITY;
    for (int64_t j = 0; j < s.d; ++j) m = fmax(m, double(p[j * s.inner]));
    if (isinf(m) && m < 0) m = 0;  // all −inf: avoid inf − inf
    double sum = 0;
    for (int64_t j = 0; j < s.d; ++j) sum += ::exp(double(p[j * s.inner]) - m);
    if (log) {
      const double lse = m + ::log(sum);
      for (int64_t j = 0; j < s.d; ++j) o[j * s.inner] = T(double(p[j * s.inner]) - lse);
    } else {
      for (int64_t j = 0; j < s.d; ++j) o[j * s.inner] = T(::exp(double(p[j * s.inner]) - m) / sum);
    }
  }
}

template <class T>
__global__ void softmax_backward_kernel(const T* g, const T* y, T* gx, DimView s, bool log) {
  const int64_t rows = s.outer * s.inner, step = int64_t(gridDim.x) * blockDim.x;
  for (int64_t r = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; r < rows; r += step) {
    const int64_t base = (r / s.inner) * s.d * s.inner + r % s.inner;
    const T *gp = g + base, *yp = y + base;
    T* o = gx + base;
    double acc = 0;
    if (log) {
      for (int64_t j = 0; j < s.d; ++j) acc += double(gp[j * s.inner]);
      for (int64_t j = 0; j < s.d; ++j)
        o[j * s.inner] = T(double(gp[j * s.inner]) - ::exp(double(yp[j * s.inner])) * acc);
    } else {
      for (int64_t j = 0; j < s.d; ++j) acc += double(gp[j * s.inner]) * double(yp[j * s.inner]);
      for (int64_t j = 0; j < s.d; ++j)
        o[j * s.inner] = T(double(yp[j * s.inner]) * (double(gp[j * s.inner]) - acc));
    }
  }
}

// The same along contiguous rows [rows, d], a warp per row (blockDim (32, kRowWarps)); the row
// loop's bound is the same for a whole warp, so every lane reaches the shuffles.

__device__ __forceinline__ double warp_max(double v) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) v = fmax(v, __shfl_xor_sync(0xffffffffu, v, offset));
  return v;
}

template <class T>
__global__ void softmax_rows_kernel(const T* x, T* out, int64_t rows, int64_t d, bool log) {
  const int64_t step = int64_t(gridDim.x) * blockDim.y;
  for (int64_t r = int64_t(blockIdx.x) * blockDim.y + threadIdx.y; r < rows; r += step) {
    const T* p = x + r * d;
    T* o = out + r * d;
    double m = -INFINITY;
    for (int64_t j = threadIdx.x; j < d; j += 32) m = fmax(m, double(p[j]));
    m = warp_max(m);
    if (isinf(m) && m < 0) m = 0;  // all −inf: avoid inf − inf
    double sum = 0;
    for (int64_t j = threadIdx.x; j < d; j += 32) sum += ::exp(double(p[j]) - m);
    sum = warp_sum(sum);
    if (log) {
      const double lse = m + ::log(sum);
      for (int64_t j = threadIdx.x; j < d; j += 32) o[j] = T(double(p[j]) - lse);
    } else {
      for (int64_t j = threadIdx.x; j < d; j += 32) o[j] = T(::exp(double(p[j]) - m) / sum);
    }
  }
}

template <class T>
__global__ void softmax_rows_backward_kernel(const T* g, const T* y, T* gx, int64_t rows, int64_t d, bool log) {
  const int64_t step = int64_t(gridDim.x) * blockDim.y;
  for (int64_t r = int64_t(blockIdx.x) * blockDim.y + threadIdx.y; r < rows; r += step) {
    const T *gp = g + r * d, *yp = y + r * d;
    T* o = gx + r * d;
    double acc = 0;
    if (log) {
      for (int64_t j = threadIdx.x; j < d; j += 32) acc += double(gp[j]);
      acc = warp_sum(acc);
      for (int64_t j = threadIdx.x; j < d; j += 32) o[j] = T(double(gp[j]) - ::exp(double(yp[j])) * acc);
    } else {
      for (int64_t j = threadIdx.x; j < d; j += 32) acc += double(gp[j]) * double(yp[j]);
      acc = warp_sum(acc);
      for (int64_t j = threadIdx.x; j < d; j += 32) o[j] = T(double(yp[j]) * (double(gp[j]) - acc));
    }
  }
}

// out = cond ? a : b over a Geometry<4> of (out, cond, a, b).
template <class T>
__global__ void where_kernel(T* out, const bool* cond, const T* a, const T* b, Geometry<4> g) {
  const int64_t step = int64_t(gridDim.x) * blockDim.x;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < g.numel; i += step) {
    int64_t off[4];
    g.offsets(i, off);
    out[off[0]] = cond[off[1]] ? a[off[2]] : b[off[3]];
  }
}

}  // namespace

void softmax(const Tensor& x_in, int dim, bool log, const Tensor& out) {
  const Tensor x = raw_contiguous(x_in);
  const DimView s = dim_view(x, dim);
  if (x.numel() == 0) return;
  const int device = x.device().index;
  DeviceGuard guard(device);
  cudaStream_t stream = stream_of(device);
  dispatch_float(x.dtype(), "cuda softmax", [&]<class T>() {
    if (s.inner == 1) {
      softmax_rows_kernel<<<row_warp_blocks(s.outer), dim3(32, kRowWarps), 0, stream>>>(
          static_cast<const T*>(x.raw_data()), static_cast<T*>(out.raw_data()), s.outer, s.d, log);
      BCOS_CUDA_CHECK_LAUNCH();
      return;
    }
    softmax_kernel<<<blocks_for(s.outer * s.inner), kThreads, 0, stream>>>(
        static_cast<const T*>(x.raw_data()), static_cast<T*>(out.raw_data()), s, log);
    BCOS_CUDA_CHECK_LAUNCH();
  });
}

void softmax_backward(const Tensor& grad_in, const Tensor& y_in, int dim, bool log, const Tensor& grad_x) {
  const Tensor g = raw_contiguous(grad_in), y = raw_contiguous(y_in);
  const DimView s = dim_view(y, dim);
  if (y.numel() == 0) return;
  const int device = y.device().index;
  DeviceGuard guard(device);
  cudaStream_t stream = stream_of(device);
  dispatch_float(y.dtype(), "cuda softmax_backward", [&]<class T>() {
    if (s.inner == 1) {
      softmax_rows_backward_kernel<<<row_warp_blocks(s.outer), dim3(32, kRowWarps), 0, stream>>>(
          static_cast<const T*>(g.raw_data()), static_cast<const T*>(y.raw_data()),
          static_cast<T*>(grad_x.raw_data()), s.outer, s.d, log);
      BCOS_CUDA_CHECK_LAUNCH();
      return;
    }
    softmax_backward_kernel<<<blocks_for(s.outer * s.inner), kThreads, 0, stream>>>(
        static_cast<const T*>(g.raw_data()), static_cast<const T*>(y.raw_data()),
        static_cast<T*>(grad_x.raw_data()), s, log);
    BCOS_CUDA_CHECK_LAUNCH();
  });
}

void where(const Tensor& cond, const Tensor& a, const Tensor& b, const Tensor& out) {
  if (out.numel() == 0) return;
  const int device = out.device().index;
  DeviceGuard guard(device);
  cudaStream_t stream = stream_of(device);
  const Geometry<4> g =
      make_geometry<4>(out.shape(), {&out.strides(), &cond.strides(), &a.strides(), &b.strides()});
  auto run = [&]<class T>() {
    where_kernel<<<blocks_for(g.numel), kThreads, 0, stream>>>(
        static_cast<T*>(out.raw_data()), static_cast<const bool*>(cond.raw_data()),
        static_cast<const T*>(a.raw_data()), static_cast<const T*>(b.raw_data()), g);
    BCOS_CUDA_CHECK_LAUNCH();
  };
  dispatch_any_dtype(out.dtype(), "cuda where", run);
}

}  // namespace bcos::cuda
