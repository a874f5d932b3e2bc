// Batched matrix products through Eigen's GEMM. A matrix whose rows or columns are unit-stride
// is mapped in place as row- or column-major (so transposed operands cost nothing); anything
// else is copied once. Many small products run in parallel over the batch, large ones let
// Eigen's own OpenMP threads split each product.
#include <Eigen/Core>

#include "tensor/copy.h"
#include "tensor/cpu/kernels.h"
#include "tensor/parallel.h"

namespace bcos::cpu {

namespace {

template <class T>
using RowMat = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
template <class T>
using ColMat = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::ColMajor>;

// How a rows x cols matrix with element strides (rs, cs) can be viewed without copying.
enum class Layout { row_major, col_major, strided };
struct MatrixView {
  Layout layout;
  int64_t ld;  // leading dimension (outer stride)
};
MatrixView classify(int64_t rows, int64_t cols, int64_t rs, int64_t cs) {
  if (cs == 1 || cols == 1) {
    if (rows == 1) return {Layout::row_major, std::max<int64_t>(cols, 1)};
    if (rs >= cols) return {Layout::row_major, rs};
  }
  if (rs == 1 || rows == 1) {
    if (cols == 1) return {Layout::col_major, std::max<int64_t>(rows, 1)};
    if (cs >= rows) return {Layout::col_major, cs};
  }
  return {Layout::strided, 0};
}

template <class T, class MA, class MB>
void product(const MA& a, const MB& b, T* out, int64_t m, int64_t n, bool accumulate) {
  Eigen::Map<RowMat<T>> c(out, m, n);
  if (accumulate)
    c.noalias() += a * b;
  else
    c.noalias() = a * b;
}

template <class T, class MA>
void with_b(const MA& a, const T* pb, MatrixView vb, int64_t k, int64_t n, T* out, int64_t m,
            bool accumulate) {
  using Stride = Eigen::OuterStride<>;
  if (vb.layout == Layout::row_major)
    product<T>(a, Eigen::Map<const RowMat<T>, 0, Stride>(pb, k, n, Stride(vb.ld)), out, m, n, accumulate);
  else
    product<T>(a, Eigen::Map<const ColMat<T>, 0, Stride>(pb, k, n, Stride(vb.ld)), out, m, n, accumulate);
}

template <class T>
void one_product(const T* pa, MatrixView va, const T* pb, MatrixView vb, T* out, int64_t m,
                 int64_t k, int64_t n, bool accumulate) {
  using Stride = Eigen::OuterStride<>;
  if (va.layout == Layout::row_major)
    with_b<T>(Eigen::Map<const RowMat<T>, 0, Stride>(pa, m, k, Stride(va.ld)), pb, vb, k, n, out, m, accumulate);
  else
    with_b<T>(Eigen::Map<const ColMat<T>, 0, Stride>(pa, m, k, Stride(va.ld)), pb, vb, k, n, out, m, accumulate);
}

template <class T>
void bmm_typed(Tensor a, Tensor b, const Tensor& out, bool accumulate) {
  const int64_t batch = out.size(0), m = out.size(1), n = out.size(2), k = a.size(2);
  MatrixView va = classify(m, k, a.stride(1), a.stride(2));
  MatrixView vb = classify(k, n, b.stride(1), b.stride(2));
  if (va.layout == Layout::strided) {
    a = raw_contiguous(a);
    va = {Layout::row_major, k};
  }
  if (vb.layout == Layout::strided) {
    b = raw_contiguous(b);
    vb = {Layout::row_major, n};
  }
  const T* pa = static_cast<const T*>(a.raw_data());
  const T* pb = static_cast<const T*>(b.raw_data());
  T* po = out.data<T>();
  const int64_t sa = a.stride(0), sb = b.stride(0);
  if (k == 0) {  // empty inner dim: the product is zero
    if (!accumulate) std::fill(po, po + batch * m * n, T(0));
    return;
  }
  auto run = [&](int64_t i) {
    one_product<T>(pa + i * sa, va, pb + i * sb, vb, po + i * m * n, m, k, n, accumulate);
  };
  // Small products: parallel over the batch (Eigen stays single-threaded inside a region).
  if (batch > 1 && m * n * k < (1 << 21)) {
    parallel_for(batch, m * n * k, [&](int64_t b0, int64_t b1) {
      for (int64_t i = b0; i < b1; ++i) run(i);
    });
  } else {
    num_threads();  // makes sure Eigen got the configured thread count
    for (int64_t i = 0; i < batch; ++i) run(i);
  }
}

}  // namespace

void bmm(const Tensor& a, const Tensor& b, const Tensor& out, bool accumulate) {
  dispatch_float(a.dtype(), "matmul", [&]<class T>() { bmm_typed<T>(a, b, out, accumulate); });
}

}  // namespace bcos::cpu
