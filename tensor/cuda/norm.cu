// Row normalisation on the GPU (layer norm and group norm reduce to it), as
// tensor/cpu/norm.cpp: x viewed [rows, inner], mean and 1/sqrt(var + eps) per row accumulated
// in double, one warp per row (a thread per row read its row alone: 32 rows' cache lines per
// warp load, and ViT-B/16 at batch 64 has only 12,608 rows of 768). Batch norm has its own
// file, cuda/batch_norm.cu. The B-cos weights' unit rows live here too.
//   backward: grad_x = invstd · (g − mean(g) − x̂ · mean(g · x̂))
// Layer norm's affine map x̂ · w + b is applied in the forward pass, g · w formed in the backward
// one, and w's and b's gradients summed over the rows in a column kernel of their own (as
// PyTorch's, which also leaves them to a second kernel on the GPU).
#include <cmath>

#include "tensor/copy.h"
#include "tensor/cuda/internal.h"

namespace bcos::cuda {

namespace {

// One warp per row (blockDim (32, kRowWarps)): its lanes read the row coalesced; the row loop's
// bound is the same for a whole warp, so every lane reaches warp_sum. packed (rows of whole
// 16-byte packs, aligned tensors: internal.h): each lane reads and writes a pack at a time.

// f(j, a[j], b[j]) for each element j of a row that this lane takes (b may be a itself).
template <class T, class F>
__device__ __forceinline__ void lane_walk(const T* a, const T* b, int64_t inner, bool packed, F f) {
  if (packed) {
    constexpr int P = Pack<T>::kSize;
    for (int64_t q = threadIdx.x; q < inner / P; q += 32) {
      const Pack<T> va = pack_at(a, q), vb = b == a ? va : pack_at(b, q);
BCOS_UNROLL
      for (int k = 0; k < P; ++k) f(q * P + k, va.v[k], vb.v[k]);
    }
    return;
  }
  for (int64_t j = threadIdx.x; j < inner; j += 32) {
    const T va = a[j];
    f(j, va, b == a ? va : b[j]);
  }
}

// out[j] = f(j, a[j], b[j]) over the row, as lane_walk.
template <class T, class F>
__device__ __forceinline__ void lane_map(const T* a, const T* b, T* out, int64_t inner, bool packed, F f) {
  if (packed) {
    constexpr int P = Pack<T>::kSize;
    for (int64_t q = threadIdx.x; q < inner / P; q += 32) {
      const Pack<T> va = pack_at(a, q), vb = b == a ? va : pack_at(b, q);
      Pack<T> o;
BCOS_UNROLL
      for (int k = 0; k < P; ++k) o.v[k] = f(q * P + k, va.v[k], vb.v[k]);
      pack_at(out, q) = o;
    }
    return;
  }
  for (int64_t j = threadIdx.x; j < inner; j += 32) {
    const T va = a[j];
    out[j] = f(j, va, b == a ? va : b[j]);
  }
}

template <class T>
__global__ void row_norm_kernel(const T* x, int64_t rows, int64_t inner, double eps, const T* w, const T* b, T* out,
                                T* mean, T* invstd, bool packed) {
  const int64_t step = int64_t(gridDim.x) * blockDim.y;
  for (int64_t r = int64_t(blockIdx.x) * blockDim.y + threadIdx.y; r < rows; r += step) {
    const T* p = x + r * inner;
    double sum = 0, sq = 0;
    lane_walk(p, p, inner, packed, [&](int64_t, T v, T) { sum += double(v); });
    const double mu = warp_sum(sum) / double(inner);
    lane_walk(p, p, inner, packed, [&](int64_t, T v, T) {
      const double d = double(v) - mu;
      sq += d * d;
    });
    const double is = 1.0 / ::sqrt(warp_sum(sq) / double(inner) + eps);
    lane_map(p, p, out + r * inner, inner, packed, [&](int64_t j, T v, T) {
      double y = (double(v) - mu) * is;
      if (w != nullptr) y *= double(w[j]);
      if (b != nullptr) y += double(b[j]);
      return T(y);
    });
    if (threadIdx.x == 0) {
      mean[r] = T(mu);
      invstd[r] = T(is);
    }
  }
}

template <class T>
__global__ void row_norm_backward_kernel(const T* g, const T* x, int64_t rows, int64_t inner, const T* mean,
                                         const T* invstd, const T* w, T* gx, bool packed) {
  const int64_t step = int64_t(gridDim.x) * blockDim.y;
  // The gradient w.r.t. x̂: g · w, rounded to T as the CPU forms it.
  auto grad_xhat = [w](T gj, int64_t j) { return w != nullptr ? double(T(gj * w[j])) : double(gj); };
  for (int64_t r = int64_t(blockIdx.x) * blockDim.y + threadIdx.y; r < rows; r += step) {
    const T *gp = g + r * inner, *xp = x + r * inner;
    const double mu = double(mean[r]), is = double(invstd[r]);
    double sum_g = 0, sum_gx = 0;
    lane_walk(gp, xp, inner, packed, [&](int64_t j, T gj, T xj) {
      const double gh = grad_xhat(gj, j);
      sum_g += gh;
      sum_gx += gh * (double(xj) - mu) * is;
    });
    const double mean_g = warp_sum(sum_g) / double(inner), mean_gx = warp_sum(sum_gx) / double(inner);
    lane_map(gp, xp, gx + r * inner, inner, packed, [&](int64_t j, T gj, T xj) {
      const double xhat = (double(xj) - mu) * is;
      return T(is * (grad_xhat(gj, j) - mean_g - xhat * mean_gx));
    });
  }
}

// Layer norm's weight and bias gradients, Σ over rows of g · x̂ and of g, as cuda/reduce.cu's
// columns: a block's 32 lanes take 32 neighbouring columns (coalesced loads), its 8 warps every
// 8th row of the block's slice of rows (blockIdx.y). The warps combine in a fixed order; with
// several slices, partials [slice][inner] (weight's and bias's sums) go to the finish kernel,
// which adds them in slice order: the same bits every run.
constexpr int kAffineLanes = 32, kAffineWarps = 8;

template <class T>
__global__ void __launch_bounds__(kAffineLanes * kAffineWarps)
    row_norm_affine_partials(const T* g, const T* x, int64_t rows, int64_t inner, const T* mean, const T* invstd,
                             int64_t slice, double2* partials, T* gw, T* gb) {
  __shared__ double2 shared[kAffineWarps][kAffineLanes];
  const int64_t j = int64_t(blockIdx.x) * kAffineLanes + threadIdx.x;
  const int64_t begin = int64_t(blockIdx.y) * slice;
  const int64_t end = begin + slice < rows ? begin + slice : rows;
  double2 sums = {0.0, 0.0};  // Σ g · x̂, Σ g
  if (j < inner) {
    for (int64_t r = begin + threadIdx.y; r < end; r += kAffineWarps) {
      const double gj = double(g[r * inner + j]);
      sums.x += gj * ((double(x[r * inner + j]) - double(mean[r])) * double(invstd[r]));
      sums.y += gj;
    }
  }
  shared[threadIdx.y][threadIdx.x] = sums;
  __syncthreads();
  if (threadIdx.y != 0 || j >= inner) return;
  for (int k = 1; k < kAffineWarps; ++k) {
    sums.x += shared[k][threadIdx.x].x;
    sums.y += shared[k][threadIdx.x].y;
  }
  if (gridDim.y > 1) {
    partials[int64_t(blockIdx.y) * inner + j] = sums;
    return;
  }
  if (gw != nullptr) gw[j] = T(sums.x);
  if (gb != nullptr) gb[j] = T(sums.y);
}

template <class T>
__global__ void row_norm_affine_finish(const double2* partials, int splits, int64_t inner, T* gw, T* gb) {
  const int64_t step = int64_t(gridDim.x) * blockDim.x;
  for (int64_t j = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; j < inner; j += step) {
    double sw = 0, sb = 0;
    for (int s = 0; s < splits; ++s) {
      sw += partials[int64_t(s) * inner + j].x;
      sb += partials[int64_t(s) * inner + j].y;
    }
    if (gw != nullptr) gw[j] = T(sw);
    if (gb != nullptr) gb[j] = T(sb);
  }
}

// Unit rows (B-cos weights), a warp per row as above; as the CPU, the sum of squares in double
// and the quotient w / n in T.

template <class T>
__global__ void unit_rows_kernel(const T* w, int64_t rows, int64_t inner, T* out, T* norms) {
  const int64_t step = int64_t(gridDim.x) * blockDim.y;
  for (int64_t r = int64_t(blockIdx.x) * blockDim.y + threadIdx.y; r < rows; r += step) {
    const T* p = w + r * inner;
    double sq = 0;
    for (int64_t j = threadIdx.x; j < inner; j += 32) sq += double(p[j]) * double(p[j]);
    const T n = T(::sqrt(warp_sum(sq)));
    T* o = out + r * inner;
    for (int64_t j = threadIdx.x; j < inner; j += 32) o[j] = p[j] / n;
    if (threadIdx.x == 0) norms[r] = n;
  }
}

template <class T>
__global__ void unit_rows_backward_kernel(const T* g, const T* w, int64_t rows, int64_t inner, const T* norms,
                                          T* gw) {
  const int64_t step = int64_t(gridDim.x) * blockDim.y;
  for (int64_t r = int64_t(blockIdx.x) * blockDim.y + threadIdx.y; r < rows; r += step) {
    const T *gp = g + r * inner, *wp = w + r * inner;
    double dot = 0;
    for (int64_t j = threadIdx.x; j < inner; j += 32) dot += double(gp[j]) * double(wp[j]);
    dot = warp_sum(dot);
    const double n = double(norms[r]);
    const T inv = T(1.0 / n), c = T(dot / (n * n * n));
    T* o = gw + r * inner;
    for (int64_t j = threadIdx.x; j < inner; j += 32) o[j] = gp[j] * inv - wp[j] * c;
  }
}

}  // namespace

void unit_rows_forward(const Tensor& w_in, int64_t outer, int64_t inner, const Tensor& out, const Tensor& norms) {
  const Tensor w = raw_contiguous(w_in);
  if (outer == 0) return;
  const int device = w.device().index;
  DeviceGuard guard(device);
  cudaStream_t stream = stream_of(device);
  dispatch_float(w.dtype(), "cuda unit_rows", [&]<class T>() {
    unit_rows_kernel<<<row_warp_blocks(outer), dim3(32, kRowWarps), 0, stream>>>(
        static_cast<const T*>(w.raw_data()), outer, inner, static_cast<T*>(out.raw_data()),
        static_cast<T*>(norms.raw_data()));
    BCOS_CUDA_CHECK_LAUNCH();
  });
}

void unit_rows_backward(const Tensor& grad_in, const Tensor& w_in, int64_t outer, int64_t inner, const Tensor& norms,
                        const Tensor& grad_w) {
  const Tensor g = raw_contiguous(grad_in), w = raw_contiguous(w_in);
  if (outer == 0) return;
  const int device = w.device().index;
  DeviceGuard guard(device);
  cudaStream_t stream = stream_of(device);
  dispatch_float(w.dtype(), "cuda unit_rows backward", [&]<class T>() {
    unit_rows_backward_kernel<<<row_warp_blocks(outer), dim3(32, kRowWarps), 0, stream>>>(
        static_cast<const T*>(g.raw_data()), static_cast<const T*>(w.raw_data()), outer, inner,
        static_cast<const T*>(norms.raw_data()), static_cast<T*>(grad_w.raw_data()));
    BCOS_CUDA_CHECK_LAUNCH();
  });
}

namespace {
template <class T>
const T* maybe(const Tensor& t) {
  return t.defined() ? static_cast<const T*>(t.raw_data()) : nullptr;
}
template <class T>
T* maybe_out(const Tensor& t) {
  return t.defined() ? static_cast<T*>(t.raw_data()) : nullptr;
}

// Layer norm's weight and bias gradients (row_norm_backward's second kernel), on `stream`.
void affine_gradients(const Tensor& g, const Tensor& x, int64_t outer, int64_t inner, const Tensor& mean,
                      const Tensor& invstd, const Tensor& grad_weight, const Tensor& grad_bias, int device,
                      cudaStream_t stream) {
  // Slices of at least 16 rows a warp, enough of them for about 4 blocks an SM.
  const int64_t tiles = (inner + kAffineLanes - 1) / kAffineLanes;
  const int64_t per_block = int64_t(kAffineWarps) * 16;
  int64_t splits = std::min<int64_t>(std::max<int64_t>(1, (outer + per_block - 1) / per_block),
                                     std::max<int64_t>(1, 4 * multiprocessor_count(device) / tiles));
  splits = std::min<int64_t>(splits, 65535);  // gridDim.y limit
  const int64_t slice = std::max<int64_t>(1, (outer + splits - 1) / splits);
  splits = std::max<int64_t>(1, (outer + slice - 1) / slice);  // no empty slice
  std::shared_ptr<void> workspace;  // returned after the launches: reused only by later work on this stream
  if (splits > 1) workspace = allocate(size_t(splits * inner) * sizeof(double2), device);
  double2* partials = static_cast<double2*>(workspace.get());
  dispatch_float(x.dtype(), "cuda norm_backward", [&]<class T>() {
    const dim3 grid{unsigned(tiles), unsigned(splits)}, block{kAffineLanes, kAffineWarps};
    row_norm_affine_partials<<<grid, block, 0, stream>>>(
        static_cast<const T*>(g.raw_data()), static_cast<const T*>(x.raw_data()), outer, inner,
        static_cast<const T*>(mean.raw_data()), static_cast<const T*>(invstd.raw_data()), slice, partials,
        maybe_out<T>(grad_weight), maybe_out<T>(grad_bias));
    BCOS_CUDA_CHECK_LAUNCH();
    if (splits > 1) {
      row_norm_affine_finish<<<blocks_for(inner), kThreads, 0, stream>>>(
          partials, int(splits), inner, maybe_out<T>(grad_weight), maybe_out<T>(grad_bias));
      BCOS_CUDA_CHECK_LAUNCH();
    }
  });
}
}  // namespace

void row_norm_forward(const Tensor& x_in, int64_t outer, int64_t inner, double eps, const Tensor& weight_in,
                      const Tensor& bias_in, const Tensor& out, const Tensor& mean, const Tensor& invstd) {
  const Tensor x = raw_contiguous(x_in);
  const Tensor weight = weight_in.defined() ? raw_contiguous(weight_in) : Tensor();
  const Tensor bias = bias_in.defined() ? raw_contiguous(bias_in) : Tensor();
  if (outer == 0 || inner == 0) return;
  const int device = x.device().index;
  DeviceGuard guard(device);
  cudaStream_t stream = stream_of(device);
  dispatch_float(x.dtype(), "cuda norm", [&]<class T>() {
    const bool packed = packs_enabled() && inner % Pack<T>::kSize == 0 && aligned16(x.raw_data(), out.raw_data());
    row_norm_kernel<<<row_warp_blocks(outer), dim3(32, kRowWarps), 0, stream>>>(
        static_cast<const T*>(x.raw_data()), outer, inner, eps, maybe<T>(weight), maybe<T>(bias),
        static_cast<T*>(out.raw_data()), static_cast<T*>(mean.raw_data()), static_cast<T*>(invstd.raw_data()), packed);
    BCOS_CUDA_CHECK_LAUNCH();
  });
}


void row_norm_backward(const Tensor& grad_in, const Tensor& x_in, int64_t outer, int64_t inner, const Tensor& mean,
                       const Tensor& invstd, const Tensor& weight_in, const Tensor& grad_x,
                       const Tensor& grad_weight, const Tensor& grad_bias) {
  const Tensor g = raw_contiguous(grad_in), x = raw_contiguous(x_in);
  const Tensor weight = weight_in.defined() ? raw_contiguous(weight_in) : Tensor();
  if (inner == 0) return;
  const int device = x.device().index;
  DeviceGuard guard(device);
  cudaStream_t stream = stream_of(device);
  if (grad_weight.defined() || grad_bias.defined())
    affine_gradients(g, x, outer, inner, mean, invstd, grad_weight, grad_bias, device, stream);
  if (!grad_x.defined() || outer == 0) return;
  dispatch_float(x.dtype(), "cuda norm_backward", [&]<class T>() {
    const bool packed = packs_enabled() && inner % Pack<T>::kSize == 0 &&
                        aligned16(g.raw_data(), x.raw_data(), grad_x.raw_data());
    row_norm_backward_kernel<<<row_warp_blocks(outer), dim3(32, kRowWarps), 0, stream>>>(
        static_cast<const T*>(g.raw_data()), static_cast<const T*>(x.raw_data()), outer, inner,
        static_cast<const T*>(mean.raw_data()), static_cast<const T*>(invstd.raw_data()), maybe<T>(weight),
        static_cast<T*>(grad_x.raw_data()), packed);
    BCOS_CUDA_CHECK_LAUNCH();
  });
}

}  // namespace bcos::cuda
