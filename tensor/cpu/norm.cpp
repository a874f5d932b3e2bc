// Normalisation kernels. Batch norm works per channel over x viewed [N, C, S]; layer norm and
// group norm share "row norm": x viewed [rows, inner], each row normalised to zero mean and unit
// (biased) variance. Statistics accumulate in double. Backward formulas (M = elements per
// statistic, x̂ = (x - mean) · invstd, g the gradient w.r.t. x̂):
//   grad_x = invstd · (g − mean(g) − x̂ · mean(g · x̂))
// "Unit rows" (B-cos weights, ŵ = w / ‖w‖₂ per row) are the uncentred kin: one kernel pair
// instead of the composed norm, quotient and their backwards (five passes over the weights
// forward and back instead of about fifteen: 12 % of a B-cos ViT-B/16 training step at batch 8).
#include <algorithm>
#include <cmath>
#include <vector>

#include "tensor/batch_norm_math.h"
#include "tensor/kernel_views.h"
#include "tensor/copy.h"
#include "tensor/cpu/kernels.h"
#include "tensor/elementwise_math.h"
#include "tensor/parallel.h"

namespace bcos::cpu {

namespace {
template <class T>
const T* maybe(const Tensor& t) {
  return t.defined() ? t.data<T>() : nullptr;
}

// Sums in double, vectorised: `omp simd reduction` lets the compiler keep one partial sum per
// vector lane (a single running sum would be one long chain of dependent additions, 4 cycles
// each), so float -> double conversions and adds run 8 or 16 at a time. BN statistics and
// backward: 2-3x faster than four scalar chains.
template <class T>
double sum_of(const T* p, int64_t n) {
  double total = 0;
#pragma omp simd reduction(+ : total)
  for (int64_t j = 0; j < n; ++j) total += double(p[j]);
  return total;
}

template <class T>
double squared_deviations(const T* p, int64_t n, double mu) {
  double total = 0;
#pragma omp simd reduction(+ : total)
  for (int64_t j = 0; j < n; ++j) {
    const double v = double(p[j]) - mu;
    total += v * v;
  }
  return total;
}

// sum(g) and sum(g * (x - mu)) over a row.
template <class T>
void grad_sums(const T* g, const T* x, int64_t n, double mu, double* sum_g, double* sum_gxc) {
  double sg = 0, sgx = 0;
#pragma omp simd reduction(+ : sg, sgx)
  for (int64_t j = 0; j < n; ++j) {
    const double gj = double(g[j]);
    sg += gj;
    sgx += gj * (double(x[j]) - mu);
  }
  *sum_g += sg;
  *sum_gxc += sgx;
}

// The same sums for batch norm + ReLU: g counts only where y = fma(x, scale, shift) > 0.
template <class S, class T>
void masked_grad_sums(const S* g, const S* x, int64_t n, double mu, math::BatchNormAffine<T> y, double* sum_g,
                      double* sum_gxc) {
  double sg = 0, sgx = 0;
#pragma omp simd reduction(+ : sg, sgx)
  for (int64_t j = 0; j < n; ++j) {
    const T gv = T(g[j]);  // a select between loaded values: vectorised (with -fno-trapping-math, meson.build)
    const double gj = double(y(T(x[j])) > T(0) ? gv : T(0));
    sg += gj;
    sgx += gj * (double(x[j]) - mu);
  }
  *sum_g += sg;
  *sum_gxc += sgx;
}

// Batch norm's element types: S stores x (its gradient, the output), T the per-channel tensors and
// the arithmetic -- float for float16 / bfloat16 activations (16-bit in, 16-bit out, each result
// rounded once, as PyTorch's kernels beside float32 parameters), else S itself.
template <class F>
void dispatch_batch_norm(const Tensor& x, const Tensor& per_channel, const char* op, F&& body) {
  if (is_half_float(x.dtype())) {
    BCOS_CHECK(per_channel.dtype() == DType::f32, op, ": a ", x.dtype(), " input takes float32 statistics, got ",
               per_channel.dtype());
    if (x.dtype() == DType::bf16) return body.template operator()<BFloat16, float>();
    return body.template operator()<Half, float>();
  }
  dispatch_float(x.dtype(), op, [&]<class T>() { body.template operator()<T, T>(); });
}

// o[j] = S(f(T(p[j]), T(q[j]))) for j < n (q may be null): for 16-bit S through float buffers, whose
// widening, arithmetic and rounding loops each vectorise (one loop doing all three stayed scalar).
template <class S, class T, class F>
void map_plane(const S* p, const S* q, int64_t n, S* o, F f) {
  if constexpr (std::is_same_v<S, T>) {
    if (q) {
#pragma omp simd
      for (int64_t j = 0; j < n; ++j) o[j] = f(p[j], q[j]);
    } else {
#pragma omp simd
      for (int64_t j = 0; j < n; ++j) o[j] = f(p[j], T(0));
    }
  } else {
    constexpr int64_t kChunk = 256;
    T a[kChunk], b[kChunk];
    for (int64_t i0 = 0; i0 < n; i0 += kChunk) {
      const int64_t m = std::min(kChunk, n - i0);
      for (int64_t j = 0; j < m; ++j) a[j] = T(p[i0 + j]);
      if (q) for (int64_t j = 0; j < m; ++j) b[j] = T(q[i0 + j]);
      else for (int64_t j = 0; j < m; ++j) b[j] = T(0);
      for (int64_t j = 0; j < m; ++j) a[j] = f(a[j], b[j]);
      for (int64_t j = 0; j < m; ++j) o[i0 + j] = S(a[j]);
    }
  }
}
}  // namespace

void batch_norm_stats(const Tensor& x_in, const Tensor& mean, const Tensor& var_biased) {
  Tensor x = raw_contiguous(x_in);
  Channels d = channels_of(x);
  dispatch_batch_norm(x, mean, "batch_norm", [&]<class S, class T>() {
    const S* px = x.data<S>();
    T *pm = mean.data<T>(), *pv = var_biased.data<T>();
    const double count = double(d.n * d.s);
    parallel_for(d.c, d.n * d.s * 2, [&](int64_t b, int64_t e) {
      for (int64_t c = b; c < e; ++c) {
        double sum = 0;
        for (int64_t i = 0; i < d.n; ++i) sum += sum_of(px + (i * d.c + c) * d.s, d.s);
        double mu = sum / count, sq = 0;
        for (int64_t i = 0; i < d.n; ++i) sq += squared_deviations(px + (i * d.c + c) * d.s, d.s, mu);
        pm[c] = T(mu);
        pv[c] = T(sq / count);
      }
    });
  });
}

void batch_norm_finish(const Tensor& mean, const Tensor& var, double eps, double momentum, double unbias,
                       const Tensor& invstd, const Tensor& running_mean, const Tensor& running_var,
                       const Tensor& batches_tracked) {
  if (batches_tracked.defined()) ++*batches_tracked.data<int64_t>();
  dispatch_float(var.dtype(), "batch_norm", [&]<class T>() {
    const T *pm = maybe<T>(mean), *pv = var.data<T>();
    T *pi = invstd.defined() ? invstd.data<T>() : nullptr;
    T *rm = running_mean.defined() ? running_mean.data<T>() : nullptr;
    T *rv = running_var.defined() ? running_var.data<T>() : nullptr;
    const auto f = batch_norm_math::finish_factors<T>(eps, momentum, unbias);
    for (int64_t c = 0; c < var.numel(); ++c) batch_norm_math::finish_channel(c, pm, pv, f, pi, rm, rv);
  });
}

void batch_norm_eval_scale(const Tensor& var, const Tensor& weight, double eps, const Tensor& scale) {
  dispatch_float(var.dtype(), "batch_norm_eval_scale", [&]<class T>() {
    const T *pv = var.data<T>(), *pw = maybe<T>(weight);
    T* ps = scale.data<T>();
    for (int64_t c = 0; c < var.numel(); ++c) ps[c] = batch_norm_math::eval_scale(c, pv, pw, T(eps));
  });
}

void batch_norm_forward(const Tensor& x_in, const Tensor& weight, const Tensor& bias,
                        const Tensor& mean, const Tensor& invstd, bool relu, const Tensor& out) {
  Tensor x = raw_contiguous(x_in);
  Channels d = channels_of(x);
  dispatch_batch_norm(x, mean, "batch_norm", [&]<class S, class T>() {
    const S* px = x.data<S>();
    const T *pw = maybe<T>(weight), *pb = maybe<T>(bias);
    const T *pm = mean.data<T>(), *pi = invstd.data<T>();
    S* po = out.data<S>();
    parallel_for(d.n * d.c, d.s, [&](int64_t b, int64_t e) {
      for (int64_t nc = b; nc < e; ++nc) {
        const int64_t c = nc % d.c;
        const math::BatchNormAffine<T> affine(pm[c], pi[c], pw ? pw[c] : T(1), pb ? pb[c] : T(0));
        const S* p = px + nc * d.s;
        S* o = po + nc * d.s;
        if (relu) {
          map_plane<S, T>(p, nullptr, d.s, o, [affine](T v, T) {
            const T y = affine(v);
            return y < T(0) ? T(0) : y;  // as relu: NaN stays NaN
          });
        } else {
          map_plane<S, T>(p, nullptr, d.s, o, [affine](T v, T) { return affine(v); });
        }
      }
    });
  });
}

// On the CPU the per-channel finish costs nothing beside the pass (the GPU saves a launch).
void batch_norm_eval_forward(const Tensor& x, const Tensor& weight, const Tensor& bias, const Tensor& running_mean,
                             const Tensor& running_var, double eps, bool relu, const Tensor& out) {
  const Tensor invstd = empty(running_var.shape(), {running_var.dtype(), running_var.device()});
  batch_norm_finish(Tensor(), running_var, eps, 0, 1, invstd, Tensor(), Tensor(), Tensor());
  const Tensor mean = running_mean.defined() ? running_mean : zeros(running_var.shape(), {running_var.dtype()});
  batch_norm_forward(x, weight, bias, mean, invstd, relu, out);
}

void batch_norm_backward(const Tensor& grad_out_in, const Tensor& x_in, const Tensor& weight,
                         const Tensor& bias, const Tensor& mean, const Tensor& invstd, bool training,
                         bool relu, const Tensor& grad_x, const Tensor& grad_w, const Tensor& grad_b,
                         const Tensor& replica_sums) {
  Tensor g = raw_contiguous(grad_out_in), x = raw_contiguous(x_in);
  Channels d = channels_of(x);
  dispatch_batch_norm(x, mean, "batch_norm_backward", [&]<class S, class T>() {
    const S *pg = g.data<S>(), *px = x.data<S>();
    const T *pw = maybe<T>(weight), *pb = maybe<T>(bias);
    const T *pm = mean.data<T>(), *pi = invstd.data<T>(), *pr = maybe<T>(replica_sums);
    S* pgx = grad_x.defined() ? grad_x.data<S>() : nullptr;
    T* pgw = grad_w.defined() ? grad_w.data<T>() : nullptr;
    T* pgb = grad_b.defined() ? grad_b.data<T>() : nullptr;
    const double count = pr ? double(pr[2 * d.c]) : double(d.n * d.s);
    const bool own_sums = pgw || pgb || !pr;
    parallel_for(d.c, d.n * d.s * 3, [&](int64_t b, int64_t e) {
      for (int64_t c = b; c < e; ++c) {
        double sum_g = 0, sum_gxc = 0;  // sum(g), sum(g * (x - mean))
        const double mu = double(pm[c]), is = double(pi[c]);
        const math::BatchNormAffine<T> affine(pm[c], pi[c], pw ? pw[c] : T(1), pb ? pb[c] : T(0));
        for (int64_t i = 0; i < d.n && own_sums; ++i) {
          const S *gp = pg + (i * d.c + c) * d.s, *xp = px + (i * d.c + c) * d.s;
          if (relu)
            masked_grad_sums(gp, xp, d.s, mu, affine, &sum_g, &sum_gxc);
          else
            grad_sums(gp, xp, d.s, mu, &sum_g, &sum_gxc);
        }
        const double sum_gx = sum_gxc * is;  // sum(g * x̂)
        if (pgw) pgw[c] = T(sum_gx);
        if (pgb) pgb[c] = T(sum_g);
        if (!pgx) continue;
        const double w = pw ? double(pw[c]) : 1.0;
        const double mean_g = training ? (pr ? double(pr[d.c + c]) : sum_g) / count : 0.0;
        const double mean_gx = training ? (pr ? double(pr[c]) : sum_gx) / count : 0.0;
        // grad_x = a · (g − mean_g) − b · (x − mean), in T so the loop vectorises; the constants
        // are formed in double.
        const T a = T(w * is), b = T(w * is * is * mean_gx), mg = T(mean_g), m = T(mu);
        for (int64_t i = 0; i < d.n; ++i) {
          const S* gp = pg + (i * d.c + c) * d.s;
          const S* xp = px + (i * d.c + c) * d.s;
          S* o = pgx + (i * d.c + c) * d.s;
          if (relu) {
            map_plane<S, T>(xp, gp, d.s, o, [=](T xv, T gv) {
              const T gj = affine(xv) > T(0) ? gv : T(0);
              return a * (gj - mg) - b * (xv - m);
            });
          } else {
            map_plane<S, T>(xp, gp, d.s, o, [=](T xv, T gv) { return a * (gv - mg) - b * (xv - m); });
          }
        }
      }
    });
  });
}

void row_norm_forward(const Tensor& x_in, int64_t outer, int64_t inner, double eps, const Tensor& weight_in,
                      const Tensor& bias_in, const Tensor& out, const Tensor& mean, const Tensor& invstd) {
  const Tensor x = raw_contiguous(x_in);
  const Tensor weight = weight_in.defined() ? raw_contiguous(weight_in) : Tensor();
  const Tensor bias = bias_in.defined() ? raw_contiguous(bias_in) : Tensor();
  dispatch_float(x.dtype(), "norm", [&]<class T>() {
    const T *px = x.data<T>(), *pw = maybe<T>(weight), *pb = maybe<T>(bias);
    T *po = out.data<T>(), *pm = mean.data<T>(), *pi = invstd.data<T>();
    parallel_for(outer, inner * 3, [&](int64_t b, int64_t e) {
      for (int64_t r = b; r < e; ++r) {
        const T* p = px + r * inner;
        const double mu = sum_of(p, inner) / double(inner);
        const double is = 1.0 / std::sqrt(squared_deviations(p, inner, mu) / double(inner) + eps);
        T* o = po + r * inner;
        // x̂ · w + b in double, rounded once; a loop per case so that each vectorises.
        if (pw && pb) {
#pragma omp simd
          for (int64_t j = 0; j < inner; ++j) o[j] = T((double(p[j]) - mu) * is * double(pw[j]) + double(pb[j]));
        } else if (pw) {
#pragma omp simd
          for (int64_t j = 0; j < inner; ++j) o[j] = T((double(p[j]) - mu) * is * double(pw[j]));
        } else if (pb) {
#pragma omp simd
          for (int64_t j = 0; j < inner; ++j) o[j] = T((double(p[j]) - mu) * is + double(pb[j]));
        } else {
#pragma omp simd
          for (int64_t j = 0; j < inner; ++j) o[j] = T((double(p[j]) - mu) * is);
        }
        pm[r] = T(mu);
        pi[r] = T(is);
      }
    });
  });
}

// One row of row_norm_backward: a first loop over g and x for all its sums -- the affine
// gradients' (added into sum_gxhat, sum_g) and, when grad_x is wanted, the row's sums of the
// gradient w.r.t. x̂ (g · w, rounded to T as a separate product would be, and kept in `scaled`) --
// then grad_x's loop. One loop per case, so that each vectorises.
template <bool kAffine, bool kWeight, class T>
void backward_row(const T* gp, const T* xp, const T* w, double mu, double is, int64_t n, double* sum_gxhat,
                  double* sum_g, T* scaled, T* out) {
  double row_g = 0, row_gxc = 0;  // Σ g', Σ g' · (x − mu), g' the gradient w.r.t. x̂
  if (out) {
#pragma omp simd reduction(+ : row_g, row_gxc)
    for (int64_t j = 0; j < n; ++j) {
      const double xc = double(xp[j]) - mu;
      if constexpr (kAffine) {
        sum_gxhat[j] += double(gp[j]) * (xc * is);
        sum_g[j] += double(gp[j]);
      }
      T gj = gp[j];
      if constexpr (kWeight) {
        gj = gp[j] * w[j];
        scaled[j] = gj;
      }
      row_g += double(gj);
      row_gxc += double(gj) * xc;
    }
  } else if constexpr (kAffine) {
#pragma omp simd
    for (int64_t j = 0; j < n; ++j) {
      sum_gxhat[j] += double(gp[j]) * ((double(xp[j]) - mu) * is);
      sum_g[j] += double(gp[j]);
    }
  }
  if (!out) return;
  const T* g_xhat = kWeight ? scaled : gp;
  const double mean_g = row_g / double(n), mean_gx = row_gxc * is / double(n);
#pragma omp simd
  for (int64_t j = 0; j < n; ++j) {
    const double xhat = (double(xp[j]) - mu) * is;
    out[j] = T(is * (double(g_xhat[j]) - mean_g - xhat * mean_gx));
  }
}

// Everything asked in one pass over the rows of g and x. The affine gradients are summed per
// block of kPartialRows rows into partials, then the partials added in block order: the same bits
// for any thread count (a sum per thread, as PyTorch's CPU kernel keeps, would change with it),
// for 1/kPartialRows of the activation's size in extra memory.
constexpr int64_t kPartialRows = 64;

void row_norm_backward(const Tensor& grad_in, const Tensor& x_in, int64_t outer, int64_t inner,
                       const Tensor& mean, const Tensor& invstd, const Tensor& weight_in, const Tensor& grad_x,
                       const Tensor& grad_weight, const Tensor& grad_bias) {
  const Tensor g = raw_contiguous(grad_in), x = raw_contiguous(x_in);
  const Tensor weight = weight_in.defined() ? raw_contiguous(weight_in) : Tensor();
  const bool affine = grad_weight.defined() || grad_bias.defined();
  const int64_t blocks = (outer + kPartialRows - 1) / kPartialRows;
  // partials[block][0 or 1][inner]: Σ g · x̂ and Σ g over the block's rows
  std::vector<double> partials(affine ? size_t(blocks * 2 * inner) : 0, 0.0);
  dispatch_float(x.dtype(), "norm_backward", [&]<class T>() {
    const T *pg = g.data<T>(), *px = x.data<T>(), *pm = mean.data<T>(), *pi = invstd.data<T>();
    const T* pw = maybe<T>(weight);
    T* po = grad_x.defined() ? grad_x.data<T>() : nullptr;
    auto row = affine ? (pw ? backward_row<true, true, T> : backward_row<true, false, T>)
                      : (pw ? backward_row<false, true, T> : backward_row<false, false, T>);
    parallel_for(blocks, kPartialRows * inner * 6, [&](int64_t block_begin, int64_t block_end) {
      std::vector<T> scaled(pw && po ? size_t(inner) : 0);
      for (int64_t blk = block_begin; blk < block_end; ++blk) {
        double* sum_gxhat = affine ? partials.data() + blk * 2 * inner : nullptr;
        for (int64_t r = blk * kPartialRows; r < std::min(outer, (blk + 1) * kPartialRows); ++r)
          row(pg + r * inner, px + r * inner, pw, double(pm[r]), double(pi[r]), inner, sum_gxhat,
              affine ? sum_gxhat + inner : nullptr, scaled.data(), po ? po + r * inner : nullptr);
      }
    });
    if (!affine) return;
    T* pgw = grad_weight.defined() ? grad_weight.data<T>() : nullptr;
    T* pgb = grad_bias.defined() ? grad_bias.data<T>() : nullptr;
    parallel_for(inner, blocks * 2, [&](int64_t b, int64_t e) {
      for (int64_t j = b; j < e; ++j) {
        double sw = 0, sb = 0;
        for (int64_t blk = 0; blk < blocks; ++blk) {
          sw += partials[size_t((blk * 2) * inner + j)];
          sb += partials[size_t((blk * 2 + 1) * inner + j)];
        }
        if (pgw) pgw[j] = T(sw);
        if (pgb) pgb[j] = T(sb);
      }
    });
  });
}

// One pass for the sum of squares, one for the quotient: w / n in T, as the composed
// w / norm(w) divides (the same bits whenever the two norms round alike).
void unit_rows_forward(const Tensor& w_in, int64_t outer, int64_t inner, const Tensor& out, const Tensor& norms) {
  Tensor w = raw_contiguous(w_in);
  dispatch_float(w.dtype(), "unit_rows", [&]<class T>() {
    const T* pw = w.data<T>();
    T *po = out.data<T>(), *pn = norms.data<T>();
    parallel_for(outer, inner * 3, [&](int64_t b, int64_t e) {
      for (int64_t r = b; r < e; ++r) {
        const T* p = pw + r * inner;
        const T n = T(std::sqrt(squared_deviations(p, inner, 0.0)));
        T* o = po + r * inner;
#pragma omp simd
        for (int64_t j = 0; j < inner; ++j) o[j] = p[j] / n;
        pn[r] = n;
      }
    });
  });
}

// grad_w = g / n − w · (Σ g ∘ w) / n³: the sum in double, the pass in T so that it vectorises.
void unit_rows_backward(const Tensor& grad_in, const Tensor& w_in, int64_t outer, int64_t inner, const Tensor& norms,
                        const Tensor& grad_w) {
  Tensor g = raw_contiguous(grad_in), w = raw_contiguous(w_in);
  dispatch_float(w.dtype(), "unit_rows backward", [&]<class T>() {
    const T *pg = g.data<T>(), *pw = w.data<T>(), *pn = norms.data<T>();
    T* po = grad_w.data<T>();
    parallel_for(outer, inner * 4, [&](int64_t b, int64_t e) {
      for (int64_t r = b; r < e; ++r) {
        const T *gp = pg + r * inner, *wp = pw + r * inner;
        double dot = 0;
#pragma omp simd reduction(+ : dot)
        for (int64_t j = 0; j < inner; ++j) dot += double(gp[j]) * double(wp[j]);
        const double n = double(pn[r]);
        const T inv = T(1.0 / n), c = T(dot / (n * n * n));
        T* o = po + r * inner;
#pragma omp simd
        for (int64_t j = 0; j < inner; ++j) o[j] = gp[j] * inv - wp[j] * c;
      }
    });
  });
}

}  // namespace bcos::cpu
