// index_select / index_add (its backward; embeddings use both) and gather / scatter_add (its
// backward; cross-entropy uses both) on the GPU, as tensor/cpu/indexing.cpp: for index_select
// x viewed contiguous [outer, D, inner]; for gather one thread per index element. Each kernel
// checks the indices it reads: a bad one is skipped (a read gives 0) and reported, and raised as a
// bcos::Error naming it at the next synchronisation (fault.cu) -- never a stray memory access, and
// no round trip through the host per op. index_add accumulates with atomicAdd (repeated
// indices), in a fixed order under deterministic_algorithms().
#include "tensor/kernel_views.h"
#include "tensor/copy.h"

#include "tensor/cuda/internal.h"

namespace bcos::cuda {

namespace {

// An empty output reads no index, yet its indices must still be valid (as on the CPU).
__global__ void check_indices_kernel(const int64_t* index, int64_t n, IndexCheck check) {
  const int64_t step = int64_t(gridDim.x) * blockDim.x;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += step) index_in_range(check, index[i]);
}

void check_only(const Tensor& index, const IndexCheck& check, cudaStream_t stream) {
  if (index.numel() == 0) return;
  check_indices_kernel<<<blocks_for(index.numel()), kThreads, 0, stream>>>(
      static_cast<const int64_t*>(index.raw_data()), index.numel(), check);
  BCOS_CUDA_CHECK_LAUNCH();
}

template <class T>
__global__ void index_select_kernel(const T* x, const int64_t* index, T* out, DimView s, int64_t k, IndexCheck check) {
  const int64_t n = s.outer * k * s.inner, step = int64_t(gridDim.x) * blockDim.x;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += step) {
    const int64_t c = i % s.inner, r = i / s.inner, o = r / k, j = r % k, at = index[j];
    out[i] = index_in_range(check, at) ? x[(o * s.d + at) * s.inner + c] : T(0);
  }
}

// ordered: one thread per (outer, inner) column adds the k rows in index order, so repeated
// indices sum in the same order every run (deterministic_algorithms()).
template <class T>
__global__ void index_add_kernel(T* out, const int64_t* index, const T* src, DimView s, int64_t k, bool ordered,
                                 IndexCheck check) {
  const int64_t per = ordered ? k : 1, n = s.outer * k * s.inner / per, step = int64_t(gridDim.x) * blockDim.x;
  for (int64_t unit = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; unit < n; unit += step)
    for (int64_t t = 0; t < per; ++t) {
      // unordered: unit is the element of src; ordered: unit is a column (o, c), t its row.
      const int64_t i = ordered ? ((unit / s.inner) * k + t) * s.inner + unit % s.inner : unit;
      const int64_t c = i % s.inner, r = i / s.inner, o = r / k, j = r % k, at = index[j];
      if (index_in_range(check, at)) atomicAdd(out + (o * s.d + at) * s.inner + c, src[i]);
    }
}

// Where index element i (index contiguous, of `shape`) points in a tensor with `strides`: its
// own position in every dim but `dim`, where it takes the index value.
struct IndexWalk {
  int ndim = 0, dim = 0;
  int64_t shape[kMaxDims] = {}, strides[kMaxDims] = {};
  int64_t inner = 1;  // elements after `dim` in the index
  // Index element t along `dim` of line `line` (the index's elements that differ only in their
  // position along `dim`: the only ones that can meet in one destination).
  __device__ int64_t along(int64_t line, int64_t t) const {
    return ((line / inner) * shape[dim] + t) * inner + line % inner;
  }
  __device__ int64_t offset(int64_t i, int64_t value) const {
    int64_t off = 0;
    for (int d = ndim - 1; d >= 0; --d) {
      const int64_t p = i % shape[d];
      i /= shape[d];
      off += (d == dim ? value : p) * strides[d];
    }
    return off;
  }
};

IndexWalk walk_of(const Tensor& index, int dim, const Strides& strides) {
  IndexWalk w;
  w.ndim = index.dim(), w.dim = dim;
  for (int d = 0; d < w.ndim; ++d) w.shape[d] = index.size(d), w.strides[d] = strides[d];
  for (int d = dim + 1; d < w.ndim; ++d) w.inner *= w.shape[d];
  return w;
}

template <class T>
__global__ void gather_kernel(const T* x, const int64_t* index, T* out, int64_t n, IndexWalk w, IndexCheck check) {
  const int64_t step = int64_t(gridDim.x) * blockDim.x;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += step)
    out[i] = index_in_range(check, index[i]) ? x[w.offset(i, index[i])] : T(0);
}

