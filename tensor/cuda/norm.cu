// Row normalisation on the GPU (layer norm and group norm reduce to it), as
// tensor/cpu/norm.cpp: x viewed [rows, inner], mean and 1/sqrt(var + eps) per row accumulated
// in double, one thread per row (exact to the CPU's order; block-per-row reductions for wide
// rows are the speed step after this). Batch norm has its own file, cuda/batch_norm.cu.
//   backward: grad_x = invstd · (g − mean(g) − x̂ · mean(g · x̂))
#include <cmath>

#include "tensor/copy.h"
#include "tensor/cuda/internal.h"

namespace bcos::cuda {

namespace {

template <class T>
__global__ void row_norm_kernel(const T* x, int64_t rows, int64_t inner, double eps, T* out, T* mean, T* invstd) {
  const int64_t step = int64_t(gridDim.x) * blockDim.x;
  for (int64_t r = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; r < rows; r += step) {
    const T* p = x + r * inner;
    double sum = 0, sq = 0;
    for (int64_t j = 0; j < inner; ++j) sum += double(p[j]);
    const double mu = sum / double(inner);
    for (int64_t j = 0; j < inner; ++j) {
      const double v = double(p[j]) - mu;
      sq += v * v;
    }
    const double is = 1.0 / ::sqrt(sq / double(inner) + eps);
    T* o = out + r * inner;
    for (int64_t j = 0; j < inner; ++j) o[j] = T((double(p[j]) - mu) * is);
    mean[r] = T(mu);
    invstd[r] = T(is);
  }
}

template <class T>
__global__ void row_norm_backward_kernel(const T* g, const T* x, int64_t rows, int64_t inner, const T* mean,
                                         const T* invstd, T* gx) {
  const int64_t step = int64_t(gridDim.x) * blockDim.x;
  for (int64_t r = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; r < rows; r += step) {
    const T *gp = g + r * inner, *xp = x + r * inner;
    const double mu = double(mean[r]), is = double(invstd[r]);
    double sum_g = 0, sum_gx = 0;
    for (int64_t j = 0; j < inner; ++j) {
      sum_g += double(gp[j]);
      sum_gx += double(gp[j]) * (double(xp[j]) - mu) * is;
    }
    const double mean_g = sum_g / double(inner), mean_gx = sum_gx / double(inner);
    T* o = gx + r * inner;
    for (int64_t j = 0; j < inner; ++j) {
      const double xhat = (double(xp[j]) - mu) * is;
      o[j] = T(is * (double(gp[j]) - mean_g - xhat * mean_gx));
    }
  }
}

}  // namespace

void row_norm_forward(const Tensor& x_in, int64_t outer, int64_t inner, double eps, const Tensor& out,
                      const Tensor& mean, const Tensor& invstd) {
  const Tensor x = raw_contiguous(x_in);
  if (outer == 0 || inner == 0) return;
  const int device = x.device().index;
  DeviceGuard guard(device);
  cudaStream_t stream = stream_of(device);
  dispatch_float(x.dtype(), "cuda norm", [&]<class T>() {
    row_norm_kernel<<<blocks_for(outer), kThreads, 0, stream>>>(
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
    row_norm_backward_kernel<<<blocks_for(outer), kThreads, 0, stream>>>(
        static_cast<const T*>(g.raw_data()), static_cast<const T*>(x.raw_data()), outer, inner,
        static_cast<const T*>(mean.raw_data()), static_cast<const T*>(invstd.raw_data()),
        static_cast<T*>(grad_x.raw_data()));
    BCOS_CUDA_CHECK_LAUNCH();
  });
}

}  // namespace bcos::cuda
