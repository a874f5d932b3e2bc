// Normalisation, dropout and embedding.
//   batch_norm: per-channel statistics over (N, spatial); a fused kernel for both passes, with
//     an optional ReLU fused in (ResNets' conv → BN → ReLU: one pass fewer each way).
//   layer_norm / group_norm: "normalise rows" (x viewed [rows, inner]) and the affine map:
//     layer_norm's fused into the row kernels, so that x̂ is neither written nor kept;
//     group_norm's (per channel, not per element of a row) as ordinary broadcast ops.
//   dropout: x · mask / (1 − p) with a seeded mask;  embedding: index_select of rows.
#include <cmath>
#include <functional>
#include <initializer_list>

#include "autograd/dispatch.h"
#include "autograd/ops.h"

namespace bcos {

using namespace detail;

namespace {
// Each defined per-channel tensor must be [C] for x [N, C, *], of type `type` (x's own; float32
// beside a 16-bit x), on x's device.
void check_per_channel(const char* op, const Tensor& x, DType type, std::initializer_list<const Tensor*> per_channel) {
  const int64_t c = x.size(1);
  for (const Tensor* t : per_channel) {
    if (!t->defined()) continue;
    BCOS_CHECK(t->dim() == 1 && t->size(0) == c, op, ": per-channel tensor of shape ", t->shape(),
               " does not match the ", c, " channels of input ", x.shape());
    BCOS_CHECK(t->dtype() == type, op, ": per-channel tensor ", t->shape(), " is ", t->dtype(), ", expected ", type,
               " beside the ", x.dtype(), " input ", x.shape());
    check_same_device(op, x, *t);
  }
}
}  // namespace

namespace detail {
Tensor finish_batch_statistics(const Tensor& mean, const Tensor& var, double eps, double momentum, double unbias,
                               const Tensor& running_mean, const Tensor& running_var, const Tensor& batches_tracked) {
  const char* op = "batch_norm (statistics)";
  NoGradGuard no_grad;
  check_float(op, var);
  if (batches_tracked.defined()) {
    BCOS_CHECK(batches_tracked.dtype() == DType::i64 && batches_tracked.numel() == 1, op,
               ": num_batches_tracked must be one int64, got ", batches_tracked.dtype(), " ", batches_tracked.shape());
    check_same_device(op, var, batches_tracked);
    check_inplace(op, batches_tracked);
  }
  for (const Tensor* t : {&mean, &running_mean, &running_var}) {
    if (!t->defined()) continue;
    check_same_dtype(op, var, *t);
    check_same_device(op, var, *t);
    BCOS_CHECK(t->numel() == var.numel(), op, ": ", t->shape(), " and ", var.shape(), " differ in channels");
  }
  for (const Tensor* r : {&running_mean, &running_var})
    if (r->defined()) check_inplace(op, *r);
  // Strided running statistics (a caller's views) are stepped in contiguous copies, written back.
  const Tensor rm = running_mean.defined() ? raw_contiguous(running_mean) : Tensor();
  const Tensor rv = running_var.defined() ? raw_contiguous(running_var) : Tensor();
  Tensor invstd = empty(var.shape(), {var.dtype(), var.device()});
  // (A one-element count is contiguous whatever its strides: the kernel writes it in place.)
  kernel::batch_norm_finish(mean.defined() ? raw_contiguous(mean) : Tensor(), raw_contiguous(var), eps, momentum, unbias,
                            invstd, rm, rv, batches_tracked);
  if (batches_tracked.defined()) batches_tracked.bump_version();
  for (const auto& [running, stepped] : {std::pair{&running_mean, &rm}, std::pair{&running_var, &rv}}) {
    if (!running->defined()) continue;
    if (stepped->storage() != running->storage()) copy_into(*running, *stepped);
    running->bump_version();
  }
  return invstd;
}

void count_batch(const Tensor& batches_tracked) {
  if (!batches_tracked.defined()) return;
  NoGradGuard no_grad;
  Tensor(batches_tracked).add_(ones({}, {DType::i64, batches_tracked.device()}));
}
}  // namespace detail

namespace {
// A 16-bit running statistic was stepped in its float32 copy: written back, rounded.
void write_back(const Tensor& running, const Tensor& stepped) {
  if (!running.defined() || stepped.storage() == running.storage()) return;
  NoGradGuard no_grad;
  Tensor(running).copy_(stepped);
}
}  // namespace

Tensor batch_norm_eval_scale(const Tensor& running_var, const Tensor& weight, double eps) {
  const char* op = "batch_norm_eval_scale";
  check_defined(op, running_var, "running_var");
  if (is_half(running_var) || is_half(weight)) return batch_norm_eval_scale(widened(running_var), widened(weight), eps);
  check_float(op, running_var);
  BCOS_CHECK(running_var.dim() == 1, op, ": running_var must be [C], got ", running_var.shape());
  if (weight.defined()) {
    BCOS_CHECK(weight.shape() == running_var.shape(), op, ": weight ", weight.shape(), " does not match running_var ",
               running_var.shape());
    check_same_dtype(op, running_var, weight);
    check_same_device(op, running_var, weight);
  }
  NoGradGuard no_grad;
  Tensor scale = empty(running_var.shape(), {running_var.dtype(), running_var.device()});
  kernel::batch_norm_eval_scale(raw_contiguous(running_var), weight.defined() ? raw_contiguous(weight) : Tensor(), eps, scale);
  return scale;
}

Tensor batch_norm(const Tensor& x, const Tensor& running_mean, const Tensor& running_var,
                  const Tensor& weight, const Tensor& bias, bool training, double momentum,
                  double eps, bool relu, const Tensor& num_batches_tracked) {
  const char* op = relu ? "batch_norm_relu" : "batch_norm";
  check_defined(op, x, "input");
  // A 16-bit x is read and written as it is (the kernels compute in float32, rounding the output
  // once); its per-channel tensors are float32 -- 16-bit ones (a model converted whole) are widened,
  // C values each: the parameters' casts record, so their gradients come back 16-bit, and the
  // running statistics are stepped in float32 and written back.
  if (is_half(x) && (is_half(weight) || is_half(bias) || is_half(running_mean) || is_half(running_var))) {
    const Tensor rm = widened_statistic(running_mean), rv = widened_statistic(running_var);
    Tensor out = batch_norm(x, rm, rv, widened(weight), widened(bias), training, momentum, eps, relu, num_batches_tracked);
    if (training) write_back(running_mean, rm), write_back(running_var, rv);
    return out;
  }
  if (!is_half(x)) check_float(op, x);
  BCOS_CHECK(x.dim() >= 2, op, ": expected input [N, C, *], got shape ", x.shape());
  const int64_t c = x.size(1);
  const DType stats = is_half(x) ? DType::f32 : x.dtype();  // the per-channel tensors' type
  check_per_channel(op, x, stats, {&running_mean, &running_var, &weight, &bias});
  BCOS_CHECK(running_mean.defined() == running_var.defined(), op,
             ": running_mean and running_var must be given together");
  BCOS_CHECK(training || running_mean.defined(), op,
             ": evaluation mode needs running_mean and running_var");
  const int64_t per_channel = x.numel() / std::max<int64_t>(c, 1);
  Tensor mean, invstd;
  if (training && per_channel == 0) {
    // An empty batch, as PyTorch: an empty output, zero gradients, the running statistics left
    // alone (there are no batch statistics to move them towards).
    mean = zeros({c}, {stats, x.device()});
    invstd = ones({c}, {stats, x.device()});
    count_batch(num_batches_tracked);
  } else if (training) {
    BCOS_CHECK(per_channel > 1, op, ": expected more than 1 value per channel when training, "
               "got input of shape ", x.shape());
    mean = empty({c}, {stats, x.device()});
    Tensor var_biased = empty({c}, {stats, x.device()});
    kernel::batch_norm_stats(x, mean, var_biased);
    // PyTorch keeps the unbiased variance
    invstd = finish_batch_statistics(mean, var_biased, eps, momentum, double(per_channel) / double(per_channel - 1),
                                     running_mean, running_var, num_batches_tracked);
  } else if (!needs_graph({x, weight, bias})) {  // inference: invstd made in the pass, one launch
    Tensor out = empty(x.shape(), {x.dtype(), x.device()});
    kernel::batch_norm_eval_forward(x, dense(weight), dense(bias), dense(running_mean.detach()),
                                    dense(running_var.detach()), eps, relu, out);
    return out;
  } else {
    mean = dense(running_mean.detach());
    invstd = finish_batch_statistics(Tensor(), running_var.detach(), eps, 0, 1, Tensor(), Tensor());
  }
  Tensor out = empty(x.shape(), {x.dtype(), x.device()});
  kernel::batch_norm_forward(x, dense(weight), dense(bias), mean, invstd, relu, out);
  if (needs_graph({x, weight, bias})) {
    SavedTensor sx(x), sw(dense(weight)), sb(relu ? dense(bias) : Tensor()), sm(mean), si(invstd);
    record(relu ? "BatchNormReluBackward" : "BatchNormBackward", out, {x, weight, bias},
           [=](const Tensor& g, const std::vector<bool>& need) {
             Tensor gx, gw, gb;
             const Tensor& xv = sx.get();
             if (need[0]) gx = empty(xv.shape(), {g.dtype(), g.device()});
             if (need[1]) gw = empty({xv.size(1)}, {stats, g.device()});
             if (need[2]) gb = empty({xv.size(1)}, {stats, g.device()});
             kernel::batch_norm_backward(g, xv, sw.get(), sb.get(), sm.get(), si.get(), training, relu, gx, gw, gb);
             return Grads{gx, gw, gb};
           });
  }
  return out;
}

Tensor batch_norm_synced(const Tensor& x, const Tensor& running_mean, const Tensor& running_var,
                         const Tensor& weight, const Tensor& bias, double factor, double eps, bool relu,
                         bool centred, const std::function<Tensor(const Tensor&)>& replica_sum,
                         const Tensor& num_batches_tracked) {
  const char* op = "synced batch_norm";
  check_defined(op, x, "input");
  if (is_half(x)) {
    const Tensor rm = widened_statistic(running_mean), rv = widened_statistic(running_var);
    Tensor out = through_float32(x, [&] {
      return batch_norm_synced(widened(x), rm, rv, widened(weight), widened(bias), factor, eps, relu, centred, replica_sum,
                               num_batches_tracked);
    });
    write_back(running_mean, rm), write_back(running_var, rv);
    return out;
  }
  check_float(op, x);
  BCOS_CHECK(x.dim() >= 2 && x.numel() > 0, op, ": expected a non-empty input [N, C, *], got shape ", x.shape());
  BCOS_CHECK(bool(replica_sum), op, ": no sum over the replicas was given");
  const int64_t c = x.size(1);
  check_per_channel(op, x, x.dtype(), {&running_mean, &running_var, &weight, &bias});
  const TensorOptions like{x.dtype(), x.device()};
  const double local = double(x.numel() / c);  // this replica's values per channel
  Tensor mean = empty({c}, like), var = empty({c}, like), invstd;
  kernel::batch_norm_stats(x, mean, var);  // this replica's mean and biased variance
  {
    NoGradGuard no_grad;
    // The replicas' counts and Σ count · mean give the global mean; each replica's squared
    // deviations from it are its own plus count · (mean_r − mean)² (Chan et al.'s pairwise update,
    // as stable as a second pass over the data). The total count stays on the device: reading it
    // would make the host wait for the GPU in every layer of every step.
    Tensor sums = replica_sum(cat({mean * local, full({1}, local, like)}, 0));
    const Tensor total = sums.narrow(0, c, 1);  // [1], broadcast over the channels
    // Only a replica with at most one value can see a total of 1 or less: it reads it to say so.
    BCOS_CHECK(local > 1 || total.item() > 1, op, ": expected more than 1 value per channel over all replicas, got input ",
               x.shape());
    Tensor global_mean = sums.narrow(0, 0, c) / total;
    var = replica_sum((var + square(mean - global_mean)) * local) / total;  // biased, as the forward divides by
    mean = global_mean;
    const bool step = factor > 0;
    invstd = finish_batch_statistics(mean, var, eps, factor, 1.0, step && centred ? running_mean : Tensor(),
                                     step && !centred ? running_var : Tensor(), num_batches_tracked);
    // PyTorch keeps the unbiased variance; the uncentred norm the biased one (stepped above).
    if (step && centred)
      finish_batch_statistics(Tensor(), var * (total / (total - 1.0)), eps, factor, 1.0, Tensor(), running_var, Tensor());
  }
  Tensor out = empty(x.shape(), like);
  const Tensor shift_mean = centred ? mean : zeros({c}, like);  // the uncentred norm scales x itself
  kernel::batch_norm_forward(x, dense(weight), dense(bias), shift_mean, invstd, relu, out);
  if (needs_graph({x, weight, bias})) {
    // As batch_norm_uncentered: in explanation mode no gradient flows through its variance.
    const bool through_stats = centred || !explanation_mode();
    SavedTensor sx(x), sw(dense(weight)), sb(relu ? dense(bias) : Tensor());
    record(relu ? "SyncBatchNormReluBackward" : "SyncBatchNormBackward", out, {x, weight, bias},
           [=](const Tensor& g, const std::vector<bool>& need) {
             const Tensor& xv = sx.get();
             const TensorOptions go{g.dtype(), g.device()};
             auto backward = [&](const Tensor& gx, const Tensor& gw, const Tensor& gb, const Tensor& replicas) {
               if (centred)
                 kernel::batch_norm_backward(g, xv, sw.get(), sb.get(), mean, invstd, true, relu, gx, gw, gb, replicas);
               else
                 kernel::batch_norm_uncentered_backward(g, xv, sw.get(), sb.get(), mean, invstd, through_stats, relu, gx,
                                                        gw, gb, replicas);
             };
             Tensor gx = need[0] ? empty(xv.shape(), go) : Tensor();
             if (need[0] && through_stats) {
               // This replica's sums, the replicas' total of them, then grad_x from the totals.
               Tensor gw = empty({c}, go), gb = empty({c}, go);
               backward(Tensor(), gw, gb, Tensor());
               Tensor replicas;
               {
                 NoGradGuard no_grad;
                 replicas = replica_sum(cat({gw, gb, full({1}, local, go)}, 0)).contiguous();
               }
               backward(gx, Tensor(), Tensor(), replicas);
               return Grads{gx, need[1] ? gw : Tensor(), need[2] ? gb : Tensor()};
             }
             Tensor gw = need[1] ? empty({c}, go) : Tensor(), gb = need[2] ? empty({c}, go) : Tensor();
             backward(gx, gw, gb, Tensor());  // the statistics are constants here: nothing to share
             return Grads{gx, gw, gb};
           });
  }
  return out;
}

namespace {
// x̂ = (x − mean) / sqrt(var + eps) over each row of x viewed [rows, inner].
Tensor normalize_rows(const Tensor& x, int64_t rows, int64_t inner, double eps) {
  Tensor out = empty(x.shape(), {x.dtype(), x.device()});
  Tensor mean = empty({rows}, {x.dtype(), x.device()});
  Tensor invstd = empty({rows}, {x.dtype(), x.device()});
  kernel::row_norm_forward(x, rows, inner, eps, Tensor(), Tensor(), out, mean, invstd);
  if (needs_graph({x})) {
    SavedTensor sx(x);
    record("NormalizeBackward", out, {x}, [=](const Tensor& g, const std::vector<bool>&) {
      Tensor gx = empty(g.shape(), {g.dtype(), g.device()});
      kernel::row_norm_backward(g, sx.get(), rows, inner, mean, invstd, Tensor(), gx);
      return Grads{gx};
    });
  }
  return out;
}

// layer_norm: the normalisation and its affine map x̂ · w + b in one kernel each way, as PyTorch's
// native layer_norm. The node keeps x, the row statistics and w, not x̂ (ViT-B/16: 24 of them,
// 116 MB at batch 8); backward forms g · w inside grad_x's pass and w's and b's gradients from the
// same reads of g and x (on the GPU, in a second kernel). An activation-sized tensor is read or
// written 5 times forward and back (GPU: 7), where the composition -- normalise, mul, add; then
// recompute x̂, mul, mul and two sums -- took 18.
Tensor affine_normalized_rows(const Tensor& x, int64_t rows, int64_t inner, double eps, const Tensor& weight,
                              const Tensor& bias) {
  const TensorOptions opts{x.dtype(), x.device()};
  Tensor out = empty(x.shape(), opts), mean = empty({rows}, opts), invstd = empty({rows}, opts);
  kernel::row_norm_forward(x, rows, inner, eps, weight, bias, out, mean, invstd);
  if (needs_graph({x, weight, bias})) {
    SavedTensor sx(x), sw(weight);
    const Shape weight_shape = weight.defined() ? weight.shape() : Shape{};
    const Shape bias_shape = bias.defined() ? bias.shape() : Shape{};
    record("LayerNormBackward", out, {x, weight, bias}, [=](const Tensor& g, const std::vector<bool>& need) {
      Tensor gx, gw, gb;
      if (need[0]) gx = empty(g.shape(), opts);
      if (need[1]) gw = empty(weight_shape, opts);
      if (need[2]) gb = empty(bias_shape, opts);
      kernel::row_norm_backward(g, sx.get(), rows, inner, mean, invstd, sw.get(), gx, gw, gb);
      return Grads{gx, gw, gb};
    });
  }
  return out;
}

void check_affine(const char* op, const Tensor& x, const Tensor& t, const Shape& expected) {
  if (!t.defined()) return;
  BCOS_CHECK(t.shape() == expected, op, ": affine parameter of shape ", t.shape(),
             " does not match ", expected, " (input ", x.shape(), ")");
  check_same_dtype(op, x, t);
  check_same_device(op, x, t);
}
}  // namespace

Tensor layer_norm(const Tensor& x, const Shape& normalized_shape, const Tensor& weight,
                  const Tensor& bias, double eps) {
  const char* op = "layer_norm";
  check_defined(op, x, "input");
  if (is_half(x))
    return float32_list_op(x, AutocastList::float32_on_cuda, [&] { return layer_norm(widened(x), normalized_shape, widened(weight), widened(bias), eps); });
  check_float(op, x);
  int k = normalized_shape.size();
  bool matches = k >= 1 && k <= x.dim();
  for (int i = 0; matches && i < k; ++i)
    matches = x.shape()[x.dim() - k + i] == normalized_shape[i];
  BCOS_CHECK(matches, op, ": normalized_shape ", normalized_shape,
             " does not match the trailing dims of input ", x.shape());
  check_affine(op, x, weight, normalized_shape);
  check_affine(op, x, bias, normalized_shape);
  int64_t inner = normalized_shape.numel();
  const int64_t rows = x.numel() / std::max<int64_t>(inner, 1);
  if (!weight.defined() && !bias.defined()) return normalize_rows(x, rows, inner, eps);
  return affine_normalized_rows(x, rows, inner, eps, weight, bias);
}

Tensor group_norm(const Tensor& x, int64_t groups, const Tensor& weight, const Tensor& bias,
                  double eps) {
  const char* op = "group_norm";
  check_defined(op, x, "input");
  if (is_half(x))
    return float32_list_op(x, AutocastList::float32_on_cuda, [&] { return group_norm(widened(x), groups, widened(weight), widened(bias), eps); });
  check_float(op, x);
  BCOS_CHECK(x.dim() >= 2, op, ": expected input [N, C, *], got shape ", x.shape());
  const int64_t n = x.size(0), c = x.size(1);
  BCOS_CHECK(groups > 0 && c % groups == 0, op, ": ", groups, " groups do not divide ", c,
             " channels (input ", x.shape(), ")");
  check_affine(op, x, weight, {c});
  check_affine(op, x, bias, {c});
  int64_t rows = n * groups;
  Tensor y = normalize_rows(x, rows, x.numel() / std::max<int64_t>(rows, 1), eps);
  Shape affine_shape{c};
  for (int i = 2; i < x.dim(); ++i) affine_shape.push_back(1);  // [C, 1, 1]: per channel
  if (weight.defined()) y = mul(y, weight.reshape(affine_shape));
  if (bias.defined()) y = add(y, bias.reshape(affine_shape));
  return y;
}

Tensor unit_rows(const Tensor& w) {
  const char* op = "unit_rows";
  check_defined(op, w, "input");
  if (is_half(w)) return float32_list_op(w, AutocastList::float32_on_cuda, [&] { return unit_rows(widened(w)); });
  check_float(op, w);
  BCOS_CHECK(w.dim() >= 1, op, ": expected a tensor with at least one dim, got shape ", w.shape());
  const int64_t rows = w.size(0), inner = rows == 0 ? 0 : w.numel() / rows;
  Tensor out = empty(w.shape(), {w.dtype(), w.device()});
  Tensor norms = empty({rows}, {w.dtype(), w.device()});
  kernel::unit_rows_forward(w, rows, inner, out, norms);
  if (needs_graph({w})) {
    SavedTensor sw(w);
    record("UnitRowsBackward", out, {w}, [=](const Tensor& g, const std::vector<bool>&) {
      Tensor gw = empty(g.shape(), {g.dtype(), g.device()});
      kernel::unit_rows_backward(g, sw.get(), rows, inner, norms, gw);
      return Grads{gw};
    });
  }
  return out;
}

Tensor dropout(const Tensor& x, double p, bool training) {
  const char* op = "dropout";
  check_defined(op, x, "input");
  if (is_half(x) && training && p > 0) return through_float32(x, [&] { return dropout(widened(x), p, training); });
  if (!is_half(x)) check_float(op, x);
  BCOS_CHECK(p >= 0 && p <= 1, op, ": probability must be in [0, 1], got ", p);
  if (!training || p == 0) return x;
  if (p == 1) return mul(x, 0.0);
  // The mask is drawn where x lives (the generator is counter-based: the same mask on any device).
  Tensor keep = lt(rand(x.shape(), {x.dtype(), x.device()}), 1 - p).to(x.dtype());
  Tensor mask = mul(keep, 1.0 / (1 - p));
  return mul(x, mask);
}

Tensor embedding(const Tensor& indices, const Tensor& weight) {
  const char* op = "embedding";
  check_defined(op, indices, "indices");
  check_defined(op, weight, "weight");
  check_index(op, indices);
  BCOS_CHECK(weight.dim() == 2, op, ": weight must be 2-D [num_embeddings, dim], got ",
             weight.shape());
  Shape out_shape = indices.shape();
  out_shape.push_back(weight.size(1));
  return index_select(weight, 0, indices.reshape({-1})).reshape(out_shape);  // (16-bit: index_select's float32 path)
}

}  // namespace bcos
