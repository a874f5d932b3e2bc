// B-cos kernels on the GPU, as tensor/cpu/bcos.cpp computes them (its comments give the
// formulas): the patch norms Σ x² over each group's channels and the conv's window, the B-cos
// scale with max-out, and the uncentred batch norm's backward (in cuda/batch_norm.cu). The patch
// norms are summed over channels first, then over the window (below); the scale walks a position's
// channels (further below). No atomics: every sum is added in a fixed order, so each result is the
// same on every run, deterministic_algorithms() or not.
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
// reads) -- W per lane: 1, or a 16-byte pack (internal.h) where it divides the plane and x is
// aligned -- its 8 rows of threads every 8th channel; the rows' partials are added in row order
// (each position's sum in the same order either way: the same bits).
constexpr int kChannelRows = 8;
template <class T, int W>
__global__ void channel_sumsq_kernel(const T* x, T* sq, int64_t ngs, int64_t cg, int64_t plane) {
  __shared__ T part[kChannelRows][32 * W];
  const int tx = threadIdx.x, ty = threadIdx.y;
  for (int64_t ng = blockIdx.y; ng < ngs; ng += gridDim.y)
    for (int64_t base = int64_t(blockIdx.x) * 32 * W; base < plane; base += int64_t(gridDim.x) * 32 * W) {
      const int64_t i = base + tx * W;  // the lane's first position (W > 1: all W inside the plane)
      T sum[W] = {};
      if (i < plane) {
        const T* column = x + ng * cg * plane + i;
        for (int64_t c = ty; c < cg; c += kChannelRows) {
          if constexpr (W == 1) {
            const T v = column[c * plane];
            sum[0] += v * v;
          } else {
            const Pack<T> v = pack_at(column + c * plane, 0);
BCOS_UNROLL
            for (int k = 0; k < W; ++k) sum[k] += v.v[k] * v.v[k];
          }
        }
      }
BCOS_UNROLL
      for (int k = 0; k < W; ++k) part[ty][k * 32 + tx] = sum[k];
      __syncthreads();
      if (ty == 0 && i < plane) {
BCOS_UNROLL
        for (int k = 0; k < W; ++k) {
          T total = part[0][k * 32 + tx];
          for (int r = 1; r < kChannelRows; ++r) total += part[r][k * 32 + tx];
          sq[ng * plane + i + k] = total;
        }
      }
      __syncthreads();  // part is rewritten by the next position block
    }
}

