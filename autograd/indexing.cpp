// Joining, splitting and indexing with their backward passes.
//   cat: each input gets its slice of g;   split / chunk: narrow views
//   index_select ↔ index_add;   gather ↔ scatter_add (each is the other's backward)
//   topk: indices found without grad, values = gather(x, indices) so the gradient follows.
#include "autograd/dispatch.h"
#include "autograd/ops.h"
#include "tensor/cuda_graph.h"
#include "tensor/index_errors.h"

namespace bcos {

using namespace detail;

Tensor cat(const std::vector<Tensor>& tensors, int64_t dim) {
  const char* op = "cat";
  BCOS_CHECK(!tensors.empty(), op, ": needs at least one tensor");
  const Tensor& first = tensors[0];
  check_defined(op, first, "tensor 0");
  int d = wrap_dim(dim, first.dim(), op);
  BCOS_CHECK(first.dim() > 0, op, ": zero-dim tensors cannot be concatenated");
  Shape out_shape = first.shape();
  out_shape[d] = 0;
  // Floating types promote where a 16-bit one is among them, as torch.cat's (a float32 class
  // token before bf16 patch embeddings under autocast: float32).
  DType type = first.dtype();
  for (size_t i = 0; i < tensors.size(); ++i) {
    const Tensor& t = tensors[i];
    check_defined(op, t, "a tensor");
    check_same_device(op, first, t);
    if ((is_half_float(type) || is_half_float(t.dtype())) && is_floating(type) && is_floating(t.dtype()))
      type = promote_floats(type, t.dtype());
    else
      check_same_dtype(op, first, t);
    bool ok = t.dim() == first.dim();
    for (int k = 0; ok && k < t.dim(); ++k) ok = k == d || t.shape()[k] == first.shape()[k];
    BCOS_CHECK(ok, op, ": tensor ", i, " has shape ", t.shape(), ", expected ", first.shape(),
               " except in dim ", d);
    out_shape[d] += t.shape()[d];
  }
  Tensor out = empty(out_shape, {type, first.device()});
  std::vector<int64_t> starts;
  int64_t pos = 0;
  for (const Tensor& t : tensors) {
    starts.push_back(pos);
    Tensor part = out.alias(t.shape(), out.strides(), out.offset() + pos * out.strides()[d]);
    copy_into(part, t);
    pos += t.shape()[d];
  }
  if (needs_graph(tensors)) {
    std::vector<int64_t> sizes;
    for (const Tensor& t : tensors) sizes.push_back(t.shape()[d]);
    record("CatBackward", out, tensors, [=](const Tensor& g, const std::vector<bool>& need) {
      Grads grads(sizes.size());
      for (size_t i = 0; i < sizes.size(); ++i)
        if (need[i]) grads[i] = g.narrow(d, starts[i], sizes[i]);
      return grads;
    });
  }
  return out;
}

Tensor stack(const std::vector<Tensor>& tensors, int64_t dim) {
  BCOS_CHECK(!tensors.empty(), "stack: needs at least one tensor");
  check_defined("stack", tensors[0], "tensor 0");
  int d = wrap_dim(dim, tensors[0].dim() + 1, "stack");
  std::vector<Tensor> parts;
  for (size_t i = 0; i < tensors.size(); ++i) {
    check_defined("stack", tensors[i], "a tensor");
    BCOS_CHECK(tensors[i].shape() == tensors[0].shape(), "stack: tensor ", i, " has shape ",
               tensors[i].shape(), ", tensor 0 has ", tensors[0].shape());
    parts.push_back(tensors[i].unsqueeze(d));
  }
  return cat(parts, d);
}

std::vector<Tensor> split(const Tensor& x, const std::vector<int64_t>& sizes, int64_t dim) {
  check_defined("split", x, "input");
  int d = wrap_dim(dim, x.dim(), "split");
  int64_t total = 0;
  for (int64_t s : sizes) {
    BCOS_CHECK(s >= 0, "split: negative size ", s);
    total += s;
  }
  BCOS_CHECK(total == x.size(d), "split: sizes add up to ", total, " but dim ", d, " of ",
             x.shape(), " has ", x.size(d));
  std::vector<Tensor> parts;
  int64_t pos = 0;
  for (int64_t s : sizes) {
    parts.push_back(x.narrow(d, pos, s));
    pos += s;
  }
  return parts;
}

std::vector<Tensor> split(const Tensor& x, int64_t split_size, int64_t dim) {
  check_defined("split", x, "input");
  BCOS_CHECK(split_size > 0, "split: split_size must be positive, got ", split_size);
  int64_t n = x.size(wrap_dim(dim, x.dim(), "split"));
  std::vector<int64_t> sizes;
  for (int64_t pos = 0; pos < n; pos += split_size) sizes.push_back(std::min(split_size, n - pos));
  if (sizes.empty()) sizes.push_back(0);
  return split(x, sizes, dim);
}

std::vector<Tensor> chunk(const Tensor& x, int64_t chunks, int64_t dim) {
  check_defined("chunk", x, "input");
  BCOS_CHECK(chunks > 0, "chunk: chunks must be positive, got ", chunks);
  int64_t n = x.size(wrap_dim(dim, x.dim(), "chunk"));
  return split(x, std::max<int64_t>((n + chunks - 1) / chunks, 1), dim);
}

Tensor index_select(const Tensor& x, int64_t dim, const Tensor& index) {
  const char* op = "index_select";
  check_defined(op, x, "input");
  // 16-bit values are moved as they are; a gradient sums in float32, rounded once.
  if (is_half(x) && needs_graph({x})) return through_float32(x, [&] { return index_select(widened(x), dim, index); });
  check_defined(op, index, "index");
  check_index(op, index);
  check_same_device(op, x, index);
  BCOS_CHECK(index.dim() <= 1, op, ": index must be 0-D or 1-D, got shape ", index.shape());
  BCOS_CHECK(x.dim() > 0, op, ": input must have at least one dim");
  int d = wrap_dim(dim, x.dim(), op);
  Shape out_shape = x.shape();
  out_shape[d] = index.numel();
  Tensor out = empty(out_shape, {x.dtype(), x.device()});
  kernel::index_select(x, d, index, out);
  if (needs_graph({x})) {
    Shape xs = x.shape();
    Tensor idx = index.data_alias();
    record("IndexSelectBackward", out, {x}, [=](const Tensor& g, const std::vector<bool>&) {
      Tensor gx = zeros(xs, {g.dtype(), g.device()});
      kernel::index_add(gx, d, idx, g);
      return Grads{gx};
    });
  }
  return out;
}

namespace {
void check_gather_shapes(const char* op, const Tensor& x, int d, const Tensor& index,
                         const Tensor* src) {
  BCOS_CHECK(x.dim() > 0, op, ": the input needs at least one dim, got a 0-dim tensor");
  BCOS_CHECK(index.dim() == x.dim(), op, ": index ", index.shape(), " must have as many dims as ",
             "the input ", x.shape());
  if (src)
    BCOS_CHECK(src->dim() == x.dim(), op, ": src ", src->shape(), " must have as many dims as ",
               "the input ", x.shape());
  for (int k = 0; k < x.dim(); ++k) {
    BCOS_CHECK(k == d || index.shape()[k] <= x.shape()[k], op, ": index ", index.shape(),
               " is larger than the input ", x.shape(), " in dim ", k);
    if (src)
      BCOS_CHECK(index.shape()[k] <= src->shape()[k], op, ": index ", index.shape(),
                 " is larger than src ", src->shape(), " in dim ", k);
  }
}
}  // namespace

Tensor gather(const Tensor& x, int64_t dim, const Tensor& index) {
  const char* op = "gather";
  check_defined(op, x, "input");
  if (is_half(x) && needs_graph({x})) return through_float32(x, [&] { return gather(widened(x), dim, index); });
  check_defined(op, index, "index");
  check_index(op, index);
  check_same_device(op, x, index);
  int d = wrap_dim(dim, x.dim(), op);
  check_gather_shapes(op, x, d, index, nullptr);
  Tensor out = empty(index.shape(), {x.dtype(), x.device()});
  kernel::gather(x, d, index, out);
  if (needs_graph({x})) {
    Shape xs = x.shape();
    Tensor idx = index.data_alias();
    record("GatherBackward", out, {x}, [=](const Tensor& g, const std::vector<bool>&) {
      Tensor gx = zeros(xs, {g.dtype(), g.device()});
      kernel::scatter_add(gx, d, idx, g);
      return Grads{gx};
    });
  }
  return out;
}

Tensor scatter_add(const Tensor& x, int64_t dim, const Tensor& index, const Tensor& src) {
  const char* op = "scatter_add";
  check_defined(op, x, "input");
  if (is_half(x)) {
    check_defined(op, src, "src");
    check_same_dtype(op, x, src);
    return through_float32(x, [&] { return scatter_add(widened(x), dim, index, widened(src)); });
  }
  check_defined(op, index, "index");
  check_defined(op, src, "src");
  check_index(op, index);
  check_same_device(op, x, index);
  check_same_device(op, x, src);
  check_same_dtype(op, x, src);
  check_float(op, x);
  int d = wrap_dim(dim, x.dim(), op);
  check_gather_shapes(op, x, d, index, &src);
  Tensor out = empty(x.shape(), {x.dtype(), x.device()});
  copy_into(out, x);
  // src may be larger than index: only its leading index-shaped block is scattered.
  Tensor src_block = src.alias(index.shape(), src.strides(), src.offset());
  kernel::scatter_add(out, d, index, src_block);
  if (needs_graph({x, src})) {
    Tensor idx = index.data_alias();
    Shape ss = src.shape();
    record("ScatterAddBackward", out, {x, src}, [=](const Tensor& g, const std::vector<bool>& need) {
      Tensor gs;
      if (need[1]) {
        gs = zeros(ss, {g.dtype(), g.device()});
        copy_into(gs.alias(idx.shape(), gs.strides(), 0), gather(g, d, idx));
      }
      return Grads{g, gs};
    });
  }
  return out;
}

Tensor masked_fill(const Tensor& x, const Tensor& mask, double value) {
  check_defined("masked_fill", x, "input");
  check_defined("masked_fill", mask, "mask");
  BCOS_CHECK(mask.dtype() == DType::boolean, "masked_fill: mask must be bool, got ", mask.dtype());
  BCOS_CHECK(broadcast_shapes(x.shape(), mask.shape(), "masked_fill") == x.shape(),
             "masked_fill: mask ", mask.shape(), " does not broadcast to the input ", x.shape());
  return where(mask, scalar_like(value, x), x);
}

Tensor one_hot(const Tensor& indices, int64_t num_classes) {
  const char* op = "one_hot";
  check_defined(op, indices, "indices");
  check_index(op, indices);
  if (indices.is_cuda() && num_classes >= 0) {
    // Made where the indices are: no round trip through the host (which a CUDA graph capture
    // could not make); scatter_add checks the range in its kernel (fault.cu).
    NoGradGuard no_grad;
    const IndexRole role(str(op, ": class index"), "classes");
    const Tensor at = indices.unsqueeze(-1);
    Shape s = indices.shape();
    s.push_back(num_classes);
    const TensorOptions f32{DType::f32, indices.device()};
    return scatter_add(zeros(s, f32), -1, at, ones(at.shape(), f32)).to(DType::i64);
  }
  BCOS_CHECK(!cuda_graph_capturing(), op, ": inside a CUDA graph capture, give num_classes (finding the largest "
             "index takes a round trip through the host)");
  Tensor idx = to_cpu_contiguous(indices);
  const int64_t* p = idx.data<int64_t>();
  int64_t max_seen = -1;
  for (int64_t i = 0; i < idx.numel(); ++i) {
    BCOS_CHECK(p[i] >= 0, op, ": negative class index ", p[i]);
    max_seen = std::max(max_seen, p[i]);
  }
  if (num_classes < 0) num_classes = max_seen + 1;
  BCOS_CHECK(max_seen < num_classes, op, ": class index ", max_seen, " is out of range for ",
             num_classes, " classes");
  Shape s = indices.shape();
  s.push_back(num_classes);
  Tensor out = zeros(s, DType::i64);
  int64_t* o = out.data<int64_t>();
  for (int64_t i = 0; i < idx.numel(); ++i) o[i * num_classes + p[i]] = 1;
  return out.to(indices.device());
}

ValuesIndices topk(const Tensor& x, int64_t k, int64_t dim, bool largest, bool sorted) {
  const char* op = "topk";
  check_defined(op, x, "input");
  if (is_half(x)) {  // (the values are the input's own: rounding them back is exact)
    Tensor idx;
    Tensor values = through_float32(x, [&] {
      ValuesIndices r = topk(widened(x), k, dim, largest, sorted);
      idx = r.indices;
      return r.values;
    });
    return {values, idx};
  }
  int d = wrap_dim(dim, x.dim(), op);
  int64_t n = x.dim() ? x.size(d) : 1;
  BCOS_CHECK(k >= 0 && k <= n, op, ": k = ", k, " is out of range for dim ", d, " of size ", n,
             " (shape ", x.shape(), ")");
  Tensor idx_last;
  {
    NoGradGuard no_grad;
    Tensor moved = x.dim() ? x.transpose(d, -1).contiguous() : x.reshape({1});
    Shape s = moved.shape();
    s[s.size() - 1] = k;
    Tensor values = empty(s, {x.dtype(), x.device()});
    idx_last = empty(s, {DType::i64, x.device()});
    kernel::topk(moved, k, largest, sorted, values, idx_last);
  }
  Tensor indices = x.dim() ? idx_last.transpose(d, -1).contiguous() : idx_last.reshape({});
  Tensor values = x.dim() ? gather(x, d, indices) : x.reshape({}).clone();
  return {values, indices};
}

Tensor broadcast_to(const Tensor& x, const Shape& shape) {
  check_defined("broadcast_to", x, "input");
  return x.expand(shape);
}

}  // namespace bcos
