// B-cos kernels on the CPU: the two passes a B-cos layer adds to its linear map, each fused so no
// full-size temporary (x², |cos|, the scale) is ever materialised.
//   patch_sumsq:  Σ over a group's input channels and the conv's (dilated, zero-padded) taps of
//                 x², one value per output position and group — the squared input norm ‖x‖².
//   batch_norm_uncentered_backward: the backward of y = γ · x / sqrt(var + eps) (+ β), optionally
//                 followed by a ReLU (the gradient masked where y ≤ 0).
//   bcos_scale:   max-out over M consecutive channels, then y = s · v with
//                 s = |v| / n (b = 2) or (|v / n| + 1e-6)^(b − 1), n = sqrt(sumsq + eps_in) + eps_out;
//                 optionally an epilogue y · a + c (+ ReLU) per channel: an evaluation-mode batch
//                 norm folded in, which saves a pass over the activation each way.
// Layouts: x [N, C, H, W] (any strides), sums [N, G, Ho, Wo]; lin [N, O·M, S], sums [N, G, S],
// out / value / argmax [N, O, S], all contiguous.
#include <cmath>
#include <vector>

#include "tensor/copy.h"
#include "tensor/cpu/kernels.h"
#include "tensor/elementwise_math.h"
#include "tensor/parallel.h"
#include "tensor/pool_math.h"