// A linear layer's rows ([rows, K, 1, 1]): out[r] = Σ_j x[r, j]², a warp per row; packed (x
// aligned, K a multiple of the pack): each lane reads 16-byte packs (internal.h).
template <class T>
__global__ void row_sumsq_kernel(const T* x, T* out, int64_t rows, int64_t k, bool packed) {
  const int64_t step = int64_t(gridDim.x) * blockDim.y;
  for (int64_t r = int64_t(blockIdx.x) * blockDim.y + threadIdx.y; r < rows; r += step) {
    const T* row = x + r * k;
    T sum = 0;
    if (packed) {
      constexpr int P = Pack<T>::kSize;
      for (int64_t j = threadIdx.x; j < k / P; j += 32) {
        const Pack<T> v = pack_at(row, j);
BCOS_UNROLL
        for (int q = 0; q < P; ++q) sum += v.v[q] * v.v[q];
      }
    } else {
      for (int64_t j = threadIdx.x; j < k; j += 32) sum += row[j] * row[j];
    }
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

// The backward, ∂sumsq/∂x = 2x · Σ_{windows ∋ pixel} g, also in two steps: acc[ng, ih, iw], the sum
// of g over the windows that hold the pixel (for each tap, the output whose window puts that tap
// on it, if there is one: a gather, a thread per pixel adding its terms in tap order -- no
// atomics, the same sum on every run), then gx = 2 x · acc of the pixel's (sample, group).
// (Taps last to first: the windows in output order, as the CPU adds them.)
template <class T, class I>
__global__ void patch_gather_kernel(const T* g, T* acc, PatchShape s, Pool2dParams p, PlaneCoords<I> coords) {
  const I count = I(s.ng * s.h * s.w);
  for (I i = I(blockIdx.x) * blockDim.x + threadIdx.x; i < count; i += I(gridDim.x) * blockDim.x) {
    const auto at = coords(i);
    const T* plane = g + int64_t(at.plane) * s.ho * s.wo;
    T sum = 0;
    for (int64_t ki = p.kernel[0] - 1; ki >= 0; --ki) {
      const int64_t th = int64_t(at.row) + p.padding[0] - ki * p.dilation[0];
      if (th < 0 || th % p.stride[0] != 0 || th / p.stride[0] >= s.ho) continue;
      for (int64_t kj = p.kernel[1] - 1; kj >= 0; --kj) {
        const int64_t tw = int64_t(at.col) + p.padding[1] - kj * p.dilation[1];
        if (tw < 0 || tw % p.stride[1] != 0 || tw / p.stride[1] >= s.wo) continue;
        sum += plane[th / p.stride[0] * s.wo + tw / p.stride[1]];
      }
    }
    acc[i] = sum;
  }
}

// gx[ng·cg + c, pixel] = 2 x · acc[ng, pixel] (ACCUMULATE: added to gx's value); plane = h·w,
// channels = cg. In 16-byte packs (internal.h) of P elements where they fit (aligned tensors):
//   PatchPacks::pixels   P divides the plane: a pack's pixels are consecutive in one plane, and
//                        so are their acc values (a pack of acc);
//   PatchPacks::channels a linear layer's rows (plane 1) with P dividing cg: a pack's channels
//                        share one acc value.
enum class PatchPacks { none, pixels, channels };

template <class T, bool ACCUMULATE>
__device__ __forceinline__ T patch_grad_term(T gx, T x, T acc) {
  const T term = T(2) * x * acc;
  return ACCUMULATE ? gx + term : term;  // (may be one fma, as on the CPU)
}

template <class T, class I, bool ACCUMULATE>
__global__ void patch_grad_kernel(const T* x, const T* acc, T* gx, I count, Divisor<I> plane, Divisor<I> channels,
                                  PatchPacks packs) {
  const I first = I(blockIdx.x) * blockDim.x + threadIdx.x, step = I(gridDim.x) * blockDim.x;
  if (packs != PatchPacks::none) {
    constexpr int P = Pack<T>::kSize;
    for (I q = first; q < count / P; q += step) {
      const I row = plane.div(q * P), at = channels.div(row) * plane.d + (q * P - row * plane.d);
      Pack<T> a;
      if (packs == PatchPacks::pixels) {
        a = pack_at(acc, at / P);
      } else {
BCOS_UNROLL
        for (int j = 0; j < P; ++j) a.v[j] = acc[at];
      }
      const Pack<T> xp = pack_at(x, q);
      Pack<T> o{};  // zeros, unread, where not accumulating (as the element path's T(0))
      if constexpr (ACCUMULATE) o = pack_at(gx, q);
BCOS_UNROLL
      for (int j = 0; j < P; ++j) o.v[j] = patch_grad_term<T, ACCUMULATE>(o.v[j], xp.v[j], a.v[j]);
      pack_at(gx, q) = o;
    }
    return;
  }
  for (I i = first; i < count; i += step) {
    const I row = plane.div(i), pixel = i - row * plane.d;
    gx[i] = patch_grad_term<T, ACCUMULATE>(ACCUMULATE ? gx[i] : T(0), x[i], acc[channels.div(row) * plane.d + pixel]);
  }
}

// ---- the scale ---------------------------------------------------------------------------------
// Every output of one (sample, group, position) shares that position's norm, and in the backward
// the group's channels sum their terms into its one norm gradient. So a thread takes a (sample,
// group, position) and walks channels: the norm is read once, no index is divided per element,
// and the norm gradient is a sum in registers, then across the block in a fixed order -- not an
// atomicAdd per element into one address per row (a linear layer's 3,072 outputs of a token all
// added into one float), and the same result on every run.
//   wide (S >= kWidePositions): blocks of 32 neighbouring positions (coalesced; 32 packs of them
//     without max-out where S allows) x 8 channel rows; grid (position tiles, planes, channel
//     chunks); with several chunks the backward's per-chunk sums go to partials [chunks, N·G, S],
//     added in chunk order by scale_chunks_kernel.
//   narrow (S < kWidePositions: linear layers' S = 1): a warp per (sample, group, position), its
//     lanes over the group's channels, a warp sum.
constexpr int64_t kWidePositions = 16;

struct ScaleShape {
  int64_t n, o, s, m, groups, per_group;
};

template <class T>
struct ScaleArgs {
  ScaleShape d;
  BcosScaleParams p;
  const T* sumsq;                        // [N, G, S], or nullptr (b = 1)
  const T* post_scale;                   // [O] with post_shift, or nullptr
  const T* post_shift;
  const T* lin;                          // forward: [N, O·M, S]
  T* out;                                // forward: [N, O, S]
  T* value;                              // [N, O, S] when M > 1: forward writes, backward reads (else lin)
  uint8_t* argmax;                       // [N, O, S] when M > 1: likewise
  const T* grad;                         // backward: [N, O, S]
  bool explain;                          // backward: s is a constant
  T* grad_lin;                           // backward: [N, O·M, S]
  T* grad_sumsq;                         // backward: [N, G, S] or nullptr (not wanted)
};

// A position's norm terms: root = sqrt(Σ x² + eps_in), inv = 1 / (root + eps_out).
template <class T>
struct Norm {
  T root = 1, inv = 1;
};

template <class T>
__device__ __forceinline__ Norm<T> norm_at(const ScaleArgs<T>& a, int64_t q) {
  Norm<T> r;
  if (a.sumsq) {
    r.root = sqrt(a.sumsq[q] + T(a.p.eps_in));
    r.inv = T(1) / (r.root + T(a.p.eps_out));
  }
  return r;
}

// The scaled output of value v, before any epilogue; the backward recomputes it with this same
// code for the epilogue's ReLU mask. Its one multiply-add is an explicit fma: left to nvcc
// (--fmad=true), the two kernels could contract it differently and disagree on the mask.
template <class T>
__device__ __forceinline__ T scaled(T v, const ScaleArgs<T>& a, Norm<T> r) {
  if (!a.sumsq) return v;
  return a.p.b == 2 ? fabs(v) * v * r.inv : pow(math::Math<T>::fma(fabs(v), r.inv, T(1e-6)), T(a.p.b - 1)) * v;
}

// Output channel oc's value from its max-out winner v: scale, epilogue.
template <class T>
__device__ __forceinline__ T scale_forward_value(const ScaleArgs<T>& a, T v, int64_t oc, Norm<T> r) {
  T y = scaled(v, a, r);
  if (a.post_scale) {
    y = math::Math<T>::fma(y, a.post_scale[oc], a.post_shift[oc]);
    if (a.p.relu) y = y < T(0) ? T(0) : y;  // as relu: NaN stays NaN
  }
  return y;
}

// The forward of output (sample, channel oc, position j): max-out, scale, epilogue.
template <class T>
__device__ __forceinline__ void scale_forward_at(const ScaleArgs<T>& a, int64_t sample, int64_t oc, int64_t j,
                                                 Norm<T> r) {
  const ScaleShape& d = a.d;
  const int64_t i = (sample * d.o + oc) * d.s + j;
  const T* l = a.lin + (sample * d.o + oc) * d.m * d.s + j;
  T v = l[0];
  uint8_t win = 0;
  for (int64_t k = 1; k < d.m; ++k)
    if (l[k * d.s] > v) v = l[k * d.s], win = uint8_t(k);
  if (d.m > 1) a.value[i] = v, a.argmax[i] = win;
  a.out[i] = scale_forward_value(a, v, oc, r);
}

// The backward through channel oc's scale and epilogue, at winner v with output gradient g: the
// gradient for v, and (gq) its term of the norm's gradient.
template <class T>
__device__ __forceinline__ T scale_backward_value(const ScaleArgs<T>& a, T v, T g, int64_t oc, Norm<T> r, T& gq_out) {
  const BcosScaleParams& p = a.p;
  if (a.post_scale) {
    const T scale = a.post_scale[oc];
    const bool live = !p.relu || math::Math<T>::fma(scaled(v, a, r), scale, a.post_shift[oc]) > T(0);
    g = live ? g * scale : T(0);
  }
  T gv = g, gq = 0;
  if (a.sumsq) {
    if (p.b == 2) {
      gv = a.explain ? g * fabs(v) * r.inv : g * T(2) * fabs(v) * r.inv;
      if (!a.explain) gq = -g * fabs(v) * v * r.inv * r.inv / (T(2) * r.root);
    } else {
      const T e = T(p.b - 1), u = fabs(v) * r.inv, base = u + T(1e-6), sc = pow(base, e);
      if (a.explain) {
        gv = g * sc;
      } else {
        const T t = e * sc / base * u;
        gv = g * (sc + t);
        gq = -g * t * v * r.inv / (T(2) * r.root);
      }
    }
  }
  gq_out = gq;
  return gv;
}

// The backward of output (sample, oc, j): writes its M entries of grad_lin (the max-out's winner
// gets the gradient, the others 0) and returns its term of the norm's gradient.
template <class T>
__device__ __forceinline__ T scale_backward_at(const ScaleArgs<T>& a, int64_t sample, int64_t oc, int64_t j,
                                               Norm<T> r) {
  const ScaleShape& d = a.d;
  const int64_t i = (sample * d.o + oc) * d.s + j;
  T gq;
  const T gv = scale_backward_value(a, a.value[i], a.grad[i], oc, r, gq);
  const int64_t win = d.m > 1 ? a.argmax[i] : 0;
  T* gl = a.grad_lin + (sample * d.o + oc) * d.m * d.s + j;
  for (int64_t k = 0; k < d.m; ++k) gl[k * d.s] = k == win ? gv : T(0);
  return gq;
}

constexpr int kScaleRows = 8;

// Block (32, kScaleRows); grid (position tiles, planes, chunks of `chunk` channels of a group).
// W positions per lane: 1, or a 16-byte pack (internal.h) where there is no max-out (M = 1), the
// pack divides S (a pack's positions are then in one plane, its outputs and inputs consecutive)
// and the tensors are aligned; a tile is 32 W positions. A position's norm-gradient terms add in
// the same order either way (its row's channels in order, then the rows, then the chunks), but
// with fewer tiles the launch may split the channels into more chunks (fewer blocks to fill the GPU).
template <class T, bool BACKWARD, int W>
__global__ void scale_wide_kernel(ScaleArgs<T> a, int64_t chunk, T* partials) {
  __shared__ T part[kScaleRows][32 * W];
  const ScaleShape& d = a.d;
  const int tx = threadIdx.x, ty = threadIdx.y;
  const int64_t planes = d.n * d.groups;
  const int64_t c0 = int64_t(blockIdx.z) * chunk, c1 = c0 + chunk < d.per_group ? c0 + chunk : d.per_group;
  for (int64_t ng = blockIdx.y; ng < planes; ng += gridDim.y) {
    const int64_t sample = ng / d.groups, first = ng % d.groups * d.per_group;
    for (int64_t base = int64_t(blockIdx.x) * 32 * W; base < d.s; base += int64_t(gridDim.x) * 32 * W) {
      const int64_t j = base + tx * W;  // the lane's first position (W > 1: all W < S, as W divides S)
      T sum[W] = {};
      if (j < d.s) {
        Norm<T> r[W];
BCOS_UNROLL
        for (int k = 0; k < W; ++k) r[k] = norm_at(a, ng * d.s + j + k);
        for (int64_t c = c0 + ty; c < c1; c += kScaleRows) {
          const int64_t oc = first + c;
          if constexpr (W == 1) {
            if constexpr (BACKWARD) sum[0] += scale_backward_at(a, sample, oc, j, r[0]);
            else scale_forward_at(a, sample, oc, j, r[0]);
          } else {
            const int64_t q = ((sample * d.o + oc) * d.s + j) / W;  // M = 1: lin, out and grads alike
            Pack<T> o;
            if constexpr (BACKWARD) {
              const Pack<T> v = pack_at(static_cast<const T*>(a.value), q), g = pack_at(a.grad, q);
BCOS_UNROLL
              for (int k = 0; k < W; ++k) {
                T gq;
                o.v[k] = scale_backward_value(a, v.v[k], g.v[k], oc, r[k], gq);
                sum[k] += gq;
              }
              pack_at(a.grad_lin, q) = o;
            } else {
              const Pack<T> v = pack_at(a.lin, q);
BCOS_UNROLL
              for (int k = 0; k < W; ++k) o.v[k] = scale_forward_value(a, v.v[k], oc, r[k]);
              pack_at(a.out, q) = o;
            }
          }
        }
      }
      if constexpr (BACKWARD) {
        if (!a.grad_sumsq) continue;  // uniform across the block
BCOS_UNROLL
        for (int k = 0; k < W; ++k) part[ty][k * 32 + tx] = sum[k];
        __syncthreads();
        if (ty == 0 && j < d.s) {
BCOS_UNROLL
          for (int k = 0; k < W; ++k) {
            T total = part[0][k * 32 + tx];
            for (int row = 1; row < kScaleRows; ++row) total += part[row][k * 32 + tx];
            if (gridDim.z == 1) a.grad_sumsq[ng * d.s + j + k] = total;
            else partials[(int64_t(blockIdx.z) * planes + ng) * d.s + j + k] = total;
          }
        }
        __syncthreads();  // part is rewritten by the next tile
      }
    }
  }
}

// grad_sumsq[q] = Σ_z partials[z, q], in chunk order.
template <class T>
__global__ void scale_chunks_kernel(const T* partials, int64_t chunks, int64_t count, T* grad_sumsq) {
  BCOS_GRID_LOOP(q, count) {
    T total = partials[q];
    for (int64_t z = 1; z < chunks; ++z) total += partials[z * count + q];
    grad_sumsq[q] = total;
  }
}

// Block (32, kRowWarps): a warp per (sample, group, position) unit. packed: a linear layer
// without max-out (S = 1, M = 1) whose group's channels are whole 16-byte packs (internal.h) and
// whose tensors are aligned: a unit's outputs, inputs and gradients are then consecutive, and
// each lane takes a pack of channels at a time (B-cos ViT's rows of 768 and 3,072).
template <class T, bool BACKWARD>
__global__ void scale_narrow_kernel(ScaleArgs<T> a, bool packed) {
  const ScaleShape& d = a.d;
  const int64_t units = d.n * d.groups * d.s, step = int64_t(gridDim.x) * blockDim.y;
  for (int64_t unit = int64_t(blockIdx.x) * blockDim.y + threadIdx.y; unit < units; unit += step) {
    const int64_t j = unit % d.s, ng = unit / d.s;
    const int64_t sample = ng / d.groups, first = ng % d.groups * d.per_group;
    const Norm<T> r = norm_at(a, unit);
    T sum = 0;
    if (packed) {
      constexpr int P = Pack<T>::kSize;
      const int64_t at = (sample * d.o + first) / P;  // the unit's first pack
      for (int64_t c = threadIdx.x; c < d.per_group / P; c += 32) {
        const int64_t oc = first + c * P;
        Pack<T> o;
        if constexpr (BACKWARD) {
          const Pack<T> v = pack_at(static_cast<const T*>(a.value), at + c), g = pack_at(a.grad, at + c);
BCOS_UNROLL
          for (int k = 0; k < P; ++k) {
            T gq;
            o.v[k] = scale_backward_value(a, v.v[k], g.v[k], oc + k, r, gq);
            sum += gq;
          }
          pack_at(a.grad_lin, at + c) = o;
        } else {
          const Pack<T> v = pack_at(a.lin, at + c);
BCOS_UNROLL
          for (int k = 0; k < P; ++k) o.v[k] = scale_forward_value(a, v.v[k], oc + k, r);
          pack_at(a.out, at + c) = o;
        }
      }
    } else {
      for (int64_t c = threadIdx.x; c < d.per_group; c += 32) {
        if constexpr (BACKWARD) sum += scale_backward_at(a, sample, first + c, j, r);
        else scale_forward_at(a, sample, first + c, j, r);
      }
    }
    if constexpr (BACKWARD) {
      if (a.grad_sumsq) {  // uniform across the warp
        sum = warp_sum(sum);
        if (threadIdx.x == 0) a.grad_sumsq[unit] = sum;
      }
    }
  }
}

// Queues the forward or backward over a.d's outputs.
template <class T, bool BACKWARD>
void launch_scale(const ScaleArgs<T>& a, int device, cudaStream_t stream) {
  const ScaleShape& d = a.d;
  const int64_t planes = d.n * d.groups;
  if (d.s < kWidePositions) {
    const bool packed = packs_enabled() && d.s == 1 && d.m == 1 && d.per_group % Pack<T>::kSize == 0 &&
                        (BACKWARD ? aligned16(a.value, a.grad, a.grad_lin) : aligned16(a.lin, a.out));
    scale_narrow_kernel<T, BACKWARD><<<row_warp_blocks(planes * d.s), dim3(32, kRowWarps), 0, stream>>>(a, packed);
    BCOS_CUDA_CHECK_LAUNCH();
    return;
  }
  constexpr int P = Pack<T>::kSize;
  const bool packed = packs_enabled() && d.m == 1 && d.s % P == 0 &&
                      (BACKWARD ? aligned16(a.value, a.grad, a.grad_lin) : aligned16(a.lin, a.out));
  // Enough blocks to fill the GPU (8 of 256 threads per SM), in chunks of at least 32 channels.
  const int64_t tile = packed ? 32 * P : 32, tiles = (d.s + tile - 1) / tile;
  const int64_t spread = std::min<int64_t>(tiles, kMaxBlocks) * std::min<int64_t>(planes, 65535);
  const int64_t wanted = (8 * int64_t(multiprocessor_count(device)) + spread - 1) / spread;
  int64_t chunks = std::clamp<int64_t>(wanted, 1, (d.per_group + 31) / 32);
  const int64_t chunk = (d.per_group + chunks - 1) / chunks;
  chunks = (d.per_group + chunk - 1) / chunk;
  std::shared_ptr<void> partials;
  if (BACKWARD && a.grad_sumsq && chunks > 1)
    partials = allocate(size_t(chunks * planes * d.s) * sizeof(T), device);
  const dim3 grid(unsigned(std::min<int64_t>(tiles, kMaxBlocks)), unsigned(std::min<int64_t>(planes, 65535)),
                  unsigned(chunks));
  if (packed) {
    scale_wide_kernel<T, BACKWARD, P><<<grid, dim3(32, kScaleRows), 0, stream>>>(a, chunk, static_cast<T*>(partials.get()));
  } else {
    scale_wide_kernel<T, BACKWARD, 1><<<grid, dim3(32, kScaleRows), 0, stream>>>(a, chunk, static_cast<T*>(partials.get()));
  }
  BCOS_CUDA_CHECK_LAUNCH();
  if (partials) {
    scale_chunks_kernel<<<blocks_for(planes * d.s), kThreads, 0, stream>>>(static_cast<const T*>(partials.get()), chunks,
                                                                          planes * d.s, a.grad_sumsq);
    BCOS_CUDA_CHECK_LAUNCH();
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
  const bool pointwise = pool::is_pointwise(p);
  dispatch_float(x.dtype(), "cuda bcos_patch_sumsq", [&]<class T>() {
    const T* px = static_cast<const T*>(x.raw_data());
    if (pointwise && plane == 1) {
      const bool packed = packs_enabled() && s.cg % Pack<T>::kSize == 0 && aligned16(px);
      row_sumsq_kernel<<<row_warp_blocks(s.ng), dim3(32, kRowWarps), 0, stream>>>(px, static_cast<T*>(out.raw_data()),
                                                                                 s.ng, s.cg, packed);
      BCOS_CUDA_CHECK_LAUNCH();
      return;
    }
    // Pointwise, the channels' sums are the output; otherwise a plane of them per (sample, group).
    const Tensor sq = pointwise ? out : empty({s.ng, s.h, s.w}, {x.dtype(), x.device()});
    // (An empty plane under a padded window leaves zero sums: one block that skips its loop.)
    constexpr int P = Pack<T>::kSize;
    const bool packed = packs_enabled() && plane % P == 0 && aligned16(px);
    const int64_t tile = packed ? 32 * P : 32;
    const dim3 grid(unsigned(std::clamp<int64_t>((plane + tile - 1) / tile, 1, kMaxBlocks)),
                    unsigned(std::clamp<int64_t>(s.ng, 1, 65535)));
    if (packed) {
      channel_sumsq_kernel<T, P><<<grid, dim3(32, kChannelRows), 0, stream>>>(px, static_cast<T*>(sq.raw_data()), s.ng,
                                                                            s.cg, plane);
    } else {
      channel_sumsq_kernel<T, 1><<<grid, dim3(32, kChannelRows), 0, stream>>>(px, static_cast<T*>(sq.raw_data()), s.ng,
                                                                            s.cg, plane);
    }
    BCOS_CUDA_CHECK_LAUNCH();
    if (pointwise) return;
    window_sum_kernel<<<blocks_for(out.numel()), kThreads, 0, stream>>>(static_cast<const T*>(sq.raw_data()),
                                                                          static_cast<T*>(out.raw_data()), s, p);
    BCOS_CUDA_CHECK_LAUNCH();
  });
}

void bcos_patch_sumsq_backward(const Tensor& grad_in, const Tensor& x_in, int64_t groups, const Pool2dParams& p,
                               const Tensor& grad_x, bool accumulate) {
  const Tensor x = raw_contiguous(x_in), grad = raw_contiguous(grad_in);
  const PatchShape s{x.size(0) * groups, x.size(1) / groups, x.size(2), x.size(3), grad.size(2), grad.size(3)};
  if (grad_x.numel() == 0) return;
  const int device = x.device().index;
  DeviceGuard guard(device);
  cudaStream_t stream = stream_of(device);
  // Pointwise (1 x 1, stride 1, no padding) each pixel lies in its own window only: acc is g.
  const bool pointwise = pool::is_pointwise(p);
  const Tensor acc = pointwise ? grad : empty({s.ng, s.h, s.w}, {x.dtype(), x.device()});
  dispatch_float(x.dtype(), "cuda bcos_patch_sumsq_backward", [&]<class T>() {
    if (!pointwise)
      with_index(acc.numel(), [&]<class I>() {
        patch_gather_kernel<T, I><<<blocks_for(acc.numel()), kThreads, 0, stream>>>(
            static_cast<const T*>(grad.raw_data()), static_cast<T*>(acc.raw_data()), s, p, PlaneCoords<I>(s.h, s.w));
        BCOS_CUDA_CHECK_LAUNCH();
      });
    with_index(grad_x.numel(), [&]<class I>() {
      const T* px = static_cast<const T*>(x.raw_data());
      const T* pacc = static_cast<const T*>(acc.raw_data());
      T* pgx = static_cast<T*>(grad_x.raw_data());
      constexpr int64_t P = Pack<T>::kSize;
      const int64_t area = s.h * s.w;
      const PatchPacks packs = !packs_enabled() || !aligned16(px, pacc, pgx) ? PatchPacks::none
                               : area % P == 0           ? PatchPacks::pixels
                               : area == 1 && s.cg % P == 0 ? PatchPacks::channels
                                                            : PatchPacks::none;
      const unsigned blocks = blocks_for(packs == PatchPacks::none ? grad_x.numel() : grad_x.numel() / P);
      const Divisor<I> plane(area), channels(s.cg);
      if (accumulate) {
        patch_grad_kernel<T, I, true><<<blocks, kThreads, 0, stream>>>(px, pacc, pgx, I(grad_x.numel()), plane, channels,
                                                                       packs);
      } else {
        patch_grad_kernel<T, I, false><<<blocks, kThreads, 0, stream>>>(px, pacc, pgx, I(grad_x.numel()), plane,
                                                                        channels, packs);
      }
      BCOS_CUDA_CHECK_LAUNCH();
    });
  });
}

void bcos_scale_forward(const Tensor& lin, const Tensor& sumsq, const BcosScaleParams& p, const Tensor& post_scale,
                        const Tensor& post_shift, const Tensor& out, const Tensor& value, const Tensor& argmax) {
  const int64_t groups = sumsq.defined() ? sumsq.size(1) : 1;
  const ScaleShape d{out.size(0), out.size(1), out.size(2), p.max_out, groups, out.size(1) / groups};
  if (out.numel() == 0) return;
  const int device = out.device().index;
  DeviceGuard guard(device);
  dispatch_float(lin.dtype(), "cuda bcos_scale", [&]<class T>() {
    ScaleArgs<T> a{};
    a.d = d, a.p = p;
    a.sumsq = sumsq.defined() ? static_cast<const T*>(sumsq.raw_data()) : nullptr;
    a.post_scale = post_scale.defined() ? static_cast<const T*>(post_scale.raw_data()) : nullptr;
    a.post_shift = post_shift.defined() ? static_cast<const T*>(post_shift.raw_data()) : nullptr;
    a.lin = static_cast<const T*>(lin.raw_data());
    a.out = static_cast<T*>(out.raw_data());
    a.value = d.m > 1 ? static_cast<T*>(value.raw_data()) : nullptr;
    a.argmax = d.m > 1 ? static_cast<uint8_t*>(argmax.raw_data()) : nullptr;
    launch_scale<T, false>(a, device, stream_of(device));
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
  const bool want_q = grad_sumsq.defined() && !explain && sumsq.defined();
  if (grad_sumsq.defined() && (!want_q || d.per_group == 0)) zero(grad_sumsq, stream);  // no terms to add
  if (grad.numel() == 0) return;
  dispatch_float(grad.dtype(), "cuda bcos_scale_backward", [&]<class T>() {
    ScaleArgs<T> a{};
    a.d = d, a.p = p;
    a.sumsq = sumsq.defined() ? static_cast<const T*>(sumsq.raw_data()) : nullptr;
    a.post_scale = post_scale.defined() ? static_cast<const T*>(post_scale.raw_data()) : nullptr;
    a.post_shift = post_shift.defined() ? static_cast<const T*>(post_shift.raw_data()) : nullptr;
    a.value = static_cast<T*>(value.raw_data());  // read only here
    a.argmax = d.m > 1 ? static_cast<uint8_t*>(argmax.raw_data()) : nullptr;
    a.grad = static_cast<const T*>(grad.raw_data());
    a.explain = explain;
    a.grad_lin = static_cast<T*>(grad_lin.raw_data());
    a.grad_sumsq = want_q ? static_cast<T*>(grad_sumsq.raw_data()) : nullptr;
    launch_scale<T, true>(a, device, stream);
  });
}

}  // namespace bcos::cuda
