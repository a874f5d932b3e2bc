// Batch norm on the GPU, as tensor/cpu/norm.cpp: per channel over x viewed [N, C, S], statistics
// and gradient sums accumulated in double -- one block per channel, reduced in shared memory --
// and the elementwise parts one thread per element.
//   forward:  y = fma(x, scale, shift), scale = invstd · w, shift = b − mean · scale; with relu
//             max(y, 0), and the backward's g taken as 0 where the recomputed y ≤ 0
//   backward: grad_w = Σ g x̂, grad_b = Σ g, grad_x = w·invstd·(g − mean(g)) − w·invstd²·mean(g x̂)·(x − mean)
//             (training; in evaluation the two means are 0)
//   uncentred (B-cos) backward, y = γ x r (+ β), r = 1 / sqrt(var + eps), A = Σ g x, B = Σ g:
//             grad_w = r A, grad_b = B, grad_x = γ r g − (through the variance: γ r³ (A / M)(x − mean))
//   synchronised: given replica_sums (every replica's grad_w and grad_b summed, and their count),
//             grad_x takes its means from those and the sums kernel is skipped
#include "tensor/kernel_views.h"
#include "tensor/copy.h"
#include "tensor/cuda/internal.h"
#include "tensor/elementwise_math.h"

namespace bcos::cuda {

namespace {

constexpr int kReduceThreads = 256;

// The sum of v over the block's threads, in every thread (blockDim.x == kReduceThreads).
__device__ double block_sum(double v, double* scratch) {
  scratch[threadIdx.x] = v;
  __syncthreads();
  for (int half = kReduceThreads / 2; half > 0; half /= 2) {
    if (int(threadIdx.x) < half) scratch[threadIdx.x] += scratch[threadIdx.x + half];
    __syncthreads();
  }
  const double total = scratch[0];
  __syncthreads();  // scratch is reused by the caller's next reduction
  return total;
}

// Block c: mean and biased variance of channel c (two passes, as the CPU).
template <class T>
__global__ void stats_kernel(const T* x, Channels d, T* mean, T* var) {
  __shared__ double scratch[kReduceThreads];
  const int64_t c = blockIdx.x, count = d.n * d.s;
  double sum = 0;
  for (int64_t k = threadIdx.x; k < count; k += blockDim.x) sum += double(x[((k / d.s) * d.c + c) * d.s + k % d.s]);
  const double mu = block_sum(sum, scratch) / double(count);
  double sq = 0;
  for (int64_t k = threadIdx.x; k < count; k += blockDim.x) {
    const double v = double(x[((k / d.s) * d.c + c) * d.s + k % d.s]) - mu;
    sq += v * v;
  }
  const double total = block_sum(sq, scratch);
  if (threadIdx.x == 0) {
    mean[c] = T(mu);
    var[c] = T(total / double(count));
  }
}

// y = fma(x, scale, shift) of channel c, as the CPU computes it (the ReLU mask depends on it).
template <class T>
__device__ T normalized(T x, const T* w, const T* b, T mean, const T* invstd, int64_t c) {
  return math::BatchNormAffine<T>(mean, invstd[c], w ? w[c] : T(1), b ? b[c] : T(0))(x);
}

template <class T>
__global__ void forward_kernel(const T* x, const T* w, const T* b, const T* mean, const T* invstd, Channels d,
                               bool relu, T* out) {
  const int64_t n = d.n * d.c * d.s, step = int64_t(gridDim.x) * blockDim.x;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += step) {
    const int64_t c = (i / d.s) % d.c;
    const T y = normalized(x[i], w, b, mean[c], invstd, c);
    out[i] = relu && y < T(0) ? T(0) : y;  // as relu: NaN stays NaN
  }
}

// Block c: Σ g and Σ g·(x − mean) of channel c, into sums[2c], sums[2c + 1]; grad_w, grad_b.
template <class T>
__global__ void grad_sums_kernel(const T* g, const T* x, const T* w, const T* b, const T* mean, const T* invstd,
                                 Channels d, bool relu, double* sums, T* grad_w, T* grad_b) {
  __shared__ double scratch[kReduceThreads];
  const int64_t c = blockIdx.x, count = d.n * d.s;
  const double mu = double(mean[c]);
  double sg = 0, sgx = 0;
  for (int64_t k = threadIdx.x; k < count; k += blockDim.x) {
    const int64_t i = ((k / d.s) * d.c + c) * d.s + k % d.s;
    const double gi = relu && !(normalized(x[i], w, b, mean[c], invstd, c) > T(0)) ? 0.0 : double(g[i]);
    sg += gi;
    sgx += gi * (double(x[i]) - mu);
  }
  const double sum_g = block_sum(sg, scratch), sum_gxc = block_sum(sgx, scratch);
  if (threadIdx.x == 0) {
    sums[2 * c] = sum_g;
    sums[2 * c + 1] = sum_gxc;
    if (grad_w) grad_w[c] = T(sum_gxc * double(invstd[c]));
    if (grad_b) grad_b[c] = T(sum_g);
  }
}

template <class T>
__global__ void grad_x_kernel(const T* g, const T* x, const T* w, const T* bias, const T* mean, const T* invstd,
                              const double* sums, const T* replica, Channels d, bool training, bool relu, T* gx) {
  const int64_t n = d.n * d.c * d.s, step = int64_t(gridDim.x) * blockDim.x;
  const double count = replica ? double(replica[2 * d.c]) : double(d.n * d.s);
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += step) {
    const int64_t c = (i / d.s) % d.c;
    const double is = double(invstd[c]), wc = w ? double(w[c]) : 1.0;
    const double mean_g = training ? (replica ? double(replica[d.c + c]) : sums[2 * c]) / count : 0.0;
    const double mean_gx = training ? (replica ? double(replica[c]) : sums[2 * c + 1] * is) / count : 0.0;
    const T a = T(wc * is), b = T(wc * is * is * mean_gx), mg = T(mean_g), m = mean[c];
    const T gi = relu && !(normalized(x[i], w, bias, mean[c], invstd, c) > T(0)) ? T(0) : g[i];
    gx[i] = a * (gi - mg) - b * (x[i] - m);
  }
}

