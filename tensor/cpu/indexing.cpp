// Index-based kernels: index_select / index_add (its backward), gather / scatter_add (its
// backward), and top-k. Every index is range-checked before any write, so a bad index is a
// bcos::Error, never a stray memory access.
#include <algorithm>
#include <cmath>
#include <numeric>

#include "tensor/kernel_views.h"
#include "tensor/copy.h"
#include "tensor/index_errors.h"
#include "tensor/cpu/kernels.h"
#include "tensor/parallel.h"

namespace bcos::cpu {

namespace {
void check_indices(const Tensor& index, int64_t limit, const char* op) {
  const int64_t* p = index.data<int64_t>();
  for (int64_t i = 0; i < index.numel(); ++i)
    if (p[i] < 0 || p[i] >= limit) fail(index_error_text(op, current_index_role(), p[i], limit));
}
}  // namespace

void index_select(const Tensor& x_in, int dim, const Tensor& index_in, const Tensor& out) {
  Tensor x = raw_contiguous(x_in), index = raw_contiguous(index_in);
  DimView s = dim_view(x, dim);
  check_indices(index, s.d, "index_select");
  const int64_t k = index.numel();
  const int64_t* idx = index.data<int64_t>();
  dispatch_all(x.dtype(), [&]<class T>() {
    const T* px = static_cast<const T*>(x.raw_data());
    T* po = static_cast<T*>(out.raw_data());
    parallel_for(s.outer * k, s.inner, [&](int64_t b, int64_t e) {
      for (int64_t r = b; r < e; ++r) {
        int64_t o = r / k, j = r % k;
        std::copy_n(px + (o * s.d + idx[j]) * s.inner, s.inner, po + r * s.inner);
      }
    });
  });
}

void index_add(const Tensor& out, int dim, const Tensor& index_in, const Tensor& src_in) {
  Tensor src = raw_contiguous(src_in), index = raw_contiguous(index_in);
  DimView s = dim_view(out, dim);
  check_indices(index, s.d, "index_add");
  const int64_t k = index.numel();
  const int64_t* idx = index.data<int64_t>();
  dispatch_float(out.dtype(), "index_add", [&]<class T>() {
    const T* ps = src.data<T>();
    T* po = out.data<T>();
    // Split the inner (column) range across threads: repeated indices then never collide.
    constexpr int64_t kBlock = 64;
    int64_t blocks = (s.inner + kBlock - 1) / kBlock;
    parallel_for(s.outer * blocks, k * kBlock, [&](int64_t b, int64_t e) {
      for (int64_t r = b; r < e; ++r) {
        int64_t o = r / blocks, c0 = (r % blocks) * kBlock, c1 = std::min(s.inner, c0 + kBlock);
        for (int64_t j = 0; j < k; ++j) {
          const T* from = ps + (o * k + j) * s.inner;
          T* to = po + (o * s.d + idx[j]) * s.inner;
          for (int64_t c = c0; c < c1; ++c) to[c] += from[c];
        }
      }
    });
  });
}

namespace {
// Walks every element of `index` (contiguous) and calls fn(position, x_offset) where x_offset
// is the offset in a tensor with strides `xs` of the element the index picks along `dim`.
template <class F>
void walk_index(const Tensor& index, int dim, const Strides& xs, F&& fn) {
  const Shape& shape = index.shape();
  const int64_t* idx = index.data<int64_t>();
  int64_t pos[kMaxDims] = {};
  for (int64_t i = 0; i < index.numel(); ++i) {
    int64_t off = 0;
    for (int d = 0; d < shape.size(); ++d) off += (d == dim ? idx[i] : pos[d]) * xs[d];
    fn(i, off);
    for (int d = shape.size() - 1; d >= 0; --d) {
      if (++pos[d] < shape[d]) break;
      pos[d] = 0;
    }
  }
}
}  // namespace

void gather(const Tensor& x, int dim, const Tensor& index_in, const Tensor& out) {
  Tensor index = raw_contiguous(index_in);
  check_indices(index, x.size(dim), "gather");
  dispatch_all(x.dtype(), [&]<class T>() {
    const T* px = static_cast<const T*>(x.raw_data());
    T* po = static_cast<T*>(out.raw_data());
    walk_index(index, dim, x.strides(), [&](int64_t i, int64_t off) { po[i] = px[off]; });
  });
}

void scatter_add(const Tensor& out, int dim, const Tensor& index_in, const Tensor& src_in) {
  Tensor index = raw_contiguous(index_in), src = raw_contiguous(src_in);
  check_indices(index, out.size(dim), "scatter_add");
  dispatch_float(out.dtype(), "scatter_add", [&]<class T>() {
    const T* ps = src.data<T>();
    T* po = out.data<T>();
    walk_index(index, dim, out.strides(), [&](int64_t i, int64_t off) { po[off] += ps[i]; });
  });
}

void topk(const Tensor& x_in, int64_t k, bool largest, bool sorted, const Tensor& values,
          const Tensor& indices) {
  (void)sorted;  // results are always sorted, which is one valid answer for sorted=false
  Tensor x = raw_contiguous(x_in);
  const int64_t d = x.dim() ? x.size(-1) : 1, rows = x.numel() / std::max<int64_t>(d, 1);
  dispatch_arith(x.dtype(), "topk", [&]<class T>() {
    const T* px = x.data<T>();
    T* pv = values.data<T>();
    int64_t* pi = indices.data<int64_t>();
    parallel_for(rows, d * 4, [&](int64_t b, int64_t e) {
      std::vector<int64_t> order(static_cast<size_t>(d));
      for (int64_t r = b; r < e; ++r) {
        const T* row = px + r * d;
        std::iota(order.begin(), order.end(), int64_t(0));
        // NaN ranks above everything (as in PyTorch); ties keep the lower index first.
        auto before = [&](int64_t i, int64_t j) {
          T a = row[i], c = row[j];
          if constexpr (std::is_floating_point_v<T>) {
            bool na = std::isnan(a), nc = std::isnan(c);
            if (na || nc) return largest ? (na && !nc) || (na && nc && i < j) : (!na && nc) || (na && nc && i < j);
          }
          if (a != c) return largest ? a > c : a < c;
          return i < j;
        };
        std::partial_sort(order.begin(), order.begin() + k, order.end(), before);
        for (int64_t j = 0; j < k; ++j) {
          pv[r * k + j] = row[order[size_t(j)]];
          pi[r * k + j] = order[size_t(j)];
        }
      }
    });
  });
}

}  // namespace bcos::cpu
