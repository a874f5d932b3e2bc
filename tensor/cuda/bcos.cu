// B-cos kernels on the GPU, as tensor/cpu/bcos.cpp computes them (its comments give the
// formulas): the patch norms Σ x² over each group's channels and the conv's window, the B-cos
// scale with max-out, and the uncentred batch norm's backward (in cuda/batch_norm.cu). The patch
// norms are summed over channels first, then over the window (below); elsewhere one thread per
// output element, and sums shared by several outputs go through atomicAdd -- under
// deterministic_algorithms() one thread owns each sum and adds its terms in order.
// Layouts: x [N, C, H, W], sums [N, G, Ho, Wo]; lin [N, O·M, S], sums [N, G, S], out / value /
// argmax [N, O, S], all contiguous.
#include <algorithm>
#include <cmath>

#include "tensor/copy.h"
#include "tensor/cuda/internal.h"
#include "tensor/elementwise_math.h"
#include "tensor/pool_math.h"

namespace bcos::cuda {

namespace {

#define BCOS_GRID_LOOP(i, n) \
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < (n); i += int64_t(gridDim.x) * blockDim.x)

struct PatchShape {
  int64_t ng, cg, h, w, ho, wo;
};

// The patch norms in two steps, as on the CPU: the channels' sum of squares at each position of a
// group's plane, then (unless the conv is pointwise) the window's sum of those. One thread per
// output summing its whole window across all channels instead would redo each x² for every window
// it lies in, and leave a small map (7 x 7 at batch 64: 3,136 threads) with one long serial loop each.

// sq[ng, i] = Σ_c x[ng·cg + c, i]²: a block takes 32 neighbouring positions of one plane (coalesced
// reads), its 8 rows of threads every 8th channel; the rows' partials are added in row order.
constexpr int kChannelRows = 8;
template <class T>
__global__ void channel_sumsq_kernel(const T* x, T* sq, int64_t ngs, int64_t cg, int64_t plane) {
  __shared__ T part[kChannelRows][32];
  const int tx = threadIdx.x, ty = threadIdx.y;
  for (int64_t ng = blockIdx.y; ng < ngs; ng += gridDim.y)
    for (int64_t base = int64_t(blockIdx.x) * 32; base < plane; base += int64_t(gridDim.x) * 32) {
      const int64_t i = base + tx;
      T sum = 0;
      if (i < plane) {
        const T* column = x + ng * cg * plane + i;
        for (int64_t c = ty; c < cg; c += kChannelRows) {
          const T v = column[c * plane];
          sum += v * v;
        }
      }
      part[ty][tx] = sum;
      __syncthreads();
      if (ty == 0 && i < plane) {
        T total = part[0][tx];
        for (int r = 1; r < kChannelRows; ++r) total += part[r][tx];
        sq[ng * plane + i] = total;
      }
      __syncthreads();  // part is rewritten by the next position block
    }
}

// A linear layer's rows ([rows, K, 1, 1]): out[r] = Σ_j x[r, j]², a warp per row.
template <class T>
__global__ void row_sumsq_kernel(const T* x, T* out, int64_t rows, int64_t k) {
  const int64_t step = int64_t(gridDim.x) * blockDim.y;
  for (int64_t r = int64_t(blockIdx.x) * blockDim.y + threadIdx.y; r < rows; r += step) {
    const T* row = x + r * k;
    T sum = 0;
    for (int64_t j = threadIdx.x; j < k; j += 32) sum += row[j] * row[j];
    sum = warp_sum(sum);
    if (threadIdx.x == 0) out[r] = sum;
  }
}

// out[ng, oh, ow] = Σ_taps sq[ng, ih, iw] over the conv's (dilated, zero-padded) window.
template <class T>
__global__ void window_sum_kernel(const T* sq, T* out, PatchShape s, Pool2dParams p) {
  BCOS_GRID_LOOP(o, s.ng * s.ho * s.wo) {
    const int64_t ow = o % s.wo, oh = (o / s.wo) % s.ho, ng = o / (s.wo * s.ho);
    const pool::Taps t = pool::window_taps(oh, ow, s.h, s.w, p);
    const T* plane = sq + ng * s.h * s.w;
    T sum = 0;
    for (int64_t ki = t.ki_lo; ki < t.ki_hi; ++ki) {
      const int64_t row = (t.h0 + ki * p.dilation[0]) * s.w + t.w0;  // may start in the padding: an index
      for (int64_t kj = t.kj_lo; kj < t.kj_hi; ++kj) sum += plane[row + kj * p.dilation[1]];
    }
    out[o] = sum;
  }
}

// acc[ng, ih, iw] += g[ng, oh, ow] for every tap of every window (acc zeroed first); ordered:
// one thread per plane ng walks its outputs in order.
template <class T>
__global__ void patch_scatter_kernel(const T* g, T* acc, PatchShape s, Pool2dParams p, bool ordered) {
  const int64_t per = ordered ? s.ho * s.wo : 1, units = s.ng * s.ho * s.wo / per;
  BCOS_GRID_LOOP(unit, units)
  for (int64_t o = unit * per; o < (unit + 1) * per; ++o) {
    const int64_t ow = o % s.wo, oh = (o / s.wo) % s.ho, ng = o / (s.wo * s.ho);
    const pool::Taps t = pool::window_taps(oh, ow, s.h, s.w, p);
    const int64_t h0 = t.h0, w0 = t.w0, ki_lo = t.ki_lo, ki_hi = t.ki_hi, kj_lo = t.kj_lo, kj_hi = t.kj_hi;
    T* plane = acc + ng * s.h * s.w;
    for (int64_t ki = ki_lo; ki < ki_hi; ++ki)
      for (int64_t kj = kj_lo; kj < kj_hi; ++kj)
        atomicAdd(plane + (h0 + ki * p.dilation[0]) * s.w + w0 + kj * p.dilation[1], g[o]);
  }
}

// gx = 2 x · acc of the pixel's (sample, group)
template <class T>
__global__ void patch_grad_kernel(const T* x, const T* acc, T* gx, PatchShape s) {
  const int64_t plane = s.h * s.w;
  BCOS_GRID_LOOP(i, s.ng * s.cg * plane) {
    const int64_t ng = i / (s.cg * plane);
    gx[i] = T(2) * x[i] * acc[ng * plane + i % plane];
  }
}

struct ScaleShape {
  int64_t n, o, s, m, groups, per_group;
};

// The sumsq entry of output element (no, j): its sample's group's norm.
__device__ __forceinline__ int64_t sumsq_index(int64_t no, int64_t j, const ScaleShape& d) {
  const int64_t sample = no / d.o, group = (no % d.o) / d.per_group;
  return (sample * d.groups + group) * d.s + j;
}

// The scaled output of value v at (no, j), before any epilogue; the backward recomputes it with
// this same code for the epilogue's ReLU mask. Its one multiply-add is an explicit fma: left to
// nvcc (--fmad=true), the two kernels could contract it differently and disagree on the mask.
template <class T>
__device__ __forceinline__ T scaled(T v, const T* sumsq, int64_t no, int64_t j, const BcosScaleParams& p,
                                    const ScaleShape& d) {
  if (!sumsq) return v;
  const T inv = T(1) / (sqrt(sumsq[sumsq_index(no, j, d)] + T(p.eps_in)) + T(p.eps_out));
  return p.b == 2 ? fabs(v) * v * inv : pow(math::Math<T>::fma(fabs(v), inv, T(1e-6)), T(p.b - 1)) * v;
}

template <class T>
__global__ void scale_forward_kernel(const T* lin, const T* sumsq, BcosScaleParams p, const T* post_scale,
                                     const T* post_shift, ScaleShape d, T* out, T* value, uint8_t* argmax) {
  BCOS_GRID_LOOP(i, d.n * d.o * d.s) {
    const int64_t no = i / d.s, j = i % d.s;
    const T* l = lin + no * d.m * d.s + j;
    T v = l[0];
    uint8_t win = 0;
    for (int64_t k = 1; k < d.m; ++k)
      if (l[k * d.s] > v) v = l[k * d.s], win = uint8_t(k);
    if (d.m > 1) value[i] = v, argmax[i] = win;
    T y = scaled(v, sumsq, no, j, p, d);
    if (post_scale) {
      const int64_t c = no % d.o;
      y = math::Math<T>::fma(y, post_scale[c], post_shift[c]);
      if (p.relu) y = y < T(0) ? T(0) : y;  // as relu: NaN stays NaN
    }
    out[i] = y;
  }
}

// Output element c of work unit `unit`: the unit itself, or (ordered) the c-th channel of the
// unit's (sample, group, position), so one thread adds a group's terms into its sumsq entry.
__device__ __forceinline__ int64_t scale_element(int64_t unit, int64_t c, const ScaleShape& d, bool ordered) {
  if (!ordered) return unit;
  const int64_t j = unit % d.s, sample = unit / d.s / d.groups, group = unit / d.s % d.groups;
  return (sample * d.o + group * d.per_group + c) * d.s + j;
}

// grad_lin (zeroed first when M > 1) and grad_sumsq (zeroed first) from grad [N, O, S].
template <class T>
__global__ void scale_backward_kernel(const T* grad, const T* value, const T* sumsq, const uint8_t* argmax,
                                      BcosScaleParams p, const T* post_scale, const T* post_shift, bool explain,
                                      ScaleShape d, T* grad_lin, T* grad_sumsq, bool ordered) {
  const int64_t per = ordered ? d.per_group : 1, units = d.n * d.o * d.s / per;
  BCOS_GRID_LOOP(unit, units)
  for (int64_t c = 0; c < per; ++c) {
    const int64_t i = scale_element(unit, c, d, ordered);
    const int64_t no = i / d.s, j = i % d.s;
    T g = grad[i];
    if (post_scale) {
      const T a = post_scale[no % d.o];
      const bool live = !p.relu || math::Math<T>::fma(scaled(value[i], sumsq, no, j, p, d), a, post_shift[no % d.o]) > T(0);
      g = live ? g * a : T(0);
    }
    T gv = g;
    if (sumsq) {
      const int64_t q = sumsq_index(no, j, d);
      const T v = value[i], root = sqrt(sumsq[q] + T(p.eps_in)), inv = T(1) / (root + T(p.eps_out));
      T gq = 0;
      if (p.b == 2) {
        gv = explain ? g * fabs(v) * inv : g * T(2) * fabs(v) * inv;
        if (!explain) gq = -g * fabs(v) * v * inv * inv / (T(2) * root);
      } else {
        const T e = T(p.b - 1), u = fabs(v) * inv, a = u + T(1e-6), sc = pow(a, e);
        if (explain) {
          gv = g * sc;
        } else {
          const T t = e * sc / a * u;
          gv = g * (sc + t);
          gq = -g * t * v * inv / (T(2) * root);
        }
      }
      if (grad_sumsq && !explain) atomicAdd(grad_sumsq + q, gq);
    }
    const int64_t k = d.m > 1 ? argmax[i] : 0;
    grad_lin[(no * d.m + k) * d.s + j] = gv;
  }
}

#undef BCOS_GRID_LOOP

void zero(const Tensor& t, cudaStream_t stream) {
  BCOS_CUDA_CHECK(cudaMemsetAsync(t.raw_data(), 0, size_t(t.numel()) * t.element_size(), stream));
}

}  // namespace