// Block c: A = Σ g·x and B = Σ g of channel c into sums[2c], sums[2c + 1]; grad_w, grad_b.
template <class T>
__global__ void uncentered_sums_kernel(const T* g, const T* x, const T* w, const T* bias, const T* invstd, Channels d, bool relu, double* sums, T* grad_w, T* grad_b) {
  __shared__ double scratch[kReduceThreads];
  const int64_t c = blockIdx.x, count = d.n * d.s;
  double sgx = 0, sg = 0;
  for (int64_t k = threadIdx.x; k < count; k += blockDim.x) {
    const int64_t i = ((k / d.s) * d.c + c) * d.s + k % d.s;
    const double gi = relu && !(normalized(x[i], w, bias, T(0), invstd, c) > T(0)) ? 0.0 : double(g[i]);
    sgx += gi * double(x[i]);
    sg += gi;
  }
  const double a = block_sum(sgx, scratch), b = block_sum(sg, scratch);
  if (threadIdx.x == 0) {
    sums[2 * c] = a;
    sums[2 * c + 1] = b;
    if (grad_w) grad_w[c] = T(double(invstd[c]) * a);
    if (grad_b) grad_b[c] = T(b);
  }
}

template <class T>
__global__ void uncentered_grad_x_kernel(const T* g, const T* x, const T* w, const T* bias, const T* mean, const T* invstd, const double* sums,
                                         const T* replica, Channels d, bool relu, T* gx) {
  const int64_t n = d.n * d.c * d.s, step = int64_t(gridDim.x) * blockDim.x;
  const double count = replica ? double(replica[2 * d.c]) : double(d.n * d.s);
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += step) {
    const int64_t c = (i / d.s) % d.c;
    const double r = double(invstd[c]), gamma = w ? double(w[c]) : 1.0;
    const double a = replica ? double(replica[c]) / r : sums[2 * c];  // the replicas' Σ grad_w is r A summed
    const T k1 = T(gamma * r), k2 = mean ? T(gamma * r * r * r * a / count) : T(0);
    const T mu = mean ? mean[c] : T(0);
    const T gi = relu && !(normalized(x[i], w, bias, T(0), invstd, c) > T(0)) ? T(0) : g[i];
    gx[i] = k1 * gi - k2 * (x[i] - mu);
  }
}

template <class T>
const T* maybe(const Tensor& t) {
  return t.defined() ? static_cast<const T*>(t.raw_data()) : nullptr;
}

}  // namespace

void batch_norm_stats(const Tensor& x_in, const Tensor& mean, const Tensor& var_biased) {
  const Tensor x = raw_contiguous(x_in);
  const Channels d = channels_of(x);
  if (d.c == 0) return;
  const int device = x.device().index;
  DeviceGuard guard(device);
  cudaStream_t stream = stream_of(device);
  dispatch_float(x.dtype(), "cuda batch_norm", [&]<class T>() {
    stats_kernel<<<unsigned(d.c), kReduceThreads, 0, stream>>>(static_cast<const T*>(x.raw_data()), d,
                                                              static_cast<T*>(mean.raw_data()),
                                                              static_cast<T*>(var_biased.raw_data()));
    BCOS_CUDA_CHECK_LAUNCH();
  });
}

