// Optimizer steps on the CPU: one pass over each parameter's elements with the update of
// tensor/optim_math.h, in parallel chunks; adaptive gradient clipping a unit per task. The
// tensors are contiguous (autograd/optim.cpp sees to it). Parameters are stepped one after
// another: a parallel region per parameter costs a few microseconds, against the milliseconds a
// ResNet-50's step spends streaming its 25M weights and their state through memory.
#include "tensor/cpu/kernels.h"
#include "tensor/optim_math.h"
#include "tensor/parallel.h"

namespace bcos::cpu {

namespace {

// list[i]'s data, or nullptr when the list is empty (state not in use).
template <class T>
T* data_or_null(const std::vector<Tensor>& list, size_t i, bool used) {
  return used ? list[i].data<T>() : nullptr;
}

}  // namespace

void sgd_step(const std::vector<Tensor>& params, const std::vector<Tensor>& grads, const std::vector<Tensor>& momenta,
              const SgdStepParams& p) {
  dispatch_float(params.front().dtype(), "sgd_step", [&]<class T>() {
    for (size_t t = 0; t < params.size(); ++t) {
      T* w = params[t].data<T>();
      const T* g = grads[t].data<T>();
      T* m = data_or_null<T>(momenta, t, p.momentum != 0);
      parallel_for(params[t].numel(), 8, [&](int64_t b, int64_t e) {
        T unused = 0;
        for (int64_t i = b; i < e; ++i) math::sgd_update(w[i], g[i], m ? m[i] : unused, p);
      });
    }
  });
}

void adam_step(const std::vector<Tensor>& params, const std::vector<Tensor>& grads,
               const std::vector<Tensor>& exp_avgs, const std::vector<Tensor>& exp_avg_sqs,
               const std::vector<Tensor>& max_exp_avg_sqs, const AdamStepParams& p) {
  dispatch_float(params.front().dtype(), "adam_step", [&]<class T>() {
    for (size_t t = 0; t < params.size(); ++t) {
      T* w = params[t].data<T>();
      const T* g = grads[t].data<T>();
      T* m = exp_avgs[t].data<T>();
      T* v = exp_avg_sqs[t].data<T>();
      T* vmax = data_or_null<T>(max_exp_avg_sqs, t, p.amsgrad);
      parallel_for(params[t].numel(), 16, [&](int64_t b, int64_t e) {
        T unused = 0;
        for (int64_t i = b; i < e; ++i) math::adam_update(w[i], g[i], m[i], v[i], vmax ? vmax[i] : unused, p);
      });
    }
  });
}

void adaptive_clip(const std::vector<Tensor>& params, const std::vector<Tensor>& grads,
                   const std::vector<int64_t>& units, double clip, double eps) {
  dispatch_float(params.front().dtype(), "adaptive_clip", [&]<class T>() {
    for (size_t t = 0; t < params.size(); ++t) {
      if (params[t].numel() == 0) continue;
      const int64_t length = params[t].numel() / units[t];
      const T* p = params[t].data<T>();
      T* g = grads[t].data<T>();
      parallel_for(units[t], 4 * length, [&](int64_t b, int64_t e) {
        for (int64_t u = b; u < e; ++u) {
          const T* pu = p + u * length;
          T* gu = g + u * length;
          double param_sumsq = 0, grad_sumsq = 0;
          for (int64_t i = 0; i < length; ++i) {
            param_sumsq += double(pu[i]) * double(pu[i]);
            grad_sumsq += double(gu[i]) * double(gu[i]);
          }
          const T factor = math::adaptive_clip_factor<T>(param_sumsq, grad_sumsq, clip, eps);
          for (int64_t i = 0; i < length; ++i) gu[i] = gu[i] * factor;
        }
      });
    }
  });
}

}  // namespace bcos::cpu
