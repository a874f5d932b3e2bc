// Reductions over any set of dims of a strided tensor. Kept and reduced dims are each collapsed
// (merged where contiguous); every output element then walks its reduced sub-space row by row.
// Sums accumulate in double, so f32 results are as accurate as PyTorch's pairwise sums or more
// (float16 / bfloat16 likewise, each result rounded once).
// Parallel over outputs when there are many, over the reduced range when there are few.
#include <cmath>
#include <limits>

#include "tensor/cpu/kernels.h"
#include "tensor/parallel.h"

namespace bcos::cpu {

namespace {

struct Geometry {
  int nk = 0, nr = 0;
  int64_t kshape[kMaxDims], kstride[kMaxDims];  // kept dims: sizes, input strides
  int64_t rshape[kMaxDims], rstride[kMaxDims];  // reduced dims
  int64_t n_out = 1, n_red = 1;
};

void push_dim(int& n, int64_t* shape, int64_t* stride, int64_t size, int64_t st) {
  if (size == 1) return;
  if (n > 0 && stride[n - 1] == st * size) {
    shape[n - 1] *= size;
    stride[n - 1] = st;
  } else {
    shape[n] = size;
    stride[n] = st;
    n++;
  }
}

Geometry make_geometry(const Tensor& x, const std::vector<bool>& reduce) {
  Geometry g;
  for (int d = 0; d < x.dim(); ++d) {
    if (reduce[size_t(d)]) {
      push_dim(g.nr, g.rshape, g.rstride, x.shape()[d], x.strides()[d]);
      g.n_red *= x.shape()[d];
    } else {
      push_dim(g.nk, g.kshape, g.kstride, x.shape()[d], x.strides()[d]);
      g.n_out *= x.shape()[d];
    }
  }
  return g;
}

// Input offset of output element o (row-major over the kept dims).
int64_t output_base(const Geometry& g, int64_t o) {
  int64_t off = 0;
  for (int d = g.nk - 1; d >= 0; --d) {
    off += (o % g.kshape[d]) * g.kstride[d];
    o /= g.kshape[d];
  }
  return off;
}

// Calls row(offset, first_linear_index, n, stride) for reduced elements [begin, end).
template <class Row>
void visit_reduced(const Geometry& g, int64_t base, int64_t begin, int64_t end, Row&& row) {
  if (begin >= end) return;  // also an empty reduced dim (size 0)
  if (g.nr == 0) {
    if (begin < end) row(base, int64_t(0), int64_t(1), int64_t(1));
    return;
  }
  const int last = g.nr - 1;
  const int64_t inner = g.rshape[last];
  int64_t idx[kMaxDims] = {};
  int64_t r = begin / inner, col = begin % inner;
  for (int d = last - 1; d >= 0; --d) {
    idx[d] = r % g.rshape[d];
    r /= g.rshape[d];
  }
  int64_t pos = begin;
  while (pos < end) {
    int64_t off = base + col * g.rstride[last];
    for (int d = 0; d < last; ++d) off += idx[d] * g.rstride[d];
    int64_t n = std::min(inner - col, end - pos);
    row(off, pos, n, g.rstride[last]);
    pos += n;
    col = 0;
    for (int d = last - 1; d >= 0; --d) {
      if (++idx[d] < g.rshape[d]) break;
      idx[d] = 0;
    }
  }
}

// Runs an accumulator over every output: make(o) builds it, acc.row(...) consumes rows,
// acc.merge(other) combines partial results, finish(o, acc) stores.
template <class Make, class Finish>
void run_reduction(const Geometry& g, Make&& make, Finish&& finish) {
  int threads = num_threads();
  bool few_outputs = g.n_out < threads && g.n_red * g.n_out >= kParallelThreshold;
  if (!few_outputs) {
    parallel_for(g.n_out, g.n_red, [&](int64_t b, int64_t e) {
      for (int64_t o = b; o < e; ++o) {
        auto acc = make(o);
        visit_reduced(g, output_base(g, o), 0, g.n_red,
                      [&](int64_t off, int64_t lin, int64_t n, int64_t st) { acc.row(off, lin, n, st); });
        finish(o, acc);
      }
    });
    return;
  }
  for (int64_t o = 0; o < g.n_out; ++o) {  // split each output's reduced range across threads
    std::vector<decltype(make(o))> parts(static_cast<size_t>(threads), make(o));
    int64_t base = output_base(g, o);
    parallel_for(threads, kParallelThreshold, [&](int64_t tb, int64_t te) {
      for (int64_t t = tb; t < te; ++t) {
        int64_t chunk = (g.n_red + threads - 1) / threads;
        int64_t b = t * chunk, e = std::min(g.n_red, b + chunk);
        if (b < e)
          visit_reduced(g, base, b, e, [&](int64_t off, int64_t lin, int64_t n, int64_t st) {
            parts[size_t(t)].row(off, lin, n, st);
          });
      }
    });
    for (int t = 1; t < threads; ++t) parts[0].merge(parts[size_t(t)]);
    finish(o, parts[0]);
  }
}

template <class T>
struct SumAcc {  // sum of f(x) with an optional centre: sum, mean, norm1, norm2, var, lse
  const T* x;
  int kind;  // 0: x, 1: |x|, 2: x^2, 3: (x - c)^2, 4: exp(x - c)
  double c = 0, s = 0;
  void row(int64_t off, int64_t, int64_t n, int64_t st) {
    const T* p = x + off;
    double acc = 0;
    switch (kind) {
      case 0:
        if (st == 1) for (int64_t i = 0; i < n; ++i) acc += double(p[i]);
        else for (int64_t i = 0; i < n; ++i) acc += double(p[i * st]);
        break;
      case 1: for (int64_t i = 0; i < n; ++i) acc += std::abs(double(p[i * st])); break;
      case 2: for (int64_t i = 0; i < n; ++i) { double v = double(p[i * st]); acc += v * v; } break;
      case 3: for (int64_t i = 0; i < n; ++i) { double v = double(p[i * st]) - c; acc += v * v; } break;
      case 4: for (int64_t i = 0; i < n; ++i) acc += std::exp(double(p[i * st]) - c); break;
    }
    s += acc;
  }
  void merge(const SumAcc& o) { s += o.s; }
};

template <class T>
struct ProdAcc {
  const T* x;
  double p = 1;
  void row(int64_t off, int64_t, int64_t n, int64_t st) {
    for (int64_t i = 0; i < n; ++i) p *= double(x[off + i * st]);
  }
  void merge(const ProdAcc& o) { p *= o.p; }
};

template <class T>
inline constexpr bool is_float_storage = std::is_floating_point_v<T> || std::is_same_v<T, BFloat16> || std::is_same_v<T, Half>;

template <class T>
struct ExtremeAcc {  // max (sign = +1) or min (sign = -1) with the first index; NaN wins
  const T* x;
  bool is_max;
  T best = T(0);
  int64_t index = -1;
  bool better(T v) const {
    if (index < 0) return true;
    if constexpr (is_float_storage<T>) {
      if (std::isnan(double(best))) return false;
      if (std::isnan(double(v))) return true;
    }
    if constexpr (is_float_storage<T>) return is_max ? double(v) > double(best) : double(v) < double(best);
    else return is_max ? v > best : v < best;
  }
  void row(int64_t off, int64_t lin, int64_t n, int64_t st) {
    for (int64_t i = 0; i < n; ++i) {
      T v = x[off + i * st];
      if (better(v)) {
        best = v;
        index = lin + i;
      }
    }
  }
  void merge(const ExtremeAcc& o) {  // partial ranges arrive in order: ties keep the first
    if (o.index >= 0 && better(o.best)) {
      best = o.best;
      index = o.index;
    }
  }
};

struct IntSumAcc {  // exact int64 sums (a double accumulator loses integers beyond 2^53)
  const int64_t* x;
  int64_t s = 0;
  void row(int64_t off, int64_t, int64_t n, int64_t st) {
    for (int64_t i = 0; i < n; ++i) s += x[off + i * st];
  }
  void merge(const IntSumAcc& o) { s += o.s; }
};

struct BoolAcc {
  const bool* x;
  bool is_all;
  bool v;
  void row(int64_t off, int64_t, int64_t n, int64_t st) {
    for (int64_t i = 0; i < n; ++i) {
      bool b = x[off + i * st];
      v = is_all ? (v && b) : (v || b);
    }
  }
  void merge(const BoolAcc& o) { v = is_all ? (v && o.v) : (v || o.v); }
};

// Contiguous outer reductions (sum over dim 0 of [N, D], bias gradients): accumulate whole
// rows of outputs at a time instead of striding through memory once per output.
template <class T>
bool try_outer_sum(const Geometry& g, const T* x, T* out, double scale) {
  if (g.nk != 1 || g.kstride[0] != 1 || g.nr == 0) return false;
  for (int d = 0; d < g.nr; ++d)
    if (g.rstride[d] < g.kshape[0]) return false;  // reduced dims must lie outside the rows
  const int64_t width = g.kshape[0];
  parallel_for(width, g.n_red, [&](int64_t b, int64_t e) {
    std::vector<double> acc(static_cast<size_t>(e - b), 0.0);
    int64_t idx[kMaxDims] = {};
    for (int64_t r = 0; r < g.n_red; ++r) {
      int64_t off = 0;
      for (int d = 0; d < g.nr; ++d) off += idx[d] * g.rstride[d];
      const T* row = x + off;
      for (int64_t i = b; i < e; ++i) acc[size_t(i - b)] += double(row[i]);
      for (int d = g.nr - 1; d >= 0; --d) {
        if (++idx[d] < g.rshape[d]) break;
        idx[d] = 0;
      }
    }
    for (int64_t i = b; i < e; ++i) out[i] = T(acc[size_t(i - b)] * scale);
  });
  return true;
}

template <class T>
void reduce_float(ReduceOp op, const Tensor& xt, const Geometry& g, const Tensor& out,
                  const Tensor& indices, int64_t correction) {
  const T* x = static_cast<const T*>(xt.raw_data());
  T* o = out.data<T>();
  const double n = double(g.n_red);
  auto sum_of = [&](int kind, auto center, auto store) {
    run_reduction(g, [&](int64_t i) { return SumAcc<T>{x, kind, center(i)}; },
                  [&](int64_t i, const SumAcc<T>& a) { store(i, a.s); });
  };
  auto no_center = [](int64_t) { return 0.0; };
  switch (op) {
    case ReduceOp::sum:
    case ReduceOp::mean: {
      double scale = op == ReduceOp::mean ? 1.0 / n : 1.0;
      if (try_outer_sum<T>(g, x, o, scale)) return;
      return sum_of(0, no_center, [&](int64_t i, double s) { o[i] = T(s * scale); });
    }
    case ReduceOp::norm1: return sum_of(1, no_center, [&](int64_t i, double s) { o[i] = T(s); });
    case ReduceOp::norm2:
      return sum_of(2, no_center, [&](int64_t i, double s) { o[i] = T(std::sqrt(s)); });
    case ReduceOp::var: {
      std::vector<double> means(static_cast<size_t>(g.n_out));
      sum_of(0, no_center, [&](int64_t i, double s) { means[size_t(i)] = s / n; });
      double denom = std::max(0.0, n - double(correction));
      return sum_of(3, [&](int64_t i) { return means[size_t(i)]; },
                    [&](int64_t i, double s) { o[i] = T(s / denom); });
    }
    case ReduceOp::logsumexp: {
      std::vector<double> maxes(static_cast<size_t>(g.n_out));
      run_reduction(g, [&](int64_t) { return ExtremeAcc<T>{x, true}; },
                    [&](int64_t i, const ExtremeAcc<T>& a) { maxes[size_t(i)] = double(a.best); });
      auto center = [&](int64_t i) {
        double m = maxes[size_t(i)];
        return std::isinf(m) ? 0.0 : m;  // all -inf (or an inf): exp(x - 0) gives the limit
      };
      return sum_of(4, center, [&](int64_t i, double s) { o[i] = T(std::log(s) + center(i)); });
    }
    case ReduceOp::prod:
      return run_reduction(g, [&](int64_t) { return ProdAcc<T>{x}; },
                           [&](int64_t i, const ProdAcc<T>& a) { o[i] = T(a.p); });
    case ReduceOp::max:
    case ReduceOp::min: {
      int64_t* idx = indices.defined() ? indices.data<int64_t>() : nullptr;
      bool is_max = op == ReduceOp::max;
      return run_reduction(g, [&](int64_t) { return ExtremeAcc<T>{x, is_max}; },
                           [&](int64_t i, const ExtremeAcc<T>& a) {
                             o[i] = a.best;
                             if (idx) idx[i] = a.index;
                           });
    }
    default: fail("reduce: op not supported for ", xt.dtype());
  }
}

}  // namespace

void reduce(ReduceOp op, const Tensor& x, const std::vector<bool>& dims, const Tensor& out,
            const Tensor& indices, int64_t correction) {
  Geometry g = make_geometry(x, dims);
  if (op == ReduceOp::all || op == ReduceOp::any) {
    BCOS_CHECK(x.dtype() == DType::boolean, "all/any: expected a bool tensor, got ", x.dtype());
    bool is_all = op == ReduceOp::all;
    const bool* px = static_cast<const bool*>(x.raw_data());
    bool* po = out.data<bool>();
    run_reduction(g, [&](int64_t) { return BoolAcc{px, is_all, is_all}; },
                  [&](int64_t i, const BoolAcc& a) { po[i] = a.v; });
    return;
  }
  if (x.dtype() == DType::i64 && (op == ReduceOp::max || op == ReduceOp::min || op == ReduceOp::sum)) {
    const int64_t* px = static_cast<const int64_t*>(x.raw_data());
    int64_t* po = out.data<int64_t>();
    if (op == ReduceOp::sum) {
      run_reduction(g, [&](int64_t) { return IntSumAcc{px}; },
                    [&](int64_t i, const IntSumAcc& a) { po[i] = a.s; });
      return;
    }
    int64_t* idx = indices.defined() ? indices.data<int64_t>() : nullptr;
    run_reduction(g, [&](int64_t) { return ExtremeAcc<int64_t>{px, op == ReduceOp::max}; },
                  [&](int64_t i, const ExtremeAcc<int64_t>& a) {
                    po[i] = a.best;
                    if (idx) idx[i] = a.index;
                  });
    return;
  }
  // float16 / bfloat16 accumulate in double too, and round once into their output.
  if (x.dtype() == DType::bf16) return reduce_float<BFloat16>(op, x, g, out, indices, correction);
  if (x.dtype() == DType::f16) return reduce_float<Half>(op, x, g, out, indices, correction);
  dispatch_float(x.dtype(), "reduce",
                 [&]<class T>() { reduce_float<T>(op, x, g, out, indices, correction); });
}

}  // namespace bcos::cpu
