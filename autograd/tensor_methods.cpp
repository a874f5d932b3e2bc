// The autograd-aware members of Tensor: grad bookkeeping, views (each records how its gradient
// maps back to the base), copies and conversions, and the in-place ops.
#include <numeric>
#include <optional>

#include "autograd/dispatch.h"
#include "autograd/ops.h"

namespace bcos {

// ---- grad bookkeeping ----------------------------------------------------------------------

bool Tensor::requires_grad() const { return autograd_ && autograd_->requires_grad; }

Tensor& Tensor::requires_grad_(bool on) {
  BCOS_CHECK(defined(), "requires_grad_: undefined tensor");
  if (autograd_ && autograd_->grad_fn) {
    BCOS_CHECK(on, "requires_grad_: only leaf tensors can stop requiring grad; use "
                         "detach() on a computed tensor");
    return *this;
  }
  if (on)
    BCOS_CHECK(is_floating_point(), "requires_grad_: only floating-point tensors can require "
               "grad, got ", dtype());
  if (!autograd_) autograd_ = std::make_shared<AutogradMeta>();
  autograd_->requires_grad = on;
  return *this;
}

bool Tensor::is_leaf() const { return !autograd_ || !autograd_->grad_fn; }

Tensor Tensor::grad() const { return autograd_ ? autograd_->grad : Tensor(); }

void Tensor::set_grad(const Tensor& g) const {
  BCOS_CHECK(defined(), "set_grad: undefined tensor");
  if (g.defined())
    BCOS_CHECK(g.shape() == shape_ && g.dtype() == dtype_ && g.device() == device(),
               "set_grad: gradient ", g.shape(), " ", g.dtype(), " on ", g.device(),
               " does not match the tensor ", shape_, " ", dtype_, " on ", device());
  if (!autograd_) autograd_ = std::make_shared<AutogradMeta>();
  autograd_->grad = g;
}

void Tensor::zero_grad() const {
  if (autograd_) autograd_->grad = Tensor();
}

void Tensor::retain_grad() const {
  BCOS_CHECK(requires_grad(), "retain_grad: the tensor does not require grad");
  if (is_leaf()) return;  // leaves keep their gradient anyway
  autograd_->retains_grad = true;
  autograd_->grad_fn->retained = autograd_;
}

std::string Tensor::grad_fn_name() const {
  return autograd_ && autograd_->grad_fn ? autograd_->grad_fn->name : std::string();
}

Tensor Tensor::detach() const { return data_alias(); }

void Tensor::backward(const Tensor& gradient, bool retain_graph) const {
  BCOS_CHECK(defined(), "backward: undefined tensor");
  Tensor g = gradient;
  if (!g.defined()) {
    BCOS_CHECK(numel() == 1, "backward: a gradient can be implied only for a scalar output; "
               "this tensor has shape ", shape_, ", pass a gradient of that shape");
    g = ones(shape_, {dtype_, device()});
  }
  run_backward(*this, g, retain_graph);
}

// ---- views -------------------------------------------------------------------------------

namespace {

// Strides that let `shape` view memory laid out as (old_shape, old_strides), if any exist.
std::optional<Strides> view_strides(const Shape& old_shape, const Strides& old_strides,
                                    const Shape& shape) {
  Strides out;
  out.resize(shape.size());
  if (old_shape.numel() == 0 || old_shape.empty()) return contiguous_strides(shape);
  // Walk old dims from the innermost, grouping runs that are contiguous with each other;
  // each group must be covered exactly by a run of new dims.
  int nd = shape.size() - 1;
  int64_t base = old_strides.back(), old_count = 1, new_count = 1;
  for (int od = old_shape.size() - 1; od >= 0; --od) {
    old_count *= old_shape[od];
    bool group_ends = od == 0 || (old_shape[od - 1] != 1 && old_strides[od - 1] != old_count * base);
    if (!group_ends) continue;
    while (nd >= 0 && (new_count < old_count || shape[nd] == 1)) {
      out[nd] = new_count * base;
      new_count *= shape[nd];
      nd--;
    }
    if (new_count != old_count) return std::nullopt;
    if (od > 0) {
      base = old_strides[od - 1];
      old_count = new_count = 1;
    }
  }
  if (nd != -1) return std::nullopt;
  return out;
}

// Resolves one -1 in a requested shape from the element count.
Shape infer_shape(const Shape& requested, int64_t numel, const char* op, const Shape& from) {
  Shape s = requested;
  int infer = -1;
  int64_t known = 1;
  for (int i = 0; i < s.size(); ++i) {
    if (s[i] == -1) {
      BCOS_CHECK(infer < 0, op, ": only one dim can be -1 in ", requested);
      infer = i;
    } else {
      BCOS_CHECK(s[i] >= 0, op, ": invalid size ", s[i], " in ", requested);
      known *= s[i];
    }
  }
  if (infer >= 0) {
    BCOS_CHECK(known > 0 && numel % known == 0, op, ": shape ", requested,
               " is invalid for a tensor of shape ", from, " (", numel, " elements)");
    s[infer] = numel / known;
  }
  BCOS_CHECK(s.numel() == numel, op, ": shape ", requested, " is invalid for a tensor of shape ",
             from, " (", numel, " elements)");
  return s;
}

// Records a view node whose backward is `back(g)` (grad w.r.t. the base).
Tensor make_view(const Tensor& base, Tensor view, const char* name,
                 std::function<Tensor(const Tensor&)> back) {
  if (needs_graph({base}))
    record(name, view, {base}, [back = std::move(back)](const Tensor& g, const std::vector<bool>&) {
      return Grads{back(g)};
    });
  return view;
}

// Gradient of a strided sub-view: zeros of the base's shape with g copied into the same view.
Tensor scatter_into_zeros(const Tensor& g, const Shape& base_shape,
                          const std::function<Tensor(const Tensor&)>& same_view) {
  Tensor z = zeros(base_shape, {g.dtype(), g.device()});
  copy_into(same_view(z), g);
  return z;
}

Tensor raw_slice(const Tensor& t, int dim, int64_t start, int64_t end, int64_t step) {
  Shape shape = t.shape();
  Strides st = t.strides();
  int64_t n = shape[dim];
  if (start < 0) start += n;
  if (end < 0) end += n;
  start = std::clamp<int64_t>(start, 0, n);
  end = std::clamp<int64_t>(end, start, n);
  shape[dim] = (end - start + step - 1) / step;
  int64_t offset = t.offset() + start * st[dim];
  st[dim] *= step;
  return t.alias(shape, st, offset);
}

}  // namespace

Tensor Tensor::view(const Shape& requested) const {
  BCOS_CHECK(defined(), "view: undefined tensor");
  Shape s = infer_shape(requested, numel(), "view", shape_);
  auto st = view_strides(shape_, strides_, s);
  BCOS_CHECK(st.has_value(), "view: shape ", requested, " is not compatible with the strides ",
             strides_, " of a tensor of shape ", shape_, "; use reshape() (which copies)");
  Shape original = shape_;
  return make_view(*this, alias(s, *st, offset_), "ViewBackward",
                   [original](const Tensor& g) { return g.reshape(original); });
}

Tensor Tensor::reshape(const Shape& requested) const {
  BCOS_CHECK(defined(), "reshape: undefined tensor");
  Shape s = infer_shape(requested, numel(), "reshape", shape_);
  if (view_strides(shape_, strides_, s)) return view(s);
  return contiguous().view(s);
}

Tensor Tensor::permute(const Shape& dims) const {
  BCOS_CHECK(dims.size() == dim(), "permute: ", dims.size(), " dims given for a tensor of shape ",
             shape_);
  Shape shape, inverse;
  Strides st;
  inverse.resize(dim());
  std::vector<bool> seen(static_cast<size_t>(dim()), false);
  for (int i = 0; i < dim(); ++i) {
    int d = wrap_dim(dims[i], dim(), "permute");
    BCOS_CHECK(!seen[size_t(d)], "permute: dim ", d, " repeated in ", dims);
    seen[size_t(d)] = true;
    shape.push_back(shape_[d]);
    st.push_back(strides_[d]);
    inverse[d] = i;
  }
  return make_view(*this, alias(shape, st, offset_), "PermuteBackward",
                   [inverse](const Tensor& g) { return g.permute(inverse); });
}

Tensor Tensor::transpose(int64_t d0, int64_t d1) const {
  int a = wrap_dim(d0, dim(), "transpose"), b = wrap_dim(d1, dim(), "transpose");
  if (dim() == 0) return *this;
  Shape order;
  for (int i = 0; i < dim(); ++i) order.push_back(i);
  std::swap(order[a], order[b]);
  return permute(order);
}

Tensor Tensor::t() const {
  BCOS_CHECK(dim() <= 2, "t: expects a tensor with at most 2 dims, got shape ", shape_);
  return dim() < 2 ? *this : transpose(0, 1);
}

Tensor Tensor::slice(int64_t d, int64_t start, int64_t end, int64_t step) const {
  int dd = wrap_dim(d, dim(), "slice");
  BCOS_CHECK(dim() > 0, "slice: cannot slice a 0-dim tensor");
  BCOS_CHECK(step > 0, "slice: step must be positive, got ", step);
  Tensor v = raw_slice(*this, dd, start, end, step);
  Shape base_shape = shape_;
  return make_view(*this, v, "SliceBackward", [=](const Tensor& g) {
    return scatter_into_zeros(g, base_shape,
                              [=](const Tensor& z) { return raw_slice(z, dd, start, end, step); });
  });
}

Tensor Tensor::narrow(int64_t d, int64_t start, int64_t length) const {
  int dd = wrap_dim(d, dim(), "narrow");
  int64_t n = shape_[dd];
  if (start < 0) start += n;
  BCOS_CHECK(start >= 0 && length >= 0 && start + length <= n, "narrow: range [", start, ", ",
             start + length, ") is out of bounds for dim ", dd, " of size ", n, " (shape ", shape_,
             ")");
  return slice(dd, start, start + length, 1);
}

Tensor Tensor::select(int64_t d, int64_t index) const {
  int dd = wrap_dim(d, dim(), "select");
  BCOS_CHECK(dim() > 0, "select: cannot select from a 0-dim tensor");
  int64_t n = shape_[dd];
  BCOS_CHECK(index >= -n && index < n, "select: index ", index, " out of range for dim ", dd,
             " of size ", n, " (shape ", shape_, ")");
  if (index < 0) index += n;
  Shape shape = shape_;
  Strides st = strides_;
  int64_t offset = offset_ + index * st[dd];
  shape.erase(dd);
  st.erase(dd);
  Shape base_shape = shape_;
  return make_view(*this, alias(shape, st, offset), "SelectBackward", [=](const Tensor& g) {
    return scatter_into_zeros(g, base_shape, [=](const Tensor& z) {
      Shape zs = z.shape();
      Strides zst = z.strides();
      int64_t zoff = z.offset() + index * zst[dd];
      zs.erase(dd);
      zst.erase(dd);
      return z.alias(zs, zst, zoff);
    });
  });
}

Tensor Tensor::expand(const Shape& requested) const {
  Shape s = requested;
  int lead = s.size() - dim();
  BCOS_CHECK(lead >= 0, "expand: cannot expand shape ", shape_, " to ", requested);
  for (int i = 0; i < s.size(); ++i)
    if (s[i] == -1) {
      BCOS_CHECK(i >= lead, "expand: -1 not allowed for new leading dims in ", requested);
      s[i] = shape_[i - lead];
    }
  if (s == shape_) return *this;
  Tensor v = raw_expand(*this, s, "expand");
  Shape original = shape_;
  return make_view(*this, v, "ExpandBackward",
                   [original](const Tensor& g) { return sum_to(g, original); });
}

Tensor Tensor::squeeze() const {
  Shape s;
  for (int64_t d : shape_)
    if (d != 1) s.push_back(d);
  return s == shape_ ? *this : reshape(s);
}

Tensor Tensor::squeeze(int64_t d) const {
  if (dim() == 0) return *this;
  int dd = wrap_dim(d, dim(), "squeeze");
  if (shape_[dd] != 1) return *this;
  Shape s = shape_;
  s.erase(dd);
  return reshape(s);
}

Tensor Tensor::unsqueeze(int64_t d) const {
  int dd = wrap_dim(d, dim() + 1, "unsqueeze");
  Shape s = shape_;
  s.insert(dd, 1);
  return reshape(s);
}

Tensor Tensor::flatten(int64_t start, int64_t end) const {
  if (dim() == 0) return reshape({1});
  int a = wrap_dim(start, dim(), "flatten"), b = wrap_dim(end, dim(), "flatten");
  BCOS_CHECK(a <= b, "flatten: start dim ", start, " is after end dim ", end);
  Shape s;
  for (int i = 0; i < a; ++i) s.push_back(shape_[i]);
  int64_t p = 1;
  for (int i = a; i <= b; ++i) p *= shape_[i];
  s.push_back(p);
  for (int i = b + 1; i < dim(); ++i) s.push_back(shape_[i]);
  return reshape(s);
}

Tensor Tensor::contiguous() const {
  BCOS_CHECK(defined(), "contiguous: undefined tensor");
  if (is_contiguous()) return *this;
  return clone();
}

Tensor Tensor::clone() const {
  BCOS_CHECK(defined(), "clone: undefined tensor");
  Tensor out = empty(shape_, {dtype_, device()});
  copy_into(out, *this);
  if (needs_graph({*this}))
    record("CloneBackward", out, {*this},
           [](const Tensor& g, const std::vector<bool>&) { return Grads{g}; });
  return out;
}

Tensor Tensor::to(DType dt) const {
  BCOS_CHECK(defined(), "to: undefined tensor");
  if (dt == dtype_) return *this;
  Tensor out = raw_to(*this, dt, device());
  if (needs_graph({*this}) && is_floating(dt)) {
    DType from = dtype_;
    record("ToCopyBackward", out, {*this},
           [from](const Tensor& g, const std::vector<bool>&) { return Grads{g.to(from)}; });
  }
  return out;
}

Tensor Tensor::to(Device dev) const {
  BCOS_CHECK(defined(), "to: undefined tensor");
  if (dev == device()) return *this;
  Tensor out = raw_to(*this, dtype_, dev);
  if (needs_graph({*this})) {
    Device from = device();
    record("ToCopyBackward", out, {*this},
           [from](const Tensor& g, const std::vector<bool>&) { return Grads{g.to(from)}; });
  }
  return out;
}

// ---- in-place ----------------------------------------------------------------------------

void detail::check_inplace(const char* op, const Tensor& self) {
  BCOS_CHECK(self.defined(), op, ": undefined tensor");
  for (int d = 0; d < self.dim(); ++d)
    BCOS_CHECK(self.strides()[d] != 0 || self.shape()[d] <= 1, op, ": the destination ",
               self.shape(), " is an expanded view (stride 0 in dim ", d,
               "): its elements share memory, so writing to it is ambiguous; clone() it first");
  if (!grad_enabled() || !self.requires_grad()) return;
  if (self.is_leaf())
    fail(op, ": a leaf tensor that requires grad (shape ", self.shape(),
         ") cannot be modified in place while grad mode is on; wrap the update in NoGradGuard");
  fail(op, ": in-place modification of a tensor that is part of the autograd graph (shape ",
       self.shape(), ", from ", self.grad_fn_name(), ") is not supported; use the out-of-place op");
}

Tensor& Tensor::copy_(const Tensor& src) {
  detail::check_inplace("copy_", *this);
  BCOS_CHECK(!grad_enabled() || !src.requires_grad(), "copy_: the source requires grad and the "
             "copy would not be tracked; use cat/stack/where, or copy src.detach()");
  bool same_view = src.storage() == storage_ && src.offset() == offset_ &&
                   src.strides() == strides_ && src.shape() == shape_;
  if (same_view) return *this;
  // A source overlapping the destination in another layout would be read after being written.
  copy_into(*this, src.storage() == storage_ ? src.detach().clone() : src);
  bump_version();
  return *this;
}

Tensor& Tensor::fill_(double value) {
  detail::check_inplace("fill_", *this);
  fill_into(*this, value);
  bump_version();
  return *this;
}

Tensor& Tensor::add_(const Tensor& other, double alpha) {
  detail::check_inplace("add_", *this);
  detail::check_same_device("add_", *this, other);
  detail::check_same_dtype("add_", *this, other);
  if (alpha != 1.0 && is_half_float(dtype_)) {  // 16-bit: x + alpha · y in float32, rounded once
    const Tensor wide = add(detach().to(DType::f32), mul(other.detach().to(DType::f32), alpha));
    kernel::copy(*this, raw_expand(wide, shape_, "add_"));
    bump_version();
    return *this;
  }
  Tensor b = alpha == 1.0 ? other.detach() : mul(other.detach(), alpha);
  if (b.storage() == storage_) b = b.clone();  // x.add_(x.t()) must read x before writing it
  kernel::binary(BinaryOp::add, *this, raw_expand(b, shape_, "add_"), *this);
  bump_version();
  return *this;
}

Tensor& Tensor::mul_(double value) {
  detail::check_inplace("mul_", *this);
  // A 16-bit tensor's factor stays float32 (the product rounded once), as in mul(x, value).
  const Tensor factor = is_half_float(dtype_) ? full(Shape{}, value, {DType::f32, device()}) : detail::scalar_like(value, *this);
  kernel::binary(BinaryOp::mul, *this, raw_expand(factor, shape_, "mul_"), *this);
  bump_version();
  return *this;
}

Tensor& Tensor::mul_(const Tensor& other) {
  detail::check_inplace("mul_", *this);
  detail::check_defined("mul_", other, "other");
  detail::check_same_device("mul_", *this, other);
  if (other.dtype() != dtype_) {  // (promoted as mul(x, y), written back in this dtype)
    BCOS_CHECK(is_floating(dtype_) || !is_floating(other.dtype()), "mul_: this ", dtype_name(dtype_), " ",
               shape_, " tensor cannot hold its product with a ", dtype_name(other.dtype()), " ", other.shape(), " one");
    kernel::copy(*this, raw_expand(mul(detach(), other.detach()), shape_, "mul_"));
  } else {
    Tensor b = other.detach();
    if (b.storage() == storage_) b = b.clone();  // read before written, as add_
    kernel::binary(BinaryOp::mul, *this, raw_expand(b, shape_, "mul_"), *this);
  }
  bump_version();
  return *this;
}

Tensor& Tensor::masked_fill_(const Tensor& mask, double value) {
  detail::check_inplace("masked_fill_", *this);
  BCOS_CHECK(mask.dtype() == DType::boolean, "masked_fill_: mask must be bool, got ", mask.dtype());
  detail::check_same_device("masked_fill_", *this, mask);
  Tensor m = raw_expand(mask, shape_, "masked_fill_");
  kernel::where(m, raw_expand(detail::scalar_like(value, *this), shape_, "masked_fill_"), *this, *this);
  bump_version();
  return *this;
}

}  // namespace bcos
