// Row normalisation on the GPU (layer norm and group norm reduce to it), as
// tensor/cpu/norm.cpp: x viewed [rows, inner], mean and 1/sqrt(var + eps) per row accumulated
// in double, one warp per row (a thread per row read its row alone: 32 rows' cache lines per
// warp load, and ViT-B/16 at batch 64 has only 12,608 rows of 768). Batch norm has its own
// file, cuda/batch_norm.cu. The B-cos weights' unit rows live here too.
//   backward: grad_x = invstd · (g − mean(g) − x̂ · mean(g · x̂))
#include <cmath>

#include "tensor/copy.h"
#include "tensor/cuda/internal.h"

namespace bcos::cuda {

namespace {

// One warp per row (blockDim (32, kRowWarps)): its lanes read the row coalesced; the row loop's
// bound is the same for a whole warp, so every lane reaches warp_sum.

template <class T>
__global__ void row_norm_kernel(const T* x, int64_t rows, int64_t inner, double eps, T* out, T* mean, T* invstd) {
  const int64_t step = int64_t(gridDim.x) * blockDim.y;
  for (int64_t r = int64_t(blockIdx.x) * blockDim.y + threadIdx.y; r < rows; r += step) {
    const T* p = x + r * inner;
    double sum = 0, sq = 0;
    for (int64_t j = threadIdx.x; j < inner; j += 32) sum += double(p[j]);
    const double mu = warp_sum(sum) / double(inner);
    for (int64_t j = threadIdx.x; j < inner; j += 32) {
      const double v = double(p[j]) - mu;
      sq += v * v;
    }
    const double is = 1.0 / ::sqrt(warp_sum(sq) / double(inner) + eps);
    T* o = out + r * inner;
    for (int64_t j = threadIdx.x; j < inner; j += 32) o[j] = T((double(p[j]) - mu) * is);
    if (threadIdx.x == 0) {
      mean[r] = T(mu);
      invstd[r] = T(is);
    }
  }
}

template <class T>
__global__ void row_norm_backward_kernel(const T* g, const T* x, int64_t rows, int64_t inner, const T* mean,
                                         const T* invstd, T* gx) {
  const int64_t step = int64_t(gridDim.x) * blockDim.y;
  for (int64_t r = int64_t(blockIdx.x) * blockDim.y + threadIdx.y; r < rows; r += step) {
    const T *gp = g + r * inner, *xp = x + r * inner;
    const double mu = double(mean[r]), is = double(invstd[r]);
    double sum_g = 0, sum_gx = 0;
    for (int64_t j = threadIdx.x; j < inner; j += 32) {
      sum_g += double(gp[j]);
      sum_gx += double(gp[j]) * (double(xp[j]) - mu) * is;
    }
    const double mean_g = warp_sum(sum_g) / double(inner), mean_gx = warp_sum(sum_gx) / double(inner);
    T* o = gx + r * inner;
    for (int64_t j = threadIdx.x; j < inner; j += 32) {
      const double xhat = (double(xp[j]) - mu) * is;
      o[j] = T(is * (double(gp[j]) - mean_g - xhat * mean_gx));
    }
  }
}

// Unit rows (B-cos weights), a warp per row as above; as the CPU, the sum of squares in double
// and the quotient w / n in T.

template <class T>
__global__ void unit_rows_kernel(const T* w, int64_t rows, int64_t inner, T* out, T* norms) {
  const int64_t step = int64_t(gridDim.x) * blockDim.y;
  for (int64_t r = int64_t(blockIdx.x) * blockDim.y + threadIdx.y; r < rows; r += step) {
    const T* p = w + r * inner;
    double sq = 0;
    for (int64_t j = threadIdx.x; j < inner; j += 32) sq += double(p[j]) * double(p[j]);
    const T n = T(::sqrt(warp_sum(sq)));
    T* o = out + r * inner;
    for (int64_t j = threadIdx.x; j < inner; j += 32) o[j] = p[j] / n;
    if (threadIdx.x == 0) norms[r] = n;
  }
}

template <class T>
__global__ void unit_rows_backward_kernel(const T* g, const T* w, int64_t rows, int64_t inner, const T* norms,
                                          T* gw) {
  const int64_t step = int64_t(gridDim.x) * blockDim.y;
  for (int64_t r = int64_t(blockIdx.x) * blockDim.y + threadIdx.y; r < rows; r += step) {
    const T *gp = g + r * inner, *wp = w + r * inner;
    double dot = 0;
    for (int64_t j = threadIdx.x; j < inner; j += 32) dot += double(gp[j]) * double(wp[j]);
    dot = warp_sum(dot);
    const double n = double(norms[r]);
    const T inv = T(1.0 / n), c = T(dot / (n * n * n));
    T* o = gw + r * inner;
    for (int64_t j = threadIdx.x; j < inner; j += 32) o[j] = gp[j] * inv - wp[j] * c;
  }
}

}  // namespace

void unit_rows_forward(const Tensor& w_in, int64_t outer, int64_t inner, const Tensor& out, const Tensor& norms) {
  const Tensor w = raw_contiguous(w_in);
  if (outer == 0) return;
  const int device = w.device().index;
  DeviceGuard guard(device);
  cudaStream_t stream = stream_of(device);
  dispatch_float(w.dtype(), "cuda unit_rows", [&]<class T>() {
    unit_rows_kernel<<<row_warp_blocks(outer), dim3(32, kRowWarps), 0, stream>>>(
        static_cast<const T*>(w.raw_data()), outer, inner, static_cast<T*>(out.raw_data()),
        static_cast<T*>(norms.raw_data()));
    BCOS_CUDA_CHECK_LAUNCH();
  });
}

void unit_rows_backward(const Tensor& grad_in, const Tensor& w_in, int64_t outer, int64_t inner, const Tensor& norms,
                        const Tensor& grad_w) {
  const Tensor g = raw_contiguous(grad_in), w = raw_contiguous(w_in);
  if (outer == 0) return;
  const int device = w.device().index;
  DeviceGuard guard(device);
  cudaStream_t stream = stream_of(device);
  dispatch_float(w.dtype(), "cuda unit_rows backward", [&]<class T>() {
    unit_rows_backward_kernel<<<row_warp_blocks(outer), dim3(32, kRowWarps), 0, stream>>>(
        static_cast<const T*>(g.raw_data()), static_cast<const T*>(w.raw_data()), outer, inner,
        static_cast<const T*>(norms.raw_data()), static_cast<T*>(grad_w.raw_data()));
    BCOS_CUDA_CHECK_LAUNCH();
  });
}

void row_norm_forward(const Tensor& x_in, int64_t outer, int64_t inner, double eps, const Tensor& out,
                      const Tensor& mean, const Tensor& invstd) {
  const Tensor x = raw_contiguous(x_in);
  if (outer == 0 || inner == 0) return;
  const int device = x.device().index;
  DeviceGuard guard(device);
  cudaStream_t stream = stream_of(device);
  dispatch_float(x.dtype(), "cuda norm", [&]<class T>() {
    row_norm_kernel<<<row_warp_blocks(outer), dim3(32, kRowWarps), 0, stream>>>(
        static_cast<const T*>(x.raw_data()), outer, inner, eps, static_cast<T*>(out.raw_data()),
        static_cast<T*>(mean.raw_data()), static_cast<T*>(invstd.raw_data()));
    BCOS_CUDA_CHECK_LAUNCH();
  });
}

void row_norm_backward(const Tensor& grad_in, const Tensor& x_in, int64_t outer, int64_t inner, const Tensor& mean,
                       const Tensor& invstd, const Tensor& grad_x) {
  const Tensor g = raw_contiguous(grad_in), x = raw_contiguous(x_in);
  if (outer == 0 || inner == 0) return;
  const int device = x.device().index;
  DeviceGuard guard(device);
  cudaStream_t stream = stream_of(device);
  dispatch_float(x.dtype(), "cuda norm_backward", [&]<class T>() {
    row_norm_backward_kernel<<<row_warp_blocks(outer), dim3(32, kRowWarps), 0, stream>>>(
        static_cast<const T*>(g.raw_data()), static_cast<const T*>(x.raw_data()), outer, inner,
        static_cast<const T*>(mean.raw_data()), static_cast<const T*>(invstd.raw_data()),
        static_cast<T*>(grad_x.raw_data()));
    BCOS_CUDA_CHECK_LAUNCH();
  });
}

}  // namespace bcos::cuda