// ordered: one thread per line along `dim` adds its elements in order (deterministic_algorithms()).
template <class T>
__global__ void scatter_add_kernel(T* out, const int64_t* index, const T* src, int64_t n, IndexWalk w, bool ordered,
                                   IndexCheck check) {
  const int64_t step = int64_t(gridDim.x) * blockDim.x, per = ordered ? w.shape[w.dim] : 1, units = n / per;
  for (int64_t unit = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; unit < units; unit += step)
    for (int64_t t = 0; t < per; ++t) {
      const int64_t i = ordered ? w.along(unit, t) : unit;
      if (index_in_range(check, index[i])) atomicAdd(out + w.offset(i, index[i]), src[i]);
    }
}

}  // namespace

void index_select(const Tensor& x_in, int dim, const Tensor& index_in, const Tensor& out) {
  const Tensor x = raw_contiguous(x_in), index = raw_contiguous(index_in);
  const DimView s = dim_view(x, dim);
  const int device = x.device().index;
  DeviceGuard guard(device);
  cudaStream_t stream = stream_of(device);
  const int64_t k = index.numel();
  const IndexCheck check = index_check(device, IndexOp::index_select, s.d);
  if (out.numel() == 0) return check_only(index, check, stream);
  auto run = [&]<class T>() {
    index_select_kernel<<<blocks_for(out.numel()), kThreads, 0, stream>>>(
        static_cast<const T*>(x.raw_data()), static_cast<const int64_t*>(index.raw_data()),
        static_cast<T*>(out.raw_data()), s, k, check);
    BCOS_CUDA_CHECK_LAUNCH();
  };
  dispatch_any_dtype(x.dtype(), "cuda index_select", run);
}

void index_add(const Tensor& out, int dim, const Tensor& index_in, const Tensor& src_in) {
  const Tensor src = raw_contiguous(src_in), index = raw_contiguous(index_in);
  const DimView s = dim_view(out, dim);
  const int device = out.device().index;
  DeviceGuard guard(device);
  cudaStream_t stream = stream_of(device);
  const int64_t k = index.numel();
  const IndexCheck check = index_check(device, IndexOp::index_add, s.d);
  if (src.numel() == 0) return check_only(index, check, stream);
  dispatch_float(out.dtype(), "cuda index_add", [&]<class T>() {
    const bool ordered = deterministic_algorithms();
    index_add_kernel<<<blocks_for(ordered ? src.numel() / k : src.numel()), kThreads, 0, stream>>>(
        static_cast<T*>(out.raw_data()), static_cast<const int64_t*>(index.raw_data()),
        static_cast<const T*>(src.raw_data()), s, k, ordered, check);
    BCOS_CUDA_CHECK_LAUNCH();
  });
}

void gather(const Tensor& x, int dim, const Tensor& index_in, const Tensor& out) {
  const Tensor index = raw_contiguous(index_in);
  const int device = x.device().index;
  DeviceGuard guard(device);
  cudaStream_t stream = stream_of(device);
  const int64_t n = index.numel();
  if (n == 0) return;
  const IndexCheck check = index_check(device, IndexOp::gather, x.size(dim));
  const IndexWalk w = walk_of(index, dim, x.strides());
  auto run = [&]<class T>() {
    gather_kernel<<<blocks_for(n), kThreads, 0, stream>>>(static_cast<const T*>(x.raw_data()),
                                                            static_cast<const int64_t*>(index.raw_data()),
                                                            static_cast<T*>(out.raw_data()), n, w, check);
    BCOS_CUDA_CHECK_LAUNCH();
  };
  dispatch_any_dtype(x.dtype(), "cuda gather", run);
}

void scatter_add(const Tensor& out, int dim, const Tensor& index_in, const Tensor& src_in) {
  const Tensor index = raw_contiguous(index_in), src = raw_contiguous(src_in);
  const int device = out.device().index;
  DeviceGuard guard(device);
  cudaStream_t stream = stream_of(device);
  const int64_t n = index.numel();
  if (n == 0) return;
  const IndexCheck check = index_check(device, IndexOp::scatter_add, out.size(dim));
  const IndexWalk w = walk_of(index, dim, out.strides());
  dispatch_float(out.dtype(), "cuda scatter_add", [&]<class T>() {
    const bool ordered = deterministic_algorithms();
    scatter_add_kernel<<<blocks_for(ordered ? n / w.shape[dim] : n), kThreads, 0, stream>>>(
        static_cast<T*>(out.raw_data()), static_cast<const int64_t*>(index.raw_data()),
        static_cast<const T*>(src.raw_data()), n, w, ordered, check);
    BCOS_CUDA_CHECK_LAUNCH();
  });
}

}  // namespace bcos::cuda