void bcos_patch_sumsq(const Tensor& x_in, int64_t groups, const Pool2dParams& p, const Tensor& out) {
  const Tensor x = raw_contiguous(x_in);
  const PatchShape s{x.size(0) * groups, x.size(1) / groups, x.size(2), x.size(3), out.size(2), out.size(3)};
  if (out.numel() == 0) return;
  const int device = x.device().index;
  DeviceGuard guard(device);
  cudaStream_t stream = stream_of(device);
  const int64_t plane = s.h * s.w;
  const bool pointwise = p.kernel[0] == 1 && p.kernel[1] == 1 && p.stride[0] == 1 && p.stride[1] == 1 &&
                         p.padding[0] == 0 && p.padding[1] == 0;
  dispatch_float(x.dtype(), "cuda bcos_patch_sumsq", [&]<class T>() {
    const T* px = static_cast<const T*>(x.raw_data());
    if (pointwise && plane == 1) {
      row_sumsq_kernel<<<row_warp_blocks(s.ng), dim3(32, kRowWarps), 0, stream>>>(px, static_cast<T*>(out.raw_data()),
                                                                                 s.ng, s.cg);
      BCOS_CUDA_CHECK_LAUNCH();
      return;
    }
    // Pointwise, the channels' sums are the output; otherwise a plane of them per (sample, group).
    const Tensor sq = pointwise ? out : empty({s.ng, s.h, s.w}, {x.dtype(), x.device()});
    // (An empty plane under a padded window leaves zero sums: one block that skips its loop.)
    const dim3 grid(unsigned(std::clamp<int64_t>((plane + 31) / 32, 1, kMaxBlocks)),
                    unsigned(std::clamp<int64_t>(s.ng, 1, 65535)));
    channel_sumsq_kernel<<<grid, dim3(32, kChannelRows), 0, stream>>>(px, static_cast<T*>(sq.raw_data()), s.ng, s.cg,
                                                                      plane);
    BCOS_CUDA_CHECK_LAUNCH();
    if (pointwise) return;
    window_sum_kernel<<<blocks_for(out.numel()), kThreads, 0, stream>>>(static_cast<const T*>(sq.raw_data()),
                                                                          static_cast<T*>(out.raw_data()), s, p);
    BCOS_CUDA_CHECK_LAUNCH();
  });
}

