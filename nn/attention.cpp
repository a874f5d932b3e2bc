// Multi-head attention (see attention.h): softmax(q kᵀ / √d + mask) v per head.
#include "nn/attention.h"

#include <cmath>

#include "autograd/ops.h"
#include "nn/init.h"

namespace bcos::nn {

namespace {
// One view of one storage with one autograd history: query, key and value of self-attention.
bool same_tensor(const Tensor& a, const Tensor& b) {
  return a.storage() == b.storage() && a.shape() == b.shape() && a.strides() == b.strides() &&
         a.offset() == b.offset() && a.autograd_meta() == b.autograd_meta();
}
}  // namespace

MultiheadAttention::MultiheadAttention(int64_t e, int64_t heads, double p, bool bias)
    : Module("MultiheadAttention"), embed_dim(e), num_heads(heads), dropout(p) {
  BCOS_CHECK(e > 0 && heads > 0 && e % heads == 0, "MultiheadAttention: embed_dim ", e,
             " must be a positive multiple of num_heads ", heads);
  register_parameter("in_proj_weight", in_proj_weight, empty({3 * e, e}));
  init::xavier_uniform_(in_proj_weight);
  if (bias) register_parameter("in_proj_bias", in_proj_bias, zeros({3 * e}));
  auto proj = std::make_shared<Linear>(e, e, bias);
  if (bias) init::constant_(proj->bias, 0.0);
  register_module("out_proj", out_proj, proj);
}

Tensor MultiheadAttention::forward(const Tensor& query, const Tensor& key, const Tensor& value, const Tensor& mask) {
  BCOS_CHECK(query.dim() == 3 && key.dim() == 3 && value.dim() == 3 && query.size(2) == embed_dim &&
                 key.size(2) == embed_dim && value.size(2) == embed_dim && key.size(1) == value.size(1) &&
                 query.size(0) == key.size(0) && key.size(0) == value.size(0),
             "MultiheadAttention(", embed_dim, "): expected query [N, Lq, ", embed_dim, "] and key / value [N, Lk, ",
             embed_dim, "], got ", query.shape(), ", ", key.shape(), ", ", value.shape());
  const int64_t n = query.size(0), lq = query.size(1), lk = key.size(1), d = embed_dim / num_heads;
  Tensor m;  // the mask in [N, heads, Lq, Lk] form (a view), float: added to the logits
  if (mask.defined()) {
    const bool per_head = mask.dim() == 3;
    BCOS_CHECK((mask.dim() == 2 && mask.size(0) == lq && mask.size(1) == lk) ||
                   (per_head && mask.size(0) == n * num_heads && mask.size(1) == lq && mask.size(2) == lk),
               "MultiheadAttention: attn_mask ", mask.shape(), " must be [", lq, ", ", lk, "] or [", n * num_heads, ", ",
               lq, ", ", lk, "]");
    m = per_head ? mask.reshape({n, num_heads, lq, lk}) : mask;
    if (mask.dtype() == DType::boolean) m = where(m, full(Shape{}, -INFINITY, {query.dtype(), query.device()}), 0.0);
    m = m.to(query.dtype());
  }
  // The composed form (dropout on the attention pattern) scales q before the product, as PyTorch
  // 1.13's multi_head_attention_forward: L·d values instead of L·L logits, and the division
  // writes q contiguous [N, heads, L, d] for the product. The fused kernels read q through its
  // strides and apply the scale to the logits (PyTorch 2's SDPA path): one pass fewer each way,
  // and for d = 64 (a power of 4, so 1/√d is a power of 2) the same bits.
  const bool composed_dropout = dropout > 0 && training_;
  const double scale = 1.0 / std::sqrt(double(d));
  const bool qk_constant = detach_qk_when_explaining && explanation_mode();
  if (!composed_dropout && same_tensor(query, key) && same_tensor(key, value)) {
    // Self-attention: one product with the packed [3E, E] weight, as PyTorch's
    // _in_projection_packed, whose one [N, L, 3E] gradient packed_self_attention writes.
    const Tensor qkv = linear(query, in_proj_weight, in_proj_bias);
    return (*out_proj)(packed_self_attention(qkv, num_heads, m, false, scale, fused_attention, !qk_constant));
  }
  const std::vector<Tensor> w = chunk(in_proj_weight, 3, 0);
  const std::vector<Tensor> b = in_proj_bias.defined() ? chunk(in_proj_bias, 3, 0) : std::vector<Tensor>(3);
  // [N, L, E] -> [N, heads, L, d]
  auto heads = [&](const Tensor& x, int i, int64_t len) {
    return linear(x, w[size_t(i)], b[size_t(i)]).reshape({n, len, num_heads, d}).transpose(1, 2);
  };
  Tensor q = heads(query, 0, lq), k = heads(key, 1, lk);
  if (composed_dropout) q = q / std::sqrt(double(d));
  const Tensor v = heads(value, 2, lk);
  if (qk_constant) q = q.detach(), k = k.detach();
  Tensor out;
  if (composed_dropout) {  // dropout on the attention pattern: the composed form
    Tensor logits = matmul(q, k.transpose(2, 3));  // [N, heads, Lq, Lk]
    if (m.defined()) logits = logits + m;
    out = matmul(bcos::dropout(softmax(logits, -1), dropout, true), v);
  } else {
    out = scaled_dot_product_attention(q, k, v, m, false, scale, fused_attention);
  }
  out = out.transpose(1, 2).reshape({n, lq, embed_dim});
  return (*out_proj)(out);
}

std::string MultiheadAttention::describe() const { return str("embed_dim=", embed_dim, ", num_heads=", num_heads); }

}  // namespace bcos::nn