void batch_norm_forward(const Tensor& x_in, const Tensor& weight, const Tensor& bias, const Tensor& mean,
                        const Tensor& invstd, bool relu, const Tensor& out) {
  const Tensor x = raw_contiguous(x_in);
  const Channels d = channels_of(x);
  if (x.numel() == 0) return;
  const int device = x.device().index;
  DeviceGuard guard(device);
  cudaStream_t stream = stream_of(device);
  dispatch_float(x.dtype(), "cuda batch_norm", [&]<class T>() {
    forward_kernel<<<blocks_for(x.numel()), kThreads, 0, stream>>>(
        static_cast<const T*>(x.raw_data()), maybe<T>(weight), maybe<T>(bias), static_cast<const T*>(mean.raw_data()),
        static_cast<const T*>(invstd.raw_data()), d, relu, static_cast<T*>(out.raw_data()));
    BCOS_CUDA_CHECK_LAUNCH();
  });
}

void batch_norm_backward(const Tensor& grad_out_in, const Tensor& x_in, const Tensor& weight, const Tensor& bias,
                         const Tensor& mean, const Tensor& invstd, bool training, bool relu, const Tensor& grad_x,
                         const Tensor& grad_w, const Tensor& grad_b, const Tensor& replica_sums) {
  const Tensor g = raw_contiguous(grad_out_in), x = raw_contiguous(x_in);
  const Channels d = channels_of(x);
  if (d.c == 0) return;
  const int device = x.device().index;
  DeviceGuard guard(device);
  cudaStream_t stream = stream_of(device);
  std::shared_ptr<void> sums = allocate(size_t(2 * d.c) * sizeof(double), device);
  dispatch_float(x.dtype(), "cuda batch_norm_backward", [&]<class T>() {
    if (grad_w.defined() || grad_b.defined() || !replica_sums.defined()) {
      grad_sums_kernel<<<unsigned(d.c), kReduceThreads, 0, stream>>>(
          static_cast<const T*>(g.raw_data()), static_cast<const T*>(x.raw_data()), maybe<T>(weight), maybe<T>(bias),
          static_cast<const T*>(mean.raw_data()), static_cast<const T*>(invstd.raw_data()), d, relu,
          static_cast<double*>(sums.get()), grad_w.defined() ? static_cast<T*>(grad_w.raw_data()) : nullptr,
          grad_b.defined() ? static_cast<T*>(grad_b.raw_data()) : nullptr);
      BCOS_CUDA_CHECK_LAUNCH();
    }
    if (!grad_x.defined() || x.numel() == 0) return;
    grad_x_kernel<<<blocks_for(x.numel()), kThreads, 0, stream>>>(
        static_cast<const T*>(g.raw_data()), static_cast<const T*>(x.raw_data()), maybe<T>(weight), maybe<T>(bias),
        static_cast<const T*>(mean.raw_data()), static_cast<const T*>(invstd.raw_data()),
        static_cast<const double*>(sums.get()), maybe<T>(replica_sums), d, training, relu,
        static_cast<T*>(grad_x.raw_data()));
    BCOS_CUDA_CHECK_LAUNCH();
  });
}

void batch_norm_uncentered_backward(const Tensor& grad_in, const Tensor& x_in, const Tensor& weight,
                                    const Tensor& bias, const Tensor& mean, const Tensor& invstd,
                                    bool through_variance, bool relu, const Tensor& grad_x,
                                    const Tensor& grad_w, const Tensor& grad_b, const Tensor& replica_sums) {
  const Tensor g = raw_contiguous(grad_in), x = raw_contiguous(x_in);
  const Channels d = channels_of(x);
  if (d.c == 0) return;
  const int device = x.device().index;
  DeviceGuard guard(device);
  cudaStream_t stream = stream_of(device);
  std::shared_ptr<void> sums = allocate(size_t(2 * d.c) * sizeof(double), device);
  dispatch_float(x.dtype(), "cuda batch_norm_uncentered_backward", [&]<class T>() {
    if (grad_w.defined() || grad_b.defined() || !replica_sums.defined()) {
      uncentered_sums_kernel<<<unsigned(d.c), kReduceThreads, 0, stream>>>(
          static_cast<const T*>(g.raw_data()), static_cast<const T*>(x.raw_data()), maybe<T>(weight), maybe<T>(bias),
          static_cast<const T*>(invstd.raw_data()), d, relu, static_cast<double*>(sums.get()),
          grad_w.defined() ? static_cast<T*>(grad_w.raw_data()) : nullptr,
          grad_b.defined() ? static_cast<T*>(grad_b.raw_data()) : nullptr);
      BCOS_CUDA_CHECK_LAUNCH();
    }
    if (!grad_x.defined() || x.numel() == 0) return;
    uncentered_grad_x_kernel<<<blocks_for(x.numel()), kThreads, 0, stream>>>(
        static_cast<const T*>(g.raw_data()), static_cast<const T*>(x.raw_data()), maybe<T>(weight), maybe<T>(bias),
        through_variance ? static_cast<const T*>(mean.raw_data()) : nullptr, static_cast<const T*>(invstd.raw_data()),
        static_cast<const double*>(sums.get()), maybe<T>(replica_sums), d, relu, static_cast<T*>(grad_x.raw_data()));
    BCOS_CUDA_CHECK_LAUNCH();
  });
}

}  // namespace bcos::cuda