void bcos_patch_sumsq_backward(const Tensor& grad_in, const Tensor& x_in, int64_t groups, const Pool2dParams& p,
                               const Tensor& grad_x) {
  const Tensor x = raw_contiguous(x_in), grad = raw_contiguous(grad_in);
  const PatchShape s{x.size(0) * groups, x.size(1) / groups, x.size(2), x.size(3), grad.size(2), grad.size(3)};
  if (grad_x.numel() == 0) return;
  const int device = x.device().index;
  DeviceGuard guard(device);
  cudaStream_t stream = stream_of(device);
  const Tensor acc = empty({s.ng, s.h, s.w}, {x.dtype(), x.device()});
  zero(acc, stream);
  dispatch_float(x.dtype(), "cuda bcos_patch_sumsq_backward", [&]<class T>() {
    if (grad.numel() > 0) {
      const bool ordered = deterministic_algorithms();
      patch_scatter_kernel<<<blocks_for(ordered ? s.ng : grad.numel()), kThreads, 0, stream>>>(
          static_cast<const T*>(grad.raw_data()), static_cast<T*>(acc.raw_data()), s, p, ordered);
      BCOS_CUDA_CHECK_LAUNCH();
    }
    patch_grad_kernel<<<blocks_for(grad_x.numel()), kThreads, 0, stream>>>(
        static_cast<const T*>(x.raw_data()), static_cast<const T*>(acc.raw_data()), static_cast<T*>(grad_x.raw_data()),
        s);
    BCOS_CUDA_CHECK_LAUNCH();
  });
}

