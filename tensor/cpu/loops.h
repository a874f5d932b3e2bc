// Strided N-operand iteration for CPU kernels. Operands share one iteration shape (inputs
// already broadcast: stride 0 on broadcast dims). Dims of size 1 are dropped and adjacent dims
// that are contiguous in every operand are merged, so a contiguous op becomes one flat row and
// a transposed or sliced one a few long rows. The kernel body sees one row at a time:
//   body(offsets[N], n, strides[N])   -- element offsets of the row start, row length, strides
// and can take a fast path when all strides are 1.
#pragma once

#include <array>
#include <cstdint>

#include "tensor/parallel.h"
#include "tensor/tensor.h"

namespace bcos::cpu {

template <int N>
struct LoopPlan {
  int ndim = 0;
  int64_t shape[kMaxDims];
  int64_t strides[N][kMaxDims];
  int64_t numel = 1;
};

template <int N>
LoopPlan<N> make_loop_plan(const Shape& shape, const std::array<const Strides*, N>& strides) {
  LoopPlan<N> p;
  for (int d = 0; d < shape.size(); ++d) p.numel *= shape[d];
  for (int d = 0; d < shape.size(); ++d) {
    if (shape[d] == 1) continue;
    bool merge = p.ndim > 0;
    for (int k = 0; k < N && merge; ++k)
      merge = p.strides[k][p.ndim - 1] == (*strides[k])[d] * shape[d];
    if (merge) {
      p.shape[p.ndim - 1] *= shape[d];
      for (int k = 0; k < N; ++k) p.strides[k][p.ndim - 1] = (*strides[k])[d];
    } else {
      p.shape[p.ndim] = shape[d];
      for (int k = 0; k < N; ++k) p.strides[k][p.ndim] = (*strides[k])[d];
      p.ndim++;
    }
  }
  return p;
}

// Runs body over the plan's elements, split across threads by linear index when large.
template <int N, class Body>
void run_loop(const LoopPlan<N>& p, int64_t cost_per_elem, Body&& body) {
  if (p.numel == 0) return;
  if (p.ndim == 0) {  // a single element
    int64_t off[N] = {}, st[N] = {};
    body(off, int64_t(1), st);
    return;
  }
  const int last = p.ndim - 1;
  const int64_t inner = p.shape[last];
  int64_t inner_strides[N];
  for (int k = 0; k < N; ++k) inner_strides[k] = p.strides[k][last];

  parallel_for(p.numel, cost_per_elem, [&](int64_t begin, int64_t end) {
    // Unravel `begin` into a multi-index over the outer dims and a position in the row.
    int64_t idx[kMaxDims] = {};
    int64_t row = begin / inner, col = begin % inner;
    for (int d = last - 1; d >= 0; --d) {
      idx[d] = row % p.shape[d];
      row /= p.shape[d];
    }
    int64_t pos = begin;
    while (pos < end) {
      int64_t off[N];
      for (int k = 0; k < N; ++k) {
        int64_t o = col * p.strides[k][last];
        for (int d = 0; d < last; ++d) o += idx[d] * p.strides[k][d];
        off[k] = o;
      }
      int64_t n = std::min(inner - col, end - pos);
      body(off, n, inner_strides);
      pos += n;
      col = 0;
      for (int d = last - 1; d >= 0; --d) {  // next row
        if (++idx[d] < p.shape[d]) break;
        idx[d] = 0;
      }
    }
  });
}

// Convenience: plan + run for tensors that all have the iteration shape `shape`.
template <int N, class Body>
void for_each_row(const Shape& shape, const std::array<const Tensor*, N>& ts, int64_t cost,
                  Body&& body) {
  std::array<const Strides*, N> st;
  for (int k = 0; k < N; ++k) st[k] = &ts[k]->strides();
  run_loop<N>(make_loop_plan<N>(shape, st), cost, body);
}

}  // namespace bcos::cpu
