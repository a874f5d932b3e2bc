// Optimizer steps on the GPU: one thread per element running the update of tensor/optim_math.h,
// so a step reads and writes each parameter and its state once (PyTorch's single-tensor path
// launches one kernel per operation). The tensors are contiguous (autograd/optim.cpp sees to it).
#include "tensor/cuda/internal.h"
#include "tensor/optim_math.h"

namespace bcos::cuda {

namespace {

template <class T>
__global__ void sgd_kernel(T* w, const T* g, T* m, int64_t n, SgdStepParams p) {
  const int64_t step = int64_t(gridDim.x) * blockDim.x;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += step) {
    T unused = 0;
    math::sgd_update(w[i], g[i], m ? m[i] : unused, p);
  }
}

template <class T>
__global__ void adam_kernel(T* w, const T* g, T* m, T* v, T* vmax, int64_t n, AdamStepParams p) {
  const int64_t step = int64_t(gridDim.x) * blockDim.x;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += step) {
    T unused = 0;
    math::adam_update(w[i], g[i], m[i], v[i], vmax ? vmax[i] : unused, p);
  }
}

}  // namespace

void sgd_step(const Tensor& param, const Tensor& grad, const Tensor& momentum, const SgdStepParams& p) {
  const int64_t n = param.numel();
  if (n == 0) return;
  const int device = param.device().index;
  DeviceGuard guard(device);
  dispatch_float(param.dtype(), "sgd_step", [&]<class T>() {
    sgd_kernel<T><<<blocks_for(n), kThreads, 0, stream_of(device)>>>(
        param.data<T>(), grad.data<T>(), p.momentum != 0 ? momentum.data<T>() : nullptr, n, p);
  });
  BCOS_CUDA_CHECK_LAUNCH();
}

void adam_step(const Tensor& param, const Tensor& grad, const Tensor& exp_avg, const Tensor& exp_avg_sq,
               const Tensor& max_exp_avg_sq, const AdamStepParams& p) {
  const int64_t n = param.numel();
  if (n == 0) return;
  const int device = param.device().index;
  DeviceGuard guard(device);
  dispatch_float(param.dtype(), "adam_step", [&]<class T>() {
    adam_kernel<T><<<blocks_for(n), kThreads, 0, stream_of(device)>>>(
        param.data<T>(), grad.data<T>(), exp_avg.data<T>(), exp_avg_sq.data<T>(),
        p.amsgrad ? max_exp_avg_sq.data<T>() : nullptr, n, p);
  });
  BCOS_CUDA_CHECK_LAUNCH();
}

}  // namespace bcos::cuda
