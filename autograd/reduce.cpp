// Reductions with their backward passes. Gradients flow back by broadcasting the (keepdim)
// output gradient over the reduced dims:
//   sum: g            mean: g / n           var: g · 2 (x − mean) / (n − correction)
//   std: g · (x − mean) / ((n − correction) · std)      prod: g · prod / x (zeros handled)
//   norm1: g · sign(x)  norm2: g · x / ‖x‖   logsumexp: g · softmax(x)
//   max / min over a dim: g to the chosen index; full max / min: shared evenly among ties.
#include <cmath>

#include "autograd/dispatch.h"
#include "autograd/ops.h"

namespace bcos {

using namespace detail;

namespace {

struct Plan {
  std::vector<bool> mask;  // per dim of x: reduced?
  Shape keep_shape;        // x's shape with reduced dims set to 1
  Shape out_shape;         // keep_shape, or with reduced dims removed
  int64_t count = 1;       // elements per output
};

Plan plan_reduction(const char* op, const Tensor& x, const Dims& dims, bool keepdim) {
  Plan p;
  p.mask.assign(size_t(x.dim()), dims.empty());
  for (int64_t d : dims) {
    int w = wrap_dim(d, x.dim(), op);
    if (x.dim() == 0) continue;
    BCOS_CHECK(!p.mask[size_t(w)] || dims.empty(), op, ": dim ", d, " appears twice in the dims list");
    p.mask[size_t(w)] = true;
  }
  for (int i = 0; i < x.dim(); ++i) {
    if (p.mask[size_t(i)]) {
      p.count *= x.shape()[i];
      p.keep_shape.push_back(1);
      if (keepdim) p.out_shape.push_back(1);
    } else {
      p.keep_shape.push_back(x.shape()[i]);
      p.out_shape.push_back(x.shape()[i]);
    }
  }
  return p;
}

// Runs the kernel into a keepdim-shaped result and views it as the requested output shape.
Tensor reduce_raw(ReduceOp op, const Tensor& x, const Plan& p, DType out_dtype,
                  const Tensor& indices = Tensor(), int64_t correction = 0) {
  Tensor out = empty(p.keep_shape, {out_dtype, x.device()});
  kernel::reduce(op, x, p.mask, out, indices, correction);
  return out.alias(p.out_shape, contiguous_strides(p.out_shape), 0);
}

// The output gradient reshaped to keepdim form so it broadcasts against x.
Tensor keepdim_grad(const Tensor& g, const Shape& keep_shape) { return g.reshape(keep_shape); }

// max / min have no identity element: reducing over an empty dim is an error.
void check_nonempty(const char* op, const Tensor& x, const Plan& p) {
  BCOS_CHECK(p.count > 0, op, ": cannot reduce over an empty dim (shape ", x.shape(), ")");
}

}  // namespace

Tensor sum(const Tensor& x, const Dims& dims, bool keepdim) {
  check_defined("sum", x, "input");
  if (autocast_widens(x, AutocastList::float32_on_cuda)) return sum(widened(x), dims, keepdim);
  Plan p = plan_reduction("sum", x, dims, keepdim);
  BCOS_CHECK(x.is_floating_point() || x.dtype() == DType::i64, "sum: unsupported dtype ", x.dtype());
  Tensor out = reduce_raw(ReduceOp::sum, x, p, x.dtype());
  if (needs_graph({x})) {
    Shape ks = p.keep_shape, xs = x.shape();
    record("SumBackward", out, {x}, [ks, xs](const Tensor& g, const std::vector<bool>&) {
      return Grads{keepdim_grad(g, ks).expand(xs)};
    });
  }
  return out;
}

Tensor mean(const Tensor& x, const Dims& dims, bool keepdim) {
  check_defined("mean", x, "input");
  check_floating("mean", x);
  Plan p = plan_reduction("mean", x, dims, keepdim);
  Tensor out = reduce_raw(ReduceOp::mean, x, p, x.dtype());
  if (needs_graph({x})) {
    Shape ks = p.keep_shape, xs = x.shape();
    double n = double(p.count);
    record("MeanBackward", out, {x}, [=](const Tensor& g, const std::vector<bool>&) {
      return Grads{div(keepdim_grad(g, ks).expand(xs), n)};
    });
  }
  return out;
}

Tensor var(const Tensor& x, const Dims& dims, int64_t correction, bool keepdim) {
  check_defined("var", x, "input");
  check_floating("var", x);
  Plan p = plan_reduction("var", x, dims, keepdim);
  Tensor out = reduce_raw(ReduceOp::var, x, p, x.dtype(), Tensor(), correction);
  if (needs_graph({x})) {
    SavedTensor sx(x);
    Shape ks = p.keep_shape;
    Dims ds = dims;
    double denom = double(p.count - correction);
    record("VarBackward", out, {x}, [=](const Tensor& g, const std::vector<bool>&) {
      const Tensor& xv = sx.get();
      Tensor centred = sub(xv, mean(xv, ds, true));
      return Grads{mul(keepdim_grad(g, ks), mul(centred, 2.0 / denom))};
    });
  }
  return out;
}

Tensor std(const Tensor& x, const Dims& dims, int64_t correction, bool keepdim) {
  check_defined("std", x, "input");
  check_floating("std", x);
  Plan p = plan_reduction("std", x, dims, keepdim);
  Tensor v = reduce_raw(ReduceOp::var, x, p, x.dtype(), Tensor(), correction);
  Tensor out = empty(v.shape(), {v.dtype(), v.device()});
  kernel::unary(UnaryOp::sqrt, v, out);
  if (needs_graph({x})) {
    SavedTensor sx(x), sy(out);
    Shape ks = p.keep_shape;
    Dims ds = dims;
    double denom = double(p.count - correction);
    record("StdBackward", out, {x}, [=](const Tensor& g, const std::vector<bool>&) {
      const Tensor& xv = sx.get();
      Tensor centred = sub(xv, mean(xv, ds, true));
      Tensor scale = div(keepdim_grad(g, ks), mul(keepdim_grad(sy.get(), ks), denom));
      return Grads{mul(centred, scale)};
    });
  }
  return out;
}

Tensor prod(const Tensor& x, const Dims& dims, bool keepdim) {
  check_defined("prod", x, "input");
  check_floating("prod", x);
  Plan p = plan_reduction("prod", x, dims, keepdim);
  Tensor out = reduce_raw(ReduceOp::prod, x, p, x.dtype());
  if (needs_graph({x})) {
    SavedTensor sx(x), sy(out);
    Shape ks = p.keep_shape;
    Dims ds = dims;
    record("ProdBackward", out, {x}, [=](const Tensor& g, const std::vector<bool>&) {
      const Tensor& xv = sx.get();
      Tensor y = keepdim_grad(sy.get(), ks), gk = keepdim_grad(g, ks);
      Tensor is_zero = eq(xv, 0.0);
      if (!any(is_zero).item<bool>()) return Grads{mul(gk, div(y, xv))};
      // With zeros, prod / x is undefined: the product of the others, computed directly
      // by replacing each zero with one (exact when a slice holds a single zero; a slice
      // with two or more zeros has gradient zero everywhere).
      Tensor ones_for_zeros = where(is_zero, ones_like(xv), xv);
      Tensor prod_others_nonzero = prod(ones_for_zeros, ds, true);
      Tensor zero_count = sum(is_zero.to(xv.dtype()), ds, true);
      Tensor others = where(is_zero, where(eq(zero_count, 1.0), prod_others_nonzero, zeros_like(y)),
                            where(eq(zero_count, 0.0), div(y, xv), zeros_like(y)));
      return Grads{mul(gk, others)};
    });
  }
  return out;
}

Tensor norm(const Tensor& x, double pnorm, const Dims& dims, bool keepdim) {
  check_defined("norm", x, "input");
  if (autocast_widens(x, AutocastList::float32_on_cuda)) return norm(widened(x), pnorm, dims, keepdim);
  check_floating("norm", x);
  BCOS_CHECK(pnorm == 1 || pnorm == 2, "norm: only p = 1 and p = 2 are supported, got ", pnorm);
  Plan p = plan_reduction("norm", x, dims, keepdim);
  Tensor out = reduce_raw(pnorm == 1 ? ReduceOp::norm1 : ReduceOp::norm2, x, p, x.dtype());
  if (needs_graph({x})) {
    SavedTensor sx(x), sy(out);
    Shape ks = p.keep_shape;
    record("NormBackward", out, {x}, [=](const Tensor& g, const std::vector<bool>&) {
      const Tensor& xv = sx.get();
      Tensor gk = keepdim_grad(g, ks);
      if (pnorm == 1) return Grads{mul(gk, sign(xv))};
      Tensor n = keepdim_grad(sy.get(), ks);
      // x / ‖x‖, defined as 0 where the norm is 0 (PyTorch's subgradient)
      Tensor safe = where(eq(n, 0.0), ones_like(n), n);
      return Grads{where(eq(n, 0.0), zeros_like(xv), mul(gk, div(xv, safe)))};
    });
  }
  return out;
}

Tensor logsumexp(const Tensor& x, const Dims& dims, bool keepdim) {
  check_defined("logsumexp", x, "input");
  if (autocast_widens(x, AutocastList::float32_on_cuda)) return logsumexp(widened(x), dims, keepdim);
  check_floating("logsumexp", x);
  Plan p = plan_reduction("logsumexp", x, dims, keepdim);
  Tensor out = reduce_raw(ReduceOp::logsumexp, x, p, x.dtype());
  if (needs_graph({x})) {
    SavedTensor sx(x), sy(out);
    Shape ks = p.keep_shape;
    record("LogsumexpBackward", out, {x}, [=](const Tensor& g, const std::vector<bool>&) {
      return Grads{mul(keepdim_grad(g, ks), exp(sub(sx.get(), keepdim_grad(sy.get(), ks))))};
    });
  }
  return out;
}

namespace {
// amax / amin / full max / full min: gradient shared evenly among the tied extremes.
Tensor extreme_all(const char* op, const char* node, bool is_max, const Tensor& x,
                   const Dims& dims, bool keepdim) {
  check_defined(op, x, "input");
  Plan p = plan_reduction(op, x, dims, keepdim);
  check_nonempty(op, x, p);
  BCOS_CHECK(x.is_floating_point() || x.dtype() == DType::i64, op, ": unsupported dtype ", x.dtype());
  Tensor out = reduce_raw(is_max ? ReduceOp::max : ReduceOp::min, x, p, x.dtype());
  if (needs_graph({x})) {
    SavedTensor sx(x), sy(out);
    Shape ks = p.keep_shape;
    Dims ds = dims;
    record(node, out, {x}, [=](const Tensor& g, const std::vector<bool>&) {
      Tensor hit = eq(sx.get(), keepdim_grad(sy.get(), ks)).to(g.dtype());
      Tensor count = sum(hit, ds, true);
      return Grads{mul(hit, div(keepdim_grad(g, ks), count))};
    });
  }
  return out;
}

ValuesIndices extreme_dim(const char* op, const char* node, bool is_max, const Tensor& x,
                          int64_t dim, bool keepdim) {
  check_defined(op, x, "input");
  Plan p = plan_reduction(op, x, {dim}, keepdim);
  check_nonempty(op, x, p);
  BCOS_CHECK(x.is_floating_point() || x.dtype() == DType::i64, op, ": unsupported dtype ", x.dtype());
  Tensor idx = empty(p.keep_shape, {DType::i64, x.device()});
  Tensor values = reduce_raw(is_max ? ReduceOp::max : ReduceOp::min, x, p, x.dtype(), idx);
  Tensor indices = idx.alias(p.out_shape, contiguous_strides(p.out_shape), 0);
  if (needs_graph({x})) {
    Shape ks = p.keep_shape, xs = x.shape();
    int d = x.dim() ? wrap_dim(dim, x.dim(), op) : 0;
    SavedTensor saved_idx(idx);  // the caller gets these indices: catch changes in place
    record(node, values, {x}, [=](const Tensor& g, const std::vector<bool>&) {
      if (xs.size() == 0) return Grads{g.reshape(xs)};
      Tensor gx = zeros(xs, {g.dtype(), g.device()});
      return Grads{scatter_add(gx, d, saved_idx.get(), keepdim_grad(g, ks))};
    });
  }
  return {values, indices};
}
}  // namespace

Tensor amax(const Tensor& x, const Dims& dims, bool keepdim) {
  return extreme_all("amax", "AmaxBackward", true, x, dims, keepdim);
}
Tensor amin(const Tensor& x, const Dims& dims, bool keepdim) {
  return extreme_all("amin", "AminBackward", false, x, dims, keepdim);
}
Tensor max(const Tensor& x) { return extreme_all("max", "MaxBackward", true, x, {}, false); }
Tensor min(const Tensor& x) { return extreme_all("min", "MinBackward", false, x, {}, false); }
ValuesIndices max(const Tensor& x, int64_t dim, bool keepdim) {
  return extreme_dim("max", "MaxBackward", true, x, dim, keepdim);
}
ValuesIndices min(const Tensor& x, int64_t dim, bool keepdim) {
  return extreme_dim("min", "MinBackward", false, x, dim, keepdim);
}

namespace {
Tensor arg_extreme(const char* op, bool is_max, const Tensor& x, std::optional<int64_t> dim,
                   bool keepdim) {
  check_defined(op, x, "input");
  if (!dim) {  // over the flattened tensor
    Tensor flat = x.detach().reshape({x.numel()});
    Tensor r = arg_extreme(op, is_max, flat, 0, false);
    if (keepdim) {
      Shape ones_shape;
      ones_shape.resize(x.dim(), 1);
      return r.reshape(ones_shape);
    }
    return r;
  }
  NoGradGuard no_grad;
  try {
    return (is_max ? max(x, *dim, keepdim) : min(x, *dim, keepdim)).indices;
  } catch (const Error& e) {  // name the op the caller used
    fail(op, ": ", e.what());
  }
}
}  // namespace

Tensor argmax(const Tensor& x, std::optional<int64_t> dim, bool keepdim) {
  return arg_extreme("argmax", true, x, dim, keepdim);
}
Tensor argmin(const Tensor& x, std::optional<int64_t> dim, bool keepdim) {
  return arg_extreme("argmin", false, x, dim, keepdim);
}

Tensor all(const Tensor& x, const Dims& dims, bool keepdim) {
  check_defined("all", x, "input");
  Tensor b = x.dtype() == DType::boolean ? x : ne(x, 0.0);
  return reduce_raw(ReduceOp::all, b, plan_reduction("all", x, dims, keepdim), DType::boolean);
}

Tensor any(const Tensor& x, const Dims& dims, bool keepdim) {
  check_defined("any", x, "input");
  Tensor b = x.dtype() == DType::boolean ? x : ne(x, 0.0);
  return reduce_raw(ReduceOp::any, b, plan_reduction("any", x, dims, keepdim), DType::boolean);
}

}  // namespace bcos
