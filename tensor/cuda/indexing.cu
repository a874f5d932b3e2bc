// index_select / index_add (its backward; embeddings use both) and gather / scatter_add (its
// backward; cross-entropy uses both) on the GPU, as tensor/cpu/indexing.cpp: for index_select
// x viewed contiguous [outer, D, inner]; for gather one thread per index element. Indices are checked on the
// device first -- one flag, read back before any write -- so a bad index is a bcos::Error naming
// it, never a stray memory access. index_add accumulates with atomicAdd (repeated indices), in a
// fixed order under deterministic_algorithms().
#include "tensor/kernel_views.h"
#include "tensor/copy.h"
#include <cstdio>

#include "tensor/cuda/internal.h"

namespace bcos::cuda {

namespace {

// bad[0] = 1 + the position of an index outside [0, limit) (the first found; any if several).
__global__ void find_bad_index(const int64_t* index, int64_t n, int64_t limit, unsigned long long* bad) {
  const int64_t step = int64_t(gridDim.x) * blockDim.x;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += step)
    if (index[i] < 0 || index[i] >= limit) atomicMin(bad, (unsigned long long)(i + 1));
}

// Inside a graph capture, where the host cannot wait for the answer: a bad index stops the kernel
// as a failed device-side assertion (PyTorch's way always), reported at the next synchronisation
// -- on a GPU as CUDA's "unspecified launch failure" after the kernel's printed line, with the
// process's CUDA context lost.
__global__ void assert_indices_kernel(const int64_t* index, int64_t n, int64_t limit) {
  const int64_t step = int64_t(gridDim.x) * blockDim.x;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += step)
    if (index[i] < 0 || index[i] >= limit) {
      printf("bcos: index %lld is out of range for size %lld in a CUDA graph's replay\n", (long long)index[i],
             (long long)limit);
      BCOS_DEVICE_TRAP("an index out of range in a CUDA graph's replay");
    }
}

// Raises naming the first bad index (a device round trip: the price of a clear error).
void check_indices(const Tensor& index, int64_t limit, const char* op, cudaStream_t stream) {
  if (index.numel() == 0) return;
  const int device = index.device().index;
  if (capturing()) {
    assert_indices_kernel<<<blocks_for(index.numel()), kThreads, 0, stream>>>(
        static_cast<const int64_t*>(index.raw_data()), index.numel(), limit);
    BCOS_CUDA_CHECK_LAUNCH();
    return;
  }
  std::shared_ptr<void> flag = allocate(sizeof(unsigned long long), device);
  auto* bad = static_cast<unsigned long long*>(flag.get());
  const unsigned long long none = ~0ull;
  BCOS_CUDA_CHECK(cudaMemcpyAsync(bad, &none, sizeof none, cudaMemcpyHostToDevice, stream));
  find_bad_index<<<blocks_for(index.numel()), kThreads, 0, stream>>>(static_cast<const int64_t*>(index.raw_data()),
                                                                     index.numel(), limit, bad);
  BCOS_CUDA_CHECK_LAUNCH();
  unsigned long long first = none;
  BCOS_CUDA_CHECK(cudaMemcpyAsync(&first, bad, sizeof first, cudaMemcpyDeviceToHost, stream));
  BCOS_CUDA_CHECK(cudaStreamSynchronize(stream));
  if (first != none) {
    int64_t value = 0;
    BCOS_CUDA_CHECK(cudaMemcpy(&value, static_cast<const int64_t*>(index.raw_data()) + (first - 1), sizeof value,
                               cudaMemcpyDeviceToHost));
    fail(op, ": index ", value, " is out of range for size ", limit);
  }
}

template <class T>
__global__ void index_select_kernel(const T* x, const int64_t* index, T* out, DimView s, int64_t k) {
  const int64_t n = s.outer * k * s.inner, step = int64_t(gridDim.x) * blockDim.x;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += step) {
    const int64_t c = i % s.inner, r = i / s.inner, o = r / k, j = r % k;
    out[i] = x[(o * s.d + index[j]) * s.inner + c];
  }
}