namespace bcos::cpu {

namespace {
// Calls fn(input_index, output_index) for every (tap, output) pair of a window sum over one
// H×W plane: the adjoint pairs of the forward and backward window passes.
template <class F>
void for_each_tap(const Pool2dParams& p, int64_t h, int64_t w, int64_t ho, int64_t wo, F&& fn) {
  for (int64_t oh = 0; oh < ho; ++oh) {
    const int64_t h0 = oh * p.stride[0] - p.padding[0];
    const int64_t ki_lo = pool::first_tap(h0, p.dilation[0]), ki_hi = pool::end_tap(h0, p.dilation[0], p.kernel[0], h);
    for (int64_t ow = 0; ow < wo; ++ow) {
      const int64_t w0 = ow * p.stride[1] - p.padding[1];
      const int64_t kj_lo = pool::first_tap(w0, p.dilation[1]), kj_hi = pool::end_tap(w0, p.dilation[1], p.kernel[1], w);
      for (int64_t ki = ki_lo; ki < ki_hi; ++ki) {
        const int64_t row = (h0 + ki * p.dilation[0]) * w;
        for (int64_t kj = kj_lo; kj < kj_hi; ++kj) fn(row + w0 + kj * p.dilation[1], oh * wo + ow);
      }
    }
  }
}
}  // namespace

void bcos_patch_sumsq(const Tensor& x_in, int64_t groups, const Pool2dParams& p, const Tensor& out) {
  Tensor x = raw_contiguous(x_in);
  const int64_t n = x.size(0), cg = x.size(1) / groups, h = x.size(2), w = x.size(3);
  const int64_t ho = out.size(2), wo = out.size(3), plane = h * w;
  const bool pointwise = pool::is_pointwise(p);
  dispatch_float(x.dtype(), "bcos_patch_sumsq", [&]<class T>() {
    const T* px = x.data<T>();
    T* po = out.data<T>();
    parallel_for(n * groups, cg * plane, [&](int64_t b, int64_t e) {
      if (pointwise && plane == 1) {  // a linear layer's rows [rows, K, 1, 1]: one sum along each
        for (int64_t ng = b; ng < e; ++ng) {
          const T* xg = px + ng * cg;
          T sum = 0;
#pragma omp simd reduction(+ : sum)
          for (int64_t c = 0; c < cg; ++c) sum += xg[c] * xg[c];
          po[ng] = sum;
        }
        return;
      }
      std::vector<T> acc(pointwise ? 0 : static_cast<size_t>(plane));
      for (int64_t ng = b; ng < e; ++ng) {
        T* sq = pointwise ? po + ng * ho * wo : acc.data();  // pointwise: x² sums are the output
        const T* xg = px + ng * cg * plane;
        for (int64_t i = 0; i < plane; ++i) sq[i] = xg[i] * xg[i];
        for (int64_t c = 1; c < cg; ++c) {
          const T* xc = xg + c * plane;
          for (int64_t i = 0; i < plane; ++i) sq[i] += xc[i] * xc[i];
        }
        if (pointwise) continue;
        T* o = po + ng * ho * wo;
        std::fill(o, o + ho * wo, T(0));
        for_each_tap(p, h, w, ho, wo, [&](int64_t in, int64_t at) { o[at] += sq[in]; });
      }
    });
  });
}

void bcos_patch_sumsq_backward(const Tensor& grad_in, const Tensor& x_in, int64_t groups,
                               const Pool2dParams& p, const Tensor& grad_x, bool accumulate) {
  Tensor x = raw_contiguous(x_in), grad = raw_contiguous(grad_in);
  const int64_t n = x.size(0), cg = x.size(1) / groups, h = x.size(2), w = x.size(3);
  const int64_t ho = grad.size(2), wo = grad.size(3), plane = h * w;
  const bool pointwise = pool::is_pointwise(p);
  dispatch_float(x.dtype(), "bcos_patch_sumsq_backward", [&]<class T>() {
    const T* px = x.data<T>();
    const T* pg = grad.data<T>();
    T* pgx = grad_x.data<T>();
    parallel_for(n * groups, cg * plane, [&](int64_t b, int64_t e) {
      std::vector<T> acc(pointwise ? 0 : static_cast<size_t>(plane));
      for (int64_t ng = b; ng < e; ++ng) {
        // d(Σ x²)/dx = 2x times the sum of the gradients of every window the pixel is in.
        const T* g = pg + ng * ho * wo;
        if (!pointwise) {
          std::fill(acc.begin(), acc.end(), T(0));
          for_each_tap(p, h, w, ho, wo, [&](int64_t in, int64_t at) { acc[size_t(in)] += g[at]; });
          g = acc.data();
        }
        const T* xg = px + ng * cg * plane;
        T* gx = pgx + ng * cg * plane;
        if (plane == 1) {  // a row: one gradient for all its values
          const T gr = T(2) * g[0];
          if (accumulate) {
#pragma omp simd
            for (int64_t c = 0; c < cg; ++c) gx[c] += gr * xg[c];
          } else {
#pragma omp simd
            for (int64_t c = 0; c < cg; ++c) gx[c] = gr * xg[c];
          }
          continue;
        }
        for (int64_t c = 0; c < cg; ++c) {
          const T* xc = xg + c * plane;
          T* gc = gx + c * plane;
          if (accumulate)
            for (int64_t i = 0; i < plane; ++i) gc[i] += T(2) * xc[i] * g[i];
          else
            for (int64_t i = 0; i < plane; ++i) gc[i] = T(2) * xc[i] * g[i];
        }
      }
    });
  });
}

namespace {
// One (sample, group) slice of the scale pass. The norm of each position is shared by all the
// group's output channels, so it is computed once per slice (inv[j] = 1 / n_j, root[j] =
// sqrt(sumsq_j + eps_in)), and the per-channel loops below are branch-free so they vectorise.
template <class T>
void norms_of(const T* q, int64_t s, const BcosScaleParams& p, T* root, T* inv) {
  for (int64_t j = 0; j < s; ++j) {
    root[j] = std::sqrt(q[j] + T(p.eps_in));
    inv[j] = T(1) / (root[j] + T(p.eps_out));
  }
}

// Max-out of M consecutive channel planes l[k * s + j]: value and winner.
template <class T>
void max_out(const T* l, int64_t m, int64_t s, T* value, uint8_t* winner) {
  std::copy(l, l + s, value);
  std::fill(winner, winner + s, uint8_t(0));
  for (int64_t k = 1; k < m; ++k)
    for (int64_t j = 0; j < s; ++j)
      if (l[k * s + j] > value[j]) value[j] = l[k * s + j], winner[j] = uint8_t(k);
}

// y = s · v with s = |v| / n (b = 2) or (|v| / n + 1e-6)^(b − 1).
template <class T>
void scale_forward(const T* v, const T* inv, int64_t s, double b, T* y) {
  if (b == 2) {
    for (int64_t j = 0; j < s; ++j) y[j] = std::abs(v[j]) * v[j] * inv[j];
    return;
  }
  const T e = T(b - 1);
  for (int64_t j = 0; j < s; ++j) y[j] = std::pow(std::abs(v[j]) * inv[j] + T(1e-6), e) * v[j];
}

// The epilogue of one output channel's plane, in place: y = fma(y, a, c), then max(y, 0) under
// relu (NaN kept, as relu) — the fma batch_norm_forward computes with scale a and shift c, so a
// fused evaluation-mode batch norm gives the unfused bits.
template <class T>
void epilogue(T* y, int64_t s, T a, T c, bool relu) {
  if (relu) {
#pragma omp simd
    for (int64_t j = 0; j < s; ++j) {
      const T z = math::Math<T>::fma(y[j], a, c);
      y[j] = z < T(0) ? T(0) : z;
    }
    return;
  }
#pragma omp simd
  for (int64_t j = 0; j < s; ++j) y[j] = math::Math<T>::fma(y[j], a, c);
}

// g' = g · a, zeroed under relu where the forward's fma(y, a, c) ≤ 0; y holds the forward's
// pre-epilogue output, recomputed by the forward's own code.
template <class T>
void epilogue_grad(const T* g, const T* y, int64_t s, T a, T c, bool relu, T* out) {
  if (relu) {
#pragma omp simd
    for (int64_t j = 0; j < s; ++j) out[j] = math::Math<T>::fma(y[j], a, c) > T(0) ? g[j] * a : T(0);
    return;
  }
#pragma omp simd
  for (int64_t j = 0; j < s; ++j) out[j] = g[j] * a;
}

// gv = g · ∂y/∂v (or g · s in explanation mode); gq += g · ∂y/∂n · ∂n/∂sumsq unless explaining
// or gq is null (the norm needs no gradient).
//   b = 2:  ∂y/∂v = 2|v| / n,  ∂y/∂n = −|v| v / n²
//   else:   a = |v| / n + 1e-6, t = (b − 1) a^(b−2) |v| / n;  ∂y/∂v = a^(b−1) + t,  ∂y/∂n = −t v / n
// ∂n/∂sumsq = 1 / (2 root).
template <class T>
void scale_backward(const T* g, const T* v, const T* inv, const T* root, int64_t s, double b, bool explain,
                    T* gv, T* gq) {
  if (b == 2) {
    if (explain) {
      for (int64_t j = 0; j < s; ++j) gv[j] = g[j] * std::abs(v[j]) * inv[j];
      return;
    }
    for (int64_t j = 0; j < s; ++j) gv[j] = g[j] * 2 * std::abs(v[j]) * inv[j];
    if (gq)
      for (int64_t j = 0; j < s; ++j) gq[j] -= g[j] * std::abs(v[j]) * v[j] * inv[j] * inv[j] / (2 * root[j]);
    return;
  }
  const T e = T(b - 1);
  for (int64_t j = 0; j < s; ++j) {
    const T u = std::abs(v[j]) * inv[j], a = u + T(1e-6);
    const T sc = std::pow(a, e);
    if (explain) {
      gv[j] = g[j] * sc;
      continue;
    }
    const T t = e * sc / a * u;
    gv[j] = g[j] * (sc + t);
    if (gq) gq[j] -= g[j] * t * v[j] * inv[j] / (2 * root[j]);
  }
}

// The same two passes along one row of channels that share one norm (spatial size 1: a linear
// layer's [rows, O, 1], where the loops above would run one element at a time). inv is null
// when the layer is unscaled (b = 1); a / shift are the epilogue's per-channel scale and shift, or
// null. Each output is computed with the same expressions as above, so both paths give the same
// bits; only the norm gradient's sum over the channels is reassociated (vector lanes).
template <class T>
void scale_row_forward(const T* v, int64_t c, const T* inv, double b, const T* a, const T* shift, bool relu, T* y) {
  if (!inv) std::copy(v, v + c, y);
  else if (b == 2) {
    const T r = *inv;
#pragma omp simd
    for (int64_t j = 0; j < c; ++j) y[j] = std::abs(v[j]) * v[j] * r;
  } else {
    const T r = *inv, e = T(b - 1);
    for (int64_t j = 0; j < c; ++j) y[j] = std::pow(std::abs(v[j]) * r + T(1e-6), e) * v[j];
  }
  if (!a) return;
#pragma omp simd
  for (int64_t j = 0; j < c; ++j) {
    const T z = math::Math<T>::fma(y[j], a[j], shift[j]);
    y[j] = relu && z < T(0) ? T(0) : z;
  }
}

template <class T>
void scale_row_backward(const T* g, const T* v, int64_t c, const T* inv, T root, double b, bool explain,
                        const T* a, const T* shift, bool relu, T* gv, T* gq) {
  if (a) {  // gv holds the epilogue's gradient first: g · a, masked by the ReLU on the forward's y
    if (inv) scale_row_forward<T>(v, c, inv, b, nullptr, nullptr, false, gv);
    else std::copy(v, v + c, gv);
#pragma omp simd
    for (int64_t j = 0; j < c; ++j)
      gv[j] = !relu || math::Math<T>::fma(gv[j], a[j], shift[j]) > T(0) ? g[j] * a[j] : T(0);
    g = gv;
  }
  if (!inv) {
    if (g != gv) std::copy(g, g + c, gv);
    return;
  }
  const T r = *inv;
  T norm_grad = 0;  // Σ g · ∂y/∂n · ∂n/∂sumsq, negated
  if (b == 2) {
    if (explain) {
#pragma omp simd
      for (int64_t j = 0; j < c; ++j) gv[j] = g[j] * std::abs(v[j]) * r;
      return;
    }
    T sum = 0;  // Σ g |v| v; the common factor 1 / (n² · 2 root) applied once
#pragma omp simd reduction(+ : sum)
    for (int64_t j = 0; j < c; ++j) {
      const T gj = g[j];
      sum += gj * std::abs(v[j]) * v[j];
      gv[j] = gj * 2 * std::abs(v[j]) * r;
    }
    norm_grad = sum * r * r / (2 * root);
  } else {
    const T e = T(b - 1);
    for (int64_t j = 0; j < c; ++j) {
      const T gj = g[j], u = std::abs(v[j]) * r, av = u + T(1e-6);
      const T sc = std::pow(av, e);
      if (explain) {
        gv[j] = gj * sc;
        continue;
      }
      const T t = e * sc / av * u;
      gv[j] = gj * (sc + t);
      norm_grad += gj * t * v[j] * r / (2 * root);
    }
  }
  if (gq) *gq = -norm_grad;
}
}  // namespace

void bcos_scale_forward(const Tensor& lin, const Tensor& sumsq, const BcosScaleParams& p,
                        const Tensor& post_scale, const Tensor& post_shift, const Tensor& out,
                        const Tensor& value, const Tensor& argmax) {
  const int64_t n = out.size(0), o = out.size(1), s = out.size(2), m = p.max_out;
  const int64_t groups = sumsq.defined() ? sumsq.size(1) : 1, per_group = o / groups;
  dispatch_float(lin.dtype(), "bcos_scale", [&]<class T>() {
    const T* pl = lin.data<T>();
    const T* pq = sumsq.defined() ? sumsq.data<T>() : nullptr;
    const T* pa_post = post_scale.defined() ? post_scale.data<T>() : nullptr;
    const T* pc_post = post_shift.defined() ? post_shift.data<T>() : nullptr;
    T* py = out.data<T>();
    T* pv = m > 1 ? value.data<T>() : nullptr;  // M = 1: the value is lin itself
    uint8_t* pa = m > 1 ? argmax.data<uint8_t>() : nullptr;
    parallel_for(n * groups, per_group * s * m * 4, [&](int64_t b, int64_t e) {
      if (s == 1 && m == 1) {  // a linear layer's rows: each slice is one norm and its channels
        for (int64_t ng = b; ng < e; ++ng) {
          T root = 0, inv = 0;
          if (pq) norms_of(pq + ng, 1, p, &root, &inv);
          const int64_t first = ng * per_group;
          scale_row_forward(pl + first, per_group, pq ? &inv : nullptr, p.b, pa_post ? pa_post + first % o : nullptr,
                            pc_post ? pc_post + first % o : nullptr, p.relu, py + first);
        }
        return;
      }
      std::vector<T> root(pq ? size_t(s) : 0), inv(pq ? size_t(s) : 0);
      for (int64_t ng = b; ng < e; ++ng) {
        if (pq) norms_of(pq + ng * s, s, p, root.data(), inv.data());
        for (int64_t c = 0; c < per_group; ++c) {
          const int64_t no = ng * per_group + c;  // (sample, channel) = (ng / G, (ng % G) · per_group + c)
          const T* v = pl + no * m * s;
          if (m > 1) {
            max_out(v, m, s, pv + no * s, pa + no * s);
            v = pv + no * s;
          }
          if (pq) scale_forward(v, inv.data(), s, p.b, py + no * s);
          else std::copy(v, v + s, py + no * s);
          if (pa_post) epilogue(py + no * s, s, pa_post[no % o], pc_post[no % o], p.relu);
        }
      }
    });
  });
}

void bcos_scale_backward(const Tensor& grad_in, const Tensor& value, const Tensor& sumsq,
                         const Tensor& argmax, const BcosScaleParams& p, const Tensor& post_scale,
                         const Tensor& post_shift, bool explain, const Tensor& grad_lin,
                         const Tensor& grad_sumsq) {
  Tensor grad = raw_contiguous(grad_in);
  const int64_t n = grad.size(0), o = grad.size(1), s = grad.size(2), m = p.max_out;
  const int64_t groups = sumsq.defined() ? sumsq.size(1) : 1, per_group = o / groups;
  dispatch_float(grad.dtype(), "bcos_scale_backward", [&]<class T>() {
    const T* pg = grad.data<T>();
    const T* pv = value.data<T>();
    const T* pq = sumsq.defined() ? sumsq.data<T>() : nullptr;
    const uint8_t* pa = m > 1 ? argmax.data<uint8_t>() : nullptr;
    T* pgl = grad_lin.data<T>();
    T* pgq = grad_sumsq.defined() ? grad_sumsq.data<T>() : nullptr;
    const T* pa_post = post_scale.defined() ? post_scale.data<T>() : nullptr;
    const T* pc_post = post_shift.defined() ? post_shift.data<T>() : nullptr;
    // One task per (sample, group): the group's channels all add into the same norm gradient.
    parallel_for(n * groups, per_group * s * m * 4, [&](int64_t b, int64_t e) {
      if (s == 1 && m == 1) {  // a linear layer's rows, as in the forward
        for (int64_t ng = b; ng < e; ++ng) {
          T root = 0, inv = 0;
          if (pq) norms_of(pq + ng, 1, p, &root, &inv);
          const int64_t first = ng * per_group;
          T* gq = pgq ? pgq + ng : nullptr;
          scale_row_backward(pg + first, pv + first, per_group, pq ? &inv : nullptr, root, p.b, explain,
                             pa_post ? pa_post + first % o : nullptr, pc_post ? pc_post + first % o : nullptr,
                             p.relu, pgl + first, gq);
        }
        return;
      }
      std::vector<T> root(pq ? size_t(s) : 0), inv(pq ? size_t(s) : 0), gv(m > 1 ? size_t(s) : 0);
      std::vector<T> y(pa_post ? size_t(s) : 0), gpost(pa_post ? size_t(s) : 0);
      for (int64_t ng = b; ng < e; ++ng) {
        T* gq = pgq ? pgq + ng * s : nullptr;
        if (pq) norms_of(pq + ng * s, s, p, root.data(), inv.data());
        if (gq) std::fill(gq, gq + s, T(0));
        for (int64_t c = 0; c < per_group; ++c) {
          const int64_t no = ng * per_group + c;
          const T* g = pg + no * s;
          if (pa_post) {
            const T* v = pv + no * s;
            if (pq) scale_forward(v, inv.data(), s, p.b, y.data());
            else std::copy(v, v + s, y.data());
            epilogue_grad(g, y.data(), s, pa_post[no % o], pc_post[no % o], p.relu, gpost.data());
            g = gpost.data();
          }
          T* gl = pgl + no * m * s;
          T* target = m > 1 ? gv.data() : gl;  // M > 1: scattered to the winners below
          if (pq) scale_backward(g, pv + no * s, inv.data(), root.data(), s, p.b, explain, target, gq);
          else std::copy(g, g + s, target);
          if (m > 1) {
            std::fill(gl, gl + m * s, T(0));
            const uint8_t* win = pa + no * s;
            for (int64_t j = 0; j < s; ++j) gl[win[j] * s + j] = gv[size_t(j)];
          }
        }
      }
    });
  });
}

void batch_norm_uncentered_backward(const Tensor& grad_in, const Tensor& x_in, const Tensor& weight,
                                    const Tensor& bias, const Tensor& mean, const Tensor& invstd,
                                    bool through_variance, bool relu, const Tensor& grad_x,
                                    const Tensor& grad_w, const Tensor& grad_b, const Tensor& replica_sums) {
  Tensor g = raw_contiguous(grad_in), x = raw_contiguous(x_in);
  const int64_t n = x.size(0), c = x.size(1), s = x.numel() / std::max<int64_t>(n * c, 1);
  dispatch_float(x.dtype(), "batch_norm_uncentered_backward", [&]<class T>() {
    const T *pg = g.data<T>(), *px = x.data<T>(), *pi = invstd.data<T>();
    const T* pw = weight.defined() ? weight.data<T>() : nullptr;
    const T* pb = bias.defined() ? bias.data<T>() : nullptr;
    const T* pm = through_variance ? mean.data<T>() : nullptr;
    T* pgx = grad_x.defined() ? grad_x.data<T>() : nullptr;
    T* pgw = grad_w.defined() ? grad_w.data<T>() : nullptr;
    T* pgb = grad_b.defined() ? grad_b.data<T>() : nullptr;
    const T* pr = replica_sums.defined() ? replica_sums.data<T>() : nullptr;  // [Σ grad_w, Σ grad_b, count]
    const double count = pr ? double(pr[2 * c]) : double(n * s);
    parallel_for(c, n * s * 3, [&](int64_t b, int64_t e) {
      for (int64_t ch = b; ch < e; ++ch) {
        double sum_gx = 0, sum_g = 0;  // A = Σ g·x, B = Σ g: not needed for an explanation's
        // input gradient in eval mode (a pure scaling), nor when the replicas' sums are given
        const bool need_sums = pgw || pgb || (pm && !pr);
        // The forward's y (mean 0: x is not centred), for the fused ReLU's mask.
        const math::BatchNormAffine<T> y(T(0), pi[ch], pw ? pw[ch] : T(1), pb ? pb[ch] : T(0));
        for (int64_t i = 0; i < n && need_sums; ++i) {
          const T *gi = pg + (i * c + ch) * s, *xi = px + (i * c + ch) * s;
          double a = 0, b = 0;  // one partial sum per vector lane (see norm.cpp's sum_of)
          if (relu) {
#pragma omp simd reduction(+ : a, b)
            for (int64_t j = 0; j < s; ++j) {
              const T gv = gi[j], gm = y(xi[j]) > T(0) ? gv : T(0);
              a += double(gm) * double(xi[j]), b += double(gm);
            }
          } else {
#pragma omp simd reduction(+ : a, b)
            for (int64_t j = 0; j < s; ++j) a += double(gi[j]) * double(xi[j]), b += double(gi[j]);
          }
          sum_gx += a, sum_g += b;
        }
        const double r = double(pi[ch]), gamma = pw ? double(pw[ch]) : 1.0;
        if (pgw) pgw[ch] = T(r * sum_gx);
        if (pgb) pgb[ch] = T(sum_g);
        if (!pgx) continue;
        // gx = γ r g − γ r³ (A / N)(x − μ): the second term only when the batch variance is live.
        const T k1 = T(gamma * r);
        // The replicas' Σ grad_w is r A summed: A = Σ grad_w / r.
        const double all_gx = pr ? double(pr[ch]) / r : sum_gx;
        const T k2 = pm ? T(gamma * r * r * r * all_gx / count) : T(0);
        const T mu = pm ? pm[ch] : T(0);
        for (int64_t i = 0; i < n; ++i) {
          const T *gi = pg + (i * c + ch) * s, *xi = px + (i * c + ch) * s;
          T* o = pgx + (i * c + ch) * s;
          if (relu) {
#pragma omp simd
            for (int64_t j = 0; j < s; ++j) {
              const T gv = gi[j], gm = y(xi[j]) > T(0) ? gv : T(0);
              o[j] = k1 * gm - k2 * (xi[j] - mu);
            }
          } else if (pm) {
#pragma omp simd
            for (int64_t j = 0; j < s; ++j) o[j] = k1 * gi[j] - k2 * (xi[j] - mu);
          } else {
#pragma omp simd
            for (int64_t j = 0; j < s; ++j) o[j] = k1 * gi[j];
          }
        }
      }
    });
  });
}

}  // namespace bcos::cpu