void bcos_scale_forward(const Tensor& lin, const Tensor& sumsq, const BcosScaleParams& p, const Tensor& post_scale,
                        const Tensor& post_shift, const Tensor& out, const Tensor& value, const Tensor& argmax) {
  const int64_t groups = sumsq.defined() ? sumsq.size(1) : 1;
  const ScaleShape d{out.size(0), out.size(1), out.size(2), p.max_out, groups, out.size(1) / groups};
  if (out.numel() == 0) return;
  const int device = out.device().index;
  DeviceGuard guard(device);
  cudaStream_t stream = stream_of(device);
  dispatch_float(lin.dtype(), "cuda bcos_scale", [&]<class T>() {
    scale_forward_kernel<<<blocks_for(out.numel()), kThreads, 0, stream>>>(
        static_cast<const T*>(lin.raw_data()), sumsq.defined() ? static_cast<const T*>(sumsq.raw_data()) : nullptr, p,
        post_scale.defined() ? static_cast<const T*>(post_scale.raw_data()) : nullptr,
        post_shift.defined() ? static_cast<const T*>(post_shift.raw_data()) : nullptr, d,
        static_cast<T*>(out.raw_data()), d.m > 1 ? static_cast<T*>(value.raw_data()) : nullptr,
        d.m > 1 ? static_cast<uint8_t*>(argmax.raw_data()) : nullptr);
    BCOS_CUDA_CHECK_LAUNCH();
  });
}

void bcos_scale_backward(const Tensor& grad_in, const Tensor& value, const Tensor& sumsq, const Tensor& argmax,
                         const BcosScaleParams& p, const Tensor& post_scale, const Tensor& post_shift, bool explain,
                         const Tensor& grad_lin, const Tensor& grad_sumsq) {
  const Tensor grad = raw_contiguous(grad_in);
  const int64_t groups = sumsq.defined() ? sumsq.size(1) : 1;
  const ScaleShape d{grad.size(0), grad.size(1), grad.size(2), p.max_out, groups, grad.size(1) / groups};
  const int device = grad.device().index;
  DeviceGuard guard(device);
  cudaStream_t stream = stream_of(device);
  if (d.m > 1) zero(grad_lin, stream);  // only the winners receive a gradient
  const bool want_q = grad_sumsq.defined() && !explain && sumsq.defined();
  if (grad_sumsq.defined()) zero(grad_sumsq, stream);
  if (grad.numel() == 0) return;
  const bool ordered = want_q && deterministic_algorithms();
  dispatch_float(grad.dtype(), "cuda bcos_scale_backward", [&]<class T>() {
    scale_backward_kernel<<<blocks_for(ordered ? grad.numel() / d.per_group : grad.numel()), kThreads, 0, stream>>>(
        static_cast<const T*>(grad.raw_data()), static_cast<const T*>(value.raw_data()),
        sumsq.defined() ? static_cast<const T*>(sumsq.raw_data()) : nullptr,
        d.m > 1 ? static_cast<const uint8_t*>(argmax.raw_data()) : nullptr, p,
        post_scale.defined() ? static_cast<const T*>(post_scale.raw_data()) : nullptr,
        post_shift.defined() ? static_cast<const T*>(post_shift.raw_data()) : nullptr, explain, d,
        static_cast<T*>(grad_lin.raw_data()), want_q ? static_cast<T*>(grad_sumsq.raw_data()) : nullptr, ordered);
    BCOS_CUDA_CHECK_LAUNCH();
  });
}

}  // namespace bcos::cuda