// ordered: one thread per (outer, inner) column adds the k rows in index order, so repeated
// indices sum in the same order every run (deterministic_algorithms()).
template <class T>
__global__ void index_add_kernel(T* out, const int64_t* index, const T* src, DimView s, int64_t k, bool ordered) {
  const int64_t per = ordered ? k : 1, n = s.outer * k * s.inner / per, step = int64_t(gridDim.x) * blockDim.x;
  for (int64_t unit = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; unit < n; unit += step)
    for (int64_t t = 0; t < per; ++t) {
      // unordered: unit is the element of src; ordered: unit is a column (o, c), t its row.
      const int64_t i = ordered ? ((unit / s.inner) * k + t) * s.inner + unit % s.inner : unit;
      const int64_t c = i % s.inner, r = i / s.inner, o = r / k, j = r % k;
      atomicAdd(out + (o * s.d + index[j]) * s.inner + c, src[i]);
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
__global__ void gather_kernel(const T* x, const int64_t* index, T* out, int64_t n, IndexWalk w) {
  const int64_t step = int64_t(gridDim.x) * blockDim.x;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += step)
    out[i] = x[w.offset(i, index[i])];
}

// ordered: one thread per line along `dim` adds its elements in order (deterministic_algorithms()).
template <class T>
__global__ void scatter_add_kernel(T* out, const int64_t* index, const T* src, int64_t n, IndexWalk w, bool ordered) {
  const int64_t step = int64_t(gridDim.x) * blockDim.x, per = ordered ? w.shape[w.dim] : 1, units = n / per;
  for (int64_t unit = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; unit < units; unit += step)
    for (int64_t t = 0; t < per; ++t) {
      const int64_t i = ordered ? w.along(unit, t) : unit;
      atomicAdd(out + w.offset(i, index[i]), src[i]);
    }
}

}  // namespace

void index_select(const Tensor& x_in, int dim, const Tensor& index_in, const Tensor& out) {
  const Tensor x = raw_contiguous(x_in), index = raw_contiguous(index_in);
  const DimView s = dim_view(x, dim);
  const int device = x.device().index;
  DeviceGuard guard(device);
  cudaStream_t stream = stream_of(device);
  check_indices(index, s.d, "index_select", stream);
  const int64_t k = index.numel();
  if (out.numel() == 0) return;
  auto run = [&]<class T>() {
    index_select_kernel<<<blocks_for(out.numel()), kThreads, 0, stream>>>(
        static_cast<const T*>(x.raw_data()), static_cast<const int64_t*>(index.raw_data()),
        static_cast<T*>(out.raw_data()), s, k);
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
  check_indices(index, s.d, "index_add", stream);
  const int64_t k = index.numel();
  if (src.numel() == 0) return;
  dispatch_float(out.dtype(), "cuda index_add", [&]<class T>() {
    const bool ordered = deterministic_algorithms();
    index_add_kernel<<<blocks_for(ordered ? src.numel() / k : src.numel()), kThreads, 0, stream>>>(
        static_cast<T*>(out.raw_data()), static_cast<const int64_t*>(index.raw_data()),
        static_cast<const T*>(src.raw_data()), s, k, ordered);
    BCOS_CUDA_CHECK_LAUNCH();
  });
}

void gather(const Tensor& x, int dim, const Tensor& index_in, const Tensor& out) {
  const Tensor index = raw_contiguous(index_in);
  const int device = x.device().index;
  DeviceGuard guard(device);
  cudaStream_t stream = stream_of(device);
  check_indices(index, x.size(dim), "gather", stream);
  const int64_t n = index.numel();
  if (n == 0) return;
  const IndexWalk w = walk_of(index, dim, x.strides());
  auto run = [&]<class T>() {
    gather_kernel<<<blocks_for(n), kThreads, 0, stream>>>(static_cast<const T*>(x.raw_data()),
                                                            static_cast<const int64_t*>(index.raw_data()),
                                                            static_cast<T*>(out.raw_data()), n, w);
    BCOS_CUDA_CHECK_LAUNCH();
  };
  dispatch_any_dtype(x.dtype(), "cuda gather", run);
}

void scatter_add(const Tensor& out, int dim, const Tensor& index_in, const Tensor& src_in) {
  const Tensor index = raw_contiguous(index_in), src = raw_contiguous(src_in);
  const int device = out.device().index;
  DeviceGuard guard(device);
  cudaStream_t stream = stream_of(device);
  check_indices(index, out.size(dim), "scatter_add", stream);
  const int64_t n = index.numel();
  if (n == 0) return;
  const IndexWalk w = walk_of(index, dim, out.strides());
  dispatch_float(out.dtype(), "cuda scatter_add", [&]<class T>() {
    const bool ordered = deterministic_algorithms();
    scatter_add_kernel<<<blocks_for(ordered ? n / w.shape[dim] : n), kThreads, 0, stream>>>(
        static_cast<T*>(out.raw_data()), static_cast<const int64_t*>(index.raw_data()),
        static_cast<const T*>(src.raw_data()), n, w, ordered);
    BCOS_CUDA_CHECK_LAUNCH();
  });
}

}  // namespace bcos::cuda
