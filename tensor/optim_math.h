// One element of an optimizer step, and one unit's gradient-clipping factor, written once for
// both backends (tensor/cpu/optim.cpp loops over them, tensor/cuda/optim.cu runs them a thread per
// element / a block per unit). The operations and their order are PyTorch's single-tensor SGD and
// Adam/AdamW (torch/optim/sgd.py, adam.py), each rounded in the parameter's precision as PyTorch's
// sequence of in-place ops rounds them.
#pragma once

#include "tensor/elementwise_math.h"
#include "tensor/op_kinds.h"

namespace bcos::math {

// param, grad, momentum: one element each. momentum is touched only when p.momentum != 0.
template <class T>
BCOS_HD void sgd_update(T& param, T grad, T& momentum, const SgdStepParams& p) {
  T g = grad;
  if (p.weight_decay != 0) g = g + T(p.weight_decay) * param;
  if (p.momentum != 0) {
    momentum = p.first_step ? g : momentum * T(p.momentum) + T(1 - p.dampening) * g;
    g = p.nesterov ? g + T(p.momentum) * momentum : momentum;
  }
  param = param - T(p.lr) * g;
}

// max_sq is touched only with AMSGrad.
template <class T>
BCOS_HD void adam_update(T& param, T grad, T& exp_avg, T& exp_avg_sq, T& max_sq, const AdamStepParams& p) {
  T g = grad;
  if (p.decoupled) {
    param = param * T(1 - p.lr * p.weight_decay);
  } else if (p.weight_decay != 0) {
    g = g + T(p.weight_decay) * param;
  }
  exp_avg = exp_avg * T(p.beta1) + T(1 - p.beta1) * g;
  exp_avg_sq = exp_avg_sq * T(p.beta2) + T(1 - p.beta2) * (g * g);
  T second = exp_avg_sq;
  if (p.amsgrad) {
    max_sq = max_sq > exp_avg_sq ? max_sq : exp_avg_sq;
    second = max_sq;
  }
  const T denom = Math<T>::sqrt(second) / T(p.bias2_sqrt) + T(p.eps);
  param = param - T(p.step_size) * (exp_avg / denom);
}

// Adaptive gradient clipping (NFNets' AGC), one unit: the factor its gradient is multiplied by,
// from the sums of squares of the unit's parameter and gradient entries (summed in double), each
// step rounded as nn::adaptive_clip_grad_'s composed ops round it: limit = max(||p||, eps) · clip
// and norm = ||g|| in T; limit / max(norm, 1e-6) where norm > limit, else 1 (so a NaN norm
// leaves the gradient as it is).
template <class T>
BCOS_HD T adaptive_clip_factor(double param_sumsq, double grad_sumsq, double clip, double eps) {
  const T limit = clamp_value<true, false>(T(Math<double>::sqrt(param_sumsq)), T(eps), T(0)) * T(clip);
  const T norm = T(Math<double>::sqrt(grad_sumsq));
  return norm > limit ? limit / clamp_value<true, false>(norm, T(1e-6), T(0)) : T(1);
}

}  // namespace bcos::math
