// Optimizer steps on the CPU: one pass over the elements with the update of tensor/optim_math.h,
// in parallel chunks. The tensors are contiguous (autograd/optim.cpp sees to it).
#include "tensor/cpu/kernels.h"
#include "tensor/optim_math.h"
#include "tensor/parallel.h"

namespace bcos::cpu {

void sgd_step(const Tensor& param, const Tensor& grad, const Tensor& momentum, const SgdStepParams& p) {
  dispatch_float(param.dtype(), "sgd_step", [&]<class T>() {
    T* w = param.data<T>();
    const T* g = grad.data<T>();
    T* m = p.momentum != 0 ? momentum.data<T>() : nullptr;
    parallel_for(param.numel(), 8, [&](int64_t b, int64_t e) {
      T unused = 0;
      for (int64_t i = b; i < e; ++i) math::sgd_update(w[i], g[i], m ? m[i] : unused, p);
    });
  });
}

void adam_step(const Tensor& param, const Tensor& grad, const Tensor& exp_avg, const Tensor& exp_avg_sq,
               const Tensor& max_exp_avg_sq, const AdamStepParams& p) {
  dispatch_float(param.dtype(), "adam_step", [&]<class T>() {
    T* w = param.data<T>();
    const T* g = grad.data<T>();
    T* m = exp_avg.data<T>();
    T* v = exp_avg_sq.data<T>();
    T* vmax = p.amsgrad ? max_exp_avg_sq.data<T>() : nullptr;
    parallel_for(param.numel(), 16, [&](int64_t b, int64_t e) {
      T unused = 0;
      for (int64_t i = b; i < e; ++i) math::adam_update(w[i], g[i], m[i], v[i], vmax ? vmax[i] : unused, p);
    });
  });
}

}  // namespace bcos::cpu
