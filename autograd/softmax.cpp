// Softmax, log-softmax and the classification losses.
//   nll_loss:  −log p[target], ignored targets excluded (also from the mean's count)
//   cross_entropy with label smoothing ε over C classes:
//     (1 − ε) · nll + ε · mean_c(−log p_c)        (PyTorch's definition)
//   binary_cross_entropy_with_logits: max(x, 0) − x·t + log(1 + exp(−|x|)), whose exact
//     gradient σ(x) − t is recorded directly (a composite would get x = 0 wrong).
#include "autograd/dispatch.h"
#include "autograd/ops.h"
#include "tensor/index_errors.h"

namespace bcos {

using namespace detail;

namespace {
Tensor softmax_impl(const char* op, const char* node, bool log, const Tensor& x, int64_t dim) {
  check_defined(op, x, "input");
  check_float(op, x);
  int d = wrap_dim(dim, x.dim(), op);
  Tensor out = empty(x.shape(), {x.dtype(), x.device()});
  if (x.numel() > 0) kernel::softmax(x, x.dim() ? d : 0, log, out);
  if (needs_graph({x})) {
    SavedTensor sy(out);
    record(node, out, {x}, [=](const Tensor& g, const std::vector<bool>&) {
      Tensor gx = empty(g.shape(), {g.dtype(), g.device()});
      kernel::softmax_backward(g, sy.get(), sy.get().dim() ? d : 0, log, gx);
      return Grads{gx};
    });
  }
  return out;
}

Tensor reduce_loss(const Tensor& per_item, Reduction reduction, const Tensor& count) {
  switch (reduction) {
    case Reduction::none: return per_item;
    case Reduction::sum: return sum(per_item);
    case Reduction::mean: return count.defined() ? div(sum(per_item), count) : mean(per_item);
  }
  return per_item;
}

// logits [N, C, d...] -> [N·d..., C]; target [N, d...] -> [N·d...]
void flatten_classes(const char* op, const Tensor& logits, const Tensor& target, Tensor& flat_logits,
                     Tensor& flat_target, Shape& item_shape) {
  check_defined(op, logits, "input");
  check_defined(op, target, "target");
  check_index(op, target);
  check_same_device(op, logits, target);
  BCOS_CHECK(logits.dim() >= 2, op, ": expected input [N, C] or [N, C, d1, ...], got ", logits.shape());
  item_shape = logits.shape();
  item_shape.erase(1);
  BCOS_CHECK(target.shape() == item_shape, op, ": target shape ", target.shape(),
             " does not match input ", logits.shape(), " (expected ", item_shape, ")");
  const int64_t c = logits.size(1);
  Shape order{0};
  for (int i = 2; i < logits.dim(); ++i) order.push_back(i);
  order.push_back(1);
  flat_logits = logits.dim() == 2 ? logits : logits.permute(order).reshape({-1, c});
  flat_target = target.reshape({-1});
}

// −log p[target] per item, 0 for ignored items; and the number of counted items.
Tensor picked_nll(const char* op, const Tensor& logp, const Tensor& target, int64_t ignore_index,
                  Tensor& valid) {
  valid = ne(target, double(ignore_index));
  Tensor safe_target = where(valid, target, zeros(Shape{}, {DType::i64, target.device()}));
  // gather checks the targets (on a GPU inside its kernel, raised at the next synchronisation:
  // no round trip through the host here) and words its error as ours.
  const IndexRole role(str(op, ": target"), "classes");
  Tensor picked = gather(logp, 1, safe_target.unsqueeze(1)).squeeze(1);
  return where(valid, neg(picked), zeros(Shape{}, {logp.dtype(), logp.device()}));
}
}  // namespace

Tensor softmax(const Tensor& x, int64_t dim) {
  if (is_half(x)) return float32_list_op(x, AutocastList::float32_on_cuda, [&] { return softmax(widened(x), dim); });
  return softmax_impl("softmax", "SoftmaxBackward", false, x, dim);
}
Tensor log_softmax(const Tensor& x, int64_t dim) {
  if (is_half(x)) return float32_list_op(x, AutocastList::float32_on_cuda, [&] { return log_softmax(widened(x), dim); });
  return softmax_impl("log_softmax", "LogSoftmaxBackward", true, x, dim);
}

Tensor nll_loss(const Tensor& log_probs, const Tensor& target, int64_t ignore_index,
                Reduction reduction) {
  const char* op = "nll_loss";
  if (is_half(log_probs))
    return float32_list_op(log_probs, AutocastList::float32_everywhere, [&] { return nll_loss(widened(log_probs), target, ignore_index, reduction); });
  Tensor lp, t;
  Shape item_shape;
  flatten_classes(op, log_probs, target, lp, t, item_shape);
  Tensor valid;
  Tensor per_item = picked_nll(op, lp, t, ignore_index, valid);
  if (reduction == Reduction::none) return per_item.reshape(item_shape);
  return reduce_loss(per_item, reduction, sum(valid.to(lp.dtype())));
}

Tensor cross_entropy(const Tensor& logits, const Tensor& target, int64_t ignore_index,
                     double label_smoothing, Reduction reduction) {
  const char* op = "cross_entropy";
  BCOS_CHECK(label_smoothing >= 0 && label_smoothing <= 1, op,
             ": label_smoothing must be in [0, 1], got ", label_smoothing);
  check_defined(op, logits, "input");
  if (is_half(logits))
    return float32_list_op(logits, AutocastList::float32_everywhere, [&] { return cross_entropy(widened(logits), target, ignore_index, label_smoothing, reduction); });
  check_float(op, logits);
  Tensor lg, t;
  Shape item_shape;
  flatten_classes(op, logits, target, lg, t, item_shape);
  Tensor logp = log_softmax(lg, 1);
  Tensor valid;
  Tensor per_item = picked_nll(op, logp, t, ignore_index, valid);
  if (label_smoothing > 0) {
    Tensor smooth = neg(mean(logp, {1}));  // −(1/C) Σ_c log p_c
    smooth = where(valid, smooth, zeros(Shape{}, {logp.dtype(), logp.device()}));
    per_item = add(mul(per_item, 1 - label_smoothing), mul(smooth, label_smoothing));
  }
  if (reduction == Reduction::none) return per_item.reshape(item_shape);
  return reduce_loss(per_item, reduction, sum(valid.to(logp.dtype())));
}

Tensor binary_cross_entropy_with_logits(const Tensor& logits, const Tensor& target,
                                        const Tensor& weight, Reduction reduction) {
  const char* op = "binary_cross_entropy_with_logits";
  check_defined(op, logits, "input");
  check_defined(op, target, "target");
  if (is_half(logits))
    return float32_list_op(logits, AutocastList::float32_everywhere, [&] {
      return binary_cross_entropy_with_logits(widened(logits), widened(target), widened(weight), reduction);
    });
  check_float(op, logits);
  check_same_dtype(op, logits, target);
  check_same_device(op, logits, target);
  BCOS_CHECK(logits.shape() == target.shape(), op, ": target shape ", target.shape(),
             " does not match input ", logits.shape());
  if (weight.defined()) {
    check_same_dtype(op, logits, weight);
    check_same_device(op, logits, weight);
    BCOS_CHECK(broadcast_shapes(logits.shape(), weight.shape(), op) == logits.shape(), op,
               ": weight ", weight.shape(), " must broadcast to the input's shape ", logits.shape());
  }
  Tensor loss;
  {
    NoGradGuard no_grad;
    loss = add(sub(relu(logits), mul(logits, target)), log1p(exp(neg(abs(logits)))));
    if (weight.defined()) loss = mul(loss, weight);
  }
  if (needs_graph({logits, target, weight})) {
    SavedTensor sx(logits), st(target), sw(weight);
    record("BinaryCrossEntropyWithLogitsBackward", loss, {logits, target, weight},
           [=](const Tensor& g, const std::vector<bool>& need) {
             const Tensor& x = sx.get();
             Tensor gw_factor = sw.defined() ? mul(g, sw.get()) : g;
             Tensor gx, gt, gwt;
             if (need[0]) gx = mul(gw_factor, sub(sigmoid(x), st.get()));
             if (need[1]) gt = mul(gw_factor, neg(x));
             if (need[2]) {  // loss = weight · l  ⇒  d/dweight = l = loss / weight
               Tensor unweighted = add(sub(relu(x), mul(x, st.get())), log1p(exp(neg(abs(x)))));
               gwt = mul(g, unweighted);
             }
             return Grads{gx, gt, gwt};
           });
  }
  return reduce_loss(loss, reduction, Tensor());
}

}  // namespace bcos
