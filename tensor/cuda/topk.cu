// top-k along the last dim on the GPU, ranked as tensor/cpu/indexing.cpp ranks: NaN above
// everything (largest) or below (smallest), ties to the lower index, results sorted. One thread
// per row selects the k best in k passes (each pass: the best element ranked after the previous
// pick) -- O(k · d), no scratch memory; fine for the small k of classification metrics.
#include <cmath>

#include "tensor/copy.h"
#include "tensor/cuda/internal.h"

namespace bcos::cuda {

namespace {

template <class T>
__device__ __forceinline__ bool ranks_before(const T* row, int64_t i, int64_t j, bool largest) {
  const T a = row[i], c = row[j];
  if constexpr (std::is_floating_point_v<T>) {
    const bool na = a != a, nc = c != c;
    if (na || nc) return largest ? (na && !nc) || (na && nc && i < j) : (!na && nc) || (na && nc && i < j);
  }
  if (a != c) return largest ? a > c : a < c;
  return i < j;
}

template <class T>
__global__ void topk_kernel(const T* x, int64_t rows, int64_t d, int64_t k, bool largest, T* values, int64_t* indices) {
  const int64_t step = int64_t(gridDim.x) * blockDim.x;
  for (int64_t r = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; r < rows; r += step) {
    const T* row = x + r * d;
    int64_t prev = -1;
    for (int64_t t = 0; t < k; ++t) {
      int64_t best = -1;
      for (int64_t j = 0; j < d; ++j) {
        if (prev >= 0 && !ranks_before(row, prev, j, largest)) continue;  // already picked, or ranked higher
        if (best < 0 || ranks_before(row, j, best, largest)) best = j;
      }
      values[r * k + t] = row[best];
      indices[r * k + t] = best;
      prev = best;
    }
  }
}

}  // namespace

void topk(const Tensor& x_in, int64_t k, bool largest, bool sorted, const Tensor& values, const Tensor& indices) {
  (void)sorted;  // results are always sorted, which is one valid answer for sorted=false
  const Tensor x = raw_contiguous(x_in);
  const int64_t d = x.dim() ? x.size(-1) : 1, rows = x.numel() / std::max<int64_t>(d, 1);
  if (rows == 0 || k == 0) return;
  const int device = x.device().index;
  DeviceGuard guard(device);
  cudaStream_t stream = stream_of(device);
  auto run = [&]<class T>() {
    topk_kernel<<<blocks_for(rows), kThreads, 0, stream>>>(static_cast<const T*>(x.raw_data()), rows, d, k, largest,
                                                             static_cast<T*>(values.raw_data()),
                                                             static_cast<int64_t*>(indices.raw_data()));
    BCOS_CUDA_CHECK_LAUNCH();
  };
  switch (x.dtype()) {
    case DType::f32: return run.template operator()<float>();
    case DType::f64: return run.template operator()<double>();
    case DType::i64: return run.template operator()<int64_t>();
    default: fail("cuda topk: expected float32, float64 or int64, got ", dtype_name(x.dtype()));
  }
}

}  // namespace bcos::cuda
