// Scaled dot-product attention (see ops.h): the fused kernel pair of tensor/kernels.inc with its
// backward beside it, and the composed form it must equal (tests compare the two and PyTorch).
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
    const Tensor rows = arange(double(lq), DType::i64).reshape({lq, 1}), cols = arange(double(lk), DType::i64).reshape({1, lk});
    logits = masked_fill(logits, gt(cols, rows).to(q.device()), -INFINITY);
  }
  return matmul(softmax(logits, -1), v);
}

// [.., L, D] as the kernels' [N, H, L, D] (a view), unit stride along D.
Tensor as_4d(const Tensor& t) {
  Tensor u = t.stride(-1) == 1 || t.size(-1) <= 1 ? t : t.contiguous();
  return u.dim() == 4 ? u : u.unsqueeze(0);
}

}  // namespace

Tensor scaled_dot_product_attention(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& mask, bool causal,
                                    double scale, bool fused) {
  const char* op = "scaled_dot_product_attention";
  check_defined(op, q, "query");
  check_defined(op, k, "key");
  check_defined(op, v, "value");
  check_same_device(op, q, k);
  check_same_device(op, q, v);
  check_same_dtype(op, q, k);
  check_same_dtype(op, q, v);
  check_float(op, q);
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
  const double sc = scale != 0 ? scale : 1.0 / std::sqrt(double(std::max<int64_t>(q.size(-1), 1)));
  Shape logits_shape = q.shape();
  logits_shape[d - 1] = k.size(-2);
  Tensor bias;
  if (mask.defined()) {
    check_same_device(op, q, mask);
    BCOS_CHECK(mask.dtype() == DType::boolean || mask.is_floating_point(), op, ": mask must be bool or float, got ",
               mask.dtype(), " (shape ", mask.shape(), ")");
    BCOS_CHECK(mask.dim() <= d && broadcast_shapes(mask.shape(), logits_shape, op) == logits_shape, op, ": mask ",
               mask.shape(), " does not broadcast to the logits ", logits_shape);
    bias = mask_as_bias(mask, logits_shape, q.dtype());
  }
  const bool cuda_head_too_large = q.is_cuda() && std::max(q.size(-1), v.size(-1)) > 256;
  // Autocast: as torch.autocast's scaled_dot_product_attention, the products multiply 16-bit
  // operands. bf16 on the CPU: the fused kernels round them; otherwise the composed form's
  // matmuls do (on CUDA, cuBLAS on the tensor cores; the CUDA kernels multiply float32 only).
  const DType operands = autocast_operands(q);
  const bool fused_takes_operands = operands == DType::f32 || (operands == DType::bf16 && q.is_cpu());
  if (!fused || cuda_head_too_large || (mask.defined() && mask.requires_grad()) || !fused_takes_operands)
    return composed(q, k, v, bias, causal, sc);

  // The fused kernels: [N, H, L, D] views; out and lse contiguous.
  const Tensor q4 = as_4d(q), k4 = as_4d(k), v4 = as_4d(v);
  const Tensor b4 = bias.defined() ? (bias.dim() == 4 ? bias : bias.unsqueeze(0)).detach() : Tensor();
  Shape out_shape = q.shape();
  out_shape[d - 1] = v.size(-1);
  Tensor out = empty({q4.size(0), q4.size(1), q4.size(2), v4.size(3)}, {q.dtype(), q.device()});
  Tensor lse = empty({q4.size(0), q4.size(1), q4.size(2)}, {q.dtype(), q.device()});
  AttentionParams p;
  p.scale = sc, p.causal = causal, p.bf16_operands = operands == DType::bf16;  // the backward keeps it
  if (out.numel() > 0) kernel::attention_forward(q4, k4, v4, b4, p, out, lse);
  Tensor result = out.reshape(out_shape);
  if (needs_graph({q, k, v})) {
    SavedTensor sq(q4), sk(k4), sv(v4), so(out), sl(lse);
    const Shape q_shape = q.shape(), k_shape = k.shape(), v_shape = v.shape();
    record("ScaledDotProductAttentionBackward", result, {q, k, v}, [=](const Tensor& g, const std::vector<bool>&) {
      const Tensor qq = sq.get(), kk = sk.get(), vv = sv.get();
      Tensor gq = empty(qq.shape(), {qq.dtype(), qq.device()}), gk = empty(kk.shape(), {kk.dtype(), kk.device()});
      Tensor gv = empty(vv.shape(), {vv.dtype(), vv.device()});
      if (g.numel() > 0) {
        kernel::attention_backward(g.reshape(so.get().shape()).contiguous(), qq, kk, vv, b4, so.get(), sl.get(), p, gq,
                                   gk, gv);
      } else {
        gq.zero_(), gk.zero_(), gv.zero_();
      }
      return Grads{gq.reshape(q_shape), gk.reshape(k_shape), gv.reshape(v_shape)};
    });
  }
  return result;
}

}  // namespace bcos
