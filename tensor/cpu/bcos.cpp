// B-cos kernels on the CPU: the two passes a B-cos layer adds to its linear map, each fused so no
// full-size temporary (x², |cos|, the scale) is ever materialised.
//   patch_sumsq:  Σ over a group's input channels and the conv's (dilated, zero-padded) taps of
//                 x², one value per output position and group — the squared input norm ‖x‖².
//   bcos_scale:   max-out over M consecutive channels, then y = s · v with
//                 s = |v| / n (b = 2) or (|v / n| + 1e-6)^(b − 1), n = sqrt(sumsq + eps_in) + eps_out.
// Layouts: x [N, C, H, W] (any strides), sums [N, G, Ho, Wo]; lin [N, O·M, S], sums [N, G, S],
// out / value / argmax [N, O, S], all contiguous.
#include <cmath>
#include <vector>

#include "tensor/copy.h"
#include "tensor/cpu/kernels.h"
#include "tensor/parallel.h"

namespace bcos::cpu {

namespace {
// The taps of a window starting at `start` that land inside [0, size): [first, end).
int64_t first_tap(int64_t start, int64_t d) { return start >= 0 ? 0 : (-start + d - 1) / d; }
int64_t end_tap(int64_t start, int64_t d, int64_t kernel, int64_t size) {
  if (start >= size) return 0;
  return std::min<int64_t>(kernel, (size - 1 - start) / d + 1);
}

bool is_pointwise(const Pool2dParams& p) {
  return p.kernel[0] == 1 && p.kernel[1] == 1 && p.stride[0] == 1 && p.stride[1] == 1 &&
         p.padding[0] == 0 && p.padding[1] == 0;
}

// Calls fn(input_index, output_index) for every (tap, output) pair of a window sum over one
// H×W plane: the adjoint pairs of the forward and backward window passes.
template <class F>
void for_each_tap(const Pool2dParams& p, int64_t h, int64_t w, int64_t ho, int64_t wo, F&& fn) {
  for (int64_t oh = 0; oh < ho; ++oh) {
    const int64_t h0 = oh * p.stride[0] - p.padding[0];
    const int64_t ki_lo = first_tap(h0, p.dilation[0]), ki_hi = end_tap(h0, p.dilation[0], p.kernel[0], h);
    for (int64_t ow = 0; ow < wo; ++ow) {
      const int64_t w0 = ow * p.stride[1] - p.padding[1];
      const int64_t kj_lo = first_tap(w0, p.dilation[1]), kj_hi = end_tap(w0, p.dilation[1], p.kernel[1], w);
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
  const bool pointwise = is_pointwise(p);
  dispatch_float(x.dtype(), "bcos_patch_sumsq", [&]<class T>() {
    const T* px = x.data<T>();
    T* po = out.data<T>();
    parallel_for(n * groups, cg * plane, [&](int64_t b, int64_t e) {
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
                               const Pool2dParams& p, const Tensor& grad_x) {
  Tensor x = raw_contiguous(x_in), grad = raw_contiguous(grad_in);
  const int64_t n = x.size(0), cg = x.size(1) / groups, h = x.size(2), w = x.size(3);
  const int64_t ho = grad.size(2), wo = grad.size(3), plane = h * w;
  const bool pointwise = is_pointwise(p);
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
        for (int64_t c = 0; c < cg; ++c)
          for (int64_t i = 0; i < plane; ++i) gx[c * plane + i] = T(2) * xg[c * plane + i] * g[i];
      }
    });
  });
}

namespace {
// ∂y/∂v and ∂y/∂n of y = s(v, n) · v, for one value v and norm n > 0.
template <class T>
struct ScaleTerms {
  T s, dy_dv, dy_dn;  // y = s · v
};

template <class T>
ScaleTerms<T> scale_terms(T v, T n, double b) {
  const T av = std::abs(v);
  if (b == 2) {  // s = |v| / n: no +1e-6, as the reference code
    const T s = av / n;
    return {s, 2 * s, -s * v / n};
  }
  const T u = av / n, a = u + T(1e-6);
  const T s = std::pow(a, T(b - 1));
  const T t = T(b - 1) * std::pow(a, T(b - 2)) * u;  // (b − 1) a^(b−2) |u|
  return {s, s + t, -t * v / n};
}
}  // namespace

void bcos_scale_forward(const Tensor& lin, const Tensor& sumsq, const BcosScaleParams& p,
                        const Tensor& out, const Tensor& value, const Tensor& argmax) {
  const int64_t n = out.size(0), o = out.size(1), s = out.size(2), m = p.max_out;
  const int64_t groups = sumsq.defined() ? sumsq.size(1) : 1, per_group = o / groups;
  dispatch_float(lin.dtype(), "bcos_scale", [&]<class T>() {
    const T* pl = lin.data<T>();
    const T* pq = sumsq.defined() ? sumsq.data<T>() : nullptr;
    T* py = out.data<T>();
    T* pv = m > 1 ? value.data<T>() : nullptr;  // M = 1: the value is lin itself
    uint8_t* pa = m > 1 ? argmax.data<uint8_t>() : nullptr;
    parallel_for(n * o, s * m * 4, [&](int64_t b, int64_t e) {
      for (int64_t no = b; no < e; ++no) {
        const int64_t i = no / o, c = no % o;
        const T* l = pl + (i * o + c) * m * s;
        const T* q = pq ? pq + (i * groups + c / per_group) * s : nullptr;
        T* y = py + no * s;
        for (int64_t j = 0; j < s; ++j) {
          T v = l[j];
          if (m > 1) {
            int64_t best = 0;
            for (int64_t k = 1; k < m; ++k)
              if (l[k * s + j] > v) v = l[k * s + j], best = k;
            pv[no * s + j] = v;
            pa[no * s + j] = uint8_t(best);
          }
          if (!q) {
            y[j] = v;
            continue;
          }
          const T norm = std::sqrt(q[j] + T(p.eps_in)) + T(p.eps_out);
          y[j] = scale_terms<T>(v, norm, p.b).s * v;
        }
      }
    });
  });
}

void bcos_scale_backward(const Tensor& grad_in, const Tensor& value, const Tensor& sumsq,
                         const Tensor& argmax, const BcosScaleParams& p, bool explain,
                         const Tensor& grad_lin, const Tensor& grad_sumsq) {
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
    // One task per (sample, group): the group's channels all add into the same norm gradient.
    parallel_for(n * groups, per_group * s * m * 4, [&](int64_t b, int64_t e) {
      for (int64_t ng = b; ng < e; ++ng) {
        const int64_t i = ng / groups, grp = ng % groups;
        const T* q = pq ? pq + ng * s : nullptr;
        T* gq = pgq ? pgq + ng * s : nullptr;
        if (gq) std::fill(gq, gq + s, T(0));
        for (int64_t c = grp * per_group; c < (grp + 1) * per_group; ++c) {
          const int64_t no = i * o + c;
          const T* g = pg + no * s;
          const T* v = pv + no * s;
          T* gl = pgl + no * m * s;
          if (m > 1) std::fill(gl, gl + m * s, T(0));
          for (int64_t j = 0; j < s; ++j) {
            T dv = g[j];
            if (q) {
              const T root = std::sqrt(q[j] + T(p.eps_in));
              const ScaleTerms<T> t = scale_terms<T>(v[j], root + T(p.eps_out), p.b);
              if (explain) {
                dv = g[j] * t.s;  // s is a constant: y is linear in v
              } else {
                dv = g[j] * t.dy_dv;
                if (gq) gq[j] += g[j] * t.dy_dn / (2 * root);  // dn/dsumsq = 1 / (2 sqrt(.))
              }
            }
            gl[(m > 1 ? pa[no * s + j] : 0) * s + j] = dv;
          }
        }
      }
    });
  });
}

}  // namespace bcos::cpu
