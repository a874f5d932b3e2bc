// Batch norm's per-channel finish, shared by tensor/cpu/norm.cpp and tensor/cuda/batch_norm.cu
// (BCOS_HD: __host__ __device__ under nvcc) so that both backends compute the same bits: the
// inverse standard deviation, and the running statistics' step (1 − m) r + m x, written as
// fma(1 − m, r, m x) so that no compiler contracts it differently (the composed mul_ / add_ it
// replaces rounded (1 − m) r too: the last bit may differ from theirs).
#pragma once

#include <cstdint>

#include "tensor/elementwise_math.h"

namespace bcos::batch_norm_math {

// The factors as T, each rounded once from double (as the composed ops rounded their scalars).
template <class T>
struct Finish {
  T eps, keep, momentum, momentum_unbias;  // eps, 1 − m, m, m · unbias
};

template <class T>
Finish<T> finish_factors(double eps, double momentum, double unbias) {
  return {T(eps), T(1 - momentum), T(momentum), T(momentum * unbias)};
}

// 1 / sqrt(var + eps), the one formula every path uses (the finish, an evaluation's scale and its
// forward): evaluation computes it where the statistics' finish would have, with the same bits.
template <class T>
BCOS_HD T invstd_of(T var, T eps) {
  return T(1) / math::Math<T>::sqrt(var + eps);
}

// Channel c: invstd = 1 / sqrt(var + eps); running_mean, running_var stepped (each may be null).
template <class T>
BCOS_HD void finish_channel(int64_t c, const T* mean, const T* var, const Finish<T>& f, T* invstd, T* running_mean,
                            T* running_var) {
  const T v = var[c];
  if (invstd) invstd[c] = invstd_of(v, f.eps);
  if (running_mean) running_mean[c] = math::Math<T>::fma(f.keep, running_mean[c], f.momentum * mean[c]);
  if (running_var) running_var[c] = math::Math<T>::fma(f.keep, running_var[c], f.momentum_unbias * v);
}

// An evaluation-mode batch norm's per-channel scale: invstd · γ (γ null: 1), invstd as above -- the
// product batch_norm_forward's affine map forms, so a layer with the norm folded into its
// epilogue gives the unfolded norm's bits.
template <class T>
BCOS_HD T eval_scale(int64_t c, const T* var, const T* weight, T eps) {
  const T invstd = invstd_of(var[c], eps);
  return weight ? invstd * weight[c] : invstd;
}

}  // namespace bcos::batch_norm_math
