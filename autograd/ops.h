// The differentiable ops: the public API. Each checks its arguments (raising bcos::Error that
// names the op and the shapes), switches on the device to a cpu:: or cuda:: kernel, and records
// a graph node when an input requires grad. Their backward closures sit beside the forwards in
// autograd/<family>.cpp.
#pragma once

#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "autograd/autograd.h"
#include "tensor/op_kinds.h"
#include "tensor/tensor.h"

namespace bcos {

using Dims = std::vector<int64_t>;

// A height / width pair that reads as one number when both are equal: conv2d(x, w, b, 2).
struct IntPair {
  int64_t h = 0, w = 0;
  IntPair(int64_t v) : h(v), w(v) {}  // NOLINT: implicit like PyTorch's int-or-tuple
  IntPair(int64_t h_, int64_t w_) : h(h_), w(w_) {}
};

enum class Reduction { none, mean, sum };

struct ValuesIndices {
  Tensor values, indices;
};

// ---- elementwise (autograd/elementwise.cpp) ------------------------------------------------
Tensor add(const Tensor& a, const Tensor& b, double alpha = 1.0);  // a + alpha * b
Tensor add_relu(const Tensor& a, const Tensor& b);  // relu(a + b) in one pass each way (residual blocks)
Tensor sub(const Tensor& a, const Tensor& b, double alpha = 1.0);
Tensor mul(const Tensor& a, const Tensor& b);
Tensor div(const Tensor& a, const Tensor& b);
Tensor pow(const Tensor& a, const Tensor& b);
Tensor minimum(const Tensor& a, const Tensor& b);
Tensor maximum(const Tensor& a, const Tensor& b);
Tensor add(const Tensor& a, double b);
Tensor sub(const Tensor& a, double b);
Tensor sub(double a, const Tensor& b);
Tensor mul(const Tensor& a, double b);
Tensor div(const Tensor& a, double b);
Tensor div(double a, const Tensor& b);
Tensor pow(const Tensor& x, double exponent);

Tensor eq(const Tensor& a, const Tensor& b);
Tensor ne(const Tensor& a, const Tensor& b);
Tensor lt(const Tensor& a, const Tensor& b);
Tensor le(const Tensor& a, const Tensor& b);
Tensor gt(const Tensor& a, const Tensor& b);
Tensor ge(const Tensor& a, const Tensor& b);
Tensor eq(const Tensor& a, double b);
Tensor ne(const Tensor& a, double b);
Tensor lt(const Tensor& a, double b);
Tensor le(const Tensor& a, double b);
Tensor gt(const Tensor& a, double b);
Tensor ge(const Tensor& a, double b);

Tensor neg(const Tensor& x);
Tensor abs(const Tensor& x);
Tensor sign(const Tensor& x);
Tensor exp(const Tensor& x);
Tensor log(const Tensor& x);
Tensor log1p(const Tensor& x);
Tensor sqrt(const Tensor& x);
Tensor rsqrt(const Tensor& x);
Tensor square(const Tensor& x);
Tensor reciprocal(const Tensor& x);
Tensor sin(const Tensor& x);
Tensor cos(const Tensor& x);
Tensor tanh(const Tensor& x);
Tensor sigmoid(const Tensor& x);
Tensor relu(const Tensor& x);
Tensor silu(const Tensor& x);
// CLIP's QuickGELU x · σ(1.702 x) in one pass each way, with the bits of OpenAI's composed form
// (x * torch.sigmoid(1.702 * x): each of its three ops rounds to x's type).
Tensor quick_gelu(const Tensor& x);
// approximate: "none" (x * Phi(x), with erf) or "tanh"
Tensor gelu(const Tensor& x, const std::string& approximate = "none");
Tensor clamp(const Tensor& x, std::optional<double> min, std::optional<double> max);
Tensor clamp_min(const Tensor& x, double min);
Tensor clamp_max(const Tensor& x, double max);
Tensor where(const Tensor& cond, const Tensor& a, const Tensor& b);
Tensor where(const Tensor& cond, const Tensor& a, double b);

Tensor operator+(const Tensor& a, const Tensor& b);
Tensor operator-(const Tensor& a, const Tensor& b);
Tensor operator*(const Tensor& a, const Tensor& b);
Tensor operator/(const Tensor& a, const Tensor& b);
Tensor operator+(const Tensor& a, double b);
Tensor operator-(const Tensor& a, double b);
Tensor operator*(const Tensor& a, double b);
Tensor operator/(const Tensor& a, double b);
Tensor operator+(double a, const Tensor& b);
Tensor operator-(double a, const Tensor& b);
Tensor operator*(double a, const Tensor& b);
Tensor operator/(double a, const Tensor& b);
Tensor operator-(const Tensor& x);

// ---- reductions (autograd/reduce.cpp); an empty dims list means all dims ------------------
Tensor sum(const Tensor& x, const Dims& dims = {}, bool keepdim = false);
Tensor mean(const Tensor& x, const Dims& dims = {}, bool keepdim = false);
Tensor var(const Tensor& x, const Dims& dims = {}, int64_t correction = 1, bool keepdim = false);
Tensor std(const Tensor& x, const Dims& dims = {}, int64_t correction = 1, bool keepdim = false);
Tensor prod(const Tensor& x, const Dims& dims = {}, bool keepdim = false);
Tensor norm(const Tensor& x, double p = 2, const Dims& dims = {}, bool keepdim = false);
Tensor logsumexp(const Tensor& x, const Dims& dims, bool keepdim = false);
Tensor amax(const Tensor& x, const Dims& dims = {}, bool keepdim = false);
Tensor amin(const Tensor& x, const Dims& dims = {}, bool keepdim = false);
Tensor max(const Tensor& x);  // the largest element (gradient shared evenly among ties)
Tensor min(const Tensor& x);
ValuesIndices max(const Tensor& x, int64_t dim, bool keepdim = false);
ValuesIndices min(const Tensor& x, int64_t dim, bool keepdim = false);
Tensor argmax(const Tensor& x, std::optional<int64_t> dim = std::nullopt, bool keepdim = false);
Tensor argmin(const Tensor& x, std::optional<int64_t> dim = std::nullopt, bool keepdim = false);
Tensor all(const Tensor& x, const Dims& dims = {}, bool keepdim = false);
Tensor any(const Tensor& x, const Dims& dims = {}, bool keepdim = false);

// ---- softmax and losses (autograd/softmax.cpp) ---------------------------------------------
Tensor softmax(const Tensor& x, int64_t dim);
Tensor log_softmax(const Tensor& x, int64_t dim);
// logits [N, C] or [N, C, d1, ...]; target int64 [N] or [N, d1, ...] of class indices.
Tensor cross_entropy(const Tensor& logits, const Tensor& target, int64_t ignore_index = -100,
                     double label_smoothing = 0.0, Reduction reduction = Reduction::mean);
Tensor nll_loss(const Tensor& log_probs, const Tensor& target, int64_t ignore_index = -100,
                Reduction reduction = Reduction::mean);
// weight (optional) broadcasts against the loss: per element or per class.
Tensor binary_cross_entropy_with_logits(const Tensor& logits, const Tensor& target,
                                        const Tensor& weight = Tensor(),
                                        Reduction reduction = Reduction::mean);

// ---- attention (autograd/attention.cpp) -----------------------------------------------------
// As torch.nn.functional.scaled_dot_product_attention: softmax(q kᵀ · scale + mask) v over the
// keys, q [.., Lq, D], k [.., Lk, D], v [.., Lk, Dv] with the same leading dims (one or two:
// [B, L, D] or [N, heads, L, D]) -> [.., Lq, Dv]. mask broadcasts to [.., Lq, Lk]: float masks
// are added to the logits, bool masks keep a key where true (PyTorch's convention here;
// nn::MultiheadAttention's attn_mask is the opposite). causal: query i sees keys j <= i.
// scale 0: 1/sqrt(D). fused: one kernel that keeps no Lq x Lk matrix for the backward (it
// recomputes it; tensor/cpu/attention.cpp); false: the composed matmul-softmax-matmul (also
// what a mask that needs a gradient, CUDA head sizes above 256, and on CUDA under autocast f16
// operands or bf16 ones with heads above 64, get).
Tensor scaled_dot_product_attention(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& mask = Tensor(),
                                    bool causal = false, double scale = 0, bool fused = true);
// Self-attention on one packed projection (nn::MultiheadAttention's in_proj applied once):
// qkv [N, L, 3·E] holds q | k | v along its last dim, each E = heads · d wide, split into heads
// [N, heads, L, d] -> [N, L, E] with the heads merged back. What the split and
// scaled_dot_product_attention compute, but the fused backward writes one [N, L, 3·E] gradient
// for one product with the packed weight, where three views' gradients would each be scattered
// into a zero [N, L, 3·E] and summed. qk_grad false: q and k are constants (detached).
Tensor packed_self_attention(const Tensor& qkv, int64_t heads, const Tensor& mask = Tensor(), bool causal = false,
                             double scale = 0, bool fused = true, bool qk_grad = true);

// ---- linear algebra (autograd/matmul.cpp) ---------------------------------------------------
Tensor matmul(const Tensor& a, const Tensor& b);  // 1-D, 2-D and broadcast batched, as torch
Tensor linear(const Tensor& x, const Tensor& weight, const Tensor& bias = Tensor());  // x W^T + b

// ---- convolution, pooling, padding (autograd/conv.cpp) -------------------------------------
Tensor conv2d(const Tensor& x, const Tensor& weight, const Tensor& bias = Tensor(),
              IntPair stride = 1, IntPair padding = 0, IntPair dilation = 1, int64_t groups = 1);
ValuesIndices max_pool2d_with_indices(const Tensor& x, IntPair kernel, std::optional<IntPair> stride = std::nullopt,
                                      IntPair padding = 0, IntPair dilation = 1,
                                      bool ceil_mode = false);
Tensor max_pool2d(const Tensor& x, IntPair kernel, std::optional<IntPair> stride = std::nullopt,
                  IntPair padding = 0, IntPair dilation = 1, bool ceil_mode = false);
Tensor avg_pool2d(const Tensor& x, IntPair kernel, std::optional<IntPair> stride = std::nullopt,
                  IntPair padding = 0, bool ceil_mode = false, bool count_include_pad = true,
                  int64_t divisor_override = 0);
Tensor adaptive_avg_pool2d(const Tensor& x, IntPair output_size);
// pads: (left, right) for the last dim, then (top, bottom) for the one before, ... as F.pad.
Tensor pad(const Tensor& x, const std::vector<int64_t>& pads, double value = 0.0);

// ---- B-cos transforms (autograd/bcos.cpp) --------------------------------------------------
// The B-cos layers' functional forms. weight is used as given (normalise it first for B-cos v2
// layers); bias (optional) is part of the linear map. max_out M: the weight has O·M output rows
// and each output is the max of M consecutive ones. b = 1 gives the (max-out) linear map.
// In explanation mode (ExplanationModeGuard) the scale is a constant in backward.
// BcosEpilogue: a per-output-channel map y -> y · scale + shift (scale, shift [O], constants that
// take no gradient), then ReLU when relu -- an evaluation-mode batch norm (+ ReLU) folded into the
// scale pass (nn::conv_bn builds it), the same bits as the separate ops, one pass fewer over
// the activation each way.
struct BcosEpilogue {
  Tensor scale, shift;
  bool relu = false;
};
Tensor bcos_linear(const Tensor& x, const Tensor& weight, const Tensor& bias = Tensor(),
                   double b = 2, int64_t max_out = 1);  // x [..., K], weight [O·M, K]
Tensor bcos_conv2d(const Tensor& x, const Tensor& weight, const Tensor& bias = Tensor(),
                   IntPair stride = 1, IntPair padding = 0, IntPair dilation = 1,
                   int64_t groups = 1, double b = 2, int64_t max_out = 1, const BcosEpilogue& post = {});
// The two fused passes they are made of. bcos_patch_sumsq: x [N, C, H, W] -> [N, G, Ho, Wo], the
// sum of x² over each group's channels and the window's (dilated, zero-padded) taps.
Tensor bcos_patch_sumsq(const Tensor& x, IntPair kernel, IntPair stride = 1, IntPair padding = 0,
                        IntPair dilation = 1, int64_t groups = 1);
// lin [N, O·M, *], sumsq [N, G, *] -> [N, O, *]: max-out, then y = s · v with the norm
// n = sqrt(sumsq + eps_in) + eps_out. sumsq may be undefined when b = 1.
Tensor bcos_scale(const Tensor& lin, const Tensor& sumsq, double b, int64_t max_out,
                  double eps_in, double eps_out, const BcosEpilogue& post = {});
// Batch norm without centring: y = weight · x / sqrt(var + eps) + bias, var the (centred, biased)
// batch variance in training -- running_var (when defined) then moves towards that same biased
// variance with momentum, as the B-cosification authors' layer does -- else the running variance.
// In explanation mode no gradient flows through the batch variance.
Tensor batch_norm_uncentered(const Tensor& x, const Tensor& running_var, const Tensor& weight,
                             const Tensor& bias, bool training, double momentum = 0.1, double eps = 1e-5,
                             bool relu = false, const Tensor& num_batches_tracked = Tensor());
// An evaluation-mode batch norm's per-channel scale, weight / sqrt(running_var + eps) (weight
// undefined: 1), with the bits the norm's own kernels form: for folding the norm into the epilogue
// of the layer before it (nn::conv_bn). One kernel, no graph (the scale is a constant); 16-bit
// inputs give a float32 scale.
Tensor batch_norm_eval_scale(const Tensor& running_var, const Tensor& weight, double eps);

// ---- normalisation, dropout, embedding (autograd/norm.cpp) --------------------------------
// x [N, C, *]. In training, batch statistics are used and the running ones (when defined)
// updated in place with momentum (unbiased variance), as PyTorch does. relu: relu(batch_norm(x))
// in one pass each way (no intermediate tensor; the backward recomputes the mask from x).
// num_batches_tracked (a module's int64 count, the three norms alike): in training, incremented
// by the kernel that steps the running statistics, where PyTorch's module adds 1 itself (a launch
// per norm per step on a GPU); callers with a cumulative average (momentum None) count
// themselves first, as the factor depends on the count.
Tensor batch_norm(const Tensor& x, const Tensor& running_mean, const Tensor& running_var,
                  const Tensor& weight, const Tensor& bias, bool training,
                  double momentum = 0.1, double eps = 1e-5, bool relu = false,
                  const Tensor& num_batches_tracked = Tensor());
// Batch norm in training over the batches of every data-parallel replica together (PyTorch's
// SyncBatchNorm): this replica's statistics in one pass, combined through replica_sum (a sum over
// the replicas, e.g. an all-reduce; two of [C + 1] / [C] values forward, one of [2C + 1] back),
// then the batch_norm kernels. centred = false: bcosify's uncentred norm (x / sqrt(var + eps) ·
// weight + bias, var the centred biased variance, no gradient through it in explanation mode).
// The running statistics (when defined) move by `factor`: the mean, and the variance unbiased
// (centred) or biased (uncentred). The gradient is that of the sum of every replica's loss, as
// DistributedDataParallel's; weight and bias get this replica's share.
Tensor batch_norm_synced(const Tensor& x, const Tensor& running_mean, const Tensor& running_var,
                         const Tensor& weight, const Tensor& bias, double factor, double eps, bool relu,
                         bool centred, const std::function<Tensor(const Tensor&)>& replica_sum,
                         const Tensor& num_batches_tracked = Tensor());
Tensor layer_norm(const Tensor& x, const Shape& normalized_shape, const Tensor& weight = Tensor(),
                  const Tensor& bias = Tensor(), double eps = 1e-5);
Tensor group_norm(const Tensor& x, int64_t groups, const Tensor& weight = Tensor(),
                  const Tensor& bias = Tensor(), double eps = 1e-5);
// w / ‖w‖₂ with each w[i]'s norm over all its other dims (a B-cos layer's ŵ; PyTorch:
// w / w.flatten(1).norm(dim=1).view(-1, 1, ...)). A zero row gives NaN, as that quotient.
Tensor unit_rows(const Tensor& w);
Tensor dropout(const Tensor& x, double p = 0.5, bool training = true);
Tensor embedding(const Tensor& indices, const Tensor& weight);

// ---- joining and indexing (autograd/indexing.cpp) ------------------------------------------
Tensor cat(const std::vector<Tensor>& tensors, int64_t dim = 0);
Tensor stack(const std::vector<Tensor>& tensors, int64_t dim = 0);
std::vector<Tensor> split(const Tensor& x, int64_t split_size, int64_t dim = 0);
std::vector<Tensor> split(const Tensor& x, const std::vector<int64_t>& sizes, int64_t dim = 0);
std::vector<Tensor> chunk(const Tensor& x, int64_t chunks, int64_t dim = 0);
Tensor index_select(const Tensor& x, int64_t dim, const Tensor& index);
Tensor gather(const Tensor& x, int64_t dim, const Tensor& index);
// x with src added at index along dim (out of place; differentiable in x and src).
Tensor scatter_add(const Tensor& x, int64_t dim, const Tensor& index, const Tensor& src);
Tensor masked_fill(const Tensor& x, const Tensor& mask, double value);
Tensor one_hot(const Tensor& indices, int64_t num_classes = -1);  // int64 result
ValuesIndices topk(const Tensor& x, int64_t k, int64_t dim = -1, bool largest = true,
                   bool sorted = true);
Tensor broadcast_to(const Tensor& x, const Shape& shape);

// ---- optimizer steps (autograd/optim.cpp): in place, outside the graph, no backward ---------
// One fused pass per parameter (tensor/optim_math.h); nn/optim.cpp drives them. param is the
// parameter's data (float32, float64, or 16-bit: stepped in float32); grad and the state tensors
// match its shape, dtype and device. momentum (SGD) may be undefined when p.momentum == 0,
// max_exp_avg_sq unless p.amsgrad. The list forms step several parameters with one p, in as few
// kernel launches as their devices allow (on a GPU one per 32 parameters), each parameter's
// result the same bits as its own step; a list of state not in use may be empty.
void sgd_step_(const Tensor& param, const Tensor& grad, const Tensor& momentum, const SgdStepParams& p);
void adam_step_(const Tensor& param, const Tensor& grad, const Tensor& exp_avg, const Tensor& exp_avg_sq,
                const Tensor& max_exp_avg_sq, const AdamStepParams& p);
void sgd_step_(const std::vector<Tensor>& params, const std::vector<Tensor>& grads, const std::vector<Tensor>& momenta,
               const SgdStepParams& p);
void adam_step_(const std::vector<Tensor>& params, const std::vector<Tensor>& grads,
                const std::vector<Tensor>& exp_avgs, const std::vector<Tensor>& exp_avg_sqs,
                const std::vector<Tensor>& max_exp_avg_sqs, const AdamStepParams& p);
// Adaptive gradient clipping (NFNets), in place on grads[i], parameter i's gradient: per unit (a
// weight's output rows, over all dims but the first; the whole tensor for vectors and scalars),
// with limit = max(||p||, eps) · clip, the gradient scaled by limit / max(||g||, 1e-6) where
// ||g|| > limit. One kernel per list on float32 / float64 (a GPU launch per 32 parameters),
// bit for bit the composed ops' values but for the order of the norms' double sums; 16-bit
// parameters through those ops.
void adaptive_clip_(const std::vector<Tensor>& params, const std::vector<Tensor>& grads, double clip, double eps);

}  // namespace bcos
