// Scaled dot-product attention (see ops.h): the fused kernel pair of tensor/kernels.inc with its
// backward beside it, and the composed form it must equal (tests compare the two and PyTorch).
#include <algorithm>
#include <climits>
#include <cmath>

#include "autograd/dispatch.h"
#include "autograd/ops.h"

namespace bcos {

using namespace detail;

namespace {

// The mask as an additive float bias of the logits, broadcast (a view) to [.., Lq, Lk].
Tensor mask_as_bias(const Tensor& mask, const Shape& logits_shape, DType dtype) {
  if (!mask.defined()) return Tensor();
  Tensor bias = mask.dtype() == DType::boolean ? where(mask, full(Shape{}, 0.0, {dtype, mask.device()}), -INFINITY)
                                               : mask.to(dtype);
  return bias.expand(logits_shape);
}

Tensor composed(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& bias, bool causal, double scale) {
  Tensor logits = matmul(q, k.transpose(-2, -1)) * scale;  // [.., Lq, Lk]
  if (bias.defined()) logits = logits + bias;
  if (causal) {
    const int64_t lq = q.size(-2), lk = k.size(-2);
    const TensorOptions index{DType::i64, q.device()};  // (made on q's device: no copy from the host)
    const Tensor rows = arange(double(lq), index).reshape({lq, 1}), cols = arange(double(lk), index).reshape({1, lk});
    logits = masked_fill(logits, gt(cols, rows), -INFINITY);
  }
  return matmul(softmax(logits, -1), v);
}

// [.., L, D] as the kernels' [N, H, L, D] (a view), unit stride along D.
Tensor as_4d(const Tensor& t) {
  Tensor u = t.stride(-1) == 1 || t.size(-1) <= 1 ? t : t.contiguous();
  return u.dim() == 4 ? u : u.unsqueeze(0);
}

// What both entry points check and decide: the scale, the mask as a bias of the logits' shape,
// the products' operand type, and whether the fused kernels take the call.
struct Plan {
  double scale;
  Tensor bias;
  DType operands;
  bool fused;
};

Plan plan_for(const char* op, const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& mask, double scale,
              bool fused) {
  check_defined(op, q, "query");
  check_defined(op, k, "key");
  check_defined(op, v, "value");
  check_same_device(op, q, k);
  check_same_device(op, q, v);
  check_same_dtype(op, q, k);
  check_same_dtype(op, q, v);
  if (q.dtype() != DType::bf16) check_float(op, q);  // (bf16: CUDA's tensor-core kernels, bf16_kernels_take)
  BCOS_CHECK((q.dim() == 3 || q.dim() == 4) && k.dim() == q.dim() && v.dim() == q.dim(), op,
             ": expected query, key and value of 3 dims [B, L, D] or 4 [N, heads, L, D], got ", q.shape(), ", ",
             k.shape(), " and ", v.shape());
  const int d = q.dim();
  for (int i = 0; i < d - 2; ++i)
    BCOS_CHECK(k.size(i) == q.size(i) && v.size(i) == q.size(i), op, ": the leading dims of query ", q.shape(),
               ", key ", k.shape(), " and value ", v.shape(), " must agree");
  BCOS_CHECK(k.size(-1) == q.size(-1), op, ": query ", q.shape(), " and key ", k.shape(), " differ in their last dim");
  BCOS_CHECK(v.size(-2) == k.size(-2), op, ": key ", k.shape(), " and value ", v.shape(), " differ in length");
  BCOS_CHECK(k.size(-2) > 0, op, ": no keys (key ", k.shape(), ")");
  Plan plan;
  plan.scale = scale != 0 ? scale : 1.0 / std::sqrt(double(std::max<int64_t>(q.size(-1), 1)));
  Shape logits_shape = q.shape();
  logits_shape[d - 1] = k.size(-2);
  if (mask.defined()) {
    check_same_device(op, q, mask);
    BCOS_CHECK(mask.dtype() == DType::boolean || mask.is_floating_point(), op, ": mask must be bool or float, got ",
               mask.dtype(), " (shape ", mask.shape(), ")");
    BCOS_CHECK(mask.dim() <= d && broadcast_shapes(mask.shape(), logits_shape, op) == logits_shape, op, ": mask ",
               mask.shape(), " does not broadcast to the logits ", logits_shape);
    plan.bias = mask_as_bias(mask, logits_shape, is_half(q) ? DType::f32 : q.dtype());
  }
  const int64_t head = std::max(q.size(-1), v.size(-1));
  const bool cuda_head_too_large = q.is_cuda() && head > 256;
  // Autocast: as torch.autocast's scaled_dot_product_attention, the products multiply 16-bit
  // operands. bf16: the fused kernels round them (on CUDA the tensor-core ones, heads up to 64);
  // otherwise the composed form's matmuls do (on CUDA, cuBLAS on the tensor cores).
  plan.operands = q.dtype() == DType::bf16 ? DType::bf16 : autocast_operands(q);
  const bool fused_takes_operands =
      plan.operands == DType::f32 || (plan.operands == DType::bf16 && (q.is_cpu() || head <= 64));
  plan.fused = fused && !cuda_head_too_large && !(mask.defined() && mask.requires_grad()) && fused_takes_operands;
  return plan;
}

// The fused forward on [N, H, L, D] views (unit stride along D) into out [N, H, Lq, Dv] (any
// strides, unit along Dv), with the row log-sum-exp lse [N, H, Lq] the backward recomputes the
// probabilities from.
struct FusedAttention {
  Tensor q4, k4, v4, b4, out, lse;
  AttentionParams p;
};

FusedAttention fused_forward(const Tensor& q4, const Tensor& k4, const Tensor& v4, const Tensor& bias, const Plan& plan,
                             bool causal, const Tensor& out) {
  FusedAttention f{q4, k4, v4, Tensor(), out, Tensor(), AttentionParams()};
  f.b4 = bias.defined() ? (bias.dim() == 4 ? bias : bias.unsqueeze(0)).detach() : Tensor();
  f.lse = empty({q4.size(0), q4.size(1), q4.size(2)}, {is_half(q4) ? DType::f32 : q4.dtype(), q4.device()});
  f.p.scale = plan.scale, f.p.causal = causal, f.p.bf16_operands = plan.operands == DType::bf16;
  f.p.tf32 = q4.dtype() == DType::f32 && plan.operands == DType::f32 && allow_tf32();
  if (out.numel() > 0) kernel::attention_forward(q4, k4, v4, f.b4, f.p, out, f.lse);
  return f;
}

// What the backward keeps: q, k, v (views of the inputs), the lse, and the output only where
// the kernels read it (CUDA's D = rowsum(dO ∘ O); the CPU's backward takes softmax's own
// rowsum(P ∘ dP) instead, so it would be one [N, H, Lq, Dv] tensor per layer kept for nothing).
struct SavedAttention {
  SavedTensor q4, k4, v4, out, lse;
  Tensor b4;
  AttentionParams p;
  explicit SavedAttention(const FusedAttention& f)
      : q4(f.q4), k4(f.k4), v4(f.v4), out(f.out.is_cuda() ? f.out : Tensor()), lse(f.lse), b4(f.b4), p(f.p) {}
};

// grad_out [N, H, Lq, Dv] -> gq, gk, gv [N, H, L, ·] (given: any strides, unit along the last dim).
void fused_backward(const SavedAttention& s, const Tensor& grad_out, const Tensor& gq, const Tensor& gk,
                    const Tensor& gv) {
  if (grad_out.numel() > 0) {
    kernel::attention_backward(as_4d(grad_out), s.q4.get(), s.k4.get(), s.v4.get(), s.b4, s.out.get(), s.lse.get(),
                               s.p, gq, gk, gv);
  } else {
    for (Tensor t : {gq, gk, gv}) t.zero_();
  }
}

// Whether CUDA's tensor-core kernels take bf16 q, k, v as they are (bf16 operands, float32 sums
// and softmax, a bf16 result, a float32 log-sum-exp): heads within 64, the fused form asked for,
// no mask gradient. Elsewhere 16-bit tensors go through float32.
bool bf16_kernels_take(const Tensor& q, bool all_bf16, int64_t head, const Tensor& mask, bool fused) {
  return fused && q.is_cuda() && all_bf16 && head <= 64 && !(mask.defined() && mask.requires_grad());
}

// The two entry points in their inputs' own types (autocast's rounding of float32 operands
// included); the public ones below add autocast's 16-bit result.
Tensor attention_in_types(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& mask, bool causal,
                          double scale, bool fused) {
  if (is_half(q) && k.defined() && v.defined() &&
      !bf16_kernels_take(q, q.dtype() == DType::bf16 && k.dtype() == DType::bf16 && v.dtype() == DType::bf16,
                         q.dim() >= 3 && v.dim() >= 3 ? std::max(q.size(-1), v.size(-1)) : INT64_MAX, mask, fused)) {
    for (const Tensor* t : {&k, &v}) check_same_dtype("scaled_dot_product_attention", q, *t);
    return through_float32(q, [&] {
      return attention_in_types(widened(q), widened(k), widened(v), widened(mask), causal, scale, fused);
    });
  }
  const Plan plan = plan_for("scaled_dot_product_attention", q, k, v, mask, scale, fused);
  if (!plan.fused) return composed(q, k, v, plan.bias, causal, plan.scale);

  const Tensor q4 = as_4d(q), k4 = as_4d(k), v4 = as_4d(v);
  const FusedAttention f = fused_forward(q4, k4, v4, plan.bias, plan, causal,
                                         empty({q4.size(0), q4.size(1), q4.size(2), v4.size(3)}, {q.dtype(), q.device()}));
  Shape out_shape = q.shape();
  out_shape[q.dim() - 1] = v.size(-1);
  Tensor result = f.out.reshape(out_shape);
  if (needs_graph({q, k, v})) {
    const SavedAttention saved(f);
    const Shape q_shape = q.shape(), k_shape = k.shape(), v_shape = v.shape(), o_shape = f.out.shape();
    record("ScaledDotProductAttentionBackward", result, {q, k, v}, [=](const Tensor& g, const std::vector<bool>&) {
      const Tensor qq = saved.q4.get(), kk = saved.k4.get(), vv = saved.v4.get();
      const Tensor gq = empty(qq.shape(), {qq.dtype(), qq.device()}), gk = empty(kk.shape(), {kk.dtype(), kk.device()}),
                   gv = empty(vv.shape(), {vv.dtype(), vv.device()});
      fused_backward(saved, g.reshape(o_shape), gq, gk, gv);
      return Grads{gq.reshape(q_shape), gk.reshape(k_shape), gv.reshape(v_shape)};
    });
  }
  return result;
}

Tensor packed_in_types(const Tensor& qkv, int64_t heads, const Tensor& mask, bool causal, double scale, bool fused,
                       bool qk_grad) {
  const char* op = "packed_self_attention";
  check_defined(op, qkv, "qkv");
  if (is_half(qkv) && !bf16_kernels_take(qkv, qkv.dtype() == DType::bf16,
                                          qkv.dim() == 3 && heads > 0 ? qkv.size(2) / 3 / heads : INT64_MAX, mask, fused))
    return through_float32(qkv, [&] { return packed_in_types(widened(qkv), heads, widened(mask), causal, scale, fused, qk_grad); });
  BCOS_CHECK(heads > 0 && qkv.dim() == 3 && qkv.size(2) % (3 * heads) == 0 && qkv.size(2) > 0, op,
             ": expected qkv [N, L, 3 * heads * d] for ", heads, " heads, got ", qkv.shape());
  const int64_t n = qkv.size(0), len = qkv.size(1), e = qkv.size(2) / 3, d = e / heads;
  // [N, L, 3E] -> part i of q | k | v as [N, heads, L, d], a view (unit stride along d).
  auto part = [n, len, heads, d](const Tensor& t, int64_t i) {
    return t.reshape({n, len, 3, heads, d}).select(2, i).transpose(1, 2);
  };
  // [N, L, E] <-> [N, heads, L, d] (split_heads: a view)
  auto split_heads = [n, len, heads, d](const Tensor& t) { return t.reshape({n, len, heads, d}).transpose(1, 2); };
  auto merge_heads = [n, len, e](const Tensor& t) { return t.transpose(1, 2).reshape({n, len, e}); };
  const Tensor base = qkv.detach(), q4 = part(base, 0), k4 = part(base, 1), v4 = part(base, 2);
  const Plan plan = plan_for(op, q4, k4, v4, mask, scale, fused);
  if (!plan.fused) {  // the composed form, through views of qkv (three gradients summed)
    Tensor q = part(qkv, 0), k = part(qkv, 1);
    if (!qk_grad) q = q.detach(), k = k.detach();
    return merge_heads(composed(q, k, part(qkv, 2), plan.bias, causal, plan.scale));
  }
  // The kernel writes its [N, heads, L, d] output straight into the merged [N, L, E] layout, and
  // its backward the three gradients into their slices of one [N, L, 3E]: no copies either way.
  Tensor result = empty({n, len, e}, {qkv.dtype(), qkv.device()});
  const FusedAttention f = fused_forward(q4, k4, v4, plan.bias, plan, causal, split_heads(result));
  if (needs_graph({qkv})) {
    const SavedAttention saved(f);
    record("PackedSelfAttentionBackward", result, {qkv}, [=](const Tensor& g, const std::vector<bool>&) {
      Tensor grad_qkv = empty({n, len, 3 * e}, {g.dtype(), g.device()});
      fused_backward(saved, split_heads(g), part(grad_qkv, 0), part(grad_qkv, 1), part(grad_qkv, 2));
      if (!qk_grad) grad_qkv.narrow(2, 0, 2 * e).zero_();
      return Grads{grad_qkv};
    });
  }
  return result;
}

}  // namespace

// Autocast (autograd.h): attention is one of torch's products -- a 16-bit result. Inside, float32
// tensors (a 16-bit input widened exactly) whose products take autocast's rounding of their
// operands (the fused kernels' softmax in float32); rounded once, at the output.
Tensor scaled_dot_product_attention(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& mask, bool causal,
                                    double scale, bool fused) {
  // On CUDA under bf16 autocast: bf16 copies (of float32 inputs), which the tensor-core kernels
  // take as they are (or which go through float32 as below).
  if (autocasting(q) && k.defined() && v.defined() && q.is_cuda() && autocast_dtype(DeviceType::cuda) == DType::bf16)
    return attention_in_types(autocast_to_lower(q), autocast_to_lower(k), autocast_to_lower(v), mask, causal, scale, fused);
  if (autocasting(q) && k.defined() && v.defined())
    return attention_in_types(widened(q), widened(k), widened(v), widened(mask), causal, scale, fused)
        .to(autocast_dtype(q.device().type));
  return attention_in_types(q, k, v, mask, causal, scale, fused);
}

Tensor packed_self_attention(const Tensor& qkv, int64_t heads, const Tensor& mask, bool causal, double scale,
                             bool fused, bool qk_grad) {
  if (autocasting(qkv) && qkv.is_cuda() && autocast_dtype(DeviceType::cuda) == DType::bf16)
    return packed_in_types(autocast_to_lower(qkv), heads, mask, causal, scale, fused, qk_grad);
  if (autocasting(qkv))
    return packed_in_types(widened(qkv), heads, widened(mask), causal, scale, fused, qk_grad)
        .to(autocast_dtype(qkv.device().type));
  return packed_in_types(qkv, heads, mask, causal, scale, fused, qk_grad);
}

}  // namespace bcos
